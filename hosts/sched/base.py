"""The scheduler ops table, modelled on Xen's ``struct sched_ops``, and the registry.

A scheduler in hvsim has two halves, because a pool's pCPUs live in different processes:

* :class:`PcpuScheduler`, one instance per pCPU, holds that pCPU's private data and the
  per-unit data of the vCPUs currently on it. Its hooks are Xen's: ``insert``, ``remove``,
  ``do_schedule`` and ``pick_pcpu`` are required; ``wake``, ``sleep``, ``yield_``,
  ``context_saved``, ``migrate``, ``adjust_affinity``, ``timer``, ``summary`` and
  ``apply_pool`` are optional with the defaults below.
* :class:`PoolScheduler`, one instance per cpupool, run by the host at epoch boundaries: the
  pool-wide work Xen does under the private lock (Credit's 30 ms accounting, work stealing,
  Credit2's balancing) done as a pure function of per-pCPU summaries. ``place`` is required.

The two halves talk only through the typed records of :mod:`hosts.sched.messages`: summaries
up, instructions down (``apply_pool``, which refuses a kind it does not know), pool messages
and steal requests up, view extras down.

Policy decides, the engine enacts: ``do_schedule`` returns a :class:`Decision` and never
touches the clock or a runstate; it asks the engine (the ``ctx`` it was built with, a
:class:`SchedContext`) to tickle, arm its timers, or message the pool. The registry refuses an
incomplete scheduler and names the missing hook; an unknown name is an error listing the
known ones (never a silent default).
"""

from __future__ import annotations

from hosts.errors import SchedulerError as SchedulerError  # re-exported: defined apart so this module can be compiled

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generic, Mapping, Protocol, Self, Sequence, TypeVar

from mypy_extensions import mypyc_attr
from pydantic import BaseModel

from hosts.clock import NEVER
from hosts.sched.affinity import NO_CPUS, Masks, affinity_masks, dom_affinity
from hosts.sched.messages import Instruction, PoolMsg, PoolView, StealRequest, Summary, ViewExtra
from hosts.vcpu import make_vid

if TYPE_CHECKING:  # pragma: no cover
    from hosts.domain import DomainInfo
    from hosts.vcpu import VcpuState

SumT = TypeVar("SumT")


class Decision:
    """What ``do_schedule`` returns: the next vCPU (None = idle) and when to decide again.

    ``next_time_ns`` is relative (Xen's ``prev->next_time``); a negative value arms no timer.
    A plain class, not a dataclass: a compiled dataclass runs its generated ``__init__`` in
    the interpreter, and one is built at every decision.
    """

    __slots__ = ("vcpu", "next_time_ns", "migrated")

    def __init__(self, vcpu: "VcpuState | None", next_time_ns: int, migrated: bool = False) -> None:
        self.vcpu = vcpu
        self.next_time_ns = next_time_ns
        self.migrated = migrated

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return self.vcpu is other.vcpu and self.next_time_ns == other.next_time_ns and self.migrated == other.migrated

    def __repr__(self) -> str:
        return f"Decision(vcpu={self.vcpu!r}, next_time_ns={self.next_time_ns!r}, migrated={self.migrated!r})"


class SchedContext(Protocol):
    """The engine as a scheduler sees it (implemented by ``hosts.pcpu.PcpuCore``)."""

    pcpu: int
    now: int
    view: PoolView
    curr: "VcpuState | None"
    domains: "dict[int, DomainInfo]"  # the host's domain table, as of the last boundary
    vcpus: "dict[int, VcpuState]"  # the vCPUs this pCPU holds, by vid
    #: Xen trace records are kept (``hosts.tracelog``); test it before calling ``trace``, so
    #: that tracing off costs a bool test per site
    tracing: bool

    def domain(self, uid: int) -> "DomainInfo": ...
    def raise_softirq(self) -> None: ...
    def tickle(self, cpu: int) -> None: ...
    def set_timer(self, name: str, when_ns: int) -> None: ...
    def stop_timer(self, name: str) -> None: ...
    def pool_msg(self, payload: PoolMsg) -> None: ...
    def request_steal(self, pri: int) -> None: ...
    def park(self, v: "VcpuState") -> None: ...
    def unpark(self, v: "VcpuState") -> None: ...
    def set_migrating(self, v: "VcpuState") -> None: ...
    def trace(self, event: int, *args: int) -> None:
        """Record a Xen trace record at ``now``: ``event`` (a TRC_* number) and its 32-bit words,
        laid out as the scheduler's TRACE_* call in Xen lays them out."""
    def trace_dom(self, v: "VcpuState | None") -> tuple[int, int]:
        """(domain id, vCPU id) as Xen numbers them; None is this pCPU's idle vCPU."""
    def trace_id(self, v: "VcpuState | None") -> int:
        """The packed ``{unit:16, dom:16}`` word most scheduler records start with."""


