"""Credit (credit1): Xen's proportional-share scheduler, as in ``xen/common/sched/credit.c``.

What it does. Every pCPU has its own runqueue ordered by priority (BOOST 0 > UNDER -1 >
OVER -2 > IDLE -64), FIFO within a priority. A running vCPU burns 10 credits per ms of run
time, computed from timestamps with a nanosecond residual (``burn_credits``). Every 30 ms
(``tslice_ms``) the pool's master hands out 300 credits per pCPU among the *active* vCPUs in
proportion to their domain's weight (weight counts per active vCPU) and recomputes priorities
(``CreditPool.account``, Xen's ``csched_acct``): credit >= 0 is UNDER, < 0 is OVER; a capped
domain whose vCPUs fall below the per-vCPU cap threshold is parked (paused) until its credit is
non-negative again; credit is clamped at -300 and a vCPU whose credit exceeds 300 leaves the
active list with its credit halved (it re-enters at a tick that finds it running). A vCPU
waking while UNDER is boosted to BOOST and so preempts CPU hogs; it loses BOOST at the next
10 ms tick that finds it running (``CreditScheduler.tick``). A pCPU whose best local vCPU is
OVER or idle steals a strictly higher-priority queued vCPU from a peer (``csched_load_balance``),
at most once per ``load_balance_ratelimit_us``. A running vCPU keeps its pCPU for at least
``ratelimit_us`` (1 ms) unless it yields or blocks.

When to use it. Credit was Xen's default until 4.12; it remains the scheduler most papers
measure. ``accounting: tick`` reproduces pre-4.2 Xen, which charged 100 credits to whoever was
running at each tick instead of burning from timestamps (the classic tick-dodging experiment).

Which function does each step: ``do_schedule`` (csched_schedule), ``wake`` and ``_tickle``
(csched_unit_wake, __runq_tickle), ``tick`` (csched_tick -> csched_unit_acct,
csched_runq_sort), ``cpu_pick`` (_csched_cpu_pick, flat topology: one socket, no SMT),
``CreditPool.account`` (csched_acct), ``CreditPool.steal`` (csched_load_balance and
csched_runq_steal over per-pCPU summaries), ``apply_pool`` (the per-vCPU tail of csched_acct).

Ordering and determinism. Accounting runs at the first epoch boundary at or after each
multiple of ``tslice_ms`` (the master ticker's period), on the host, from the pool's own state
(weights, active lists, the last credit balance); per-vCPU increments are applied by each pCPU
to the vCPUs it holds, after the messages of the epoch are delivered and before any reschedule
at the boundary. A steal is requested when ``do_schedule`` finds an OVER or idle candidate and
is resolved at the next boundary against the runqueues as they stand there (Xen steals at once
under a trylock), in (request time, pCPU) order; until then the pCPU runs its local choice.
Deviations from Xen, all documented in the README: the steal delay above; the pool's idle mask
is seen by a pCPU as of the last boundary plus its own changes; ``_csched_cpu_pick`` assumes a
flat topology; the 100 us floor quirk of the rate limit and the start_time/residual double
count of ``burn_credits`` are kept as Xen has them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hosts.clock import MS, US
from hosts.sched.base import Decision, PcpuScheduler, PoolScheduler, SchedulerEntry, UnitRecord, register
from hosts.sched.messages import Give
from hosts.vcpu import make_vid, vid_dom


class CreditParams(BaseModel):
    """Parameters of the Credit scheduler (Xen's boot options and ``xl sched-credit -s``)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["credit"] = Field("credit", description="Scheduler name.")
    tslice_ms: int = Field(30, ge=1, le=1000, description="Timeslice and accounting period in ms (sched_credit_tslice_ms).")
    ratelimit_us: int = Field(
        1000,
        ge=0,
        le=500_000,
        description="Minimum run time before a running vCPU can be preempted, in us (sched_ratelimit_us); 0 disables, otherwise 100..500000.",
    )
    ticks_per_tslice: int = Field(3, ge=1, le=100, description="Ticks per timeslice (CSCHED_TICKS_PER_TSLICE); the tick is tslice/ticks (10 ms).")
    accounting: Literal["timestamp", "tick"] = Field(
        "timestamp",
        description="'timestamp': burn 10 credits/ms of run time with a ns residual (Xen >= 4.2). 'tick': charge a tick's worth to whoever runs at each tick (older Xen).",
    )
    boost: bool = Field(True, description="Boost UNDER vCPUs on wake (Xen always does; off is for experiments).")
    load_balance_ratelimit_us: int = Field(1000, ge=0, le=1_000_000, description="Minimum interval between work-stealing attempts of one pCPU, in us.")
    vcpu_migration_delay_us: int = Field(0, ge=0, le=100_000, description="A vCPU that ran more recently than this is cache-hot and not stolen, in us.")
    tickle_one_idle: bool = Field(True, description="Wake only one idle pCPU per wake-up (tickle_one_idle_cpu).")

    @model_validator(mode="after")
    def _check(self) -> "CreditParams":
        if self.ratelimit_us and self.ratelimit_us < 100:
            raise ValueError("ratelimit_us must be 0 (off) or between 100 and 500000")
        if self.ratelimit_us > self.tslice_ms * 1000:
            raise ValueError(f"ratelimit_us ({self.ratelimit_us}) must not exceed tslice_ms ({self.tslice_ms}) in us")
        return self


PRI_BOOST = 0
PRI_UNDER = -1
PRI_OVER = -2
PRI_IDLE = -64
PRI_NAMES = {PRI_BOOST: "BOOST", PRI_UNDER: "UNDER", PRI_OVER: "OVER", PRI_IDLE: "IDLE"}

FLAG_PARKED = 1 << 0
FLAG_YIELD = 1 << 1
FLAG_MIGRATING = 1 << 2
FLAG_PINNED = 1 << 3

CREDITS_PER_MSEC = 10
MIN_TIMER_NS = 100 * US  # CSCHED_MIN_TIMER = XEN_SYSCTL_SCHED_RATELIMIT_MIN


class CreditVcpu(UnitRecord):
    """Per-unit data (Xen's ``struct csched_unit``); travels with the vCPU inside a host."""

    __slots__ = ("pri", "credit", "residual", "start_time", "flags", "last_sched_time", "active")

    def __init__(self) -> None:
        self.pri = PRI_UNDER
        self.credit = 0
        self.residual = 0
        self.start_time = 0
        self.flags = 0
        self.last_sched_time = 0
        self.active = False


class CreditPcpu:
    """Per-pCPU data (``struct csched_pcpu``)."""

    __slots__ = ("runq", "nr_runnable", "tick", "runq_sort_last", "last_load_balance", "steal_pending", "last_tickle_cpu", "tick_armed")

    def __init__(self) -> None:
        self.runq: list = []
        self.nr_runnable = 0
        self.tick = 0
        self.runq_sort_last = 0
        self.last_load_balance = -(1 << 62)
        self.steal_pending = False
        self.last_tickle_cpu = -1
        self.tick_armed = False


def cycle(n: int, mask) -> int:
    """Xen's cpumask_cycle: the next CPU after ``n`` in ``mask``, wrapping; -1 if empty."""
    best = -1
    lowest = -1
    for c in mask:
        if c > n and (best < 0 or c < best):
            best = c
        if lowest < 0 or c < lowest:
            lowest = c
    return best if best >= 0 else lowest


def has_soft_affinity(hard: frozenset, soft: frozenset, pool: frozenset) -> bool:
    """Xen's has_soft_affinity: soft affinity restricts something worth preferring."""
    if not soft or pool <= soft:
        return False
    inter = soft & hard
    return bool(inter) and inter != hard


def balance_mask(step: int, hard: frozenset, soft: frozenset) -> frozenset:
    """affinity_balance_cpumask: step 0 (soft) is soft & hard, or hard if that is empty."""
    if step == 0:
        m = soft & hard
        return m if m else hard
    return hard


def cpu_pick(cur: int, hard: frozenset, soft: frozenset, pool: frozenset, idlers, cur_runq_idle: bool) -> int:
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


class CreditScheduler(PcpuScheduler):
    name = "credit"

    def __init__(self, ctx, params: CreditParams):
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
        self._aff_cache: dict[int, tuple[frozenset, frozenset]] = {}
        # init_pdata arms the ticker at NOW() + tick.
        self.pc.tick_armed = True
        ctx.set_timer("tick", ctx.now + self.tick_period)

    # --- helpers -------------------------------------------------------------------------
    def _aff(self, v) -> tuple[frozenset, frozenset]:
        a = self._aff_cache.get(v.vid)
        if a is None:
            a = self._aff_cache[v.vid] = self.affinity(v)
        return a

    def _burn(self, u: CreditVcpu, now: int) -> None:
        if not self.timestamp_acct:
            return
        delta = now - u.start_time
        if delta <= 0:
            return
        val = delta * CREDITS_PER_MSEC + u.residual
        credits, u.residual = divmod(val, MS)
        u.credit -= credits
        u.start_time += credits * MS // CREDITS_PER_MSEC

    def _runq_insert(self, v) -> None:
        """__runq_insert: by priority, FIFO within one; a yielder goes behind one more."""
        runq = self.pc.runq
        u = v.sched
        pri = u.pri
        i = 0
        n = len(runq)
        while i < n and runq[i].sched.pri >= pri:
            i += 1
        if u.flags & FLAG_YIELD and i < n:
            i += 1
        runq.insert(i, v)

    def _tickle(self, v) -> None:
        """__runq_tickle for ``v`` just queued on this pCPU."""
        ctx = self.ctx
        me = ctx.pcpu
        u = v.sched
        cur = ctx.curr
        cur_pri = cur.sched.pri if cur is not None else PRI_IDLE
        idle_mask = ctx.view.idlers & self.pool
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
                    if self.params.tickle_one_idle:
                        self.pc.last_tickle_cpu = cycle(self.pc.last_tickle_cpu, cands)
                        mask = [self.pc.last_tickle_cpu]
                    else:
                        mask = sorted(cands)
                if mask:
                    break
        for c in mask:
            ctx.view.idlers.discard(c)
            ctx.tickle(c)

    # --- ops table -----------------------------------------------------------------------
    def insert(self, v, stolen: bool = False) -> None:
        if not isinstance(v.sched, CreditVcpu):
            v.sched = CreditVcpu.from_wire(v.sched) if v.sched else CreditVcpu()
        self._aff_cache.pop(v.vid, None)
        hard, _ = self._aff(v)
        if len(hard) == 1:
            v.sched.flags |= FLAG_PINNED
        else:
            v.sched.flags &= ~FLAG_PINNED
        if stolen:
            # csched_runq_steal: the stolen unit runs next here, straight from the peer.
            self.pc.runq.insert(0, v)
            self.pc.nr_runnable += 1
            self.pc.steal_pending = True
            self.ctx.raise_softirq()
        elif v.runnable() and self.ctx.curr is not v:
            self._runq_insert(v)
            self.pc.nr_runnable += 1

    def remove(self, v) -> None:
        u = v.sched
        if v in self.pc.runq:
            self.pc.runq.remove(v)
            self.pc.nr_runnable -= 1
        self._aff_cache.pop(v.vid, None)
        if isinstance(u, CreditVcpu) and u.active:
            u.active = False
            self.ctx.pool_msg(("acct_stop", v.vid))

    def migrate(self, v, new_pcpu: int) -> None:
        if v in self.pc.runq:
            self.pc.runq.remove(v)
            self.pc.nr_runnable -= 1
        self._aff_cache.pop(v.vid, None)

    def wake(self, v, migrating: bool = False) -> None:
        u = v.sched
        if self.ctx.curr is v or v in self.pc.runq:
            return
        was_migrating = bool(u.flags & FLAG_MIGRATING) or migrating
        u.flags &= ~FLAG_MIGRATING
        if self.boost and not was_migrating and u.pri == PRI_UNDER and not u.flags & FLAG_PARKED:
            u.pri = PRI_BOOST
        self._runq_insert(v)
        self.pc.nr_runnable += 1
        self._tickle(v)

    def sleep(self, v) -> None:
        if self.ctx.curr is v:
            self.ctx.raise_softirq()
        elif v in self.pc.runq:
            self.pc.runq.remove(v)
            self.pc.nr_runnable -= 1

    def yield_(self, v) -> None:
        v.sched.flags |= FLAG_YIELD

    def adjust_affinity(self, v) -> None:
        self._aff_cache.pop(v.vid, None)
        hard, _ = self._aff(v)
        if len(hard) == 1:
            v.sched.flags |= FLAG_PINNED
        else:
            v.sched.flags &= ~FLAG_PINNED

    def pick_pcpu(self, v, commit: bool) -> int:
        hard, soft = self._aff(v)
        me = self.ctx.pcpu
        cur = v.last_pcpu if v.last_pcpu >= 0 else me
        runq_idle = not self.pc.runq if cur == me else False
        cpu = cpu_pick(cur, hard, soft, self.pool, self.ctx.view.idlers, runq_idle)
        if commit:
            v.sched.flags |= FLAG_MIGRATING
        return cpu

    def do_schedule(self, now: int, curr) -> Decision:
        pc = self.pc
        ctx = self.ctx
        if curr is not None:
            u = curr.sched
            runtime = now - curr.state_entry_ns
            if runtime < 0:
                runtime = 0
            self._burn(u, now)
            u.start_time -= now
            u.last_sched_time = now
            if (
                not u.flags & FLAG_YIELD
                and self.ratelimit
                and curr.runnable()
                and runtime < self.ratelimit
                and not pc.steal_pending
            ):
                u.start_time += now
                tslice = self.ratelimit - runtime
                if runtime < MIN_TIMER_NS:
                    tslice = MIN_TIMER_NS
                return Decision(curr, tslice)
            if curr.runnable():
                self._runq_insert(curr)
            else:
                pc.nr_runnable -= 1
            u.flags &= ~FLAG_YIELD
        pc.steal_pending = False
        snext = pc.runq[0] if pc.runq else None
        snext_pri = snext.sched.pri if snext is not None else PRI_IDLE
        if snext_pri <= PRI_OVER and now - pc.last_load_balance > self.lb_ratelimit:
            pc.last_load_balance = now
            ctx.request_steal(snext_pri)
        if snext is not None:
            del pc.runq[0]
            snext.sched.start_time += now
            ctx.view.idlers.discard(ctx.pcpu)
        else:
            ctx.view.idlers.add(ctx.pcpu)
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
            u = curr.sched
            if u.pri == PRI_BOOST:
                u.pri = PRI_UNDER
            if self.timestamp_acct:
                self._burn(u, now)
            else:
                u.credit -= self.credits_per_tick
            if not u.active:
                u.active = True
                ctx.pool_msg(("acct_start", curr.vid))
            else:
                new_cpu = self.pick_pcpu(curr, commit=False)
                if new_cpu != ctx.pcpu:
                    ctx.set_migrating(curr)
        # csched_runq_sort: once per accounting epoch, move UNDER/BOOST ahead of OVER.
        if ctx.view.epoch != pc.runq_sort_last:
            pc.runq_sort_last = ctx.view.epoch
            pc.runq[:] = [v for v in pc.runq if v.sched.pri >= PRI_UNDER] + [v for v in pc.runq if v.sched.pri < PRI_UNDER]
        ctx.set_timer("tick", now + self.tick_period)

    def summary(self):
        curr = self.ctx.curr
        return (
            curr.vid if curr is not None else -1,
            curr.sched.pri if curr is not None else PRI_IDLE,
            tuple((v.vid, v.sched.pri, v.sched.last_sched_time) for v in self.pc.runq),
            self.pc.nr_runnable,
        )

    def apply_pool(self, instr: tuple) -> None:
        """The per-unit tail of csched_acct for one vCPU held here."""
        kind = instr[0]
        if kind != "acct":
            return
        _, vid, incr, capped, cap_thr = instr
        v = self.ctx.vcpus.get(vid)
        if v is None:
            return
        u = v.sched
        if not u.active:
            return
        S = self.credits_per_tslice
        u.credit += incr
        credit = u.credit
        if credit < 0:
            u.pri = PRI_OVER
            if capped and credit < -cap_thr and not u.flags & FLAG_PARKED:
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
                self.ctx.pool_msg(("acct_stop", vid))
                u.credit = credit = credit // 2
        self.ctx.pool_msg(("acct_credit", credit))

    def udata_to_wire(self, udata) -> dict:
        return udata.to_wire() if isinstance(udata, CreditVcpu) else dict(udata or {})

    def udata_from_wire(self, d: dict):
        return CreditVcpu.from_wire(d) if d else CreditVcpu()

    def dump(self) -> dict:
        return {
            "runq": [(v.vid, PRI_NAMES.get(v.sched.pri, v.sched.pri), v.sched.credit) for v in self.pc.runq],
            "nr_runnable": self.pc.nr_runnable,
        }


class CreditDom:
    """Per-domain data (``struct csched_dom``), kept by the pool half."""

    __slots__ = ("weight", "cap", "active")

    def __init__(self, weight: int, cap: int):
        self.weight = weight
        self.cap = cap
        self.active: list[int] = []  # vids, head first (Xen's list_add puts new ones first)


class CreditPool(PoolScheduler):
    """Pool-wide data (``struct csched_private``): accounting and work stealing."""

    name = "credit"

    def __init__(self, params: CreditParams, cpus: tuple[int, ...], start_ns: int = 0):
        super().__init__(params, cpus, start_ns)
        self.tslice = params.tslice_ms * MS
        self.credits_per_tslice = CREDITS_PER_MSEC * params.tslice_ms
        self.ncpus = len(cpus)
        self.credit = self.credits_per_tslice * self.ncpus
        self.credit_balance = 0
        self._balance_acc = 0
        self.weight = 0
        self.active_sdom: list[int] = []
        self.doms: dict[int, CreditDom] = {}
        self.runq_sort = 0
        self.next_acct = start_ns + self.tslice
        self.balance_bias = cpus[0] if cpus else 0
        self.migr_delay = params.vcpu_migration_delay_us * US
        self.pool = frozenset(cpus)
        self.affinity: dict[int, tuple[frozenset, frozenset]] = {}
        self.locate = None  # set by the host: vid -> pcpu

    # --- domain table ----------------------------------------------------------------------
    def add_domain(self, dom) -> None:
        self.doms[dom.uid] = CreditDom(dom.weight, dom.cap)
        for i in range(dom.nr_vcpus):
            self._set_aff(dom, i)

    def _set_aff(self, dom, i: int) -> None:
        hard = frozenset(dom.hard_affinity[i]) & self.pool if i < len(dom.hard_affinity) and dom.hard_affinity[i] else self.pool
        soft = frozenset(dom.soft_affinity[i]) if i < len(dom.soft_affinity) and dom.soft_affinity[i] else frozenset()
        self.affinity[make_vid(dom.uid, i)] = (hard or self.pool, soft)

    def adjust(self, dom) -> None:
        """csched_dom_cntl putinfo: a weight change rescales the pool weight."""
        sd = self.doms.get(dom.uid)
        if sd is None:
            return
        if dom.uid in self.active_sdom:
            self.weight -= sd.weight * len(sd.active)
            self.weight += dom.weight * len(sd.active)
        sd.weight = dom.weight
        sd.cap = dom.cap
        for i in range(dom.nr_vcpus):
            self._set_aff(dom, i)

    def remove_domain(self, dom) -> None:
        sd = self.doms.pop(dom.uid, None)
        if sd is None:
            return
        if dom.uid in self.active_sdom:
            self.weight -= sd.weight * len(sd.active)
            self.active_sdom.remove(dom.uid)
        for i in range(dom.nr_vcpus):
            self.affinity.pop(make_vid(dom.uid, i), None)

    def on_msg(self, src: int, payload: tuple) -> None:
        kind = payload[0]
        if kind == "acct_start":
            vid = payload[1]
            sd = self.doms.get(vid_dom(vid))
            if sd is None or vid in sd.active:
                return
            sd.active.insert(0, vid)
            self.weight += sd.weight
            if vid_dom(vid) not in self.active_sdom:
                self.active_sdom.insert(0, vid_dom(vid))
        elif kind == "acct_stop":
            vid = payload[1]
            sd = self.doms.get(vid_dom(vid))
            if sd is None or vid not in sd.active:
                return
            sd.active.remove(vid)
            self.weight -= sd.weight
            if not sd.active and vid_dom(vid) in self.active_sdom:
                self.active_sdom.remove(vid_dom(vid))
        elif kind == "acct_credit":
            self._balance_acc += payload[1]

    # --- placement -----------------------------------------------------------------------
    def place(self, vid: int, hint: int, summaries: dict, domain) -> int:
        hard, soft = self.affinity.get(vid, (self.pool, frozenset()))
        idlers = {c for c, s in summaries.items() if s is not None and s[0] < 0}
        cur = hint if hint in self.pool else min(self.pool)
        runq_idle = bool(summaries.get(cur)) and not summaries[cur][2]
        return cpu_pick(cur, hard, soft, self.pool, idlers, runq_idle)

    # --- boundary --------------------------------------------------------------------------
    def next_due(self, now: int) -> int:
        return self.next_acct

    def view_epoch(self) -> int:
        return self.runq_sort

    def view_extra(self) -> dict:
        return {}

    def boundary(self, now: int, summaries: dict, steal_reqs: list, first_round: bool) -> dict[int, list[tuple]]:
        out: dict[int, list[tuple]] = {}
        self._now = now
        if first_round and now >= self.next_acct:
            self.account(out)
            while self.next_acct <= now:
                self.next_acct += self.tslice
        if steal_reqs:
            self.steal(summaries, steal_reqs, out)
        return out

    def account(self, out: dict[int, list[tuple]]) -> None:
        """csched_acct: hand out one timeslice of credit per pCPU by weight."""
        self.credit_balance = self._balance_acc
        self._balance_acc = 0
        weight_total = self.weight
        credit_total = self.credit
        balance = self.credit_balance
        if balance < 0:
            credit_total -= balance
        if weight_total == 0:
            self.credit_balance = 0
            return
        S = self.credits_per_tslice
        weight_left = weight_total
        credit_xtra = False
        for uid in list(self.active_sdom):
            sd = self.doms[uid]
            count = len(sd.active)
            if count == 0:
                continue
            weight_left -= sd.weight * count
            credit_peak = count * S
            if balance < 0:
                credit_peak += ((-balance * sd.weight * count) + (weight_total - 1)) // weight_total
            cap_thr = 0
            if sd.cap != 0:
                credit_cap = ((sd.cap * S) + 99) // 100
                if credit_cap < credit_peak:
                    credit_peak = credit_cap
                cap_thr = (credit_cap + (count - 1)) // count
            credit_fair = ((credit_total * sd.weight * count) + (weight_total - 1)) // weight_total
            if credit_fair < credit_peak:
                credit_xtra = True
            else:
                if weight_left != 0:
                    credit_total += (((credit_fair - credit_peak) * weight_total) + (weight_left - 1)) // weight_left
                if credit_xtra:
                    self.active_sdom.remove(uid)
                    self.active_sdom.insert(0, uid)
                credit_fair = credit_peak
            per_unit = (credit_fair + (count - 1)) // count
            for vid in list(sd.active):
                pcpu = self.locate(vid)
                out.setdefault(pcpu, []).append(("acct", vid, per_unit, sd.cap != 0, cap_thr))
        self.runq_sort += 1

    def steal(self, summaries: dict, steal_reqs: list, out: dict[int, list[tuple]]) -> None:
        """csched_load_balance for each pCPU that asked, against the current runqueues."""
        # summaries: pcpu -> (curr_vid, curr_pri, runq((vid, pri, last_sched),...), nr_runnable)
        state = {c: [s[0], s[1], list(s[2]), s[3]] for c, s in summaries.items() if s is not None}
        for _t, cpu, _pri in steal_reqs:
            me = state.get(cpu)
            if me is None:
                continue
            pri = me[1]
            if me[2]:
                pri = max(pri, me[2][0][1])
            if pri > PRI_OVER:
                continue  # found better work since asking
            workers = {c for c, s in state.items() if s[0] >= 0 and c != cpu}
            if not workers:
                continue
            got = None
            for step in (0, 1):
                first = cycle(self.balance_bias, workers)
                peer = first
                while True:
                    ps = state[peer]
                    if ps[3] > 1:
                        for j, (vid, vpri, last_sched) in enumerate(ps[2]):
                            if vpri <= pri:
                                break
                            hard, soft = self.affinity.get(vid, (self.pool, frozenset()))
                            if step == 0 and not has_soft_affinity(hard, soft, self.pool):
                                continue
                            if cpu not in balance_mask(step, hard, soft):
                                continue
                            if self.migr_delay and (self._now - last_sched) < self.migr_delay:
                                continue
                            got = (peer, j, vid, vpri)
                            break
                    if got:
                        break
                    peer = cycle(peer, workers)
                    if peer == first:
                        break
                if got:
                    break
            if got is None:
                continue
            peer, j, vid, vpri = got
            self.balance_bias = peer
            del state[peer][2][j]
            state[peer][3] -= 1
            me[0], me[1] = vid, vpri
            me[3] += 1
            out.setdefault(peer, []).append(Give(vid, cpu))

    _now = 0

    def dump(self) -> dict:
        return {
            "weight": self.weight,
            "credit": self.credit,
            "credit_balance": self.credit_balance,
            "active_sdom": list(self.active_sdom),
            "active": {uid: list(d.active) for uid, d in self.doms.items()},
        }


ENTRY = register(
    SchedulerEntry(
        name="credit",
        sched_id=5,
        params=CreditParams,
        pcpu=CreditScheduler,
        pool=CreditPool,
        summary="proportional share with caps, boost and work stealing (Xen default before 4.12)",
    )
)

__all__ = ["CreditParams", "CreditScheduler", "CreditPool", "PRI_BOOST", "PRI_UNDER", "PRI_OVER", "PRI_IDLE"]
