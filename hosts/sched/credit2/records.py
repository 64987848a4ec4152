"""Credit2's records (Xen's ``csched2_unit``, ``csched2_pcpu``, ``csched2_dom``,
``csched2_runqueue_data``) and the arithmetic both halves share.

What it does. ``Credit2Unit`` travels with its vCPU (reached through :func:`unit`, the one
typed accessor); ``Credit2Pcpu`` is a pCPU's private data and its slice of the runqueue;
``Credit2Dom`` and ``Credit2Runqueue`` are kept by the pool half. The functions are the pieces
of Xen's algorithm that both halves apply: the load averages (``load_update``:
update_runq_load, ``svc_load_at``: update_svc_load), the burn of a vCPU seen from elsewhere
(``extrapolate``), ``is_preemptable``, runq_candidate's test for a vCPU waiting on another pCPU
(``may_take``), the runqueue arrangement (``runqueue_map``: cpu_add_to_runqueue) and the
runqueue choice of csched2_res_pick (``res_pick``).

Ordering and determinism. Pure functions; ``res_pick`` takes the first runqueue (by id) among
equally loaded ones, ``runqueue_map`` places pCPUs in id order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from hosts.clock import NEVER
from hosts.sched.affinity import NO_CPUS, has_soft_affinity
from hosts.sched.base import UnitRecord
from hosts.sched.credit2.params import CREDIT_INIT, CREDIT_MIN, LOADAVG_GRANULARITY_SHIFT, RATELIMIT_TICKLE_TOLERANCE, Credit2Params
from hosts.sched.messages import Credit2Queued

if TYPE_CHECKING:  # pragma: no cover
    from hosts.vcpu import VcpuState


class Credit2Unit(UnitRecord):
    """Per-unit data (``struct csched2_unit``); travels with the vCPU inside a host."""

    FIELDS = (
        "credit",
        "residual",
        "flags",
        "budget",
        "start_time",
        "load_last_update",
        "avgload",
        "tickled_cpu",
        "processor",
        "rq",
        "gen",
        "migrate_cpu",
        "on_runq",
    )
    # not on the wire: the summary entry and affinity masks last built, reused while they hold
    __slots__ = FIELDS + ("queued", "aff_h", "aff_s", "hard", "soft")

    def __init__(self) -> None:
        self.credit = CREDIT_INIT
        self.residual = 0
        self.flags = 0
        self.budget: int | None = None  # None: the domain has no cap (Xen's STIME_MAX)
        self.start_time = 0
        self.load_last_update = 0
        self.avgload = 0
        self.tickled_cpu = -1
        self.processor = -1  # Xen's v->processor: the pCPU it last ran on or was placed on
        self.rq = -1
        self.gen = 0  # number of the last credit reset of its runqueue it received
        self.migrate_cpu = -1
        self.on_runq = False
        self.queued: Credit2Queued | None = None
        self.aff_h: tuple[int, ...] | None = None  # the vCPU's affinity tuples the masks are of
        self.aff_s: tuple[int, ...] | None = None
        self.hard: frozenset[int] = NO_CPUS
        self.soft: frozenset[int] = NO_CPUS

    def restored(self) -> None:
        self.on_runq = False


def unit(v: "VcpuState") -> Credit2Unit:
    """The Credit2 record of a vCPU held by a Credit2 pCPU."""
    u: Credit2Unit = v.sched  # typed without a call to cast (hot path)
    return u


class Credit2Pcpu:
    """Per-pCPU data (``struct csched2_pcpu``) and this pCPU's slice of its runqueue."""

    __slots__ = (
        "rq",
        "runq",
        "gen",
        "gen_hist",
        "load_area",
        "load_last_t",
        "reserve",
        "parked",
        "pull_expect",
        "pull_bypass",
        "tickled",
        "rang_seq",
        "asked",
        "pick_bias",
        "max_weight",
    )

    def __init__(self, rq: int, now: int) -> None:
        self.rq = rq
        self.runq: list[VcpuState] = []  # by credit, highest first
        self.gen = 0
        self.gen_hist: dict[int, int] = {}  # reset number -> its amount
        self.load_area = 0  # integral of this slice's load (runnable vCPUs held), load x ns
        self.load_last_t = now
        self.reserve: dict[int, int] = {}  # domain uid -> budget share held here, ns
        self.parked: dict[int, list[int]] = {}  # domain uid -> vids parked here
        self.pull_expect: set[int] = set()
        self.pull_bypass = False
        self.tickled: set[int] = set()  # pCPUs tickled from here since the last view
        self.rang_seq = -1
        self.asked: set[int] = set()  # domains budget was asked for since the last view
        self.pick_bias: dict[int, int] = {}
        self.max_weight = 1


class Credit2Runqueue:
    """Runqueue-wide data (``struct csched2_runqueue_data``) the pool half keeps."""

    __slots__ = ("id", "cpus", "cpuset", "gen", "gen_amount", "max_weight", "load", "avgload", "b_avgload", "load_last_update", "pick_bias", "members")

    def __init__(self, rid: int, cpus: tuple[int, ...], now: int) -> None:
        self.id = rid
        self.cpus = cpus
        self.cpuset = frozenset(cpus)
        self.gen = 0
        self.gen_amount = CREDIT_INIT
        self.max_weight = 1
        self.load = 0
        self.avgload = 0
        self.b_avgload = 0
        self.load_last_update = now >> LOADAVG_GRANULARITY_SHIFT
        self.pick_bias = cpus[0]
        self.members: list[int] = []  # vids assigned (Xen's svc list), in vid order


