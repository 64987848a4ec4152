"""RTDS: Xen's real-time deferrable-server scheduler, as in ``xen/common/sched/rt.c``.

What it does. Preemptive global EDF over the pCPUs of a pool. Every vCPU has a period and a
budget (default 10 ms / 4 ms, each at least 10 us, budget <= period) and an ``extratime``
flag (on by default, as Xen's ``rt_alloc_udata`` sets it). A running vCPU burns its budget in
ns; its deadline is the end of its current period. Priority is ``(priority_level, deadline)``,
lower first: a vCPU that exhausts its budget either refills it and drops one priority level
(extratime on: it may go on running, but behind every vCPU still inside its reservation) or
is *depleted* until its next period (extratime off). At each deadline the budget is refilled,
the level reset to 0 and the deadline moved by whole periods past now; unused budget is kept
while the vCPU blocks within a period and discarded at its end (deferrable server); a vCPU
waking after its deadline is replenished at once. A queued vCPU tickles an idle pCPU of its
affinity (its own first), else the pCPU running the lowest-priority vCPU if it beats it.

When to use it. Reservations: a vCPU with budget B every period P gets B in every P as long
as the pool's total utilisation allows (EDF: any set with sum(B/P) <= 1 on one pCPU). With
extratime off a vCPU never gets more than B/P (the 100 ms / 50 ms burner gets 50 %); with it
on, RTDS is work-conserving. Parameters are per vCPU: a domain's ``sched: {period_us,
budget_us, extratime}`` (all its vCPUs) or ``vcpu_sched: [...]`` (one each).

Which function does each step: ``_burn`` (burn_budget), ``_update_deadline``
(rt_update_deadline), ``_runq_insert``/``_replq_insert`` (runq_insert, replq_insert: runq by
priority, FIFO among equals; depleted queue unordered), ``do_schedule`` (rt_schedule),
``wake``/``sleep``/``context_saved`` (rt_unit_wake/sleep, rt_context_saved: the deferred
requeue), ``timer('repl')`` (repl_timer_handler), ``_tickle`` (runq_tickle), ``pick_pcpu`` and
``RtdsPool.place`` (rt_res_pick), ``RtdsPool.boundary`` (the global part of EDF).

Emulation of the global queue. Xen keeps one runqueue, depleted queue and replenishment queue
for the whole pool under one lock. Here each pCPU holds the runnable vCPUs assigned to it (its
slice of those queues) and keeps their replenishments with its own timer, exactly on time. A
pCPU decides over its slice; the pool half makes the result global: whenever a pCPU rings it
(``ctx.request_steal``: a vCPU queued that cannot run here, a tickle of another pCPU, a pCPU
about to run less than a vCPU queued elsewhere or to idle while one waits), it takes every
pCPU's slice from the summaries and computes what global EDF runs (the m highest-priority
runnable vCPUs, each on a pCPU of its hard affinity: on the pCPU already running it, else an
idle one, its holder's first, else the one running the lowest priority), then moves each of
those vCPUs that waits on another pCPU to its pCPU (``give``) and makes a holder that should
run its own queued vCPU reschedule. A pCPU sees the others' current vCPUs and queued vCPUs as
of the last boundary (``view_extra``) for its tickles. Replenishments falling on a boundary
are done at the boundary before the pool looks (``next_due``).

Ordering and determinism. Priority ties are broken FIFO within a pCPU (as in Xen's list) and by
vCPU id across pCPUs. The pool's assignment scans vCPUs in priority order and pCPUs in id
order. Deviations from Xen: a vCPU queued on one pCPU starts on another at the next epoch
boundary after it could (Xen: at once, by IPI); the replenishment queue is per pCPU, so Xen's
ordering of it by priority (not only deadline: an extratime vCPU at level >= 1 may be
replenished late when a level-0 vCPU with a later deadline sits before it) only applies among
the vCPUs of one pCPU; admission control (newer Xen) is not modelled.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hosts.clock import NEVER, US
from hosts.sched.base import Decision, PcpuScheduler, PoolScheduler, SchedulerEntry, UnitRecord, register
from hosts.sched.messages import Give
from hosts.sched.credit import cycle
from hosts.vcpu import VPF_MIGRATING, make_vid

DEFAULT_PERIOD_US = 10_000
DEFAULT_BUDGET_US = 4_000
MIN_PERIOD_US = 10
MIN_BUDGET_US = 10
UPDATE_LIMIT_SHIFT = 10

F_SCHEDULED = 1 << 1
F_DELAYED = 1 << 2
F_DEPLETED = 1 << 3
F_EXTRA = 1 << 4

Q_NONE = 0
Q_RUN = 1
Q_DEPLETED = 2


class RtdsParams(BaseModel):
    """Parameters of the RTDS scheduler (per pool: none in Xen beyond the name)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["rtds"] = Field("rtds", description="Scheduler name.")


