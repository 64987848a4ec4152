"""Credit2's per-pCPU state: this pCPU's slice of its runqueue, credit burn and resets.

What it does. :class:`Credit2Slice` is the base of the per-pCPU half: it holds the pCPU's
private data (``Credit2Pcpu``) and its slice of the runqueue (the vCPUs assigned here, by
credit), burns credit, keeps the load integral the pool half samples, applies credit resets
(numbered, once per vCPU) and reads the pool's ``Credit2View``. The budget
(``caps.Credit2PcpuBudget``) and the hooks (``pcpu.Credit2Scheduler``) build on it.

Which function does each step: ``_burn`` (burn_credits, t2c_update), ``_credit_at`` (the same
without storing it), ``_runq_insert`` (runq_insert), ``_svc_load`` (update_svc_load),
``_update_max_weight`` (update_max_weight), ``_reset`` and ``_apply_reset`` (reset_credit),
``_fresh_view`` (what a new view changes), ``_remote_bonus`` and ``_remote_head`` (the credits
of vCPUs queued on other pCPUs, as of the view, with the resets applied here since).

Ordering and determinism. A reset visits the vCPUs held here in vid order; the runqueue is
in credit order, FIFO among equals.
"""

from __future__ import annotations

from typing import Callable, Final, TYPE_CHECKING

from hosts.clock import MS, US
from hosts.domain import DomainInfo
from hosts.sched.affinity import Masks
from hosts.sched.base import PcpuScheduler, SchedContext
from hosts.sched.credit2.params import CARRYOVER_MAX, CREDIT_INIT, CREDIT_MIN, DEFAULT_WEIGHT, F_PINNED, GEN_HISTORY, LOADAVG_GRANULARITY_SHIFT, RING, Credit2Params
from hosts.sched.credit2.records import Credit2Pcpu, Credit2Unit, runqueue_map, svc_load_at
from hosts.sched.messages import Credit2Curr, Credit2Load, Credit2Queued, Credit2Reserve, Credit2Reset, Credit2View, PoolView
from hosts.tracelog import TRC_CSCHED2_CREDIT_BURN, TRC_CSCHED2_CREDIT_RESET, TRC_CSCHED2_RUNQ_POS

INT_MIN: Final = -(1 << 31)

if TYPE_CHECKING:  # pragma: no cover
    from hosts.vcpu import VcpuState

#: the view before the pool half sent one
NO_VIEW: Final = Credit2View(0, {}, {}, {})
_UNSEEN: Final = object()

# (units, max_weight, reserves) of a summary, rebuilt only when a hook ran since
_Cached = tuple[tuple[Credit2Load, ...], int, tuple[Credit2Reserve, ...]]

