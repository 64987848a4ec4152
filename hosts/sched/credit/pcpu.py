"""Credit's per-pCPU half: runqueue, burn, boost, tick, tickle and the accounting tail.

What it does. One :class:`CreditScheduler` per pCPU keeps that pCPU's runqueue (by priority,
FIFO within one), burns the running vCPU's credit, boosts waking UNDER vCPUs, runs the 10 ms
tick, tickles pCPUs on wake-ups and asks the pool half for a steal when its best choice is
OVER or idle. See the package comment for the algorithm.

Which function does each step: ``do_schedule`` (csched_schedule), ``wake`` and ``_tickle``
(csched_unit_wake, __runq_tickle), ``timer('tick')`` (csched_tick -> csched_unit_acct,
csched_runq_sort), ``pick_pcpu`` (csched_res_pick through ``records.cpu_pick``),
``apply_pool`` (``CreditAcct``: the per-unit tail of csched_acct), ``summary``
(``CreditSummary`` for accounting and stealing).

Ordering and determinism. Everything here depends only on this pCPU's state and its view of
the pool (idlers, sort epoch) as of the last boundary plus its own tickles.
"""

from __future__ import annotations

from typing import Any, Final, TYPE_CHECKING

from hosts.clock import MS, US
from hosts.sched.affinity import Masks, balance_mask, cycle, has_soft_affinity
from hosts.sched.base import Decision, PcpuScheduler, SchedContext, unknown
from hosts.sched.credit.params import CREDITS_PER_MSEC, FLAG_MIGRATING, FLAG_PARKED, FLAG_PINNED, FLAG_YIELD, MIN_TIMER_NS, PRI_BOOST, PRI_IDLE, PRI_NAMES, PRI_OVER, PRI_UNDER, CreditParams
from hosts.sched.credit.records import CreditPcpu, CreditVcpu, cpu_pick
from hosts.sched.messages import CreditAcct, CreditAcctCredit, CreditAcctStart, CreditAcctStop, CreditQueued, CreditSummary, Instruction
from hosts.tracelog import TRC_CSCHED_BOOST_END, TRC_CSCHED_BOOST_START, TRC_CSCHED_PICKED_CPU, TRC_CSCHED_RATELIMIT, TRC_CSCHED_SCHEDULE, TRC_CSCHED_TICKLE

if TYPE_CHECKING:  # pragma: no cover
    from hosts.vcpu import VcpuState


#: builds a NamedTuple without its Python-level __new__ (summaries are built at every step)
_new: Final = tuple.__new__