class RtdsVcpuParams(BaseModel):
    """Per-vCPU RTDS parameters (Xen's XEN_DOMCTL_SCHEDOP_putvcpuinfo, in us)."""

    model_config = ConfigDict(extra="forbid")

    period_us: int = Field(DEFAULT_PERIOD_US, ge=MIN_PERIOD_US, le=10**12, description="Period in us (the deadline is the end of each period); at least 10.")
    budget_us: int = Field(DEFAULT_BUDGET_US, ge=MIN_BUDGET_US, description="CPU time guaranteed per period, in us; at least 10 and at most the period.")
    extratime: bool = Field(True, description="May run beyond its budget, behind every vCPU still inside its reservation (Xen's default: on).")

    @model_validator(mode="after")
    def _check(self) -> "RtdsVcpuParams":
        if self.budget_us > self.period_us:
            raise ValueError(f"budget_us ({self.budget_us}) exceeds period_us ({self.period_us})")
        return self


class RtdsUnit(UnitRecord):
    """Per-unit data (``struct rt_unit``); travels with the vCPU between pCPUs."""

    __slots__ = ("period", "budget", "cur_budget", "last_start", "cur_deadline", "level", "flags", "on_q", "on_replq")

    def __init__(self, period: int = DEFAULT_PERIOD_US * US, budget: int = DEFAULT_BUDGET_US * US, extratime: bool = True) -> None:
        self.period = period
        self.budget = budget
        self.cur_budget = 0
        self.last_start = 0
        self.cur_deadline = 0
        self.level = 0
        self.flags = F_EXTRA if extratime else 0
        self.on_q = Q_NONE
        self.on_replq = False

    def restored(self) -> None:
        self.on_replq = bool(self.on_replq)


def higher(a: RtdsUnit, b: RtdsUnit) -> bool:
    """compare_unit_priority(a, b) > 0: a strictly before b."""
    if a.level != b.level:
        return a.level < b.level
    return a.cur_deadline < b.cur_deadline


class RtdsPcpu:
    """Per-pCPU data: this pCPU's slice of the pool's queues."""

    __slots__ = ("runq", "depletedq", "replq", "tickled", "repl_armed", "rang_seq")

    def __init__(self) -> None:
        self.runq: list = []  # vCPUs with budget (or extratime), by priority
        self.depletedq: list = []  # vCPUs without budget, unordered (newest first)
        self.replq: list = []  # vCPUs with a pending replenishment, by priority as in Xen
        self.tickled: set[int] = set()  # pCPUs this pCPU tickled since the last view
        self.repl_armed = NEVER
        self.rang_seq = -1