class Credit2Slice(PcpuScheduler):
    """The per-pCPU half's state and the operations on it (see the module comment)."""

    name = "credit2"
    unit_type = Credit2Unit
    keeps_record = True  # pc.runq and pc.parked let go of a vCPU that leaves
    params: Credit2Params

    def __init__(self, ctx: SchedContext, params: Credit2Params) -> None:
        super().__init__(ctx, params)
        p = params
        self.rqs = runqueue_map(p, ctx.view.cpus)
        self.rq_sets = [frozenset(r) for r in self.rqs]
        rq = next(i for i, r in enumerate(self.rqs) if ctx.pcpu in r)
        self.rq_cpus = self.rq_sets[rq]
        self.pc = Credit2Pcpu(rq, ctx.now)
        self.pc.pick_bias = {i: r[0] for i, r in enumerate(self.rqs)}
        self.ratelimit = p.ratelimit_us * US
        self.resist = p.migrate_resist_us * US
        self.period = p.cap_period_ms * MS
        self.W = p.load_window_shift - LOADAVG_GRANULARITY_SHIFT
        self.P = p.load_precision_shift
        self._seen_view: object = _UNSEEN
        self._view_gen = 0
        self._removing = -1
        self._dirty = True
        self._cached: _Cached = ((), 1, ())
        self._queued: tuple[Credit2Queued, ...] = ()  # the last summary's queue and held vids
        self._held_vids: tuple[int, ...] = ()
        self._held_moved = True  # a vCPU came or went since _held_vids
        self._ci: Credit2Curr | None = None  # the last summary's current vCPU
        # read once: the engine's attributes are reached through a protocol (slow reads); it
        # mutates these objects, never replaces them
        self.me = ctx.pcpu
        self.pview: PoolView = ctx.view
        self.held: dict[int, VcpuState] = ctx.vcpus
        self.doms: dict[int, DomainInfo] = ctx.domains
        self.rq_list = self.rqs[rq]  # this runqueue's pCPUs in id order
        self.ring_any = len(self.rq_cpus) > 1 or len(self.rqs) > 1  # a plain ring can do something
        # the engine's methods called most, bound once (a call through the protocol looks them up)
        self._request_steal: Callable[[int], None] = ctx.request_steal
        self._raise_softirq: Callable[[], None] = ctx.raise_softirq
        self._tickle_cpu: Callable[[int], None] = ctx.tickle
        self.tracing = ctx.tracing  # fixed before the scheduler is made

    # --- helpers -------------------------------------------------------------------------
    def _view(self) -> Credit2View:
        x = self.pview.extra
        return x if type(x) is Credit2View else NO_VIEW

    def _weight(self, v: "VcpuState") -> int:
        d = self.doms.get(v.dom)
        return d.weight if d is not None else DEFAULT_WEIGHT

    def _aff(self, v: "VcpuState") -> Masks:
        """``affinity(v)``, kept on the unit while the vCPU's affinity tuples are the same objects."""
        u: Credit2Unit = v.sched
        h = v.hard_affinity
        s = v.soft_affinity
        if u.aff_h is not h or u.aff_s is not s:
            u.hard, u.soft = self.affinity(v)
            u.aff_h = h
            u.aff_s = s
        return u.hard, u.soft

    def _idlers(self) -> frozenset[int]:
        """Xen's rqd->idle: the others as of the last view, this pCPU as it is now."""
        me = self.me
        idle = frozenset(self.pview.idlers) - {me}
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
        """On a new view: forget its tickles and budget asks, catch up a reset it shows."""
        extra = self.pview.extra
        if extra is self._seen_view:
            return
        self._seen_view = extra
        pc = self.pc
        pc.tickled.clear()
        pc.asked.clear()
        rqv = self._view().rq.get(pc.rq)
        if rqv is not None:
            if rqv.gen > pc.gen:  # a reset we only learn of from the view (instruction lost)
                self._apply_reset(rqv.gen, rqv.gen_amount, self.ctx.now)
            self._view_gen = rqv.gen
        else:
            self._view_gen = pc.gen
        self._update_max_weight()

    def _update_max_weight(self) -> None:
        rqv = self._view().rq.get(self.pc.rq)
        mw = rqv.max_weight if rqv is not None else 1
        for v in self.held.values():
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

    def _remote_head(self, view: Credit2View) -> int | None:
        """The credit of the best vCPU waiting on another pCPU of this runqueue (view)."""
        q = view.q.get(self.pc.rq)
        if q:
            held = self.held
            me = self.me
            for w in q:
                if w.holder != me and w.vid not in held:
                    return self._remote_bonus(w.credit)
        return None

    def _burn(self, v: "VcpuState", now: int) -> None:
        """burn_credits / t2c_update."""
        u: Credit2Unit = v.sched
        delta = now - u.start_time
        if delta > 0:
            val = delta * self.pc.max_weight + u.residual
            w = self._weight(v)
            q = val // w
            u.residual = val - q * w  # val % w
            u.credit = max(u.credit - q, CREDIT_MIN)
            if u.budget is not None:
                u.budget -= delta
            u.start_time = now
        if self.tracing:  # {unit:16, dom:16}, credit, budget (INT_MIN: no cap), delta
            self.ctx.trace(TRC_CSCHED2_CREDIT_BURN, self.ctx.trace_id(v), u.credit, INT_MIN if u.budget is None else u.budget, delta)

    def _credit_at(self, v: "VcpuState", now: int) -> int:
        """The credit v would have after burning up to now (not stored)."""
        u: Credit2Unit = v.sched
        delta = now - u.start_time
        if delta <= 0:
            return u.credit
        return max(u.credit - (delta * self.pc.max_weight + u.residual) // self._weight(v), CREDIT_MIN)

    def _c2t(self, credit: int, v: "VcpuState") -> int:
        return credit * self._weight(v) // self.pc.max_weight

    def _runq_insert(self, v: "VcpuState") -> None:
        """runq_insert: by credit, after those with as much."""
        runq = self.pc.runq
        u: Credit2Unit = v.sched
        c = u.credit
        i = 0
        n = len(runq)
        while i < n:
            ou: Credit2Unit = runq[i].sched
            if c > ou.credit:
                break
            i += 1
        runq.insert(i, v)
        u.on_runq = True
        if self.tracing:  # {unit:16, dom:16}, pos
            self.ctx.trace(TRC_CSCHED2_RUNQ_POS, self.ctx.trace_id(v), i)

    def _runq_remove(self, v: "VcpuState") -> None:
        u: Credit2Unit = v.sched
        if u.on_runq:
            self.pc.runq.remove(v)
            u.on_runq = False

    def _ring(self, kind: int = RING) -> None:
        if self.ring_any or kind != RING:
            self._request_steal(kind)

    def _kick(self) -> None:
        """Make this pCPU reschedule (the engine's softirq loop runs it at this instant, also
        when raised from inside schedule())."""
        self._raise_softirq()

    def _set_pinned(self, v: "VcpuState") -> None:
        u: Credit2Unit = v.sched
        if len(self._aff(v)[0]) == 1:
            u.flags |= F_PINNED
        else:
            u.flags &= ~F_PINNED

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
            start = u.credit
            self._catch_up(u, gen)
            u.start_time = now
            if self.tracing:  # {unit:16, dom:16}, credit_start, credit_end
                self.ctx.trace(TRC_CSCHED2_CREDIT_RESET, self.ctx.trace_id(v), start, u.credit)

    def _catch_up(self, u: Credit2Unit, upto: int) -> None:
        hist = self.pc.gen_hist
        first = max(u.gen + 1, upto - GEN_HISTORY + 1)
        for g in range(first, upto + 1):
            u.credit = min(u.credit + hist.get(g, CREDIT_INIT), CREDIT_INIT + CARRYOVER_MAX)
        u.gen = max(u.gen, upto)

    def _reset(self, now: int, snext: "VcpuState") -> None:
        su: Credit2Unit = snext.sched
        amount = CREDIT_INIT * (2 if su.credit == CREDIT_MIN else 1)
        gen = self.pc.gen + 1
        self._apply_reset(gen, amount, now)
        self.ctx.pool_msg(Credit2Reset(self.pc.rq, gen, amount))
        self._ring()
