"""Credit2's per-pCPU half: the ops table, the decision, tickles and the pool's instructions.

What it does. One :class:`Credit2Scheduler` per pCPU holds the vCPUs assigned to it (its slice
of the runqueue, in credit order, kept by ``runq.Credit2Slice``) and decides over it as
``runq_candidate`` does, seeing the rest of its runqueue as of the last boundary
(``Credit2View``). See the package comment for the algorithm and the emulation of the shared
runqueue.

Which function does each step: ``_candidate`` and ``_remote_first`` (runq_candidate),
``do_schedule`` (csched2_schedule), ``_runtime`` (csched2_runtime), ``wake``, ``sleep``,
``context_saved`` (csched2_unit_wake/sleep, csched2_context_saved: the deferred requeue),
``_tickle``, ``_score`` and ``_cur_info`` (runq_tickle, tickle_score, is_preemptable),
``pick_pcpu`` (csched2_res_pick through ``records.res_pick``), ``apply_pool`` (the pool half's
instructions), ``summary`` (``Credit2Summary``); the budget is in ``caps.Credit2PcpuBudget``.

Ordering and determinism. Everything here depends only on this pCPU's state and the last
view; vCPUs held are scanned in vid order, the runqueue in credit order (FIFO among equals),
busy pCPUs to tickle in id order.
"""

from __future__ import annotations

from typing import Any, Final, TYPE_CHECKING

from hosts.sched.affinity import balance_mask, cycle, has_soft_affinity
from hosts.sched.base import Decision, unknown
from hosts.sched.credit2.caps import Credit2PcpuBudget
from hosts.sched.credit2.params import CREDIT_INIT, CREDIT_RESET, F_DELAYED, F_MIGRATE_REQ, F_PARK_PENDING, F_PARKED, F_PINNED, F_SCHEDULED, F_YIELD, IDLE_CREDIT
from hosts.sched.credit2.params import LOADAVG_GRANULARITY_SHIFT, MAX_TIMER, MIGRATE_COMPENSATION, MIN_TIMER, PULL
from hosts.sched.credit2.records import Credit2Unit, extrapolate, is_preemptable, may_take, res_pick, unit
from hosts.sched.messages import Credit2BudgetSet, Credit2CapOff, Credit2CapOn, Credit2Curr, Credit2Load, Credit2Pulled, Credit2Queued
from hosts.sched.messages import Credit2Reserve, Credit2Reset, Credit2RqMigrate, Credit2Summary, Credit2Untickle, Credit2View, Instruction
from hosts.tracelog import (
    TRC_CSCHED2_PICKED_CPU,
    TRC_CSCHED2_RATELIMIT,
    TRC_CSCHED2_RUNQ_ASSIGN,
    TRC_CSCHED2_RUNQ_CANDIDATE,
    TRC_CSCHED2_SCHEDULE,
    TRC_CSCHED2_TICKLE,
    TRC_CSCHED2_TICKLE_NEW,
    lo_hi,
)

if TYPE_CHECKING:  # pragma: no cover
    from hosts.vcpu import VcpuState


#: builds a NamedTuple without its Python-level __new__ (summaries are built at every step)
_new: Final = tuple.__new__
#: message classes as native constants: a NamedTuple class is otherwise looked up in this
#: module's globals at each use
_Credit2Curr: Final = Credit2Curr
_Credit2Summary: Final = Credit2Summary
_Credit2Queued: Final = Credit2Queued
_Credit2Load: Final = Credit2Load


