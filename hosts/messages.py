"""Messages between a host's master (``hosts.host.HostEngine``) and its pCPUs (``PcpuCore``).

The master drives each pCPU with commands (:class:`Run`, :class:`Finish`). A ``Run`` carries
an inbox of items the pCPU handles at the command's instant, in the order given; the pCPU
answers with a :class:`RunReply`: the messages it emitted (its outbox, each stamped with its
emission time ``t``), its scheduler summary, its horizon and what it runs. ``Finish`` closes
the books and returns a :class:`PcpuReport`.

In one process the objects are handed over as they are; between processes they travel through
``hosts.wire``, which keeps every class here. A pCPU handles inbox items through a table keyed
by type, and an item of a type it does not know raises (:class:`UnknownMessage`).
"""

from __future__ import annotations

from hosts.errors import UnknownMessage as UnknownMessage  # re-exported: defined apart so this module can be compiled

from typing import Any, Final, NamedTuple, Union

from hosts.sched.messages import Give
from hosts.vcpu import VcpuState
from hosts.wire import message


#: a vCPU in transit between pCPUs: its record (between processes), or the object itself
#: (in one process; the codec is skipped unless checks are on)
VcpuCarrier = Union[bytes, VcpuState]

# --- how a vCPU arrives (Xfer.how) -------------------------------------------------------------
XFER_PUSH: Final = 0  # a running vCPU migrating at switch-out (VPF_migrating)
XFER_STOLEN: Final = 1  # taken from a peer's runqueue (work stealing, or given by the pool half)
XFER_PLACE: Final = 2  # placed by the host (new domain, arrival from another host, pool move)


# =============================================================================================
# inbox items: master -> pCPU
# =============================================================================================


@message
class Evt(NamedTuple):
    """Raise ``port`` for vCPU ``vid`` (an event channel send or a virtual IRQ)."""

    vid: int
    port: int
    payload: Any


@message
class Tickle(NamedTuple):
    """Another pCPU asked this one to reschedule (raise SCHEDULE_SOFTIRQ)."""


@message
class PoolInstr(NamedTuple):
    """An instruction of the pool half for this pCPU's scheduler (``apply_pool``)."""

    instr: Any


@message
class Xfer(NamedTuple):
    """A vCPU arriving on this pCPU; ``migrated``: it comes from another host."""

    vcpu: VcpuCarrier
    how: int
    migrated: bool


@message
class View(NamedTuple):
    """The pool as of the last boundary: idle pCPUs, sort epoch, scheduler extras."""

    idlers: tuple[int, ...]
    epoch: int
    extra: Any


@message
class DomUpdate(NamedTuple):
    """A domain-table entry, new or changed (``DomainInfo.to_dict()``)."""

    info: dict[str, Any]


@message
class DomDel(NamedTuple):
    uid: int


@message
class PauseDom(NamedTuple):
    uid: int


@message
class UnpauseDom(NamedTuple):
    uid: int


@message
class Export(NamedTuple):
    """Hand the (paused, descheduled) vCPU's record to the host; it leaves the pool."""

    vid: int
    with_sched: bool


@message
class Kill(NamedTuple):
    vid: int


@message
class Affinity(NamedTuple):
    vid: int
    hard: tuple[int, ...]
    soft: tuple[int, ...]


@message
class Probe(NamedTuple):
    """Report the CPU time and log-dirty cost of domain ``uid``'s vCPUs held here."""

    uid: int


@message
class UsageProbe(NamedTuple):
    """Report this pCPU's busy time and, per domain, its vCPUs' running and runnable time."""


@message
class Frames(NamedTuple):
    """Frames for this pCPU's allocation cache; ``exhausted``: the host has no more."""

    mfns: tuple[int, ...]
    exhausted: bool


@message
class EvtchnUpdate(NamedTuple):
    """A port another pCPU bound (``EvtchnBinding.to_list()``)."""

    uid: int
    binding: tuple[int, int, int, int]


InboxItem = Union[Give, Xfer, Evt, Tickle, PoolInstr, View, DomUpdate, DomDel, PauseDom, UnpauseDom, Export, Kill, Affinity, Probe, UsageProbe, Frames, EvtchnUpdate]