# a scheduler written in Python may derive from the compiled base classes
@mypyc_attr(allow_interpreted_subclasses=True)
class UnitRecord:
    """Per-unit scheduler data that travels with its vCPU as a plain dict of its ``FIELDS``.

    Subclasses name their fields in ``FIELDS`` and use them as ``__slots__`` too (a compiled
    native class has no ``__slots__`` attribute to read back, so the names live in ``FIELDS``)."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in self.FIELDS}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Self:
        u = cls()
        for s in cls.FIELDS:
            if s in d:
                setattr(u, s, d[s])
        u.restored()
        return u

    def restored(self) -> None:
        """Fix up what is only meaningful where the record was written."""


def unknown(half: str, name: str, what: object) -> SchedulerError:
    """The error for a message between the halves that this scheduler does not know."""
    return SchedulerError(f"scheduler {name!r}: {half} got an unknown {type(what).__name__} {what!r}")


# a scheduler written in Python may derive from the compiled base classes
@mypyc_attr(allow_interpreted_subclasses=True)
class PcpuScheduler:
    """Per-pCPU half of a scheduler. Subclasses set ``name`` and implement the hooks."""

    name: ClassVar[str] = "base"
    #: the record this scheduler keeps in ``VcpuState.sched`` (None: a plain dict)
    unit_type: ClassVar[type[UnitRecord] | None] = None
    #: ``summary`` changes only when the scheduler is called, never with time alone: then the
    #: master may leave this pCPU out of a round in which its events would all be no-ops
    timeless_summary: ClassVar[bool] = False
    #: a vCPU moving to another pCPU of the pool in the same process may keep its unit record
    #: (``restored()`` called, as ``from_wire`` does) instead of going through its dict: the
    #: scheduler keeps no reference to a record it let go, and what is not in ``FIELDS`` is a
    #: cache that checks itself
    keeps_record: ClassVar[bool] = False
    REQUIRED: ClassVar[tuple[str, ...]] = ("insert", "remove", "do_schedule", "pick_pcpu")
    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "wake",
        "sleep",
        "yield_",
        "context_saved",
        "migrate",
        "adjust_affinity",
        "timer",
        "summary",
        "apply_pool",
        "udata_to_wire",
        "udata_from_wire",
        "horizon",
        "dump",
    )

    def __init__(self, ctx: SchedContext, params: BaseModel) -> None:
        self.ctx = ctx
        self.params = params
        self.pool = frozenset(ctx.view.cpus)  # the pCPUs of this pCPU's cpupool

    def affinity(self, v: "VcpuState") -> Masks:
        """(hard, soft) masks of v; hard is cut to the pool, and is the whole pool if they do not meet."""
        return affinity_masks(v.hard_affinity, v.soft_affinity, self.pool)

    # --- required --------------------------------------------------------------------------
    def insert(self, v: "VcpuState", stolen: bool = False) -> None:
        """A vCPU enters this pCPU (creation, arrival from another pCPU or host)."""
        raise NotImplementedError

    def remove(self, v: "VcpuState") -> None:
        """A (not running) vCPU leaves this pCPU."""
        raise NotImplementedError

    def do_schedule(self, now: int, curr: "VcpuState | None") -> Decision:
        raise NotImplementedError

    def pick_pcpu(self, v: "VcpuState", commit: bool) -> int:
        raise NotImplementedError

    # --- optional, with Xen's defaults -----------------------------------------------------
    def wake(self, v: "VcpuState", migrating: bool = False) -> None:
        """v became runnable. Default: nothing (schedulers with a runqueue override)."""

    def sleep(self, v: "VcpuState") -> None:
        """v stopped being runnable; if it is running, make the pCPU reschedule."""
        if self.ctx.curr is v:
            self.ctx.raise_softirq()

    def yield_(self, v: "VcpuState") -> None:
        """v asked to yield; the default only reschedules (the engine raises the softirq)."""

    def context_saved(self, v: "VcpuState") -> None:
        """v's state is off this pCPU (after a switch); deferred-requeue schedulers act here."""

    def migrate(self, v: "VcpuState", new_pcpu: int) -> None:
        """A non-running v is about to move; default just lets it go (Xen's sched_set_res)."""

    def adjust_affinity(self, v: "VcpuState") -> None:
        """Hard/soft affinity of v changed."""

    def timer(self, name: str, now: int) -> None:
        """A timer armed with ``ctx.set_timer(name, ...)`` fired."""

    def summary(self) -> Summary:
        """Per-pCPU data the pool half needs at a boundary (a record of hosts.sched.messages)."""
        return None

    def apply_pool(self, instr: Instruction) -> None:
        """Apply an instruction from the pool half; a scheduler whose pool half sends none
        refuses any."""
        raise unknown("pCPU half", self.name, instr)

    def udata_to_wire(self, udata: Any) -> dict[str, Any]:
        """Per-unit data as a plain dict, for a move to another pCPU."""
        if isinstance(udata, UnitRecord):
            return udata.to_wire()
        return dict(udata) if udata else {}

    def udata_from_wire(self, d: dict[str, Any]) -> Any:
        """The record back from its dict; {} stays {} (``insert`` makes a new record)."""
        t = self.unit_type
        return t.from_wire(d) if t is not None and d else dict(d)

    def horizon(self) -> int:
        """Earliest time this scheduler may need the pool (default: only via events)."""
        return NEVER

    def dump(self) -> dict[str, Any]:
        return {}