class RtdsScheduler(PcpuScheduler):
    name = "rtds"

    def __init__(self, ctx, params: RtdsParams):
        super().__init__(ctx, params)
        self.pc = RtdsPcpu()
        self._seen_view = None

    # --- helpers -------------------------------------------------------------------------
    def _new_unit(self, v) -> RtdsUnit:
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

    def _burn(self, v, now: int) -> None:
        """burn_budget."""
        u = v.sched
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
    def _ordered_insert(lst: list, v) -> bool:
        """deadline_queue_insert: before the first strictly lower priority; True if first."""
        u = v.sched
        i = 0
        n = len(lst)
        while i < n and not higher(u, lst[i].sched):
            i += 1
        lst.insert(i, v)
        return i == 0

    def _runq_insert(self, v) -> None:
        u = v.sched
        if u.cur_budget > 0 or u.flags & F_EXTRA:
            self._ordered_insert(self.pc.runq, v)
            u.on_q = Q_RUN
        else:
            self.pc.depletedq.insert(0, v)
            u.on_q = Q_DEPLETED

    def _q_remove(self, v) -> None:
        u = v.sched
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

    def _replq_insert(self, v) -> None:
        if v.sched.on_replq:
            return
        self._ordered_insert(self.pc.replq, v)
        v.sched.on_replq = True
        self._arm_repl()

    def _replq_remove(self, v) -> None:
        if not v.sched.on_replq:
            return
        if v in self.pc.replq:
            self.pc.replq.remove(v)
        v.sched.on_replq = False
        self._arm_repl()

    def _replq_reinsert(self, v) -> None:
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

    def _tickle(self, v) -> None:
        """runq_tickle for ``v`` just queued here: an idle pCPU of its affinity (this one
        first), else the one running the lowest priority, if v beats it."""
        self._fresh_view()
        ctx = self.ctx
        me = ctx.pcpu
        u = v.sched
        cur_view = ctx.view.extra.get("cur", {})
        cpus = sorted(self.affinity(v)[0] - self.pc.tickled)
        # cpumask_test_or_cycle from this pCPU, then onwards, wrapping
        order = [c for c in cpus if c >= me] + [c for c in cpus if c < me]
        lowest = None  # ((level, deadline), cpu) of the lowest-priority running vCPU
        target = -1
        for cpu in order:
            if cpu == me:
                cur = ctx.curr
                info = None if cur is None else (cur.sched.level, cur.sched.cur_deadline)
            else:
                info = cur_view.get(cpu)
                info = None if info is None else (info[0], info[1])
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
        self.pc.tickled.add(target)
        if target == me:
            self._kick()
        else:
            ctx.tickle(target)
            self._ring()

    # --- ops table -----------------------------------------------------------------------
    def insert(self, v, stolen: bool = False) -> None:
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
        if v.runnable() and self.ctx.curr is not v:
            self._replq_insert(v)
            self._runq_insert(v)

    def remove(self, v) -> None:
        if isinstance(v.sched, RtdsUnit):
            self._q_remove(v)
            self._replq_remove(v)

    def migrate(self, v, new_pcpu: int) -> None:
        """Leaving for another pCPU: off this pCPU's queues; the flags travel with it."""
        u = v.sched
        if u.on_q == Q_RUN:
            self.pc.runq.remove(v)
        elif u.on_q == Q_DEPLETED:
            self.pc.depletedq.remove(v)
        if u.on_replq and v in self.pc.replq:
            self.pc.replq.remove(v)
            self._arm_repl()

    def sleep(self, v) -> None:
        u = v.sched
        if self.ctx.curr is v:
            self.ctx.raise_softirq()
        elif u.on_q:
            self._q_remove(v)
            self._replq_remove(v)
        else:
            u.flags &= ~F_DELAYED

    def wake(self, v, migrating: bool = False) -> None:
        u = v.sched
        if self.ctx.curr is v or u.on_q:
            return
        now = self.ctx.now
        missed = now >= u.cur_deadline
        if missed:
            self._update_deadline(u, now)
        if u.flags & F_SCHEDULED:
            u.flags |= F_DELAYED
            if missed:
                self._replq_reinsert(v)
            return
        self._replq_insert(v)
        self._runq_insert(v)
        self._tickle(v)

    def context_saved(self, v) -> None:
        u = v.sched
        u.flags &= ~F_SCHEDULED
        if u.flags & F_DELAYED and v.runnable():
            u.flags &= ~F_DELAYED
            self._runq_insert(v)
            self._tickle(v)
        else:
            u.flags &= ~F_DELAYED
            self._replq_remove(v)

    def pick_pcpu(self, v, commit: bool) -> int:
        hard = self.affinity(v)[0]
        cur = v.last_pcpu if v.last_pcpu >= 0 else self.ctx.pcpu
        return cur if cur in hard else cycle(cur, hard)

    def do_schedule(self, now: int, curr) -> Decision:
        self._fresh_view()
        ctx = self.ctx
        me = ctx.pcpu
        pc = self.pc
        pc.tickled.discard(me)
        if curr is not None:
            self._burn(curr, now)
        snext = None
        for v in list(pc.runq):
            if me not in self.affinity(v)[0]:
                continue
            if v.runnable():
                snext = v
                break
            self._q_remove(v)
            self._replq_remove(v)
        if curr is not None and curr.runnable() and curr.sched.cur_budget > 0 and (snext is None or higher(curr.sched, snext.sched)):
            snext = curr
        if snext is not curr and curr is not None and curr.runnable():
            curr.sched.flags |= F_DELAYED
        if len(self.pool) > 1:
            self._maybe_pull(snext)
        if snext is None:
            return Decision(None, -1)
        snext.sched.last_start = now
        if snext is not curr:
            self._q_remove(snext)
            snext.sched.flags |= F_SCHEDULED
        return Decision(snext, snext.sched.cur_budget)

    def _maybe_pull(self, snext) -> None:
        """Ring the pool if a vCPU queued elsewhere (as of the last boundary) should run here."""
        extra = self.ctx.view.extra
        seq = extra.get("seq", -1)
        if seq == self.pc.rang_seq:
            return
        me = self.ctx.pcpu
        for level, deadline, vid, holder, hard in extra.get("q", ()):
            if holder == me or (hard and me not in hard):
                continue
            if snext is None or (level, deadline) < (snext.sched.level, snext.sched.cur_deadline):
                self.pc.rang_seq = seq
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
            u = v.sched
            self._update_deadline(u, now)
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

    def apply_pool(self, instr: tuple) -> None:
        kind = instr[0]
        if kind == "repl":
            self._replenish(self.ctx.now)
        elif kind == "resched":
            self.ctx.raise_softirq()

    def summary(self):
        cur = self.ctx.curr
        ci = None if cur is None else (cur.vid, cur.sched.level, cur.sched.cur_deadline)
        q = tuple((v.vid, v.sched.level, v.sched.cur_deadline) for v in self.pc.runq)
        nxt = self.pc.replq[0].sched.cur_deadline if self.pc.replq else NEVER
        return (ci, q, nxt)

    def udata_to_wire(self, udata) -> dict:
        return udata.to_wire() if isinstance(udata, RtdsUnit) else dict(udata or {})

    def udata_from_wire(self, d: dict):
        return RtdsUnit.from_wire(d) if d else {}

    def dump(self) -> dict:
        return {
            "runq": [(v.vid, v.sched.level, v.sched.cur_deadline, v.sched.cur_budget) for v in self.pc.runq],
            "depletedq": [v.vid for v in self.pc.depletedq],
            "replq": [(v.vid, v.sched.cur_deadline) for v in self.pc.replq],
        }


