"""Credit2: Xen's default scheduler since 4.12, as in ``xen/common/sched/credit2.c``.

What it does. Credit is measured in ns. Every vCPU starts with 10 ms of credit and burns it
while it runs, scaled by weight: ``credit -= runtime * max_weight / weight`` (with a residual),
where ``max_weight`` is the largest weight of the vCPUs assigned to the runqueue, so the
heaviest burns 1 credit per ns and lighter ones faster; credit never goes below -10 ms. Each
runqueue is ordered by credit, highest first (FIFO among equals). When the vCPU chosen to run
and the head of the runqueue both have credit <= 0, every vCPU assigned to the runqueue
(running, queued or blocked) gets +10 ms (+20 ms if the chosen one sat at -10 ms), clipped at
10.5 ms, and the balancer runs. There is no tick and no boost: a vCPU that slept keeps its
credit and, on waking, is queued by it and tickles the pCPU where it scores best. A running
vCPU keeps its pCPU for the 1 ms rate limit; otherwise it runs until its credit would drop to
that of the best waiting vCPU, at least 500 us and at most 10 ms. A waiting vCPU is taken by
another pCPU of its runqueue only if its credit beats that pCPU's choice by the migrate
resistance (500 us); it then gets 50 us of compensation. Runqueues group pCPUs by topology
(``runqueue``: cpu, core, socket (default), node, all; at most 16 pCPUs each, spread evenly);
their load is an exponentially weighted average over a ~1 s window, and after a reset the
balancer pushes, pulls or swaps single vCPUs with the most different runqueue when that
reduces the load difference. A cap gives a domain a budget of ``cap`` % of ``cap_period_ms``
(10 ms), refilled every period; a vCPU takes a quota of it before it runs and returns what it
did not use, and a vCPU that finds none is parked (paused) until the refill.

When to use it. Xen's default: general-purpose, mixed workloads, low wake-up latency without
boost (credit ordering alone favours vCPUs that sleep), good scalability. Per-domain ``weight``
(1..65535) and ``cap`` as for Credit.

Which function does each step: ``_burn`` (burn_credits, t2c_update), ``_runq_insert``
(runq_insert), ``_candidate`` (runq_candidate), ``do_schedule`` (csched2_schedule),
``_runtime`` (csched2_runtime), ``_reset`` and ``_apply_reset`` (reset_credit), ``wake``,
``sleep``, ``context_saved`` (csched2_unit_wake/sleep, csched2_context_saved: the deferred
requeue), ``_tickle`` and ``_score`` (runq_tickle, tickle_score), ``_grab``/``_return``
(unit_grab_budget, unit_return_budget, park_unit, unpark_parked_units), ``_svc_load``
(update_svc_load), ``pick_pcpu`` and ``Credit2Pool.place`` (csched2_res_pick),
``runqueue_map`` (cpu_add_to_runqueue), ``Credit2Pool._update_loads`` (update_runq_load),
``Credit2Pool._balance`` (balance_load, consider, migrate), ``Credit2Pool._caps``
(replenish_domain_budget, csched2_dom_cntl for caps), ``Credit2Pool._moves`` (the shared
runqueue, below).

Emulation of the shared runqueue. In Xen the pCPUs of a runqueue share one queue under one
lock. Here each pCPU holds the vCPUs assigned to it: its slice of the runqueue, in credit
order. A pCPU decides over its slice exactly as ``runq_candidate`` does, knowing the others'
queued vCPUs and current vCPUs as of the last epoch boundary (``view_extra``). What needs the
shared structure is done by the pool half at a boundary, from every pCPU's summary:
(1) a vCPU a pCPU tickled on another pCPU (``runq_tickle`` chose it from the view) is moved
there (``give``) if the tickle still holds against what that pCPU runs now, so it picks it;
(2) an idle pCPU gets the best vCPU waiting elsewhere in its runqueue (what the true idle
mask would have made ``runq_tickle`` do);
(3) a pCPU whose decision found a better vCPU queued on another pCPU (a higher credit beating
its own choice by the migrate resistance) asked for it (``request_steal``) and gets it if it
is still waiting, then takes it at once, its stand-in choice notwithstanding the rate limit;
(4) a credit reset decided on one pCPU is applied there at once and sent to the others of the
runqueue as a numbered instruction (every vCPU carries the number of the last reset it got,
so none gets one twice, including vCPUs in flight); (5) runqueue loads are tracked from each
pCPU's time-integrated load, and the balancer runs after each reset; (6) a capped domain's
budget pool is split among the pCPUs that hold its vCPUs (by demand) at each refill, and
rebalanced when a pCPU runs out while another has some left. A pCPU rings the pool half with
``request_steal`` whenever it needs one of these at the next round.

Ordering and determinism. Everything a pCPU does between boundaries depends only on its own
state and the last view. At a boundary the pool half works in this order: loads, caps (first
round only), resets (in (time, pCPU) order of the messages, each followed by the balancer),
budget requests, moves of tickled vCPUs, idle pCPUs (by id), pull requests (in request order);
vCPUs are scanned in credit order, ties by vCPU id, and runqueue members (Xen's per-runqueue
``svc`` list) in vCPU id order. Deviations from Xen, to be listed in the README: a vCPU queued
on one pCPU runs on another of its runqueue from the next epoch boundary on (Xen: at once);
a reset reaches the vCPUs held by other pCPUs at the next boundary; a pCPU sees the other
pCPUs' credits as of the last boundary (it extrapolates their burn); caps are enforced from
per-pCPU shares of the domain's budget (refills are exact, moving budget between pCPUs waits
for a boundary); hosts have no topology, so the one runqueue arrangement needs comes from this
scheduler's ``threads_per_core``/``cores_per_socket``/``sockets_per_node`` (default: one
socket, no SMT, hence one runqueue of up to 16 pCPUs) and the spreading uses the pool's pCPU
count (Xen: the host's); runqueue loads are sampled at boundaries from exact load integrals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hosts.clock import MS, NEVER, US
from hosts.sched.base import Decision, PcpuScheduler, PoolScheduler, SchedulerEntry, UnitRecord, register
from hosts.sched.messages import Give
from hosts.sched.credit import balance_mask, cycle, has_soft_affinity
from hosts.vcpu import VPF_MIGRATING, make_vid, vid_dom

CREDIT_INIT = 10 * MS  # CSCHED2_CREDIT_INIT = CSCHED2_MAX_TIMER
MIN_TIMER = 500 * US  # CSCHED2_MIN_TIMER = CSCHED2_CARRYOVER_MAX
CREDIT_MIN = -CREDIT_INIT
IDLE_CREDIT = CREDIT_MIN - 1
CARRYOVER_MAX = MIN_TIMER
MAX_TIMER = CREDIT_INIT
MIGRATE_COMPENSATION = 50 * US
RATELIMIT_TICKLE_TOLERANCE = 50 * US
CREDIT_RESET = 0
LOADAVG_GRANULARITY_SHIFT = 10
DEFAULT_WEIGHT = 256

F_SCHEDULED = 1 << 1
F_DELAYED = 1 << 2  # delayed_runq_add
F_MIGRATE_REQ = 1 << 3  # runq_migrate_request
F_YIELD = 1 << 4
F_PINNED = 1 << 5
F_PARKED = 1 << 6  # VPF_parked: we paused it for lack of budget
F_PARK_PENDING = 1 << 7  # found without budget while running: parked at context_saved

RING = 0  # request_steal payloads: just run the pool half
PULL = 1  # ... and give me the best vCPU waiting elsewhere in my runqueue

GEN_HISTORY = 32


class Credit2Params(BaseModel):
    """Parameters of Credit2 (Xen's boot options ``sched_credit2_*``/``credit2_*`` and
    ``xl sched-credit2 -s``), plus the topology hvsim hosts do not otherwise have."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["credit2"] = Field("credit2", description="Scheduler name.")
    ratelimit_us: int = Field(1000, ge=0, le=500_000, description="Minimum run time before a running vCPU can be preempted, in us (sched_ratelimit_us); 0 disables, otherwise 100..500000.")
    runqueue: Literal["cpu", "core", "socket", "node", "all"] = Field("socket", description="What pCPUs share a runqueue (credit2_runqueue).")
    max_cpus_runqueue: int = Field(16, ge=1, le=1024, description="At most this many pCPUs per runqueue (sched_credit2_max_cpus_runqueue).")
    migrate_resist_us: int = Field(500, ge=0, le=100_000, description="A vCPU waiting on another pCPU is taken only if its credit is higher by this much, in us (sched_credit2_migrate_resist).")
    cap_period_ms: int = Field(10, ge=1, le=10_000, description="Period of the cap budget refill, in ms (credit2_cap_period_ms).")
    load_window_shift: int = Field(30, ge=11, le=40, description="The load average's window is 2^this ns (credit2_load_window_shift; 30 = ~1 s).")
    load_precision_shift: int = Field(18, ge=4, le=24, description="Fractional bits of load averages (credit2_load_precision_shift).")
    balance_under: int = Field(0, ge=-8, le=8, description="Balance a runqueue pair below full load when the load difference is >= 2^this (credit2_balance_under).")
    balance_over: int = Field(-3, ge=-8, le=8, description="Balance an overloaded pair when the load difference is >= 2^this (credit2_balance_over; -3 = 1/8).")
    threads_per_core: int = Field(1, ge=1, le=8, description="Host topology for runqueue arrangement: SMT threads per core (pCPU ids are numbered thread-first).")
    cores_per_socket: int = Field(0, ge=0, le=1024, description="Host topology: cores per socket (0 = every pCPU in one socket).")
    sockets_per_node: int = Field(1, ge=1, le=64, description="Host topology: sockets per NUMA node.")

    @model_validator(mode="after")
    def _check(self) -> "Credit2Params":
        if self.ratelimit_us and self.ratelimit_us < 100:
            raise ValueError("ratelimit_us must be 0 (off) or between 100 and 500000")
        return self


