"""Credit's records (Xen's ``csched_unit``, ``csched_pcpu``, ``csched_dom``) and placement.

What it does. ``CreditVcpu`` travels with its vCPU (reached through :func:`unit`, the one
typed accessor); ``CreditPcpu`` is a pCPU's private data and runqueue; ``CreditDom`` is kept
by the pool half. ``cpu_pick`` is ``_csched_cpu_pick`` on a flat topology, used by both halves
(``pick_pcpu`` from the pCPU's view, ``CreditPool.place`` from the summaries).

Ordering and determinism. ``cpu_pick`` is a pure function; it walks pCPUs with ``cycle``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from hosts.sched.affinity import balance_mask, cycle, has_soft_affinity
from hosts.sched.base import UnitRecord
from hosts.sched.credit.params import PRI_UNDER
from hosts.sched.messages import CreditQueued

if TYPE_CHECKING:  # pragma: no cover
    from hosts.vcpu import VcpuState


class CreditVcpu(UnitRecord):
    """Per-unit data (Xen's ``struct csched_unit``); travels with the vCPU inside a host."""

    FIELDS = ("pri", "credit", "residual", "start_time", "flags", "last_sched_time", "active")
    __slots__ = FIELDS + ("queued",)

    def __init__(self) -> None:
        self.pri = PRI_UNDER
        self.credit = 0
        self.residual = 0
        self.start_time = 0
        self.flags = 0
        self.last_sched_time = 0
        self.active = False
        #: the unit's last runqueue entry in a summary, reused while it still holds (not on the wire)
        self.queued: CreditQueued | None = None


def unit(v: "VcpuState") -> CreditVcpu:
    """The Credit record of a vCPU held by a Credit pCPU."""
    u: CreditVcpu = v.sched  # typed without a call to cast (hot path)
    return u


class CreditPcpu:
    """Per-pCPU data (``struct csched_pcpu``)."""

    __slots__ = ("runq", "nr_runnable", "tick", "runq_sort_last", "last_load_balance", "steal_pending", "last_tickle_cpu", "tick_armed")

    def __init__(self) -> None:
        self.runq: list[VcpuState] = []  # by priority, FIFO within one
        self.nr_runnable = 0
        self.tick = 0
        self.runq_sort_last = 0
        self.last_load_balance = -(1 << 62)
        self.steal_pending = False
        self.last_tickle_cpu = -1
        self.tick_armed = False


class CreditDom:
    """Per-domain data (``struct csched_dom``), kept by the pool half."""

    __slots__ = ("weight", "cap", "active")

    def __init__(self, weight: int, cap: int) -> None:
        self.weight = weight
        self.cap = cap
        self.active: list[int] = []  # vids, head first (Xen's list_add puts new ones first)


def cpu_pick(cur: int, hard: frozenset[int], soft: frozenset[int], pool: frozenset[int], idlers: Iterable[int], cur_runq_idle: bool) -> int:
    """_csched_cpu_pick on a flat topology: stay on ``cur`` if it is (as good as) idle,
    otherwise take the next idle pCPU after it within affinity, soft affinity first."""
    use_soft = has_soft_affinity(hard, soft, pool)
    cpu = cur
    for step in (0, 1):
        cpus = balance_mask(step, hard, soft) & pool
        if step == 0 and (not use_soft or not cpus):
            continue
        cpu = cur if cur in cpus else cycle(cur, cpus)
        idl = set(idlers) & pool
        if cur == cpu and cur_runq_idle:
            idl.add(cpu)
        cand = cpus & idl
        if cpu not in cand and cand:
            cpu = cycle(cpu, cand)
        if cpu in idl:
            break
    return cpu
