"""RTDS's per-pCPU half: budget burn, deadlines, this pCPU's slice of the queues, tickles.

What it does. One :class:`RtdsScheduler` per pCPU holds the runnable vCPUs assigned to it and
keeps their replenishments with its own timer (``repl``), exactly on time; it decides over its
slice and rings the pool half (``ctx.request_steal``) whenever global EDF may need a vCPU to
move. See the package comment for the algorithm and the emulation of the global queue.

Which function does each step: ``_burn`` (burn_budget), ``_update_deadline``
(rt_update_deadline), ``_runq_insert``/``_replq_insert`` (runq_insert, replq_insert),
``do_schedule`` (rt_schedule), ``wake``/``sleep``/``context_saved`` (rt_unit_wake/sleep,
rt_context_saved: the deferred requeue), ``timer('repl')`` and ``_replenish``
(repl_timer_handler), ``_tickle`` (runq_tickle, from the ``RtdsView``), ``_maybe_pull``,
``pick_pcpu`` (rt_res_pick), ``apply_pool`` (``RtdsReplenish``, ``RtdsResched``).

Ordering and determinism. Queues are by priority, FIFO among equals; replenishments due at
one instant are handled in queue order and their tickles in reverse (Xen's list_add).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from hosts.clock import NEVER, US
from hosts.sched.affinity import cycle
from hosts.sched.base import Decision, PcpuScheduler, SchedContext, unknown
from hosts.sched.messages import Instruction, RtdsPrio, RtdsReplenish, RtdsResched, RtdsSummary, RtdsView
from hosts.sched.rtds.params import (
    DEFAULT_BUDGET_US,
    DEFAULT_PERIOD_US,
    F_DELAYED,
    F_DEPLETED,
    F_EXTRA,
    F_SCHEDULED,
    Q_DEPLETED,
    Q_NONE,
    Q_RUN,
    UPDATE_LIMIT_SHIFT,
    RtdsParams,
)
from hosts.sched.rtds.records import RtdsPcpu, RtdsUnit, higher
from hosts.tracelog import TRC_RTDS_BUDGET_BURN, TRC_RTDS_BUDGET_REPLENISH, TRC_RTDS_RUNQ_PICK, TRC_RTDS_SCHEDULE, TRC_RTDS_TICKLE, lo_hi

if TYPE_CHECKING:  # pragma: no cover
    from hosts.vcpu import VcpuState

#: the view before the pool half sent one
NO_VIEW: Final = RtdsView(-1, {}, ())
_UNSEEN: Final = object()


class RtdsScheduler(PcpuScheduler):
    name = "rtds"
    unit_type = RtdsUnit
    timeless_summary = True
    params: RtdsParams

    def __init__(self, ctx: SchedContext, params: RtdsParams) -> None:
        super().__init__(ctx, params)
        self.pc = RtdsPcpu()
        self._seen_view: object = _UNSEEN

    # --- helpers -------------------------------------------------------------------------
    def _view(self) -> RtdsView:
        x = self.ctx.view.extra
        return x if type(x) is RtdsView else NO_VIEW

    def _new_unit(self, v: "VcpuState") -> RtdsUnit:
        dom = self.ctx.domain(v.dom)
        p = dom.vcpu_sched[v.idx] if v.idx < len(dom.vcpu_sched) and dom.vcpu_sched[v.idx] else {}
        return RtdsUnit(
            int(p.get("period_us", DEFAULT_PERIOD_US)) * US,
            int(p.get("budget_us", DEFAULT_BUDGET_US)) * US,
            bool(p.get("extratime", True)),
        )

    def _fresh_view(self) -> None:
        extra = self.ctx.view.extra
        if extra is not self._seen_view:
            self._seen_view = extra
            self.pc.tickled.clear()

    def _update_deadline(self, u: RtdsUnit, now: int) -> None:
        """rt_update_deadline: move the deadline past now, refill, back to level 0."""
        if u.cur_deadline + (u.period << UPDATE_LIMIT_SHIFT) > now:
            u.cur_deadline += u.period
            while u.cur_deadline <= now:
                u.cur_deadline += u.period
        else:
            u.cur_deadline += ((now - u.cur_deadline) // u.period + 1) * u.period
        u.last_start = now
        u.cur_budget = u.budget
        u.level = 0

    def _trace_repl(self, v: "VcpuState", u: RtdsUnit) -> None:
        """TRC_RTDS_BUDGET_REPLENISH (rt_update_deadline): {unit:16, dom:16}, priority_level,
        cur_deadline, cur_budget."""
        self.ctx.trace(TRC_RTDS_BUDGET_REPLENISH, self.ctx.trace_id(v), u.level, *lo_hi(u.cur_deadline), *lo_hi(u.cur_budget))

    def _burn(self, u: RtdsUnit, now: int) -> None:
        """burn_budget."""
        delta = now - u.last_start
        if delta < 0:
            u.last_start = now
            return
        u.cur_budget -= delta
        u.last_start = now
        if u.cur_budget <= 0:
            if u.flags & F_EXTRA:
                u.level += 1
                u.cur_budget = u.budget
            else:
                u.cur_budget = 0
                u.flags |= F_DEPLETED

    @staticmethod
    def _ordered_insert(lst: list["VcpuState"], v: "VcpuState") -> bool:
        """deadline_queue_insert: before the first strictly lower priority; True if first."""
        u: RtdsUnit = v.sched
        i = 0
        n = len(lst)
        while i < n and not higher(u, lst[i].sched):
            i += 1
        lst.insert(i, v)
        return i == 0

    def _runq_insert(self, v: "VcpuState") -> None:
        u: RtdsUnit = v.sched
        if u.cur_budget > 0 or u.flags & F_EXTRA:
            self._ordered_insert(self.pc.runq, v)
            u.on_q = Q_RUN
        else:
            self.pc.depletedq.insert(0, v)
            u.on_q = Q_DEPLETED

    def _q_remove(self, v: "VcpuState") -> None:
        u: RtdsUnit = v.sched
        if u.on_q == Q_RUN:
            self.pc.runq.remove(v)
        elif u.on_q == Q_DEPLETED:
            self.pc.depletedq.remove(v)
        u.on_q = Q_NONE

    def _arm_repl(self) -> None:
        want = self.pc.replq[0].sched.cur_deadline if self.pc.replq else NEVER
        if want != self.pc.repl_armed:
            self.pc.repl_armed = want
            if want < NEVER:
                self.ctx.set_timer("repl", want)
            else:
                self.ctx.stop_timer("repl")

    def _replq_insert(self, v: "VcpuState") -> None:
        u: RtdsUnit = v.sched
        if u.on_replq:
            return
        self._ordered_insert(self.pc.replq, v)
        u.on_replq = True
        self._arm_repl()

    def _replq_remove(self, v: "VcpuState") -> None:
        u: RtdsUnit = v.sched
        if not u.on_replq:
            return
        if v in self.pc.replq:
            self.pc.replq.remove(v)
        u.on_replq = False
        self._arm_repl()

    def _replq_reinsert(self, v: "VcpuState") -> None:
        if v in self.pc.replq:
            self.pc.replq.remove(v)
        self._ordered_insert(self.pc.replq, v)
        v.sched.on_replq = True
        self._arm_repl()

    def _ring(self) -> None:
        """Ask the pool half to run at the next round (the emulation of Xen's global queue)."""
        self.ctx.request_steal(0)

    def _kick(self) -> None:
        """Make this pCPU reschedule (the engine's softirq loop runs it at this instant, also
        when raised from inside schedule())."""
        self.ctx.raise_softirq()

    def _tickle(self, v: "VcpuState") -> None:
        """runq_tickle for ``v`` just queued here: an idle pCPU of its affinity (this one
        first), else the one running the lowest priority, if v beats it."""
        self._fresh_view()
        ctx = self.ctx
        me = ctx.pcpu
        u: RtdsUnit = v.sched
        cur_view = self._view().cur
        cpus = sorted(self.affinity(v)[0] - self.pc.tickled)
        # cpumask_test_or_cycle from this pCPU, then onwards, wrapping
        order = [c for c in cpus if c >= me] + [c for c in cpus if c < me]
        lowest: tuple[tuple[int, int], int] | None = None  # ((level, deadline), cpu) running lowest
        target = -1
        for cpu in order:
            info: tuple[int, int] | None
            if cpu == me:
                cur = ctx.curr
                if cur is None:
                    info = None
                else:
                    cu: RtdsUnit = cur.sched
                    info = (cu.level, cu.cur_deadline)
            else:
                r = cur_view.get(cpu)
                info = None if r is None else (r.level, r.deadline_ns)
            if info is None:
                target = cpu
                break
            if lowest is None or info > lowest[0]:
                lowest = (info, cpu)
        if target < 0 and lowest is not None and (u.level, u.cur_deadline) < lowest[0]:
            target = lowest[1]
        if target < 0:
            if len(self.pool) > 1:
                self._ring()  # it waits: the pool may find it a pCPU the view does not show
            return
        if ctx.tracing:  # {cpu:16, pad:16}
            ctx.trace(TRC_RTDS_TICKLE, target)
        self.pc.tickled.add(target)
        if target == me:
            self._kick()
        else:
            ctx.tickle(target)
            self._ring()

    # --- ops table -----------------------------------------------------------------------
    def insert(self, v: "VcpuState", stolen: bool = False) -> None:
        now = self.ctx.now
        if isinstance(v.sched, RtdsUnit):
            u = v.sched
        elif v.sched:
            u = v.sched = RtdsUnit.from_wire(v.sched)
        else:
            u = v.sched = self._new_unit(v)
        u.flags &= ~(F_SCHEDULED | F_DELAYED)
        if stolen:
            # a queued vCPU moved here by the pool half: its queues move with it
            on_q, on_replq = u.on_q, u.on_replq
            u.on_q, u.on_replq = Q_NONE, False
            if on_replq:
                self._replq_insert(v)
            if on_q:
                self._runq_insert(v)
            self.ctx.raise_softirq()
            return
        u.on_q, u.on_replq = Q_NONE, False
        if now >= u.cur_deadline:
            self._update_deadline(u, now)
            if self.ctx.tracing:
                self._trace_repl(v, u)
        if v.runnable() and self.ctx.curr is not v:
            self._replq_insert(v)
            self._runq_insert(v)

    def remove(self, v: "VcpuState") -> None:
        if isinstance(v.sched, RtdsUnit):
            self._q_remove(v)
            self._replq_remove(v)

    def migrate(self, v: "VcpuState", new_pcpu: int) -> None:
        """Leaving for another pCPU: off this pCPU's queues; the flags travel with it."""
        u: RtdsUnit = v.sched
        if u.on_q == Q_RUN:
            self.pc.runq.remove(v)
        elif u.on_q == Q_DEPLETED:
            self.pc.depletedq.remove(v)
        if u.on_replq and v in self.pc.replq:
            self.pc.replq.remove(v)
            self._arm_repl()

    def sleep(self, v: "VcpuState") -> None:
        u: RtdsUnit = v.sched
        if self.ctx.curr is v:
            self.ctx.raise_softirq()
        elif u.on_q:
            self._q_remove(v)
            self._replq_remove(v)
        else:
            u.flags &= ~F_DELAYED

    def wake(self, v: "VcpuState", migrating: bool = False) -> None:
        u: RtdsUnit = v.sched
        if self.ctx.curr is v or u.on_q:
            return
        now = self.ctx.now
        missed = now >= u.cur_deadline
        if missed:
            self._update_deadline(u, now)
            if self.ctx.tracing:
                self._trace_repl(v, u)
        if u.flags & F_SCHEDULED:
            u.flags |= F_DELAYED
            if missed:
                self._replq_reinsert(v)
            return
        self._replq_insert(v)
        self._runq_insert(v)
        self._tickle(v)

    def context_saved(self, v: "VcpuState") -> None:
        u: RtdsUnit = v.sched
        u.flags &= ~F_SCHEDULED
        if u.flags & F_DELAYED and v.runnable():
            u.flags &= ~F_DELAYED
            self._runq_insert(v)
            self._tickle(v)
        else:
            u.flags &= ~F_DELAYED
            self._replq_remove(v)

    def pick_pcpu(self, v: "VcpuState", commit: bool) -> int:
        hard = self.affinity(v)[0]
        cur = v.last_pcpu if v.last_pcpu >= 0 else self.ctx.pcpu
        return cur if cur in hard else cycle(cur, hard)

    def do_schedule(self, now: int, curr: "VcpuState | None") -> Decision:
        self._fresh_view()
        ctx = self.ctx
        me = ctx.pcpu
        pc = self.pc
        if ctx.tracing:  # {cpu:16, tasklet:8, tickled:4, idle:4}
            ctx.trace(TRC_RTDS_SCHEDULE, me | (1 << 24 if me in pc.tickled else 0) | (1 << 28 if curr is None else 0))
        pc.tickled.discard(me)
        cu: RtdsUnit | None = None
        if curr is not None:
            cu = curr.sched
            delta = now - cu.last_start
            self._burn(cu, now)
            if ctx.tracing and delta >= 0:  # {unit:16, dom:16}, cur_budget, delta, priority_level, has_extratime
                ctx.trace(TRC_RTDS_BUDGET_BURN, ctx.trace_id(curr), *lo_hi(cu.cur_budget), delta, cu.level, 1 if cu.flags & F_EXTRA else 0)
        snext = None
        for v in list(pc.runq):
            if me not in self.affinity(v)[0]:
                continue
            if ctx.tracing:  # runq_pick: {unit:16, dom:16}, cur_deadline, cur_budget
                vu: RtdsUnit = v.sched
                ctx.trace(TRC_RTDS_RUNQ_PICK, ctx.trace_id(v), *lo_hi(vu.cur_deadline), *lo_hi(vu.cur_budget))
            if v.runnable():
                snext = v
                break
            self._q_remove(v)
            self._replq_remove(v)
        if curr is not None and cu is not None and curr.runnable():
            if cu.cur_budget > 0 and (snext is None or higher(cu, snext.sched)):
                snext = curr
            else:
                cu.flags |= F_DELAYED
        if len(self.pool) > 1:
            self._maybe_pull(snext)
        if snext is None:
            return Decision(None, -1)
        su: RtdsUnit = snext.sched
        su.last_start = now
        if snext is not curr:
            self._q_remove(snext)
            su.flags |= F_SCHEDULED
        return Decision(snext, su.cur_budget)

    def _maybe_pull(self, snext: "VcpuState | None") -> None:
        """Ring the pool if a vCPU queued elsewhere (as of the last boundary) should run here."""
        view = self._view()
        if view.seq == self.pc.rang_seq:
            return
        me = self.ctx.pcpu
        for w in view.q:
            if w.holder == me or (w.hard and me not in w.hard):
                continue
            if snext is None or (w.level, w.deadline_ns) < (snext.sched.level, snext.sched.cur_deadline):
                self.pc.rang_seq = view.seq
                self._ring()
            return

    def timer(self, name: str, now: int) -> None:
        if name == "repl":
            self.pc.repl_armed = NEVER
            self._replenish(now)

    def _replenish(self, now: int) -> None:
        """repl_timer_handler over this pCPU's replenishment queue."""
        pc = self.pc
        done = []
        while pc.replq and now >= pc.replq[0].sched.cur_deadline:
            v = pc.replq.pop(0)
            u: RtdsUnit = v.sched
            self._update_deadline(u, now)
            if self.ctx.tracing:
                self._trace_repl(v, u)
            done.append(v)
            if u.on_q:
                self._q_remove(v)
                self._runq_insert(v)
        for v in reversed(done):  # Xen list_add()s them to a temporary list: last first
            u = v.sched
            if self.ctx.curr is v and pc.runq:
                nxt = pc.runq[0]
                if higher(nxt.sched, u):
                    self._tickle(nxt)
            elif u.flags & F_DEPLETED and u.on_q:
                u.flags &= ~F_DEPLETED
                self._tickle(v)
            else:
                u.flags &= ~F_DEPLETED
            self._ordered_insert(pc.replq, v)
            u.on_replq = True
        self._arm_repl()

    def apply_pool(self, instr: Instruction) -> None:
        match instr:
            case RtdsReplenish():
                self._replenish(self.ctx.now)
            case RtdsResched():
                self.ctx.raise_softirq()
            case _:
                raise unknown("pCPU half", self.name, instr)

    def summary(self) -> RtdsSummary:
        cur = self.ctx.curr
        ci = None
        if cur is not None:
            cu: RtdsUnit = cur.sched
            ci = RtdsPrio(cur.vid, cu.level, cu.cur_deadline)
        q = []
        for v in self.pc.runq:
            u: RtdsUnit = v.sched
            q.append(RtdsPrio(v.vid, u.level, u.cur_deadline))
        nxt = self.pc.replq[0].sched.cur_deadline if self.pc.replq else NEVER
        return RtdsSummary(ci, tuple(q), nxt)

    def dump(self) -> dict[str, Any]:
        return {
            "runq": [(v.vid, v.sched.level, v.sched.cur_deadline, v.sched.cur_budget) for v in self.pc.runq],
            "depletedq": [v.vid for v in self.pc.depletedq],
            "replq": [(v.vid, v.sched.cur_deadline) for v in self.pc.replq],
        }