# ---------------------------------------------------------------------------------------------
# topology and runqueues
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
        valid = None
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
# per-unit and per-pCPU data
# ---------------------------------------------------------------------------------------------


class Credit2Unit(UnitRecord):
    """Per-unit data (``struct csched2_unit``); travels with the vCPU inside a host."""

    __slots__ = (
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

    def __init__(self) -> None:
        self.credit = CREDIT_INIT
        self.residual = 0
        self.flags = 0
        self.budget = None  # None: the domain has no cap (Xen's STIME_MAX)
        self.start_time = 0
        self.load_last_update = 0
        self.avgload = 0
        self.tickled_cpu = -1
        self.processor = -1  # Xen's v->processor: the pCPU it last ran on or was placed on
        self.rq = -1
        self.gen = 0  # number of the last credit reset of its runqueue it received
        self.migrate_cpu = -1
        self.on_runq = False

    def restored(self) -> None:
        self.on_runq = False


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
        self.runq: list = []
        self.gen = 0
        self.gen_hist: dict[int, int] = {}
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


# ---------------------------------------------------------------------------------------------
# the per-pCPU half
# ---------------------------------------------------------------------------------------------


class Credit2Scheduler(PcpuScheduler):
    name = "credit2"

    def __init__(self, ctx, params: Credit2Params):
        super().__init__(ctx, params)
        p = params
        self.rqs = runqueue_map(p, ctx.view.cpus)
        self.rq_of = {c: i for i, rq in enumerate(self.rqs) for c in rq}
        rq = self.rq_of[ctx.pcpu]
        self.rq_cpus = frozenset(self.rqs[rq])
        self.pc = Credit2Pcpu(rq, ctx.now)
        self.pc.pick_bias = {i: r[0] for i, r in enumerate(self.rqs)}
        self.ratelimit = p.ratelimit_us * US
        self.resist = p.migrate_resist_us * US
        self.period = p.cap_period_ms * MS
        self.W = p.load_window_shift - LOADAVG_GRANULARITY_SHIFT
        self.P = p.load_precision_shift
        self._seen_view = None
        self._view_gen = 0
        self._removing = -1
        self._dirty = True
        self._cached = ((), (), 1, (), ())

    # --- helpers -------------------------------------------------------------------------
    def _weight(self, v) -> int:
        d = self.ctx.domains.get(v.dom)
        return d.weight if d is not None else DEFAULT_WEIGHT

    def _idlers(self) -> frozenset:
        """Xen's rqd->idle: the others as of the last view, this pCPU as it is now."""
        me = self.ctx.pcpu
        idle = frozenset(self.ctx.view.idlers) - {me}
        return idle | {me} if self.ctx.curr is None else idle

    def _load_now(self) -> int:
        return len(self.pc.runq) + (1 if self.ctx.curr is not None else 0)

    def _acc(self, now: int) -> None:
        """Account this slice's load up to now (before a hook changes it)."""
        pc = self.pc
        self._dirty = True
        if now > pc.load_last_t:
            pc.load_area += self._load_now() * (now - pc.load_last_t)
            pc.load_last_t = now

    def _svc_load(self, u: Credit2Unit, change: int, now: int, runnable: bool) -> None:
        """update_svc_load."""
        unit_load = 1 if change == -1 else 0 if change == 1 else int(runnable)
        now_u = now >> LOADAVG_GRANULARITY_SHIFT
        u.avgload = svc_load_at(u.avgload, u.load_last_update, now_u, unit_load, self.W, self.P)
        u.load_last_update = now_u

    def _fresh_view(self) -> None:
        extra = self.ctx.view.extra
        if extra is self._seen_view:
            return
        self._seen_view = extra
        pc = self.pc
        pc.tickled.clear()
        pc.asked.clear()
        rqv = extra.get("rq", {}).get(pc.rq)
        if rqv is not None:
            gen = rqv[0]
            if gen > pc.gen:  # a reset we only learn of from the view (instruction lost)
                self._apply_reset(gen, rqv[4], self.ctx.now)
            self._view_gen = gen
        else:
            self._view_gen = pc.gen
        self._update_max_weight()

    def _update_max_weight(self) -> None:
        rqv = self.ctx.view.extra.get("rq", {}).get(self.pc.rq)
        mw = rqv[1] if rqv is not None else 1
        for v in self.ctx.vcpus.values():
            w = self._weight(v)
            if w > mw:
                mw = w
        self.pc.max_weight = mw

    def _remote_bonus(self, credit: int) -> int:
        """A credit seen in the view, with the resets applied here since (view is older)."""
        pc = self.pc
        vgen = self._view_gen
        if vgen >= pc.gen:
            return credit
        for g in range(vgen + 1, pc.gen + 1):
            credit = min(credit + pc.gen_hist.get(g, CREDIT_INIT), CREDIT_INIT + CARRYOVER_MAX)
        return credit

    def _burn(self, v, now: int) -> None:
        """burn_credits / t2c_update."""
        u = v.sched
        delta = now - u.start_time
        if delta <= 0:
            return
        val = delta * self.pc.max_weight + u.residual
        q, u.residual = divmod(val, self._weight(v))
        u.credit = max(u.credit - q, CREDIT_MIN)
        if u.budget is not None:
            u.budget -= delta
        u.start_time = now

    def _credit_at(self, v, now: int) -> int:
        """The credit v would have after burning up to now (not stored)."""
        u = v.sched
        delta = now - u.start_time
        if delta <= 0:
            return u.credit
        return max(u.credit - (delta * self.pc.max_weight + u.residual) // self._weight(v), CREDIT_MIN)

    def _c2t(self, credit: int, v) -> int:
        return credit * self._weight(v) // self.pc.max_weight

    def _runq_insert(self, v) -> None:
        """runq_insert: by credit, after those with as much."""
        runq = self.pc.runq
        c = v.sched.credit
        i = 0
        n = len(runq)
        while i < n and not c > runq[i].sched.credit:
            i += 1
        runq.insert(i, v)
        v.sched.on_runq = True

    def _runq_remove(self, v) -> None:
        if v.sched.on_runq:
            self.pc.runq.remove(v)
            v.sched.on_runq = False

    def _ring(self, kind: int = RING) -> None:
        if len(self.rq_cpus) > 1 or len(self.rqs) > 1 or kind != RING:
            self.ctx.request_steal(kind)

    def _kick(self) -> None:
        """Make this pCPU reschedule (the engine's softirq loop runs it at this instant, also
        when raised from inside schedule())."""
        self.ctx.raise_softirq()

    # --- credit resets -------------------------------------------------------------------------
    def _apply_reset(self, gen: int, amount: int, now: int) -> None:
        """reset_credit for the vCPUs held here: +amount, clipped, once per reset number."""
        pc = self.pc
        if gen <= pc.gen:
            return
        for g in range(pc.gen + 1, gen):
            pc.gen_hist.setdefault(g, CREDIT_INIT)
        pc.gen_hist[gen] = amount
        pc.gen = gen
        if len(pc.gen_hist) > GEN_HISTORY:
            for g in sorted(pc.gen_hist)[:-GEN_HISTORY]:
                del pc.gen_hist[g]
        curr = self.ctx.curr
        for vid in sorted(self.ctx.vcpus):
            v = self.ctx.vcpus[vid]
            u = v.sched
            if not isinstance(u, Credit2Unit) or u.rq != pc.rq or u.gen >= gen:
                continue
            if v is curr:
                self._burn(v, now)
                if u.budget is not None and u.budget <= 0:
                    self._kick()
            self._catch_up(u, gen)
            u.start_time = now

    def _catch_up(self, u: Credit2Unit, upto: int) -> None:
        hist = self.pc.gen_hist
        first = max(u.gen + 1, upto - GEN_HISTORY + 1)
        for g in range(first, upto + 1):
            u.credit = min(u.credit + hist.get(g, CREDIT_INIT), CREDIT_INIT + CARRYOVER_MAX)
        u.gen = max(u.gen, upto)

    def _reset(self, now: int, snext) -> None:
        amount = CREDIT_INIT * (2 if snext.sched.credit == CREDIT_MIN else 1)
        gen = self.pc.gen + 1
        self._apply_reset(gen, amount, now)
        self.ctx.pool_msg(("reset", self.pc.rq, gen, amount))
        self._ring()

    # --- caps ----------------------------------------------------------------------------------
    def _quota(self, uid: int) -> int:
        d = self.ctx.domains.get(uid)
        if d is None or not d.cap:
            return MIN_TIMER
        tot = self.period * d.cap // 100
        return max(tot // max(d.nr_vcpus, 1), MIN_TIMER)

    def _grab(self, v, running: bool) -> bool:
        """unit_grab_budget: take a quota from this pCPU's share of the domain's budget."""
        u = v.sched
        if u.budget > 0:
            return True
        pc = self.pc
        uid = v.dom
        r = pc.reserve.get(uid, 0) + u.budget
        if r > 0:
            b = min(self._quota(uid), r)
            u.budget = b
            pc.reserve[uid] = r - b
            return True
        pc.reserve[uid] = r
        u.budget = 0
        if running:
            u.flags |= F_PARK_PENDING  # parked once it is off the pCPU (context_saved)
        else:
            self._park(v)
        if uid not in pc.asked:
            pc.asked.add(uid)
            self.ctx.pool_msg(("budget_want", uid))
            self._ring()
        return False

    def _park(self, v) -> None:
        u = v.sched
        if u.flags & F_PARKED:
            return
        u.flags |= F_PARKED
        self.pc.parked.setdefault(v.dom, []).append(v.vid)
        self.ctx.park(v)

    def _unpark_dom(self, uid: int) -> None:
        """unpark_parked_units for the domain's vCPUs parked here."""
        vids = self.pc.parked.pop(uid, [])
        for vid in vids:
            v = self.ctx.vcpus.get(vid)
            if v is None or not v.sched.flags & F_PARKED:
                continue
            v.sched.flags &= ~F_PARKED
            self.ctx.unpark(v)

    def _return(self, v) -> None:
        """unit_return_budget."""
        u = v.sched
        uid = v.dom
        r = self.pc.reserve.get(uid, 0) + u.budget
        self.pc.reserve[uid] = r
        u.budget = 0
        if r > 0:
            self._unpark_dom(uid)

    # --- tickling ------------------------------------------------------------------------------
    def _cur_info(self, cpu: int, now: int):
        """(credit, soft_has_cpu, preemptable) of the vCPU running on cpu, None if idle."""
        if cpu == self.ctx.pcpu:
            cur = self.ctx.curr
            if cur is None:
                return None
            self._burn(cur, now)
            _, soft = self.affinity(cur)
            return (cur.sched.credit, (not soft) or cpu in soft, self._preemptable(cur.state_entry_ns, now))
        info = self.ctx.view.extra.get("cpu", {}).get(cpu)
        if info is None:
            return None
        _vid, credit, weight, entry, soft_ok, ts = info
        credit = self._remote_bonus(credit)
        if now > ts:
            credit = max(credit - (now - ts) * self.pc.max_weight // max(weight, 1), CREDIT_MIN)
        return (credit, soft_ok, self._preemptable(entry, now))

    def _preemptable(self, entry: int, now: int) -> bool:
        """is_preemptable: it ran past the rate limit (with 50 us tolerance)."""
        if self.ratelimit <= RATELIMIT_TICKLE_TOLERANCE:
            return True
        return now - entry > self.ratelimit - RATELIMIT_TICKLE_TOLERANCE

    def _score(self, v, cpu: int, now: int) -> int:
        """tickle_score."""
        info = self._cur_info(cpu, now)
        if info is None or not info[2]:
            return -1
        credit, cur_soft_ok, _ = info
        score = v.sched.credit - credit
        if cpu != v.sched.processor:
            score -= self.resist
        if score > 0:
            _, soft = self.affinity(v)
            if not soft or cpu in soft:
                score += CREDIT_INIT
            if not cur_soft_ok:
                score += CREDIT_INIT
        return score

    def _tickle(self, v, now: int) -> None:
        """runq_tickle for v just queued here (this pCPU is its processor)."""
        self._fresh_view()
        ctx = self.ctx
        me = ctx.pcpu
        u = v.sched
        pc = self.pc
        hard, soft = self.affinity(v)
        idlers = self._idlers()
        idle = (idlers & self.rq_cpus) - pc.tickled
        ipid = -1
        if u.flags & F_PINNED and me in idle:
            ipid = me
        else:
            use_soft = has_soft_affinity(hard, soft, self.pool)
            for step in (0, 1):
                if step == 0 and not use_soft:
                    continue
                mask = balance_mask(step, hard, soft) & self.pool
                cands = idle & mask  # no SMT: every idle, untickled pCPU is a fully idle core
                if cands:
                    ipid = me if me in cands else cycle(me, cands)
                    break
            if ipid < 0:
                busy = sorted((self.rq_cpus - idlers - pc.tickled) & hard)
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
        pc.tickled.add(ipid)
        u.tickled_cpu = ipid
        if ipid == me:
            self._kick()
        else:
            ctx.tickle(ipid)
            self._ring()

    # --- ops table -------------------------------------------------------------------------------
    def insert(self, v, stolen: bool = False) -> None:
        now = self.ctx.now
        self._acc(now)
        pc = self.pc
        me = self.ctx.pcpu
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
            d = self.ctx.domains.get(v.dom)
            u.budget = 0 if d is not None and d.cap else None
        u.on_runq = False
        u.flags &= ~(F_SCHEDULED | F_DELAYED | F_PARK_PENDING)
        if u.rq != pc.rq:
            u.rq = pc.rq  # _runq_assign: a new runqueue, its own reset numbers
            u.gen = pc.gen
        elif u.gen < pc.gen:
            self._catch_up(u, pc.gen)
        if not stolen:
            u.processor = me
        hard, _ = self.affinity(v)
        if len(hard) == 1:
            u.flags |= F_PINNED
        else:
            u.flags &= ~F_PINNED
        if u.flags & F_PARKED:
            pc.parked.setdefault(v.dom, []).append(v.vid)
        if self._weight(v) > pc.max_weight:
            pc.max_weight = self._weight(v)  # update_max_weight
        if stolen:
            self._runq_insert(v)
            if v.vid in pc.pull_expect:
                pc.pull_expect.discard(v.vid)
                pc.pull_bypass = True
            self.ctx.raise_softirq()

    def remove(self, v) -> None:
        self._acc(self.ctx.now)
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

    def _forget_parked(self, v) -> None:
        lst = self.pc.parked.get(v.dom)
        if lst and v.vid in lst:
            lst.remove(v.vid)

    def migrate(self, v, new_pcpu: int) -> None:
        self._acc(self.ctx.now)
        self._runq_remove(v)
        self._forget_parked(v)

    def wake(self, v, migrating: bool = False) -> None:
        if v.vid == self._removing:
            return
        now = self.ctx.now
        self._acc(now)
        u = v.sched
        if self.ctx.curr is not v and not u.on_runq:
            if u.flags & F_SCHEDULED:
                u.flags |= F_DELAYED
            else:
                self._svc_load(u, 1, now, True)
                self._runq_insert(v)
                self._tickle(v, now)

    def sleep(self, v) -> None:
        now = self.ctx.now
        self._acc(now)
        u = v.sched
        if self.ctx.curr is v:
            self.ctx.raise_softirq()
        elif u.on_runq:
            self._svc_load(u, -1, now, False)
            self._runq_remove(v)
        else:
            u.flags &= ~F_DELAYED

    def yield_(self, v) -> None:
        v.sched.flags |= F_YIELD

    def adjust_affinity(self, v) -> None:
        hard, _ = self.affinity(v)
        if len(hard) == 1:
            v.sched.flags |= F_PINNED
        else:
            v.sched.flags &= ~F_PINNED

    def context_saved(self, v) -> None:
        now = self.ctx.now
        self._acc(now)
        u = v.sched
        u.flags &= ~F_SCHEDULED
        if u.flags & F_PARK_PENDING:
            u.flags &= ~F_PARK_PENDING
            self._park(v)
        if u.budget is not None and u.budget > 0:
            r = self.pc.reserve.get(v.dom, 0) + u.budget
            self.pc.reserve[v.dom] = r
            u.budget = 0
            unpark = r > 0
        else:
            unpark = False
        if u.flags & F_DELAYED and v.runnable():
            u.flags &= ~F_DELAYED
            self._runq_insert(v)
            self._tickle(v, now)
        else:
            u.flags &= ~F_DELAYED
            self._svc_load(u, -1, now, False)
        if unpark:
            self._unpark_dom(v.dom)

    def pick_pcpu(self, v, commit: bool) -> int:
        """csched2_res_pick: the least loaded runqueue of the (soft, then hard) affinity, then
        the next pCPU after the runqueue's pick bias."""
        u = v.sched
        hard, soft = self.affinity(v)
        if u.migrate_cpu >= 0 and u.migrate_cpu in hard:
            cpu = u.migrate_cpu
            if commit:
                u.migrate_cpu = -1
                u.flags &= ~F_MIGRATE_REQ
            return cpu
        rqv = self.ctx.view.extra.get("rq", {})
        use_soft = has_soft_affinity(hard, soft, self.pool)
        best = best_s = None
        for i, cpus in enumerate(self.rqs):
            if not hard & frozenset(cpus):
                continue
            load = rqv[i][2] if i in rqv else 0
            if i == u.rq:
                load = max(load - u.avgload, 0)
            if use_soft and (best_s is None or load < best_s[0]) and soft & hard & frozenset(cpus):
                best_s = (load, i)
            if best is None or load < best[0]:
                best = (load, i)
        if use_soft and best_s is not None:
            i = best_s[1]
            mask = hard & soft & frozenset(self.rqs[i])
        else:
            i = best[1]
            mask = hard & frozenset(self.rqs[i])
        cpu = cycle(self.pc.pick_bias.get(i, self.rqs[i][0]), mask)
        self.pc.pick_bias[i] = cpu
        return cpu

    # --- the decision ----------------------------------------------------------------------------
    def _candidate(self, scurr, now: int):
        """runq_candidate over this pCPU's slice; returns (snext, pull) where pull says a vCPU
        waiting on another pCPU would have come first in the shared runqueue."""
        me = self.ctx.pcpu
        pc = self.pc
        yield_ = False
        bypass = pc.pull_bypass
        pc.pull_bypass = False
        if scurr is None:
            snext = None
        else:
            su = scurr.sched
            yield_ = bool(su.flags & F_YIELD)
            su.flags &= ~F_YIELD
            runnable = scurr.runnable() and not su.flags & F_PARK_PENDING
            if not yield_ and not bypass and self.ratelimit and runnable and now - scurr.state_entry_ns < self.ratelimit:
                return scurr, False
            soft_aff_preempt = False
            hard, soft = self.affinity(scurr)
            if has_soft_affinity(hard, soft, self.pool):
                sm = balance_mask(0, hard, soft)
                if me not in sm:
                    idle = (self._idlers() - pc.tickled) & sm & self.pool
                    soft_aff_preempt = bool(idle - {me})
            snext = scurr if runnable and not soft_aff_preempt else None
        snext_credit = snext.sched.credit if snext is not None else IDLE_CREDIT
        local = None
        for v in list(pc.runq):
            u = v.sched
            if not v.runnable():
                continue
            if me not in self.affinity(v)[0]:
                continue
            if u.tickled_cpu >= 0 and u.tickled_cpu != me:
                continue  # reserved for the pCPU that was tickled for it
            if u.processor != me and snext_credit + self.resist > u.credit:
                continue
            local = u.credit
            if (yield_ or u.credit > snext_credit) and (u.budget is None or self._grab(v, running=False)):
                snext = v
            break
        pull = self._remote_first(local, snext_credit, yield_)
        return snext, pull

    def _remote_first(self, local_credit, snext_credit: int, yield_: bool) -> bool:
        """Would a vCPU queued on another pCPU of this runqueue (as of the last view) come
        before the local choice in runq_candidate's scan, and be taken?"""
        extra = self.ctx.view.extra
        q = extra.get("q", {}).get(self.pc.rq)
        if not q:
            return False
        me = self.ctx.pcpu
        for credit, vid, holder, tickled, processor, hard in q:
            if holder == me or vid in self.ctx.vcpus:
                continue
            if hard and me not in hard:
                continue
            if tickled >= 0 and tickled not in (me, holder):
                continue  # reserved for a third pCPU
            credit = self._remote_bonus(credit)
            if processor != me and snext_credit + self.resist > credit:
                continue
            if local_credit is not None and not credit > local_credit:
                return False
            return yield_ or credit > snext_credit
        return False

    def _runtime(self, snext, now: int, continuing: bool) -> int:
        """csched2_runtime."""
        if snext is None:
            return -1
        min_time = MIN_TIMER
        if self.ratelimit:
            rl = self.ratelimit
            if continuing:
                rl = snext.state_entry_ns + self.ratelimit - now
            min_time = max(min_time, rl)
        u = snext.sched
        rt_credit = u.credit
        swait = self.pc.runq[0].sched.credit if self.pc.runq else None
        q = self.ctx.view.extra.get("q", {}).get(self.pc.rq)
        if q:
            for credit, vid, holder, *_ in q:
                if holder != self.ctx.pcpu and vid not in self.ctx.vcpus:
                    credit = self._remote_bonus(credit)
                    if swait is None or credit > swait:
                        swait = credit
                    break
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

    def do_schedule(self, now: int, curr) -> Decision:
        self._acc(now)
        self._fresh_view()
        ctx = self.ctx
        pc = self.pc
        me = ctx.pcpu
        pc.tickled.discard(me)
        if curr is not None:
            cu = curr.sched
            self._burn(curr, now)
            if cu.budget is not None and cu.budget <= 0:
                self._grab(curr, running=True)
        snext, pull = self._candidate(curr, now)
        if pull and pc.rang_seq != ctx.view.extra.get("seq", 0):
            pc.rang_seq = ctx.view.extra.get("seq", 0)
            self._ring(PULL)
        if snext is not curr and curr is not None and curr.runnable() and not curr.sched.flags & F_PARK_PENDING:
            curr.sched.flags |= F_DELAYED
        if snext is None:
            return Decision(None, -1)
        su = snext.sched
        if snext is not curr:
            self._runq_remove(snext)
            su.flags |= F_SCHEDULED
        top = su.credit
        if pc.runq:
            top = max(top, pc.runq[0].sched.credit)
        q = ctx.view.extra.get("q", {}).get(pc.rq)
        if q:
            for credit, vid, holder, *_ in q:
                if holder != me and vid not in ctx.vcpus:
                    top = max(top, self._remote_bonus(credit))
                    break
        if top <= CREDIT_RESET:
            self._reset(now, snext)
        su.start_time = now
        su.tickled_cpu = -1
        if su.processor != me:
            su.credit += MIGRATE_COMPENSATION
            su.processor = me
        return Decision(snext, self._runtime(snext, now, snext is curr))

    def timer(self, name: str, now: int) -> None:
        """Credit2 arms no timers of its own (no tick): decisions carry their runtime."""

    # --- pool instructions -------------------------------------------------------------------------
    def apply_pool(self, instr: tuple) -> None:
        now = self.ctx.now
        self._acc(now)
        kind = instr[0]
        pc = self.pc
        if kind == "reset":
            _, rq, gen, amount = instr
            if rq == pc.rq:
                self._apply_reset(gen, amount, now)
        elif kind == "untickle":
            v = self.ctx.vcpus.get(instr[1])
            if v is not None and v.sched.tickled_cpu != self.ctx.pcpu:
                v.sched.tickled_cpu = -1
                self.ctx.raise_softirq()
        elif kind == "pulled":
            pc.pull_expect.add(instr[1])
        elif kind == "rq_migrate":
            v = self.ctx.vcpus.get(instr[1])
            if v is not None:
                v.sched.migrate_cpu = instr[2]
                v.sched.flags |= F_MIGRATE_REQ
                self.ctx.set_migrating(v)
        elif kind == "budget_set":
            _, uid, amount = instr
            pc.reserve[uid] = amount
            if amount > 0:
                self._unpark_dom(uid)
        elif kind == "cap_on":
            uid = instr[1]
            for vid in sorted(self.ctx.vcpus):
                v = self.ctx.vcpus[vid]
                if v.dom != uid or not isinstance(v.sched, Credit2Unit) or v.sched.budget is not None:
                    continue
                if v is self.ctx.curr:
                    self._burn(v, now)  # account what it ran uncapped first
                    self.ctx.raise_softirq()
                v.sched.budget = 0
        elif kind == "cap_off":
            uid = instr[1]
            for vid in sorted(self.ctx.vcpus):
                v = self.ctx.vcpus[vid]
                if v.dom == uid and isinstance(v.sched, Credit2Unit):
                    v.sched.budget = None
            pc.reserve.pop(uid, None)
            self._unpark_dom(uid)

    def summary(self):
        ctx = self.ctx
        now = ctx.now
        pc = self.pc
        cur = ctx.curr
        if cur is not None and isinstance(cur.sched, Credit2Unit):
            _, soft = self.affinity(cur)
            ci = (cur.vid, self._credit_at(cur, now), self._weight(cur), cur.state_entry_ns, (not soft) or ctx.pcpu in soft)
        else:
            ci = None
        if self._dirty:
            self._dirty = False
            queued = tuple((v.vid, v.sched.credit, v.sched.tickled_cpu, v.sched.processor) for v in pc.runq)
            # per-unit loads matter with several runqueues; demand for budget with caps
            every = len(self.rqs) > 1
            units = []
            max_w = 1
            for vid in sorted(ctx.vcpus):
                v = ctx.vcpus[vid]
                u = v.sched
                if not isinstance(u, Credit2Unit):
                    continue
                w = self._weight(v)
                if w > max_w:
                    max_w = w
                if every or u.budget is not None or u.flags & F_PARKED:
                    units.append((vid, u.avgload, u.load_last_update, int(v.runnable()), int(bool(u.flags & F_PARKED)), int(u.flags & F_MIGRATE_REQ != 0)))
            reserves = tuple(sorted((uid, r) for uid, r in pc.reserve.items()))
            self._cached = (queued, tuple(units), max_w, reserves, tuple(sorted(ctx.vcpus)))
        queued, units, max_w, reserves, held = self._cached
        area = pc.load_area + self._load_now() * max(now - pc.load_last_t, 0)
        return (now, pc.rq, pc.gen, ci, queued, units, area, self._load_now(), reserves, max_w, held)

    def udata_to_wire(self, udata) -> dict:
        return udata.to_wire() if isinstance(udata, Credit2Unit) else dict(udata or {})

    def udata_from_wire(self, d: dict):
        return Credit2Unit.from_wire(d) if d else {}

    def dump(self) -> dict:
        return {
            "rq": self.pc.rq,
            "gen": self.pc.gen,
            "runq": [(v.vid, v.sched.credit) for v in self.pc.runq],
            "reserve": dict(self.pc.reserve),
            "parked": {k: list(x) for k, x in self.pc.parked.items()},
        }


# ---------------------------------------------------------------------------------------------
# the pool half
# ---------------------------------------------------------------------------------------------


class Credit2Runqueue:
    """Runqueue-wide data (``struct csched2_runqueue_data``) the pool half keeps."""

    __slots__ = ("id", "cpus", "gen", "gen_amount", "max_weight", "load", "avgload", "b_avgload", "load_last_update", "pick_bias", "members")

    def __init__(self, rid: int, cpus: tuple[int, ...], now: int) -> None:
        self.id = rid
        self.cpus = cpus
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
        self.pending = "on" if cap else None


class Credit2Pool(PoolScheduler):
    """Pool-wide data (``struct csched2_private``): runqueues, domains, and the work that
    needs the shared runqueue (see the module comment)."""

    name = "credit2"

    def __init__(self, params: Credit2Params, cpus: tuple[int, ...], start_ns: int = 0):
        super().__init__(params, cpus, start_ns)
        self.pool = frozenset(cpus)
        self.rqs = [Credit2Runqueue(i, r, start_ns) for i, r in enumerate(runqueue_map(params, cpus))]
        self.rq_of = {c: rq.id for rq in self.rqs for c in rq.cpus}
        self.period = params.cap_period_ms * MS
        self.resist = params.migrate_resist_us * US
        self.W = params.load_window_shift - LOADAVG_GRANULARITY_SHIFT
        self.P = params.load_precision_shift
        self.doms: dict[int, Credit2Dom] = {}
        self.affinity: dict[int, tuple[frozenset, frozenset]] = {}
        self.unit_rq: dict[int, int] = {}
        self.unit_avg: dict[int, int] = {}
        self.last_area: dict[int, int] = {}
        self.resets: list[tuple[int, int, int, int]] = []  # (src, rq, gen, amount), in message order
        self.wants: set[int] = set()
        self.inflight: dict[int, int] = {}
        self.seq = 0
        self.view: dict = {"seq": 0, "rq": {r.id: (0, 1, 0, r.pick_bias, CREDIT_INIT) for r in self.rqs}, "cpu": {}, "q": {}}
        self.pending_work = False
        self.moves = {"tickled": 0, "idle": 0, "pull": 0, "balance": 0}  # gives by reason
        self.locate = None

    # --- domain table ----------------------------------------------------------------------
    def _set_aff(self, dom) -> None:
        for i in range(dom.nr_vcpus):
            hard = frozenset(dom.hard_affinity[i]) & self.pool if i < len(dom.hard_affinity) and dom.hard_affinity[i] else self.pool
            soft = frozenset(dom.soft_affinity[i]) if i < len(dom.soft_affinity) and dom.soft_affinity[i] else frozenset()
            self.affinity[make_vid(dom.uid, i)] = (hard or self.pool, soft)

    def add_domain(self, dom) -> None:
        self.doms[dom.uid] = Credit2Dom(dom.weight, dom.cap, dom.nr_vcpus)
        self._set_aff(dom)
        if dom.cap:
            self.pending_work = True

    def adjust(self, dom) -> None:
        """csched2_dom_cntl putinfo (weight, cap) and affinity changes."""
        sd = self.doms.get(dom.uid)
        if sd is None:
            return
        sd.weight = dom.weight
        sd.nr_units = dom.nr_vcpus
        if dom.cap != sd.cap:
            if dom.cap and not sd.cap:
                sd.pending = "on"
            elif sd.cap and not dom.cap:
                sd.pending = "off"
            else:
                sd.tot_budget = self.period * dom.cap // 100
            sd.cap = dom.cap
            self.pending_work = True
        self._set_aff(dom)

    def remove_domain(self, dom) -> None:
        self.doms.pop(dom.uid, None)
        for i in range(dom.nr_vcpus):
            vid = make_vid(dom.uid, i)
            self.affinity.pop(vid, None)
            self.inflight.pop(vid, None)
            rq = self.unit_rq.pop(vid, None)
            avg = self.unit_avg.pop(vid, 0)
            if rq is not None:
                r = self.rqs[rq]
                r.b_avgload = max(r.b_avgload - avg, 0)
                if vid in r.members:
                    r.members.remove(vid)

    def on_msg(self, src: int, payload: tuple) -> None:
        kind = payload[0]
        if kind == "reset":
            self.resets.append((src, payload[1], payload[2], payload[3]))
        elif kind == "budget_want":
            self.wants.add(payload[1])
        elif kind == "give_failed":
            self.inflight.pop(payload[1], None)

    # --- placement -----------------------------------------------------------------------------
    def place(self, vid: int, hint: int, summaries: dict, domain) -> int:
        """csched2_res_pick at insert: the least loaded runqueue, then its next pCPU."""
        if vid not in self.affinity:
            self._set_aff(domain)
        hard, soft = self.affinity.get(vid, (self.pool, frozenset()))
        use_soft = has_soft_affinity(hard, soft, self.pool)
        best = best_s = None
        for r in self.rqs:
            if not hard & frozenset(r.cpus):
                continue
            if use_soft and (best_s is None or r.b_avgload < best_s.b_avgload) and soft & hard & frozenset(r.cpus):
                best_s = r
            if best is None or r.b_avgload < best.b_avgload:
                best = r
        if use_soft and best_s is not None:
            r = best_s
            mask = hard & soft & frozenset(r.cpus)
        else:
            r = best
            mask = hard & frozenset(r.cpus)
        cpu = cycle(r.pick_bias, mask)
        r.pick_bias = cpu
        # _runq_assign: expected load of the runqueue with this unit (new units: 50 %)
        avg = 1 << (self.P - 1)
        old = self.unit_rq.get(vid)
        if old is not None:  # placed again (a failed migration): deassign first
            o = self.rqs[old]
            o.b_avgload = max(o.b_avgload - self.unit_avg.get(vid, 0), 0)
            if vid in o.members:
                o.members.remove(vid)
        self.unit_rq[vid] = r.id
        self.unit_avg[vid] = avg
        r.b_avgload += avg
        if vid not in r.members:
            r.members.append(vid)
            r.members.sort()
        return cpu

    # --- boundary --------------------------------------------------------------------------------
    def next_due(self, now: int) -> int:
        if self.pending_work:
            return now
        due = NEVER
        for sd in self.doms.values():
            if sd.cap and sd.next_repl < due:
                due = sd.next_repl
        return due

    def view_extra(self) -> dict:
        return self.view

    def boundary(self, now: int, summaries: dict, steal_reqs: list, first_round: bool) -> dict[int, list[tuple]]:
        out: dict[int, list[tuple]] = {}
        S = {c: s for c, s in summaries.items() if s is not None}
        self._update_loads(now, S)
        if first_round:
            self._caps(now, S, out)
        if self.resets:
            for _src, rqid, gen, amount in self.resets:  # in message order: (time, pCPU)
                r = self.rqs[rqid]
                if gen > r.gen:
                    r.gen = gen
                    r.gen_amount = amount
                    for c in r.cpus:
                        out.setdefault(c, []).append(("reset", rqid, gen, amount))
                    self._balance(r, now, S, out)
            self.resets = []
        if self.wants:
            for uid in sorted(self.wants):
                self._rebalance_budget(uid, S, out)
            self.wants = set()
        self._moves(now, S, steal_reqs, out)
        self._refresh_view(now, S)
        return out

    # --- loads and balancing -----------------------------------------------------------------------
    def _update_loads(self, now: int, S: dict) -> None:
        """update_runq_load for every runqueue, from the pCPUs' load integrals; max_weight;
        with several runqueues, membership (the svc lists) and b_avgload as _runq_assign and
        _runq_deassign keep it."""
        now_u = now >> LOADAVG_GRANULARITY_SHIFT
        multi = len(self.rqs) > 1
        seen = {u[0] for s in S.values() for u in s[5]} if multi else set()
        for r in self.rqs:
            area = 0
            load = 0
            members = []
            mw = 1
            for c in r.cpus:
                s = S.get(c)
                if s is None:
                    continue
                ts, a, ln, cmw = s[0], s[6], s[7], s[9]
                a_now = a + ln * max(now - ts, 0)
                area += max(a_now - self.last_area.get(c, a_now), 0)
                self.last_area[c] = a_now
                load += ln
                if cmw > mw:
                    mw = cmw
                if not multi:
                    continue
                for vid, avg, last_u, runnable, _parked, _mig in s[5]:
                    members.append(vid)
                    prev = self.unit_rq.get(vid)
                    if prev != r.id:
                        if prev is not None:
                            pr = self.rqs[prev]
                            pr.b_avgload = max(pr.b_avgload - self.unit_avg.get(vid, 0), 0)
                        r.b_avgload += avg
                        self.unit_rq[vid] = r.id
                    self.unit_avg[vid] = avg
            r.avgload = load_update(r.avgload, r.load_last_update, now_u, area >> LOADAVG_GRANULARITY_SHIFT, r.load, self.W, self.P)
            r.b_avgload = load_update(r.b_avgload, r.load_last_update, now_u, area >> LOADAVG_GRANULARITY_SHIFT, r.load, self.W, self.P)
            r.load_last_update = now_u
            r.load = load
            r.max_weight = mw
            if multi:
                r.members = sorted(set(members) | {v for v in r.members if self.unit_rq.get(v) == r.id and v in self.affinity and v not in seen})

    def _balance(self, lr: Credit2Runqueue, now: int, S: dict, out: dict) -> None:
        """balance_load after a reset on runqueue ``lr``."""
        if len(self.rqs) < 2:
            return
        P = self.P
        load_delta = 0
        max_rq = None
        for r in self.rqs:
            if r is lr:
                continue
            d = abs(lr.b_avgload - r.b_avgload)
            if d > load_delta:
                load_delta = d
                max_rq = r
        if max_rq is None:
            return
        last = self.rqs[-1]  # Xen reads the threshold inputs from the last runqueue scanned
        load_max = max(lr.b_avgload, last.b_avgload)
        cpus_max = max(len(lr.cpus), len(last.cpus))
        if load_max < (cpus_max << P):
            if load_delta < (1 << max(P + self.params.balance_under, 0)):
                return
        elif load_delta < (1 << max(P + self.params.balance_over, 0)):
            return
        orq = max_rq
        avg = {}
        mig = set()
        for s in S.values():
            for vid, a, last_u, runnable, _parked, m in s[5]:
                avg[vid] = svc_load_at(a, last_u, now >> LOADAVG_GRANULARITY_SHIFT, runnable, self.W, P)
                if m:
                    mig.add(vid)

        def migrateable(vid: int, r: Credit2Runqueue) -> bool:
            hard, _ = self.affinity.get(vid, (self.pool, frozenset()))
            return vid not in mig and vid not in self.inflight and bool(hard & frozenset(r.cpus))

        best = [load_delta, None, None]

        def consider(push, pull) -> None:
            lo, oo = lr.b_avgload, orq.b_avgload
            if push is not None:
                lo -= avg.get(push, 0)
                oo += avg.get(push, 0)
            if pull is not None:
                lo += avg.get(pull, 0)
                oo -= avg.get(pull, 0)
            d = abs(lo - oo)
            if d < best[0]:
                best[0], best[1], best[2] = d, push, pull

        lmem = [v for v in lr.members if v in avg]
        omem = [v for v in orq.members if v in avg]
        for push in lmem:
            if not migrateable(push, orq):
                continue
            for pull in omem:
                if migrateable(pull, lr):
                    consider(push, pull)
            consider(push, None)
        for pull in omem:
            if migrateable(pull, lr):
                consider(None, pull)
        if best[1] is not None:
            self._migrate(best[1], orq, lr, avg, out)
        if best[2] is not None:
            self._migrate(best[2], lr, orq, avg, out)

    def _migrate(self, vid: int, trq: Credit2Runqueue, frq: Credit2Runqueue, avg: dict, out: dict) -> None:
        """migrate(): the unit goes to a pCPU of ``trq`` (after its switch-out if running)."""
        hard, _ = self.affinity.get(vid, (self.pool, frozenset()))
        mask = hard & frozenset(trq.cpus)
        if not mask:
            return
        cpu = cycle(trq.pick_bias, mask)
        trq.pick_bias = cpu
        try:
            holder = self.locate(vid)
        except KeyError:
            return
        out.setdefault(holder, []).append(("rq_migrate", vid, cpu))
        self.moves["balance"] += 1
        a = avg.get(vid, 0)
        frq.b_avgload = max(frq.b_avgload - a, 0)
        trq.b_avgload += a
        self.unit_rq[vid] = trq.id
        self.unit_avg[vid] = a
        self.inflight[vid] = cpu

    # --- caps -------------------------------------------------------------------------------------
    def _demand(self, uid: int, S: dict) -> dict[int, int]:
        dem: dict[int, int] = {}
        held: dict[int, int] = {}
        for c in self.cpus:
            s = S.get(c)
            if s is None:
                continue
            for vid, _avg, _lu, runnable, parked, _m in s[5]:
                if vid_dom(vid) != uid:
                    continue
                held[c] = held.get(c, 0) + 1
                if runnable or parked:
                    dem[c] = dem.get(c, 0) + 1
        return dem or held or {min(self.cpus): 1}

    def _distribute(self, uid: int, total: int, S: dict, out: dict) -> None:
        """Split a domain's budget pool among the pCPUs by demand (``budget_set``)."""
        dem = self._demand(uid, S)
        D = sum(dem.values())
        top = min(dem, key=lambda c: (-dem[c], c))
        shares = {c: total * d // D for c, d in dem.items()}
        shares[top] += total - sum(shares.values())
        for c in self.cpus:
            s = S.get(c)
            had = s is not None and any(u == uid for u, _r in s[8])
            if c in shares or had:
                out.setdefault(c, []).append(("budget_set", uid, shares.get(c, 0)))

    def _reserves(self, uid: int, S: dict) -> int:
        return sum(r for s in S.values() for u, r in s[8] if u == uid)

    def _caps(self, now: int, S: dict, out: dict) -> None:
        """Cap changes and replenish_domain_budget for every capped domain due."""
        self.pending_work = False
        for uid in sorted(self.doms):
            sd = self.doms[uid]
            if sd.pending == "on":
                sd.pending = None
                sd.tot_budget = self.period * sd.cap // 100
                sd.next_repl = now + self.period
                for c in self.cpus:
                    out.setdefault(c, []).append(("cap_on", uid))
                self._distribute(uid, sd.tot_budget, S, out)
            elif sd.pending == "off":
                sd.pending = None
                sd.next_repl = NEVER
                for c in self.cpus:
                    out.setdefault(c, []).append(("cap_off", uid))
            elif sd.cap and sd.next_repl <= now:
                budget = self._reserves(uid, S)
                while sd.next_repl <= now:
                    sd.next_repl += self.period
                    budget += sd.tot_budget
                if budget > 0:
                    budget = min(budget, sd.tot_budget)
                self._distribute(uid, budget, S, out)

    def _rebalance_budget(self, uid: int, S: dict, out: dict) -> None:
        """A pCPU found no budget for the domain: gather what the others have left."""
        sd = self.doms.get(uid)
        if sd is None or not sd.cap:
            return
        total = self._reserves(uid, S)
        if total > 0:
            self._distribute(uid, total, S, out)

    # --- the shared runqueue: moves between pCPUs of a runqueue ---------------------------------
    def _moves(self, now: int, S: dict, steal_reqs: list, out: dict) -> None:
        queued: dict[int, list] = {r.id: [] for r in self.rqs}  # rq -> [(credit, vid, holder, tickled, processor)]
        cur: dict[int, tuple] = {}
        present: set[int] = set()
        local_head: dict[int, int] = {}
        for c in self.cpus:
            s = S.get(c)
            if s is None:
                continue
            ts, rqid, _gen, ci, q = s[:5]
            present.update(s[10])
            if ci is not None:
                vid, credit, weight, entry, soft_ok = ci
                r = self.rqs[self.rq_of[c]]
                mw = max(r.max_weight, 1)
                credit = max(credit - max(now - ts, 0) * mw // max(weight, 1), CREDIT_MIN)
                cur[c] = (vid, credit, entry)
            for vid, credit, tickled, processor in q:
                queued[self.rq_of[c]].append((credit, vid, c, tickled, processor))
            if q:
                local_head[c] = q[0][1]
        for vid in [v for v in self.inflight if v in present]:
            del self.inflight[vid]
        busy_target = {c for c in self.inflight.values()}
        moved: set[int] = set()

        def give(vid: int, holder: int, to: int, why: str) -> None:
            self.moves[why] += 1
            out.setdefault(holder, []).append(Give(vid, to))
            self.inflight[vid] = to
            moved.add(vid)
            busy_target.add(to)

        # (1) vCPUs tickled for another pCPU go there, if the tickle still holds with what
        # that pCPU runs now (runq_tickle decided from the last view; Xen from the truth)
        ratelimit = self.params.ratelimit_us * US
        for rqid in sorted(queued):
            for credit, vid, holder, tickled, processor in queued[rqid]:
                if tickled < 0 or tickled == holder or vid in self.inflight:
                    continue
                hard, _ = self.affinity.get(vid, (self.pool, frozenset()))
                ok = tickled in self.pool and self.rq_of.get(tickled) == rqid and tickled in hard and tickled not in busy_target
                if ok and tickled in cur:
                    _cv, cc, entry = cur[tickled]
                    score = credit - cc - (self.resist if processor != tickled else 0)
                    preemptable = ratelimit <= RATELIMIT_TICKLE_TOLERANCE or now - entry > ratelimit - RATELIMIT_TICKLE_TOLERANCE
                    ok = score > 0 and preemptable
                if ok:
                    give(vid, holder, tickled, "tickled")
                else:
                    out.setdefault(holder, []).append(("untickle", vid))
        # (2) idle pCPUs take the best vCPU waiting elsewhere in their runqueue
        for c in self.cpus:
            if c in cur or c in busy_target or c in local_head or S.get(c) is None:
                continue
            got = self._best_waiting(c, queued, moved, IDLE_CREDIT, None)
            if got is not None:
                give(got[1], got[2], c, "idle")
        # (3) pull requests, in request order
        for _t, c, kind in steal_reqs:
            if kind != PULL or c in busy_target:
                continue
            cc = cur[c][1] if c in cur else IDLE_CREDIT
            got = self._best_waiting(c, queued, moved, cc, local_head.get(c))
            if got is not None:
                give(got[1], got[2], c, "pull")
                out.setdefault(c, []).append(("pulled", got[1]))
        self._queued_view = {rid: tuple(sorted(((cr, vid, h, t, p) for cr, vid, h, t, p in lst if vid not in moved), key=lambda x: (-x[0], x[1]))) for rid, lst in queued.items()}
        self._cur_view = cur

    def _best_waiting(self, c: int, queued: dict, moved: set, snext_credit: int, local_head):
        """The first vCPU in credit order (ties: vid) waiting on another pCPU of c's runqueue
        that runq_candidate on c would take."""
        for credit, vid, holder, tickled, processor in sorted(queued[self.rq_of[c]], key=lambda x: (-x[0], x[1])):
            if holder == c or vid in moved or vid in self.inflight:
                continue
            hard, _ = self.affinity.get(vid, (self.pool, frozenset()))
            if c not in hard:
                continue
            if tickled >= 0 and tickled not in (c, holder):
                continue
            if processor != c and snext_credit + self.resist > credit:
                continue
            if local_head is not None and not credit > local_head:
                return None
            if credit > snext_credit:
                return (credit, vid, holder)
            return None
        return None

    def _refresh_view(self, now: int, S: dict) -> None:
        rq = {r.id: (r.gen, r.max_weight, r.b_avgload, r.pick_bias, r.gen_amount) for r in self.rqs}
        cpu = {}
        for c in self.cpus:
            s = S.get(c)
            if s is None or s[3] is None:
                continue
            ts, _rq, _gen, ci, *_ = s
            vid, credit, weight, entry, soft_ok = ci
            cpu[c] = (vid, credit, weight, entry, bool(soft_ok), ts)
        q = {}
        qv = getattr(self, "_queued_view", {})
        for rid, lst in qv.items():
            ent = []
            for credit, vid, holder, tickled, processor in lst:
                hard, _ = self.affinity.get(vid, (self.pool, frozenset()))
                ent.append((credit, vid, holder, tickled, processor, tuple(sorted(hard)) if hard != self.pool else ()))
            if ent:
                q[rid] = tuple(ent)
        new = {"rq": rq, "cpu": cpu, "q": q}
        old = {k: self.view[k] for k in ("rq", "cpu", "q")}
        if new != old:
            self.seq += 1
            new["seq"] = self.seq
            self.view = new

    def dump(self) -> dict:
        return {
            "runqueues": [
                {"id": r.id, "cpus": list(r.cpus), "gen": r.gen, "max_weight": r.max_weight, "load": r.load, "avgload": r.avgload, "b_avgload": r.b_avgload, "members": list(r.members)}
                for r in self.rqs
            ],
            "caps": {uid: {"cap": d.cap, "tot_budget": d.tot_budget, "next_repl": d.next_repl} for uid, d in self.doms.items() if d.cap},
            "moves": dict(self.moves),
        }


ENTRY = register(
    SchedulerEntry(
        name="credit2",
        sched_id=6,
        params=Credit2Params,
        pcpu=Credit2Scheduler,
        pool=Credit2Pool,
        summary="credit in ns burnt by weight, runqueues ordered by credit, load balancing, caps by budget (Xen's default)",
    )
)

__all__ = ["Credit2Params", "Credit2Scheduler", "Credit2Pool", "runqueue_map"]