class RtdsPool(PoolScheduler):
    """Pool-wide part of global EDF (Xen's ``struct rt_private`` queues, seen through the
    pCPUs' summaries)."""

    name = "rtds"

    def __init__(self, params: RtdsParams, cpus: tuple[int, ...], start_ns: int = 0):
        super().__init__(params, cpus, start_ns)
        self.pool = frozenset(cpus)
        self.affinity: dict[int, frozenset] = {}
        self.seq = 0
        self.view: dict = {"seq": 0, "cur": {}, "q": ()}
        self.next_repl: dict[int, int] = {}
        self.inflight: dict[int, int] = {}  # vid -> pCPU it was given to, until it shows up
        self.locate = None

    def _set_aff(self, dom) -> None:
        for i in range(dom.nr_vcpus):
            hard = frozenset(dom.hard_affinity[i]) & self.pool if i < len(dom.hard_affinity) and dom.hard_affinity[i] else self.pool
            self.affinity[make_vid(dom.uid, i)] = hard or self.pool

    def add_domain(self, dom) -> None:
        self._set_aff(dom)

    def adjust(self, dom) -> None:
        self._set_aff(dom)

    def remove_domain(self, dom) -> None:
        for i in range(dom.nr_vcpus):
            vid = make_vid(dom.uid, i)
            self.affinity.pop(vid, None)
            self.inflight.pop(vid, None)

    def on_msg(self, src: int, payload: tuple) -> None:
        if payload[0] == "give_failed":
            self.inflight.pop(payload[1], None)

    def place(self, vid: int, hint: int, summaries: dict, domain) -> int:
        hard = self.affinity.get(vid, self.pool)
        return hint if hint in hard else cycle(hint, hard)

    def next_due(self, now: int) -> int:
        if len(self.cpus) < 2 or not self.next_repl:
            return NEVER
        return min(self.next_repl.values())

    def view_extra(self) -> dict:
        return self.view

    def boundary(self, now: int, summaries: dict, steal_reqs: list, first_round: bool) -> dict[int, list[tuple]]:
        out: dict[int, list[tuple]] = {}
        for c in self.cpus:
            s = summaries.get(c)
            self.next_repl[c] = s[2] if s is not None else NEVER
        if len(self.cpus) < 2:
            return out
        due = [c for c in self.cpus if self.next_repl[c] <= now]
        if due:
            # replenishments falling on this boundary happen before the pool looks
            for c in due:
                out[c] = [("repl",)]
                self.next_repl[c] = NEVER
            return out
        self._assign(summaries, out)
        return out

    def _assign(self, summaries: dict, out: dict[int, list[tuple]]) -> None:
        """Global EDF: the m highest-priority runnable vCPUs, each on a pCPU."""
        running: dict[int, tuple] = {}  # cpu -> (level, deadline, vid)
        units: list[tuple] = []  # (level, deadline, vid, holder, running_on)
        seen: set[int] = set()
        for c in self.cpus:
            s = summaries.get(c)
            if s is None:
                continue
            ci, q, _ = s
            if ci is not None:
                vid, level, dl = ci
                running[c] = (level, dl, vid)
                units.append((level, dl, vid, c, c))
                seen.add(vid)
            for vid, level, dl in q:
                units.append((level, dl, vid, c, -1))
                seen.add(vid)
        for vid in [x for x in self.inflight if x in seen]:
            del self.inflight[vid]
        taken: dict[int, int] = {}
        for vid, c in sorted(self.inflight.items()):
            taken[c] = vid  # given at an earlier round, not arrived yet: it will run there
        units.sort()
        m = len(self.cpus)
        moves: list[tuple[int, int, int]] = []  # (vid, holder, cpu)
        for level, dl, vid, holder, run_on in units:
            if len(taken) >= m:
                break
            if vid in taken.values():
                continue
            if run_on >= 0 and run_on not in taken:
                taken[run_on] = vid
                continue
            cands = sorted(self.affinity.get(vid, self.pool) - set(taken))
            if not cands:
                continue
            idle = [c for c in cands if c not in running]
            if idle:
                cpu = holder if holder in idle else cycle(holder, idle)
            else:
                cpu = max(cands, key=lambda c: (running[c], -c))
                if (level, dl) >= running[cpu][:2]:
                    continue  # beats nobody it may preempt
            taken[cpu] = vid
            if run_on < 0:
                moves.append((vid, holder, cpu))
        for vid, holder, cpu in moves:
            if holder == cpu:
                cur = running.get(cpu)
                if cur is None or cur[2] != vid:
                    out.setdefault(cpu, []).append(("resched",))
            else:
                out.setdefault(holder, []).append(Give(vid, cpu))
                self.inflight[vid] = cpu
        self._refresh_view(running, units)

    def _refresh_view(self, running: dict, units: list) -> None:
        q = tuple((lv, dl, vid, holder, tuple(sorted(self.affinity.get(vid, self.pool))) if self.affinity.get(vid, self.pool) != self.pool else ())
                  for lv, dl, vid, holder, run_on in units if run_on < 0)
        cur = {c: running[c] for c in sorted(running)}
        if cur != self.view["cur"] or q != self.view["q"]:
            self.seq += 1
            self.view = {"seq": self.seq, "cur": cur, "q": q}

    def dump(self) -> dict:
        return {"view": self.view, "inflight": dict(self.inflight)}


ENTRY = register(
    SchedulerEntry(
        name="rtds",
        sched_id=8,
        params=RtdsParams,
        pcpu=RtdsScheduler,
        pool=RtdsPool,
        summary="global EDF with per-vCPU period/budget reservations and extratime (real time)",
        domain_params=RtdsVcpuParams,
    )
)

__all__ = ["RtdsParams", "RtdsVcpuParams", "RtdsScheduler", "RtdsPool"]