def _nowhere(vid: int) -> int:
    raise KeyError(vid)


# a scheduler written in Python may derive from the compiled base classes
@mypyc_attr(allow_interpreted_subclasses=True)
class PoolScheduler(Generic[SumT]):
    """Per-pool half of a scheduler, run by the host at epoch boundaries. ``SumT`` is the
    summary record its pCPU half reports."""

    name: ClassVar[str] = "base"
    REQUIRED: ClassVar[tuple[str, ...]] = ("place",)
    OPTIONAL: ClassVar[tuple[str, ...]] = ("add_domain", "remove_domain", "adjust", "on_msg", "boundary", "next_due", "dump")

    #: set by the host: vid -> the pCPU holding its record (KeyError if none of this host)
    locate: Callable[[int], int]

    def __init__(self, params: BaseModel, cpus: tuple[int, ...], start_ns: int = 0) -> None:
        self.params = params
        self.cpus = cpus
        self.pool = frozenset(cpus)
        self.locate = _nowhere
        self.affinity: dict[int, Masks] = {}  # vid -> (hard, soft), from the domain table

    def set_affinity(self, dom: "DomainInfo") -> None:
        """Record the masks of every vCPU of ``dom`` (from the domain table)."""
        for i in range(dom.nr_vcpus):
            self.affinity[make_vid(dom.uid, i)] = dom_affinity(dom, i, self.pool)

    def masks(self, vid: int) -> Masks:
        """(hard, soft) of a vCPU; the whole pool for one the pool half has not seen."""
        return self.affinity.get(vid, (self.pool, NO_CPUS))

    def place(self, vid: int, hint: int, summaries: Mapping[int, SumT | None], domain: "DomainInfo") -> int:
        """Choose the pCPU for a vCPU entering the pool (Xen's pick_resource at insert)."""
        raise NotImplementedError

    def add_domain(self, dom: "DomainInfo") -> None:
        pass

    def remove_domain(self, dom: "DomainInfo") -> None:
        pass

    def remove_vcpu(self, vid: int) -> None:
        pass

    def adjust(self, dom: "DomainInfo") -> None:
        pass

    def on_msg(self, src: int, payload: PoolMsg) -> None:
        """A message a pCPU sent with ``ctx.pool_msg`` (or the engine's failed give); a
        scheduler whose pCPU half sends none refuses any."""
        raise unknown("pool half", self.name, payload)

    def boundary(self, now: int, summaries: Mapping[int, SumT | None], steal_reqs: Sequence[StealRequest], first_round: bool) -> dict[int, list[Instruction]]:
        """Pool-wide work at a boundary; returns instructions per pCPU.

        ``steal_reqs`` are in total order (time, pCPU). Instructions are ``Give`` (the engine
        enacts it) or the scheduler's own, passed to the pCPU half's ``apply_pool``.
        """
        return {}

    def next_due(self, now: int) -> int:
        """Next time the pool half must run even if no pCPU asks (e.g. accounting)."""
        return NEVER

    def view_extra(self) -> ViewExtra:
        """Extra pool state broadcast to every pCPU's view at each boundary."""
        return None

    def view_epoch(self) -> int:
        """The pool's sort epoch broadcast in every view (Credit's runq_sort; 0 otherwise)."""
        return 0

    def dump(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class SchedulerEntry:
    name: str
    sched_id: int  # Xen's XEN_SCHEDULER_* number
    params: type[BaseModel]
    pcpu: type[PcpuScheduler]
    pool: type[PoolScheduler[Any]]
    summary: str = ""
    #: per-domain/per-vCPU parameters (e.g. RTDS period and budget), given in a domain's
    #: ``sched`` (all vCPUs) or ``vcpu_sched`` (one each) config field; None if it has none
    domain_params: type[BaseModel] | None = None


REGISTRY: dict[str, SchedulerEntry] = {}


def _missing_hooks(cls: type, base: type, required: tuple[str, ...]) -> list[str]:
    return [h for h in required if getattr(cls, h, None) is getattr(base, h, None)]


def register(entry: SchedulerEntry) -> SchedulerEntry:
    """Add a scheduler; refuse it if a required hook is missing (naming the hooks)."""
    missing = _missing_hooks(entry.pcpu, PcpuScheduler, PcpuScheduler.REQUIRED)
    missing += [f"pool.{h}" for h in _missing_hooks(entry.pool, PoolScheduler, PoolScheduler.REQUIRED)]
    if missing:
        raise SchedulerError(f"scheduler {entry.name!r} is incomplete: missing required hook(s) {', '.join(missing)}")
    if entry.name in REGISTRY and REGISTRY[entry.name] is not entry:
        raise SchedulerError(f"scheduler {entry.name!r} registered twice")
    REGISTRY[entry.name] = entry
    return entry


def get(name: str) -> SchedulerEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise SchedulerError(f"unknown scheduler {name!r}; known schedulers: {known}") from None