class CreditScheduler(PcpuScheduler):
    name = "credit"
    unit_type = CreditVcpu
    timeless_summary = True
    keeps_record = True  # the runqueue and the affinity cache let go of a vCPU that leaves
    params: CreditParams

    def __init__(self, ctx: SchedContext, params: CreditParams) -> None:
        super().__init__(ctx, params)
        p = params
        ticks = p.ticks_per_tslice if p.tslice_ms >= p.ticks_per_tslice else 1
        self.tslice = p.tslice_ms * MS
        self.tick_period = p.tslice_ms * 1000 // ticks * US
        self.credits_per_tslice = CREDITS_PER_MSEC * p.tslice_ms
        self.credits_per_tick = self.credits_per_tslice // ticks
        self.ratelimit = min(p.ratelimit_us * US, self.tslice)
        self.lb_ratelimit = p.load_balance_ratelimit_us * US
        self.migr_delay = p.vcpu_migration_delay_us * US
        self.timestamp_acct = p.accounting == "timestamp"
        self.boost = p.boost
        self.pc = CreditPcpu()
        # read once: on the engine these are reached through a protocol (slow attribute reads)
        self.me = ctx.pcpu
        self.view = ctx.view  # the engine mutates its view, never replaces it
        self.tickle_one = p.tickle_one_idle
        self._aff_cache: dict[int, Masks] = {}
        self._summary: CreditSummary | None = None
        # init_pdata arms the ticker at NOW() + tick.
        self.pc.tick_armed = True
        ctx.set_timer("tick", ctx.now + self.tick_period)

    # --- helpers -------------------------------------------------------------------------
    def _aff(self, v: "VcpuState") -> Masks:
        a = self._aff_cache.get(v.vid)
        if a is None:
            a = self._aff_cache[v.vid] = self.affinity(v)
        return a

    def _set_pinned(self, v: "VcpuState") -> None:
        self._aff_cache.pop(v.vid, None)
        u: CreditVcpu = v.sched
        if len(self._aff(v)[0]) == 1:
            u.flags |= FLAG_PINNED
        else:
            u.flags &= ~FLAG_PINNED

    def _burn(self, u: CreditVcpu, now: int) -> None:
        """burn_credits: 10 credits per ms run, with the ns residual."""
        if not self.timestamp_acct:
            return
        delta = now - u.start_time
        if delta <= 0:
            return
        val = delta * CREDITS_PER_MSEC + u.residual
        credits, u.residual = divmod(val, MS)
        u.credit -= credits
        u.start_time += credits * MS // CREDITS_PER_MSEC

    def _runq_insert(self, v: "VcpuState") -> None:
        """__runq_insert: by priority, FIFO within one; a yielder goes behind one more."""
        runq = self.pc.runq
        u: CreditVcpu = v.sched
        pri = u.pri
        i = 0
        n = len(runq)
        while i < n and runq[i].sched.pri >= pri:
            i += 1
        if u.flags & FLAG_YIELD and i < n:
            i += 1
        runq.insert(i, v)

    def _tickle(self, v: "VcpuState") -> None:
        """__runq_tickle for ``v`` just queued on this pCPU."""
        ctx = self.ctx
        me = self.me
        u: CreditVcpu = v.sched
        cur = ctx.curr
        cur_pri = PRI_IDLE
        if cur is not None:
            cu: CreditVcpu = cur.sched
            cur_pri = cu.pri
        view = self.view
        idle_mask = view.idlers & self.pool
        hard, soft = self._aff(v)
        mask: list[int] = []
        if u.flags & FLAG_PINNED and me in idle_mask:
            mask = [me]
        elif cur_pri == PRI_IDLE or (not idle_mask and u.pri > cur_pri):
            mask = [me]
        elif idle_mask:
            use_soft = has_soft_affinity(hard, soft, self.pool)
            for step in (0, 1):
                if step == 0 and not use_soft:
                    continue
                cands = balance_mask(step, hard, soft) & idle_mask
                if not cands and step == 0:
                    continue
                if not cands and u.pri > cur_pri:
                    # Xen would "kick cur away" here, but tests the waker's own hard
                    # affinity against the idle mask, which is empty on this branch: dead
                    # since 4.13 (see the reference, section 2.8). Tickle this pCPU only.
                    mask = [me]
                elif cands:
                    if self.tickle_one:
                        self.pc.last_tickle_cpu = cycle(self.pc.last_tickle_cpu, cands)
                        mask = [self.pc.last_tickle_cpu]
                    else:
                        mask = sorted(cands)
                if mask:
                    break
        if ctx.tracing:
            for c in mask:
                ctx.trace(TRC_CSCHED_TICKLE, c)
        for c in mask:
            view.idlers.discard(c)
            ctx.tickle(c)

    # --- ops table -----------------------------------------------------------------------
    def insert(self, v: "VcpuState", stolen: bool = False) -> None:
        if not isinstance(v.sched, CreditVcpu):
            v.sched = CreditVcpu.from_wire(v.sched) if v.sched else CreditVcpu()
        self._set_pinned(v)
        if stolen:
            # csched_runq_steal: the stolen unit runs next here, straight from the peer.
            self.pc.runq.insert(0, v)
            self.pc.nr_runnable += 1
            self.pc.steal_pending = True
            self.ctx.raise_softirq()
        elif v.runnable() and self.ctx.curr is not v:
            self._runq_insert(v)
            self.pc.nr_runnable += 1

    def remove(self, v: "VcpuState") -> None:
        u = v.sched
        if v in self.pc.runq:
            self.pc.runq.remove(v)
            self.pc.nr_runnable -= 1
        self._aff_cache.pop(v.vid, None)
        if isinstance(u, CreditVcpu) and u.active:
            u.active = False
            self.ctx.pool_msg(CreditAcctStop(v.vid))

    def migrate(self, v: "VcpuState", new_pcpu: int) -> None:
        if v in self.pc.runq:
            self.pc.runq.remove(v)
            self.pc.nr_runnable -= 1
        self._aff_cache.pop(v.vid, None)

    def wake(self, v: "VcpuState", migrating: bool = False) -> None:
        u: CreditVcpu = v.sched
        if self.ctx.curr is v or v in self.pc.runq:
            return
        was_migrating = bool(u.flags & FLAG_MIGRATING) or migrating
        u.flags &= ~FLAG_MIGRATING
        if self.boost and not was_migrating and u.pri == PRI_UNDER and not u.flags & FLAG_PARKED:
            if self.ctx.tracing:
                self.ctx.trace(TRC_CSCHED_BOOST_START, *self.ctx.trace_dom(v))
            u.pri = PRI_BOOST
        self._runq_insert(v)
        self.pc.nr_runnable += 1
        self._tickle(v)

    def sleep(self, v: "VcpuState") -> None:
        if self.ctx.curr is v:
            self.ctx.raise_softirq()
        elif v in self.pc.runq:
            self.pc.runq.remove(v)
            self.pc.nr_runnable -= 1

    def yield_(self, v: "VcpuState") -> None:
        v.sched.flags |= FLAG_YIELD

    def adjust_affinity(self, v: "VcpuState") -> None:
        self._set_pinned(v)

    def pick_pcpu(self, v: "VcpuState", commit: bool) -> int:
        hard, soft = self._aff(v)
        me = self.me
        cur = v.last_pcpu if v.last_pcpu >= 0 else me
        runq_idle = not self.pc.runq if cur == me else False
        cpu = cpu_pick(cur, hard, soft, self.pool, self.view.idlers, runq_idle)
        if commit:
            v.sched.flags |= FLAG_MIGRATING
        if self.ctx.tracing:
            self.ctx.trace(TRC_CSCHED_PICKED_CPU, *self.ctx.trace_dom(v), cpu)
        return cpu

    def do_schedule(self, now: int, curr: "VcpuState | None") -> Decision:
        pc = self.pc
        ctx = self.ctx
        if ctx.tracing:  # {cpu:16, tasklet:8, idle:8}
            ctx.trace(TRC_CSCHED_SCHEDULE, self.me | (1 << 24 if curr is None else 0))
        if curr is not None:
            u: CreditVcpu = curr.sched
            runtime = now - curr.state_entry_ns
            if runtime < 0:
                runtime = 0
            self._burn(u, now)
            u.start_time -= now
            u.last_sched_time = now
            if not u.flags & FLAG_YIELD and self.ratelimit and curr.runnable() and runtime < self.ratelimit and not pc.steal_pending:
                u.start_time += now
                tslice = self.ratelimit - runtime
                if runtime < MIN_TIMER_NS:
                    tslice = MIN_TIMER_NS
                if ctx.tracing:  # {unit:16, dom:16}, runtime
                    ctx.trace(TRC_CSCHED_RATELIMIT, ctx.trace_id(curr), runtime)
                return Decision(curr, tslice)
            if curr.runnable():
                self._runq_insert(curr)
            else:
                pc.nr_runnable -= 1
            u.flags &= ~FLAG_YIELD
        pc.steal_pending = False
        snext = pc.runq[0] if pc.runq else None
        su: CreditVcpu | None = snext.sched if snext is not None else None
        snext_pri = su.pri if su is not None else PRI_IDLE
        if snext_pri <= PRI_OVER and now - pc.last_load_balance > self.lb_ratelimit:
            pc.last_load_balance = now
            ctx.request_steal(snext_pri)
        if su is not None:
            del pc.runq[0]
            su.start_time += now
            self.view.idlers.discard(self.me)
        else:
            self.view.idlers.add(self.me)
        # Stop the tick when going idle, restart it aligned to a tick when leaving idle.
        if curr is not None and snext is None and pc.tick_armed:
            ctx.stop_timer("tick")
            pc.tick_armed = False
        if curr is None and snext is not None and not pc.tick_armed:
            ctx.set_timer("tick", now + self.tick_period - now % self.tick_period)
            pc.tick_armed = True
        return Decision(snext, -1 if snext is None else self.tslice)

    def timer(self, name: str, now: int) -> None:
        if name != "tick":
            return
        pc = self.pc
        ctx = self.ctx
        pc.tick += 1
        curr = ctx.curr
        if curr is not None:
            u: CreditVcpu = curr.sched
            if u.pri == PRI_BOOST:
                u.pri = PRI_UNDER
                if ctx.tracing:
                    ctx.trace(TRC_CSCHED_BOOST_END, *ctx.trace_dom(curr))
            if self.timestamp_acct:
                self._burn(u, now)
            else:
                u.credit -= self.credits_per_tick
            if not u.active:
                u.active = True
                ctx.pool_msg(_new(CreditAcctStart, (curr.vid,)))
            else:
                new_cpu = self.pick_pcpu(curr, commit=False)
                if new_cpu != self.me:
                    ctx.set_migrating(curr)
        # csched_runq_sort: once per accounting epoch, move UNDER/BOOST ahead of OVER.
        if self.view.epoch != pc.runq_sort_last:
            pc.runq_sort_last = self.view.epoch
            pc.runq[:] = [v for v in pc.runq if v.sched.pri >= PRI_UNDER] + [v for v in pc.runq if v.sched.pri < PRI_UNDER]
        ctx.set_timer("tick", now + self.tick_period)

    def summary(self) -> CreditSummary:
        curr = self.ctx.curr
        pc = self.pc
        runq = pc.runq
        cvid = -1
        cpri = PRI_IDLE
        if curr is not None:
            cvid = curr.vid
            cu: CreditVcpu = curr.sched
            cpri = cu.pri
        # one per command: the last one again when nothing in it changed (the usual case)
        last = self._summary
        if last is not None and last[0] == cvid and last[1] == cpri and last[3] == pc.nr_runnable and len(last[2]) == len(runq):
            same = True
            i = 0
            for q in last[2]:
                v = runq[i]
                u: CreditVcpu = v.sched
                if q[0] != v.vid or q[1] != u.pri or q[2] != u.last_sched_time:
                    same = False
                    break
                i += 1
            if same:
                return last
        queued = []
        for v in runq:
            u = v.sched
            e = u.queued
            # a unit's entry changes only when it is scheduled or its priority does
            if e is None or e[0] != v.vid or e[1] != u.pri or e[2] != u.last_sched_time:
                e = u.queued = _new(CreditQueued, (v.vid, u.pri, u.last_sched_time))
            queued.append(e)
        self._summary = last = _new(CreditSummary, (cvid, cpri, tuple(queued), pc.nr_runnable))
        return last

    def apply_pool(self, instr: Instruction) -> None:
        if type(instr) is not CreditAcct:
            raise unknown("pCPU half", self.name, instr)
        self._acct(instr)

    def _acct(self, m: CreditAcct) -> None:
        """The per-unit tail of csched_acct for one vCPU held here."""
        v = self.ctx.vcpus.get(m.vid)
        if v is None:
            return
        u: CreditVcpu = v.sched
        if not u.active:
            return
        S = self.credits_per_tslice
        u.credit += m.incr
        credit = u.credit
        if credit < 0:
            u.pri = PRI_OVER
            if m.capped and credit < -m.cap_thr and not u.flags & FLAG_PARKED:
                u.flags |= FLAG_PARKED
                self.ctx.park(v)
            if credit < -S:
                u.credit = credit = -S
        else:
            u.pri = PRI_UNDER
            if u.flags & FLAG_PARKED:
                self.ctx.unpark(v)  # wakes without boost: PARKED is cleared only after
                u.flags &= ~FLAG_PARKED
            if credit > S:
                u.active = False
                self.ctx.pool_msg(CreditAcctStop(m.vid))
                u.credit = credit = credit // 2
        self.ctx.pool_msg(_new(CreditAcctCredit, (credit,)))

    def dump(self) -> dict[str, Any]:
        return {
            "runq": [(v.vid, PRI_NAMES.get(v.sched.pri, v.sched.pri), v.sched.credit) for v in self.pc.runq],
            "nr_runnable": self.pc.nr_runnable,
        }
