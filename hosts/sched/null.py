"""null: Xen's static-assignment scheduler, as in ``xen/common/sched/null.c``.

What it does. Every vCPU of the pool is assigned to one pCPU, and a pCPU runs either its
assigned vCPU or nothing: there is no runqueue and no time slice (``next_time`` is -1). A vCPU
that blocks keeps its pCPU (which idles meanwhile); a pCPU is freed only when its vCPU leaves
the pool (domain destroyed, moved to another pool, migrated away) or when a new hard affinity
excludes it. vCPUs that find no free pCPU wait on a pool-wide FIFO wait queue and are assigned
when a pCPU in their affinity frees, soft affinity first (Xen's two-step balancing).

When to use it. Static set-ups with at most as many vCPUs as pCPUs (embedded, HPC, a
dedicated cpupool): the least overhead and no jitter. With more vCPUs than pCPUs the extra
ones simply wait. Note that Domain-0 is a domain like any other: in a null pool it takes a pCPU.

Which function does each step: ``NullPool.place`` (null_unit_insert -> pick_res, then assign
or queue), ``NullPool.remove_domain`` and ``NullPool._deassign`` (null_unit_remove ->
unit_deassign, which hands the freed pCPU to the first suitable waiter), ``NullPool.adjust``
(an affinity change: null_unit_migrate), ``NullPool.boundary`` (tells pCPUs their assignment
and moves vCPU records to the pCPU they are assigned to), ``NullScheduler.do_schedule``
(null_schedule), ``NullScheduler.pick_pcpu`` (pick_res, with the pool's free mask as of the
last boundary: ``NullView``).

Emulation of the pool-wide state. The assignment and the wait queue (Xen's ``cpus_free``,
``npc->unit`` and ``waitq`` under the private locks) live in the pool half, which is the only
place that changes them; a pCPU learns its assigned vCPU through a ``NullAssign``
instruction and runs it only once its record is held there. A waiting vCPU's record is held by
some pCPU of its hard affinity (Xen keeps a valid ``v->processor`` too) and is never run there;
when the vCPU is assigned elsewhere the pool tells the holder to send it (``NullSend``, an
intra-pool migration).

Ordering and determinism. Assignment changes made by the toolstack (insert, remove, affinity)
are decided at once, in call order, and delivered at the next epoch boundary (at once when the
command runs on a boundary, as domain creation at t=0 does). The wait queue is FIFO in
insertion order; a freed pCPU scans it soft-affinity step first. Sets are iterated sorted.
Deviations from Xen: a pCPU freed between boundaries picks up its waiter at the next boundary
(Xen: at once, under the waitqueue lock); cpupool CPU hot-unplug is not modelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from hosts.clock import NEVER
from hosts.domain import DomainInfo
from hosts.sched.affinity import NO_CPUS, balance_mask, dom_affinity, has_soft_affinity
from hosts.sched.base import Decision, PcpuScheduler, PoolScheduler, SchedContext, SchedulerEntry, UnitRecord, register, unknown
from hosts.sched.null_params import NullParams
from hosts.sched.messages import GiveFailed, Instruction, NullAssign, NullSend, NullSummary, NullView, PoolMsg, StealRequest
from hosts.vcpu import make_vid, vid_idx

if TYPE_CHECKING:  # pragma: no cover
    from hosts.vcpu import VcpuState

Out = dict[int, list[Instruction]]


class NullUnit(UnitRecord):
    """Per-unit data (``struct null_unit``): where a pending send takes the vCPU."""

    FIELDS = ("target",)
    __slots__ = FIELDS

    def __init__(self, target: int = -1) -> None:
        self.target = target


def unit(v: "VcpuState") -> NullUnit:
    """The null record of a vCPU held by a null pCPU."""
    u: NullUnit = v.sched  # typed without a call to cast (hot path)
    return u


class NullPcpu:
    """Per-pCPU data (``struct null_pcpu``): the vCPU assigned here (-1: free)."""

    __slots__ = ("assigned",)

    def __init__(self) -> None:
        self.assigned = -1


def pick_res(cur: int, vid: int, hard: frozenset[int], soft: frozenset[int], pool: frozenset[int], free: frozenset[int], owner_of_cur: int) -> int:
    """null.c pick_res: stay on ``cur`` if it is free (or ours) and in affinity, else the first
    free pCPU in affinity (soft step first), else any pCPU of the hard affinity."""
    use_soft = has_soft_affinity(hard, soft, pool)
    for step in (0, 1):
        if step == 0 and not use_soft:
            continue
        mask = balance_mask(step, hard, soft) & pool
        if owner_of_cur in (-1, vid) and cur in mask:
            return cur
        cands = mask & free
        if cands:
            return min(cands)
    return min(hard & pool) if hard & pool else min(pool)


class NullScheduler(PcpuScheduler):
    name = "null"
    unit_type = NullUnit
    timeless_summary = True
    params: NullParams

    def __init__(self, ctx: SchedContext, params: NullParams) -> None:
        super().__init__(ctx, params)
        self.pc = NullPcpu()

    # --- ops table -----------------------------------------------------------------------
    def insert(self, v: "VcpuState", stolen: bool = False) -> None:
        if not isinstance(v.sched, NullUnit):
            v.sched = NullUnit()
        v.sched.target = -1
        if v.vid == self.pc.assigned and v.runnable() and self.ctx.curr is not v:
            self.ctx.raise_softirq()

    def remove(self, v: "VcpuState") -> None:
        """The record leaves; the assignment stays until the pool half says otherwise (it
        frees the pCPU when the domain leaves the pool, not when a record is taken off)."""

    def wake(self, v: "VcpuState", migrating: bool = False) -> None:
        if self.ctx.curr is not v and v.vid == self.pc.assigned:
            self.ctx.raise_softirq()

    def do_schedule(self, now: int, curr: "VcpuState | None") -> Decision:
        v = self.ctx.vcpus.get(self.pc.assigned) if self.pc.assigned >= 0 else None
        if v is None or not v.runnable():
            return Decision(None, -1)
        return Decision(v, -1)

    def pick_pcpu(self, v: "VcpuState", commit: bool) -> int:
        u = v.sched
        if isinstance(u, NullUnit) and u.target >= 0:
            return u.target
        hard, soft = self.affinity(v)
        me = self.ctx.pcpu
        cur = v.last_pcpu if v.last_pcpu in self.pool else me
        x = self.ctx.view.extra
        free = frozenset(x.free) if type(x) is NullView else NO_CPUS
        if cur == me:
            owner = self.pc.assigned
        else:
            owner = -1 if cur in free else -2
        return pick_res(cur, v.vid, hard, soft, self.pool, free, owner)

    def apply_pool(self, instr: Instruction) -> None:
        match instr:
            case NullAssign():
                self.pc.assigned = instr.vid
                self.ctx.raise_softirq()
            case NullSend():
                v = self.ctx.vcpus.get(instr.vid)
                if v is not None and instr.to_pcpu != self.ctx.pcpu:
                    if not isinstance(v.sched, NullUnit):
                        v.sched = NullUnit()
                    v.sched.target = instr.to_pcpu
                    self.ctx.set_migrating(v)
            case _:
                raise unknown("pCPU half", self.name, instr)

    def summary(self) -> NullSummary:
        return NullSummary(self.pc.assigned)

    def dump(self) -> dict[str, Any]:
        return {"assigned": self.pc.assigned}


class NullPool(PoolScheduler[NullSummary]):
    """Pool-wide data (``struct null_private``): the assignment and the wait queue."""

    name = "null"
    params: NullParams

    def __init__(self, params: NullParams, cpus: tuple[int, ...], start_ns: int = 0) -> None:
        super().__init__(params, cpus, start_ns)
        self.owner: dict[int, int] = {}  # pCPU -> assigned vid
        self.where: dict[int, int] = {}  # vid -> assigned pCPU
        self.waitq: list[int] = []
        self.told: dict[int, int] = {}  # pCPU -> the assignment it was last told
        self.sent: dict[int, int] = {}  # vid -> pCPU a send was issued for
        self.dirty = False

    # --- helpers ---------------------------------------------------------------------------
    def _free(self) -> frozenset[int]:
        return frozenset(c for c in self.cpus if c not in self.owner)

    def _assign(self, vid: int, cpu: int) -> None:
        self.owner[cpu] = vid
        self.where[vid] = cpu
        self.dirty = True

    def _deassign(self, vid: int) -> None:
        """unit_deassign: free the pCPU and hand it to the first suitable waiter."""
        cpu = self.where.pop(vid, None)
        if cpu is None:
            return
        del self.owner[cpu]
        self.dirty = True
        for step in (0, 1):
            for w in self.waitq:
                hard, soft = self.masks(w)
                if step == 0 and not has_soft_affinity(hard, soft, self.pool):
                    continue
                if cpu in balance_mask(step, hard, soft) & self.pool:
                    self.waitq.remove(w)
                    self._assign(w, cpu)
                    return

    def _insert(self, vid: int, cur: int) -> int:
        """null_unit_insert: pick_res, then assign if free, else wait."""
        hard, soft = self.masks(vid)
        cpu = pick_res(cur, vid, hard, soft, self.pool, self._free(), self.owner.get(cur, -1))
        if cpu not in self.owner:
            self._assign(vid, cpu)
        elif vid not in self.waitq:
            self.waitq.append(vid)
        return cpu

    # --- domain table ----------------------------------------------------------------------
    def add_domain(self, dom: DomainInfo) -> None:
        self.set_affinity(dom)

    def adjust(self, dom: DomainInfo) -> None:
        """A new hard affinity that excludes the assigned pCPU moves the vCPU
        (null_unit_migrate: deassign, then assign to a free pCPU or wait)."""
        for i in range(dom.nr_vcpus):
            vid = make_vid(dom.uid, i)
            if vid not in self.affinity:
                continue
            hard, soft = self.affinity[vid] = dom_affinity(dom, i, self.pool)
            cpu = self.where.get(vid)
            if cpu is not None and cpu not in hard:
                self._deassign(vid)
                self._insert(vid, cpu)

    def remove_domain(self, dom: DomainInfo) -> None:
        for i in range(dom.nr_vcpus):
            vid = make_vid(dom.uid, i)
            if vid in self.waitq:
                self.waitq.remove(vid)
            self._deassign(vid)
            self.affinity.pop(vid, None)
            self.sent.pop(vid, None)

    def on_msg(self, src: int, payload: PoolMsg) -> None:
        match payload:
            case GiveFailed():
                self.dirty = True
            case _:
                raise unknown("pool half", self.name, payload)

    # --- placement and boundary --------------------------------------------------------------
    def place(self, vid: int, hint: int, summaries: Mapping[int, NullSummary | None], domain: DomainInfo) -> int:
        if vid not in self.affinity:
            self.affinity[vid] = dom_affinity(domain, vid_idx(vid), self.pool)
        self.dirty = True
        if vid in self.where:  # placed again while still assigned (a failed migration)
            return self.where[vid]
        return self._insert(vid, hint if hint in self.pool else min(self.pool))

    def next_due(self, now: int) -> int:
        return now if self.dirty else NEVER

    def view_extra(self) -> NullView:
        return NullView(tuple(sorted(self._free())))

    def boundary(self, now: int, summaries: Mapping[int, NullSummary | None], steal_reqs: Sequence[StealRequest], first_round: bool) -> Out:
        out: Out = {}
        if not self.dirty:
            return out
        self.dirty = False
        for cpu in self.cpus:
            want = self.owner.get(cpu, -1)
            if self.told.get(cpu, -1) != want:
                self.told[cpu] = want
                out.setdefault(cpu, []).append(NullAssign(want))
        for vid, cpu in sorted(self.where.items()):
            try:
                holder = self.locate(vid)
            except KeyError:
                continue  # not placed yet (or in flight to another host)
            if holder == cpu:
                self.sent.pop(vid, None)
            elif self.sent.get(vid) != cpu:
                self.sent[vid] = cpu
                out.setdefault(holder, []).append(NullSend(vid, cpu))
        return out

    def dump(self) -> dict[str, Any]:
        return {"owner": dict(self.owner), "waitq": list(self.waitq)}


ENTRY = register(
    SchedulerEntry(
        name="null",
        sched_id=9,
        params=NullParams,
        pcpu=NullScheduler,
        pool=NullPool,
        summary="static vCPU -> pCPU assignment with a wait queue, no time slices",
    )
)

__all__ = ["ENTRY", "NullParams", "NullScheduler", "NullPool"]