# =============================================================================================
# outbox messages: pCPU -> master (every one stamped with its emission time t)
# =============================================================================================


@message
class EvtOut(NamedTuple):
    t: int
    vid: int
    port: int
    payload: Any


@message
class TickleOut(NamedTuple):
    t: int
    cpu: int


@message
class XferOut(NamedTuple):
    t: int
    vid: int
    to_pcpu: int
    vcpu: VcpuCarrier
    how: int


@message
class StealReq(NamedTuple):
    t: int
    pri: int


@message
class PoolOut(NamedTuple):
    """A message for the pool half of this pCPU's scheduler (``on_msg``)."""

    t: int
    payload: Any


@message
class Shutdown(NamedTuple):
    """SCHEDOP_shutdown: the toolstack hears of it."""

    t: int
    uid: int
    reason: int


@message
class EvtchnBound(NamedTuple):
    """A port bound by a hypercall here; the master tells the other pCPUs."""

    t: int
    uid: int
    binding: tuple[int, int, int, int]


@message
class WantFrames(NamedTuple):
    t: int
    frames: int


@message
class Exported(NamedTuple):
    """Answer to :class:`Export`: the record, or None if the vCPU could not be taken off."""

    t: int
    vid: int
    record: bytes | None


@message
class Probed(NamedTuple):
    t: int
    uid: int
    running_ns: int
    logdirty_ns: int


@message
class UsageOut(NamedTuple):
    """Answer to :class:`UsageProbe`: totals since the start, the open intervals closed at ``t``."""

    t: int
    busy_ns: int
    running_ns: dict[int, int]  # domain uid -> ns its vCPUs held here ran
    runnable_ns: dict[int, int]  # domain uid -> ns they waited for a pCPU


@message
class HostUsage(NamedTuple):
    """A host's usage since the start of the run, at ``now``."""

    now: int
    busy_ns: tuple[int, ...]  # per pCPU
    running_ns: dict[int, int]  # per domain uid
    runnable_ns: dict[int, int]


OutMsg = Union[EvtOut, TickleOut, XferOut, StealReq, PoolOut, Shutdown, EvtchnBound, WantFrames, Exported, Probed, UsageOut]


# =============================================================================================
# commands and replies
# =============================================================================================


@message
class Run(NamedTuple):
    """Advance to ``at`` if behind (nothing can have happened), handle ``inbox`` there, then
    advance to ``until``."""

    inbox: tuple[InboxItem, ...]
    at: int
    until: int


@message
class Finish(NamedTuple):
    """Advance to ``end``, handle ``inbox``, close the books; answered by a PcpuReport."""

    inbox: tuple[InboxItem, ...]
    end: int


Command = Union[Run, Finish]


@message
class RunReply(NamedTuple):
    out: list[OutMsg]
    summary: Any
    horizon: int
    curr: int  # vid running now, -1 idle


@message
class VcpuReport(NamedTuple):
    runstate_ns: list[int]
    regs: dict[str, int]
    wl: dict[str, Any]
    hcall_preempted: bool


@message
class PcpuReport(NamedTuple):
    """One pCPU's books at the end of a run (plain data)."""

    host: str
    pcpu: int
    busy_ns: int
    idle_ns: int
    switches: int
    events: int
    digest: str
    trace: bytes  # int64 triples (start_ns, end_ns, vid): the intervals vCPUs ran here
    trace_dropped: int
    wake_lat: dict[int, list[int]]
    hv_stays: dict[str, list[int]]
    hv_by_kind: dict[str, list[int]]  # name -> [completed, preempted]
    vcpus: dict[int, VcpuReport]
    departed: dict[int, list[int]]  # runstate ns of vCPUs whose domain was destroyed here
    metrics: dict[str, int]
    samples: dict[str, dict[int, list[int]]]
    #: Xen trace records (hosts.tracelog buffer: int64 words), empty unless tracing was on
    xentrace: bytes = b""


Reply = Union[RunReply, PcpuReport]