class Credit2Dom:
    """Per-domain data (``struct csched2_dom``) kept by the pool half."""

    __slots__ = ("weight", "cap", "nr_units", "tot_budget", "next_repl", "pending")

    def __init__(self, weight: int, cap: int, nr_units: int) -> None:
        self.weight = weight
        self.cap = cap
        self.nr_units = nr_units
        self.tot_budget = 0
        self.next_repl = NEVER
        self.pending: str | None = "on" if cap else None  # a cap change for the next refill round


# ---------------------------------------------------------------------------------------------
# load averages
# ---------------------------------------------------------------------------------------------


def load_update(avg: int, last_u: int, now_u: int, area_u: int, load_now: int, W: int, P: int) -> int:
    """update_runq_load's average with the load integral ``area_u`` (load x 2^10 ns) since
    ``last_u`` instead of a constant load (identical when the load was constant)."""
    if last_u + (1 << W) < now_u:
        return load_now << P
    delta = max(now_u - last_u, 0)
    return avg + ((area_u << P) >> W) - ((delta * avg) >> W)


def svc_load_at(avg: int, last_u: int, now_u: int, unit_load: int, W: int, P: int) -> int:
    """update_svc_load (without storing it)."""
    if last_u + (1 << W) < now_u:
        return unit_load << P
    delta = max(now_u - last_u, 0)
    return avg + ((delta * (unit_load << P)) >> W) - ((delta * avg) >> W)


# ---------------------------------------------------------------------------------------------
# what both halves decide the same way
# ---------------------------------------------------------------------------------------------


def extrapolate(credit: int, delta_ns: int, max_weight: int, weight: int) -> int:
    """The credit of a vCPU seen running ``delta_ns`` ago, burnt since (t2c_update, without
    the residual the viewer does not know)."""
    if delta_ns <= 0:
        return credit
    return max(credit - delta_ns * max_weight // max(weight, 1), CREDIT_MIN)


def is_preemptable(entry_ns: int, now: int, ratelimit: int) -> bool:
    """is_preemptable: the vCPU ran past the rate limit (with 50 us tolerance)."""
    if ratelimit <= RATELIMIT_TICKLE_TOLERANCE:
        return True
    return now - entry_ns > ratelimit - RATELIMIT_TICKLE_TOLERANCE


def may_take(cpu: int, holder: int, tickled: int, processor: int, credit: int, snext_credit: int, resist: int) -> bool:
    """runq_candidate's tests for a vCPU queued on ``holder``, seen by ``cpu``: not reserved
    for a third pCPU tickled for it, and, if it last ran elsewhere, better by the resistance."""
    if tickled >= 0 and tickled != cpu and tickled != holder:
        return False
    return processor == cpu or snext_credit + resist <= credit


# ---------------------------------------------------------------------------------------------
# topology, runqueues and placement
# ---------------------------------------------------------------------------------------------


def _topo(p: Credit2Params, cpu: int) -> tuple[int, int, int]:
    """(core, socket, node) of a pCPU under the configured topology."""
    core = cpu // p.threads_per_core
    socket = core // p.cores_per_socket if p.cores_per_socket else 0
    return core, socket, socket // p.sockets_per_node


def runqueue_map(p: Credit2Params, cpus: tuple[int, ...]) -> list[tuple[int, ...]]:
    """cpu_add_to_runqueue for each pCPU of the pool in id order: the runqueues' pCPUs."""
    n = len(cpus)
    min_rqs = (n - 1) // p.max_cpus_runqueue + 1
    max_cpus_runq = max(1, n // min_rqs)
    rqs: list[list[int]] = []
    for cpu in sorted(cpus):
        core, socket, node = _topo(p, cpu)
        valid: list[int] | None = None
        for rq in rqs:
            bcore, bsocket, bnode = _topo(p, rq[0])
            match = (
                p.runqueue == "all"
                or (p.runqueue == "core" and bsocket == socket and bcore == core)
                or (p.runqueue == "socket" and bsocket == socket)
                or (p.runqueue == "node" and bnode == node)
            )
            if not match:
                continue
            if any(_topo(p, c)[0] == core for c in rq):
                valid = rq  # SMT siblings always stay together
                break
            cores = {_topo(p, c)[0] for c in rq}
            if len(rq) < max_cpus_runq and len(cores) * p.threads_per_core + p.threads_per_core <= max_cpus_runq:
                if valid is None or len(rq) < len(valid):
                    valid = rq
        if valid is None:
            rqs.append([cpu])
        else:
            valid.append(cpu)
    return [tuple(rq) for rq in rqs]


def res_pick(hard: frozenset[int], soft: frozenset[int], pool: frozenset[int], rq_cpus: Sequence[frozenset[int]], loads: Sequence[int]) -> tuple[int, frozenset[int]]:
    """csched2_res_pick's runqueue: the least loaded one meeting the hard affinity, a
    soft-affine one if there is any; returns it and the pCPUs to pick from there (the caller
    cycles from that runqueue's pick bias)."""
    use_soft = has_soft_affinity(hard, soft, pool)
    best = best_s = -1
    best_load = best_s_load = 0
    for i, cpus in enumerate(rq_cpus):
        if not hard & cpus:
            continue
        load = loads[i]
        if use_soft and (best_s < 0 or load < best_s_load) and soft & hard & cpus:
            best_s, best_s_load = i, load
        if best < 0 or load < best_load:
            best, best_load = i, load
    if use_soft and best_s >= 0:
        return best_s, hard & soft & rq_cpus[best_s]
    return best, hard & rq_cpus[best]