class Credit2Scheduler(Credit2PcpuBudget):
    """The per-pCPU half of Credit2: the ops table over the slice (``runq.Credit2Slice``)."""

    name = "credit2"

    # --- tickling ------------------------------------------------------------------------------
    def _cur_info(self, cpu: int, now: int) -> tuple[int, bool, bool]:
        """(credit, soft_has_cpu, preemptable) of the vCPU running on cpu; an idle pCPU is
        not preemptable (a plain tuple: mypyc returns it unboxed)."""
        if cpu == self.me:
            cur = self.ctx.curr
            if cur is None:
                return (0, True, False)
            self._burn(cur, now)
            cu: Credit2Unit = cur.sched
            _, soft = self._aff(cur)
            return (cu.credit, (not soft) or cpu in soft, is_preemptable(cur.state_entry_ns, now, self.ratelimit))
        info = self._view().cpu.get(cpu)
        if info is None:
            return (0, True, False)
        credit = extrapolate(self._remote_bonus(info.credit), now - info.ts, self.pc.max_weight, info.weight)
        return (credit, info.soft_ok, is_preemptable(info.entry_ns, now, self.ratelimit))

    def _score(self, v: "VcpuState", cpu: int, now: int) -> int:
        """tickle_score."""
        credit, cur_soft_ok, preemptable = self._cur_info(cpu, now)
        if not preemptable:
            return -1
        u: Credit2Unit = v.sched
        score = u.credit - credit
        if cpu != u.processor:
            score -= self.resist
        if score > 0:
            _, soft = self._aff(v)
            if not soft or cpu in soft:
                score += CREDIT_INIT
            if not cur_soft_ok:
                score += CREDIT_INIT
        return score

    def _tickle(self, v: "VcpuState", now: int) -> None:
        """runq_tickle for v just queued here (this pCPU is its processor)."""
        self._fresh_view()
        ctx = self.ctx
        me = self.me
        u: Credit2Unit = v.sched
        pc = self.pc
        if self.tracing:  # {unit:16, dom:16}, processor, credit
            ctx.trace(TRC_CSCHED2_TICKLE_NEW, ctx.trace_id(v), u.processor, u.credit)
        hard, soft = self._aff(v)
        # the runqueue's untickled pCPUs in id order, idle (Xen's rqd->idle: the others as of
        # the last view, this one as it is now) or busy
        me_idle = ctx.curr is None
        view_idle = self.pview.idlers
        tickled = pc.tickled
        idle: list[int] = []
        busy_all: list[int] = []
        for c in self.rq_list:
            if c in tickled:
                continue
            if (me_idle if c == me else c in view_idle):
                idle.append(c)
            else:
                busy_all.append(c)
        ipid = -1
        if u.flags & F_PINNED and me in idle:
            ipid = me
        else:
            use_soft = has_soft_affinity(hard, soft, self.pool)
            for step in (0, 1):
                if step == 0 and not use_soft:
                    continue
                mask = balance_mask(step, hard, soft)  # within the pool: _aff cuts hard to it
                cands = [c for c in idle if c in mask]  # no SMT: every idle, untickled pCPU is a fully idle core
                if cands:
                    ipid = me if me in cands else cycle(me, cands)
                    break
            if ipid < 0:
                busy = [c for c in busy_all if c in hard]
                best = 0
                if me in busy:
                    s = self._score(v, me, now)
                    if s > best:
                        best, ipid = s, me
                        if not soft or me in soft:
                            busy = []
                for c in busy:
                    if c == me:
                        continue
                    s = self._score(v, c, now)
                    if s > best:
                        best, ipid = s, c
        if ipid < 0:
            self._ring()  # it waits: the pool may know of an idle pCPU the view does not show
            return
        if self.tracing:  # {cpu:16, pad:16}
            ctx.trace(TRC_CSCHED2_TICKLE, ipid)
        pc.tickled.add(ipid)
        u.tickled_cpu = ipid
        if ipid == me:
            self._kick()
        else:
            self._tickle_cpu(ipid)
            self._ring()

    # --- ops table -------------------------------------------------------------------------------
    def insert(self, v: "VcpuState", stolen: bool = False) -> None:
        now = self.ctx.now
        self._acc(now)
        self._held_moved = True
        pc = self.pc
        me = self.me
        if isinstance(v.sched, Credit2Unit):
            u = v.sched
        elif v.sched:
            u = v.sched = Credit2Unit.from_wire(v.sched)
        else:
            u = v.sched = Credit2Unit()
            u.avgload = 1 << (self.P - 1)  # new units start at 50 % load
            u.load_last_update = now >> LOADAVG_GRANULARITY_SHIFT
            u.processor = me
            u.rq = pc.rq
            u.gen = pc.gen
            d = self.doms.get(v.dom)
            u.budget = 0 if d is not None and d.cap else None
        u.on_runq = False
        u.flags &= ~(F_SCHEDULED | F_DELAYED | F_PARK_PENDING)
        if u.rq != pc.rq:
            u.rq = pc.rq  # _runq_assign: a new runqueue, its own reset numbers
            u.gen = pc.gen
            if self.tracing:  # {unit:16, dom:16}, {rqi:16}
                self.ctx.trace(TRC_CSCHED2_RUNQ_ASSIGN, self.ctx.trace_id(v), pc.rq)
        elif u.gen < pc.gen:
            self._catch_up(u, pc.gen)
        if not stolen:
            u.processor = me
        self._set_pinned(v)
        if u.flags & F_PARKED:
            pc.parked.setdefault(v.dom, []).append(v.vid)
        w = self._weight(v)
        if w > pc.max_weight:
            pc.max_weight = w  # update_max_weight
        if stolen:
            self._runq_insert(v)
            if v.vid in pc.pull_expect:
                pc.pull_expect.discard(v.vid)
                pc.pull_bypass = True
            self._raise_softirq()

    def remove(self, v: "VcpuState") -> None:
        self._acc(self.ctx.now)
        self._held_moved = True
        u = v.sched
        if not isinstance(u, Credit2Unit):
            return
        self._runq_remove(v)
        self._forget_parked(v)
        if u.flags & F_PARKED:  # leaving the pool: our pause goes with us
            u.flags &= ~F_PARKED
            self._removing = v.vid
            self.ctx.unpark(v)
            self._removing = -1

    def _forget_parked(self, v: "VcpuState") -> None:
        lst = self.pc.parked.get(v.dom)
        if lst and v.vid in lst:
            lst.remove(v.vid)

    def migrate(self, v: "VcpuState", new_pcpu: int) -> None:
        self._acc(self.ctx.now)
        self._held_moved = True
        self._runq_remove(v)
        self._forget_parked(v)

    def wake(self, v: "VcpuState", migrating: bool = False) -> None:
        if v.vid == self._removing:
            return
        now = self.ctx.now
        self._acc(now)
        u: Credit2Unit = v.sched
        if self.ctx.curr is not v and not u.on_runq:
            if u.flags & F_SCHEDULED:
                u.flags |= F_DELAYED
            else:
                self._svc_load(u, 1, now, True)
                self._runq_insert(v)
                self._tickle(v, now)

    def sleep(self, v: "VcpuState") -> None:
        now = self.ctx.now
        self._acc(now)
        u: Credit2Unit = v.sched
        if self.ctx.curr is v:
            self._raise_softirq()
        elif u.on_runq:
            self._svc_load(u, -1, now, False)
            self._runq_remove(v)
        else:
            u.flags &= ~F_DELAYED

    def yield_(self, v: "VcpuState") -> None:
        u: Credit2Unit = v.sched
        u.flags |= F_YIELD

    def adjust_affinity(self, v: "VcpuState") -> None:
        self._set_pinned(v)

    def context_saved(self, v: "VcpuState") -> None:
        now = self.ctx.now
        self._acc(now)
        u: Credit2Unit = v.sched
        u.flags &= ~F_SCHEDULED
        if u.flags & F_PARK_PENDING:
            u.flags &= ~F_PARK_PENDING
            self._park(v)
        unpark = self._return_budget(v)
        if u.flags & F_DELAYED and v.runnable():
            u.flags &= ~F_DELAYED
            self._runq_insert(v)
            self._tickle(v, now)
        else:
            u.flags &= ~F_DELAYED
            self._svc_load(u, -1, now, False)
        if unpark:
            self._unpark_dom(v.dom)

    def pick_pcpu(self, v: "VcpuState", commit: bool) -> int:
        """csched2_res_pick: the least loaded runqueue of the (soft, then hard) affinity, then
        the next pCPU after the runqueue's pick bias."""
        u: Credit2Unit = v.sched
        hard, soft = self._aff(v)
        if u.migrate_cpu >= 0 and u.migrate_cpu in hard:
            cpu = u.migrate_cpu
            if commit:
                u.migrate_cpu = -1
                u.flags &= ~F_MIGRATE_REQ
            if self.tracing:  # the migrate-request path: no runqueue looked at (rq -1, load STIME_MAX)
                self.ctx.trace(TRC_CSCHED2_PICKED_CPU, *lo_hi((1 << 63) - 1), self.ctx.trace_id(v), 0xFFFF | cpu << 16)
            return cpu
        rqv = self._view().rq
        loads = [rqv[i].load if i in rqv else 0 for i in range(len(self.rqs))]
        if 0 <= u.rq < len(loads):
            loads[u.rq] = max(loads[u.rq] - u.avgload, 0)
        i, mask = res_pick(hard, soft, self.pool, self.rq_sets, loads)
        cpu = cycle(self.pc.pick_bias.get(i, self.rqs[i][0]), mask)
        self.pc.pick_bias[i] = cpu
        if self.tracing:  # b_avgload (the hard-affinity minimum), {unit:16, dom:16}, {rq_id:16, new_cpu:16}
            low = min(load for j, load in enumerate(loads) if hard & self.rq_sets[j])
            self.ctx.trace(TRC_CSCHED2_PICKED_CPU, *lo_hi(low), self.ctx.trace_id(v), i | cpu << 16)
        return cpu

    # --- the decision ----------------------------------------------------------------------------
    def _candidate(self, scurr: "VcpuState | None", now: int, view: Credit2View) -> tuple["VcpuState | None", bool]:
        """runq_candidate over this pCPU's slice; returns (snext, pull) where pull says a vCPU
        waiting on another pCPU would have come first in the shared runqueue."""
        me = self.me
        pc = self.pc
        yield_ = False
        bypass = pc.pull_bypass
        pc.pull_bypass = False
        snext: VcpuState | None = None
        snext_credit = IDLE_CREDIT
        if scurr is not None:
            su: Credit2Unit = scurr.sched
            yield_ = bool(su.flags & F_YIELD)
            su.flags &= ~F_YIELD
            runnable = scurr.runnable() and not su.flags & F_PARK_PENDING
            if not yield_ and not bypass and self.ratelimit and runnable and now - scurr.state_entry_ns < self.ratelimit:
                if self.tracing:  # {unit:16, dom:16}, runtime
                    self.ctx.trace(TRC_CSCHED2_RATELIMIT, self.ctx.trace_id(scurr), now - scurr.state_entry_ns)
                return scurr, False
            soft_aff_preempt = False
            hard, soft = self._aff(scurr)
            if has_soft_affinity(hard, soft, self.pool):
                sm = balance_mask(0, hard, soft)
                if me not in sm:
                    idle = (self._idlers() - pc.tickled) & sm & self.pool
                    soft_aff_preempt = bool(idle - {me})
            if runnable and not soft_aff_preempt:
                snext = scurr
                snext_credit = su.credit
        local = None
        for v in pc.runq:  # left at the first vCPU _grab is tried on (it may park one)
            u: Credit2Unit = v.sched
            if not v.runnable():
                continue
            if me not in self._aff(v)[0]:
                continue
            if not may_take(me, me, u.tickled_cpu, u.processor, u.credit, snext_credit, self.resist):
                continue  # reserved for the pCPU tickled for it, or it resists migrating
            local = u.credit
            if (yield_ or u.credit > snext_credit) and (u.budget is None or self._grab(v, running=False)):
                snext = v
            break
        pull = self._remote_first(view, local, snext_credit, yield_)
        if self.tracing:  # {unit:16, dom:16}, tickled_cpu, credit (the idle unit: -1, IDLE_CREDIT)
            if snext is None:
                self.ctx.trace(TRC_CSCHED2_RUNQ_CANDIDATE, self.ctx.trace_id(None), -1, IDLE_CREDIT)
            else:
                sn: Credit2Unit = snext.sched
                self.ctx.trace(TRC_CSCHED2_RUNQ_CANDIDATE, self.ctx.trace_id(snext), sn.tickled_cpu, sn.credit)
        return snext, pull

    def _remote_first(self, view: Credit2View, local_credit: int | None, snext_credit: int, yield_: bool) -> bool:
        """Would a vCPU queued on another pCPU of this runqueue (as of the last view) come
        before the local choice in runq_candidate's scan, and be taken?"""
        q = view.q.get(self.pc.rq)
        if not q:
            return False
        me = self.me
        held = self.held
        for w in q:
            if w.holder == me or w.vid in held:
                continue
            if w.hard and me not in w.hard:
                continue
            credit = self._remote_bonus(w.credit)
            if not may_take(me, w.holder, w.tickled, w.processor, credit, snext_credit, self.resist):
                continue
            if local_credit is not None and not credit > local_credit:
                return False
            return yield_ or credit > snext_credit
        return False

    def _runtime(self, snext: "VcpuState", u: Credit2Unit, now: int, continuing: bool, remote: int | None) -> int:
        """csched2_runtime; ``remote`` is the best credit waiting on another pCPU (view)."""
        min_time = MIN_TIMER
        if self.ratelimit:
            rl = self.ratelimit
            if continuing:
                rl = snext.state_entry_ns + self.ratelimit - now
            min_time = max(min_time, rl)
        rt_credit = u.credit
        swait: int | None = None
        if self.pc.runq:
            hu: Credit2Unit = self.pc.runq[0].sched
            swait = hu.credit
        if remote is not None and (swait is None or remote > swait):
            swait = remote
        if swait is not None and swait > 0:
            rt_credit = u.credit - swait
        t = self._c2t(rt_credit, snext) if rt_credit > 0 else 0
        if u.budget is not None:
            t = min(u.budget, t)
        if t < min_time:
            t = min_time
        elif t > MAX_TIMER:
            t = MAX_TIMER
        return t

    def do_schedule(self, now: int, curr: "VcpuState | None") -> Decision:
        self._acc(now)
        self._fresh_view()
        view = self._view()
        ctx = self.ctx
        pc = self.pc
        me = self.me
        if self.tracing:  # {cpu:16, rq_id:16}, {tasklet:8, idle:8, smt_idle:8, tickled:8} (no SMT: a core is one pCPU)
            idle = 1 if curr is None else 0
            ctx.trace(TRC_CSCHED2_SCHEDULE, me | pc.rq << 16, idle << 8 | idle << 16 | (1 << 24 if me in pc.tickled else 0))
        pc.tickled.discard(me)
        cu: Credit2Unit | None = None
        if curr is not None:
            cu = curr.sched
            self._burn(curr, now)
            if cu.budget is not None and cu.budget <= 0:
                self._grab(curr, running=True)
        snext, pull = self._candidate(curr, now, view)
        if pull and pc.rang_seq != view.seq:
            pc.rang_seq = view.seq
            self._ring(PULL)
        if snext is not curr and curr is not None and cu is not None and curr.runnable() and not cu.flags & F_PARK_PENDING:
            cu.flags |= F_DELAYED
        if snext is None:
            return Decision(None, -1)
        su: Credit2Unit = cu if snext is curr and cu is not None else snext.sched
        if snext is not curr:
            self._runq_remove(snext)
            su.flags |= F_SCHEDULED
        top = su.credit
        if pc.runq:
            hu: Credit2Unit = pc.runq[0].sched
            top = max(top, hu.credit)
        remote = self._remote_head(view)
        if remote is not None:
            top = max(top, remote)
        if top <= CREDIT_RESET:
            self._reset(now, snext)
            remote = self._remote_head(view)  # the reset applies to what the view shows too
        su.start_time = now
        su.tickled_cpu = -1
        if su.processor != me:
            su.credit += MIGRATE_COMPENSATION
            su.processor = me
        return Decision(snext, self._runtime(snext, su, now, snext is curr, remote))

    def timer(self, name: str, now: int) -> None:
        """Credit2 arms no timers of its own (no tick): decisions carry their runtime."""

    # --- pool instructions -------------------------------------------------------------------------
    def apply_pool(self, instr: Instruction) -> None:
        now = self.ctx.now
        self._acc(now)
        ctx = self.ctx
        match instr:
            case Credit2Reset():
                if instr.rq == self.pc.rq:
                    self._apply_reset(instr.gen, instr.amount, now)
            case Credit2Untickle():
                v = self.held.get(instr.vid)
                if v is not None and unit(v).tickled_cpu != self.me:
                    unit(v).tickled_cpu = -1
                    self._raise_softirq()
            case Credit2Pulled():
                self.pc.pull_expect.add(instr.vid)
            case Credit2RqMigrate():
                v = self.held.get(instr.vid)
                if v is not None:
                    u: Credit2Unit = v.sched
                    u.migrate_cpu = instr.to_pcpu
                    u.flags |= F_MIGRATE_REQ
                    ctx.set_migrating(v)
            case Credit2BudgetSet():
                self._budget_set(instr)
            case Credit2CapOn():
                self._cap_on(instr, now)
            case Credit2CapOff():
                self._cap_off(instr)
            case _:
                raise unknown("pCPU half", self.name, instr)

    def summary(self) -> Credit2Summary:
        ctx = self.ctx
        now = ctx.now
        pc = self.pc
        cur = ctx.curr
        ci = None
        if cur is not None and isinstance(cur.sched, Credit2Unit):
            _, soft = self._aff(cur)
            vid = cur.vid
            credit = self._credit_at(cur, now)
            weight = self._weight(cur)
            entry = cur.state_entry_ns
            soft_ok = (not soft) or self.me in soft
            ci = self._ci  # the last one again while it holds (same instant, nothing ran)
            if ci is None or ci.vid != vid or ci.credit != credit or ci.weight != weight or ci.entry_ns != entry or ci.soft_ok != soft_ok:
                ci = self._ci = _new(_Credit2Curr, (vid, credit, weight, entry, soft_ok))
        if self._dirty:
            self._dirty = False
            self._refresh_parts()
        units, max_w, reserves = self._cached
        load = len(pc.runq) + (1 if cur is not None else 0)  # _load_now()
        area = pc.load_area + load * max(now - pc.load_last_t, 0)
        return _new(_Credit2Summary, (now, pc.rq, pc.gen, ci, self._queued, units, area, load, reserves, max_w, self._held_vids))

    def _refresh_parts(self) -> None:
        """The summary's parts after a hook ran. Each is reused while it holds: a unit's queue
        entry while its fields do, the queue and the held vids while their entries are the same."""
        pc = self.pc
        runq = pc.runq
        last_q = self._queued
        same = len(last_q) == len(runq)
        entries: list[Credit2Queued] = []
        for i, v in enumerate(runq):
            u: Credit2Unit = v.sched
            e = u.queued
            if e is None or e.vid != v.vid or e.credit != u.credit or e.tickled != u.tickled_cpu or e.processor != u.processor:
                e = u.queued = _new(_Credit2Queued, (v.vid, u.credit, u.tickled_cpu, u.processor))
            if same and last_q[i] is not e:
                same = False
            entries.append(e)
        if not same:
            self._queued = tuple(entries)
        vcpus = self.held
        held = self._held_vids
        if self._held_moved or len(held) != len(vcpus):
            # the engine changes its vCPU table only around insert, remove and migrate
            self._held_moved = False
            held = self._held_vids = tuple(sorted(vcpus))
        # per-unit loads matter with several runqueues; demand for budget with caps
        every = len(self.rqs) > 1
        want_units = every
        max_w = 1
        for v in vcpus.values():
            uu = v.sched
            if not isinstance(uu, Credit2Unit):
                continue
            w = self._weight(v)
            if w > max_w:
                max_w = w
            if uu.budget is not None or uu.flags & F_PARKED:
                want_units = True
        units: tuple[Credit2Load, ...] = ()
        if want_units:
            ul = []
            for vid in held:
                v = vcpus[vid]
                uu = v.sched
                if not isinstance(uu, Credit2Unit):
                    continue
                if every or uu.budget is not None or uu.flags & F_PARKED:
                    ul.append(_new(_Credit2Load, (vid, uu.avgload, uu.load_last_update, v.runnable(), bool(uu.flags & F_PARKED), bool(uu.flags & F_MIGRATE_REQ))))
            units = tuple(ul)
        reserves: tuple[Credit2Reserve, ...] = ()
        if pc.reserve:
            reserves = tuple(_new(Credit2Reserve, (uid, r)) for uid, r in sorted(pc.reserve.items()))
        self._cached = (units, max_w, reserves)

    def dump(self) -> dict[str, Any]:
        return {
            "rq": self.pc.rq,
            "gen": self.pc.gen,
            "runq": [(v.vid, v.sched.credit) for v in self.pc.runq],
            "reserve": dict(self.pc.reserve),
            "parked": {k: list(x) for k, x in self.pc.parked.items()},
        }
