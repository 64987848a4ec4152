"""Credit2's pool half: runqueues, placement, and the work that needs the shared runqueue.

What it does. :class:`Credit2Pool` (Xen's ``csched2_private``) keeps the runqueues, the
domains and every vCPU's affinity, places vCPUs entering the pool (``place``), and at each
boundary does, from the pCPUs' summaries, what the shared runqueue does in Xen (see the
package comment): it tracks loads and runs the balancer (``balance.Credit2Balancer``),
refills capped domains' budgets (``caps.Credit2PoolBudget``), relays credit resets, moves
tickled vCPUs to the pCPU tickled for them, feeds idle pCPUs and answers pull requests
(``_moves``), and publishes the view every pCPU decides from (``Credit2View``).

Which function does each step: ``place`` (csched2_res_pick at insert, through
``records.res_pick``, and _runq_assign), ``boundary`` (the order below), ``_moves`` and
``_best_waiting`` (runq_tickle's and runq_candidate's effect across pCPUs), ``_refresh_view``.

Ordering and determinism. At a boundary: loads, caps (first round only), resets (in message
order, each followed by the balancer), budget requests (by domain uid), moves of tickled
vCPUs (runqueues by id, then queue order), idle pCPUs (by id), pull requests (in request
order). Waiting vCPUs are ranked by credit, ties by vid. The view's ``seq`` grows only when
its content changes.
"""

from __future__ import annotations

from typing import Any, Final, Mapping, Sequence

from hosts.clock import MS, NEVER, US
from hosts.domain import DomainInfo
from hosts.sched.affinity import cycle
from hosts.sched.base import unknown
from hosts.sched.credit2.balance import Credit2Balancer
from hosts.sched.credit2.params import CREDIT_INIT, IDLE_CREDIT, LOADAVG_GRANULARITY_SHIFT, PULL, Credit2Params
from hosts.sched.credit2.records import Credit2Dom, Credit2Runqueue, extrapolate, is_preemptable, may_take, res_pick, runqueue_map
from hosts.sched.messages import (
    Credit2BudgetWant,
    Credit2CpuView,
    Credit2Curr,
    Credit2Pulled,
    Credit2Queued,
    Credit2Reset,
    Credit2RqView,
    Credit2Summary,
    Credit2Untickle,
    Credit2View,
    Credit2Waiting,
    Give,
    GiveFailed,
    Instruction,
    PoolMsg,
    StealRequest,
)
from hosts.vcpu import make_vid

Out = dict[int, list[Instruction]]
#: builds a NamedTuple without its Python-level __new__ (views and moves at every boundary)
_new: Final = tuple.__new__
#: message classes as native constants: a NamedTuple class is otherwise looked up in this
#: module's globals at each use
_Credit2Waiting: Final = Credit2Waiting
_Credit2CpuView: Final = Credit2CpuView
_Credit2RqView: Final = Credit2RqView
_Credit2View: Final = Credit2View
_Give: Final = Give
_Credit2Untickle: Final = Credit2Untickle
_Credit2Pulled: Final = Credit2Pulled
#: a vCPU waiting on a pCPU, as the boundary ranks it: (-credit, vid, position, holder, entry);
#: sorted as plain tuples (credit order, ties by vid, then by position: a stable sort's order)
Ranked = tuple[int, int, int, int, Credit2Queued]
#: a runqueue's pCPUs' queues as the summaries hold them: (holder, queue) in pCPU order
Parts = list[tuple[int, tuple[Credit2Queued, ...]]]


class _RankedRq:
    """A runqueue's waiting vCPUs ranked, with their view entries, kept while its pCPUs' queues
    are the same objects (a pCPU's summary reuses its queue while it is unchanged)."""

    __slots__ = ("parts", "ranked", "waiting", "waiting_t")

    def __init__(self, parts: Parts, ranked: list[Ranked], waiting: list[Credit2Waiting]) -> None:
        self.parts = parts
        self.ranked = ranked
        self.waiting = waiting
        self.waiting_t = tuple(waiting)


class _Wait:
    """A vCPU's view entry and the queue entry and holder it was made from."""

    __slots__ = ("q", "holder", "w")

    def __init__(self, q: Credit2Queued, holder: int, w: Credit2Waiting) -> None:
        self.q = q
        self.holder = holder
        self.w = w


class Credit2Pool(Credit2Balancer):
    """Pool-wide data (``struct csched2_private``): runqueues, domains, and the work that
    needs the shared runqueue (see the package comment)."""

    name = "credit2"
    params: Credit2Params

    def __init__(self, params: Credit2Params, cpus: tuple[int, ...], start_ns: int = 0) -> None:
        super().__init__(params, cpus, start_ns)
        self.rqs = [Credit2Runqueue(i, r, start_ns) for i, r in enumerate(runqueue_map(params, cpus))]
        self.rq_sets = [r.cpuset for r in self.rqs]
        self.rq_of = {c: rq.id for rq in self.rqs for c in rq.cpus}
        self.period = params.cap_period_ms * MS
        self.resist = params.migrate_resist_us * US
        self.ratelimit = params.ratelimit_us * US
        self.W = params.load_window_shift - LOADAVG_GRANULARITY_SHIFT
        self.P = params.load_precision_shift
        self.doms: dict[int, Credit2Dom] = {}
        self.unit_rq: dict[int, int] = {}
        self.unit_avg: dict[int, int] = {}
        self.last_area: dict[int, int] = {}
        self.resets: list[tuple[int, Credit2Reset]] = []  # (src, reset), in message order
        self.wants: set[int] = set()
        self.inflight: dict[int, int] = {}
        self.seq = 0
        self.view = Credit2View(0, {r.id: Credit2RqView(0, 1, 0, r.pick_bias, CREDIT_INIT) for r in self.rqs}, {}, {})
        self._ranked: dict[int, _RankedRq] = {}  # runqueue -> its ranking at the last boundary
        self._waits: dict[int, _Wait] = {}  # vid -> its last view entry (a unit's queue entry is reused while unchanged)
        self._cpu_view: dict[int, tuple[Credit2Summary, Credit2CpuView]] = {}  # pCPU -> its entry and the summary it is of
        self.pending_work = False
        self.moves = {"tickled": 0, "idle": 0, "pull": 0, "balance": 0}  # gives by reason

    # --- domain table ----------------------------------------------------------------------
    def _masks_changed(self) -> None:
        """Forget the view entries kept from earlier boundaries: they carry hard affinities."""
        self._ranked = {}
        self._waits = {}

    def add_domain(self, dom: DomainInfo) -> None:
        self._masks_changed()
        self.doms[dom.uid] = Credit2Dom(dom.weight, dom.cap, dom.nr_vcpus)
        self.set_affinity(dom)
        if dom.cap:
            self.pending_work = True

    def adjust(self, dom: DomainInfo) -> None:
        """csched2_dom_cntl putinfo (weight, cap) and affinity changes."""
        self._masks_changed()
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
        self.set_affinity(dom)

    def remove_domain(self, dom: DomainInfo) -> None:
        self._masks_changed()
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

    def on_msg(self, src: int, payload: PoolMsg) -> None:
        match payload:
            case Credit2Reset():
                self.resets.append((src, payload))
            case Credit2BudgetWant():
                self.wants.add(payload.uid)
            case GiveFailed(vid, _):
                self.inflight.pop(vid, None)
            case _:
                raise unknown("pool half", self.name, payload)

    # --- placement -----------------------------------------------------------------------------
    def place(self, vid: int, hint: int, summaries: Mapping[int, Credit2Summary | None], domain: DomainInfo) -> int:
        """csched2_res_pick at insert: the least loaded runqueue, then its next pCPU."""
        if vid not in self.affinity:
            self._masks_changed()
            self.set_affinity(domain)
        hard, soft = self.masks(vid)
        i, mask = res_pick(hard, soft, self.pool, self.rq_sets, [r.b_avgload for r in self.rqs])
        r = self.rqs[i]
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

    def view_extra(self) -> Credit2View:
        return self.view

    def boundary(self, now: int, summaries: Mapping[int, Credit2Summary | None], steal_reqs: Sequence[StealRequest], first_round: bool) -> Out:
        out: Out = {}
        S = {c: s for c, s in summaries.items() if s is not None}
        self._update_loads(now, S)
        if first_round:
            self._caps(now, S, out)
        if self.resets:
            for _src, m in self.resets:  # in message order: (time, pCPU)
                r = self.rqs[m.rq]
                if m.gen > r.gen:
                    r.gen = m.gen
                    r.gen_amount = m.amount
                    for c in r.cpus:
                        out.setdefault(c, []).append(m)
                    self._balance(r, now, S, out)
            self.resets = []
        if self.wants:
            for uid in sorted(self.wants):
                self._rebalance_budget(uid, S, out)
            self.wants = set()
        moved = self._moves(now, S, steal_reqs, out)
        self._refresh_view(S, moved)
        return out

    # --- the shared runqueue: moves between pCPUs of a runqueue ---------------------------------
    def _parts(self, S: dict[int, Credit2Summary]) -> dict[int, Parts]:
        """Per runqueue, its pCPUs' queues in pCPU order."""
        parts: dict[int, Parts] = {r.id: [] for r in self.rqs}
        rq_of = self.rq_of
        for c in self.cpus:
            s = S.get(c)
            if s is not None and s.queued:
                parts[rq_of[c]].append((c, s.queued))
        return parts

    def _rank(self, rid: int, parts: Parts) -> _RankedRq:
        """Runqueue ``rid``'s waiting vCPUs in credit order (ties by vid), kept while its
        pCPUs' queues are the same objects."""
        old = self._ranked.get(rid)
        if old is not None and len(old.parts) == len(parts):
            same = True
            for (c0, q0), (c1, q1) in zip(old.parts, parts):
                if c0 != c1 or q0 is not q1:
                    same = False
                    break
            if same:
                return old
        ranked: list[Ranked] = []
        i = 0
        for c, qs in parts:
            for q in qs:
                ranked.append((-q.credit, q.vid, i, c, q))
                i += 1
        ranked.sort()
        pool = self.pool
        waits = self._waits
        waiting = []
        for _k, vid, _i, holder, q in ranked:
            e = waits.get(vid)
            if e is None or e.q is not q or e.holder != holder:
                hard = self._hard(vid)
                w = _new(_Credit2Waiting, (q.credit, vid, holder, q.tickled, q.processor, () if hard is pool or hard == pool else tuple(sorted(hard))))
                if e is None:
                    e = waits[vid] = _Wait(q, holder, w)
                else:
                    e.q = q
                    e.holder = holder
                    e.w = w
            waiting.append(e.w)
        r = self._ranked[rid] = _RankedRq(parts, ranked, waiting)
        return r

    def _hard(self, vid: int) -> frozenset[int]:
        """masks(vid)[0], without building the default."""
        m = self.affinity.get(vid)
        return m[0] if m is not None else self.pool

    def _cur(self, c: int, ci: Credit2Curr, s: Credit2Summary, now: int) -> int:
        """The credit now of what pCPU c runs (its summary's, burnt since)."""
        mw = max(self.rqs[self.rq_of[c]].max_weight, 1)
        return extrapolate(ci.credit, now - s.now, mw, ci.weight)

    def _give(self, vid: int, holder: int, to: int, why: str, out: Out, moved: set[int], busy_target: set[int]) -> None:
        self.moves[why] += 1
        out.setdefault(holder, []).append(_new(_Give, (vid, to)))
        self.inflight[vid] = to
        moved.add(vid)
        busy_target.add(to)

    def _moves(self, now: int, S: dict[int, Credit2Summary], steal_reqs: Sequence[StealRequest], out: Out) -> set[int]:
        """Returns the vids given away."""
        parts = self._parts(S)
        inflight = self.inflight
        if inflight:
            arrived = [vid for vid in inflight if any(vid in s.held for s in S.values())]
            for vid in arrived:
                del inflight[vid]
        busy_target = set(inflight.values())
        moved: set[int] = set()
        ranks: dict[int, _RankedRq] = {}

        # (1) vCPUs tickled for another pCPU go there, if the tickle still holds with what
        # that pCPU runs now (runq_tickle decided from the last view; Xen from the truth)
        for r in self.rqs:  # by id
            rqid = r.id
            for holder, qs in parts[rqid]:
                for q in qs:
                    tickled = q.tickled
                    if tickled < 0 or tickled == holder:
                        continue
                    vid = q.vid
                    if vid in inflight:
                        continue
                    hard = self._hard(vid)
                    ok = tickled in self.pool and self.rq_of.get(tickled) == rqid and tickled in hard and tickled not in busy_target
                    if ok:
                        st = S.get(tickled)
                        ci = st.curr if st is not None else None
                        if st is not None and ci is not None:
                            score = q.credit - self._cur(tickled, ci, st, now) - (self.resist if q.processor != tickled else 0)
                            ok = score > 0 and is_preemptable(ci.entry_ns, now, self.ratelimit)
                    if ok:
                        self._give(vid, holder, tickled, "tickled", out, moved, busy_target)
                    else:
                        out.setdefault(holder, []).append(_new(_Credit2Untickle, (vid,)))
        # (2) idle pCPUs take the best vCPU waiting elsewhere in their runqueue
        for c in self.cpus:
            s = S.get(c)
            if s is None or s.curr is not None or s.queued or c in busy_target:
                continue
            rid = self.rq_of[c]
            if not parts[rid]:
                continue  # nothing waits in its runqueue
            rk = ranks.get(rid)
            if rk is None:
                rk = ranks[rid] = self._rank(rid, parts[rid])
            got = self._best_waiting(c, rk.ranked, moved, IDLE_CREDIT, None)
            if got is not None:
                self._give(got[0], got[1], c, "idle", out, moved, busy_target)
        # (3) pull requests, in request order
        for _t, c, kind in steal_reqs:
            if kind != PULL or c in busy_target:
                continue
            s = S.get(c)
            cc = IDLE_CREDIT
            head: int | None = None
            if s is not None:
                ci = s.curr
                if ci is not None:
                    cc = self._cur(c, ci, s, now)
                if s.queued:
                    head = s.queued[0].credit
            rid = self.rq_of[c]
            rk = ranks.get(rid)
            if rk is None:
                rk = ranks[rid] = self._rank(rid, parts[rid])
            got = self._best_waiting(c, rk.ranked, moved, cc, head)
            if got is not None:
                self._give(got[0], got[1], c, "pull", out, moved, busy_target)
                out.setdefault(c, []).append(_new(_Credit2Pulled, (got[0],)))
        for rid in parts:
            if rid not in ranks:
                ranks[rid] = self._rank(rid, parts[rid])
        return moved

    def _best_waiting(self, c: int, ranked: list[Ranked], moved: set[int], snext_credit: int, local_head: int | None) -> tuple[int, int] | None:
        """(vid, holder) of the first vCPU in credit order (ties: vid) waiting on another pCPU
        of c's runqueue that runq_candidate on c would take."""
        for _k, vid, _i, holder, q in ranked:
            if holder == c or vid in moved or vid in self.inflight:
                continue
            if c not in self._hard(vid):
                continue
            credit = q.credit
            if not may_take(c, holder, q.tickled, q.processor, credit, snext_credit, self.resist):
                continue
            if local_head is not None and not credit > local_head:
                return None
            if credit > snext_credit:
                return (vid, holder)
            return None
        return None

    def _refresh_view(self, S: dict[int, Credit2Summary], moved: set[int]) -> None:
        v = self.view
        # entries equal to the last view's are that view's (a cheap comparison below)
        rq: dict[int, Credit2RqView] = {}
        for r in self.rqs:
            e = v.rq.get(r.id)
            if e is None or e.gen != r.gen or e.max_weight != r.max_weight or e.load != r.b_avgload or e.pick_bias != r.pick_bias or e.gen_amount != r.gen_amount:
                e = _new(_Credit2RqView, (r.gen, r.max_weight, r.b_avgload, r.pick_bias, r.gen_amount))
            rq[r.id] = e
        cpu: dict[int, Credit2CpuView] = {}
        cache = self._cpu_view
        for c in self.cpus:
            s = S.get(c)
            if s is None:
                continue
            ci = s.curr
            if ci is None:
                continue
            got = cache.get(c)
            if got is not None and got[0] is s:
                cv = got[1]
            else:
                # fields copied as the objects they are (typed, they would be unboxed and boxed anew)
                cf: tuple[Any, ...] = ci
                sf: tuple[Any, ...] = s
                cv = _new(_Credit2CpuView, (cf[0], cf[1], cf[2], cf[3], bool(ci.soft_ok), sf[0]))
                cache[c] = (s, cv)
            cpu[c] = cv
        q: dict[int, tuple[Credit2Waiting, ...]] = {}
        for r in self.rqs:
            rid = r.id
            rk = self._ranked.get(rid)
            if rk is None or not rk.ranked:
                continue
            if not moved:
                q[rid] = rk.waiting_t
                continue
            ent = [w for w in rk.waiting if w.vid not in moved]
            if ent:
                q[rid] = tuple(ent)
        if (rq, cpu, q) != (v.rq, v.cpu, v.q):
            self.seq += 1
            self.view = _new(_Credit2View, (self.seq, rq, cpu, q))

    def dump(self) -> dict[str, Any]:
        return {
            "runqueues": [
                {"id": r.id, "cpus": list(r.cpus), "gen": r.gen, "max_weight": r.max_weight, "load": r.load, "avgload": r.avgload, "b_avgload": r.b_avgload, "members": list(r.members)}
                for r in self.rqs
            ],
            "caps": {uid: {"cap": d.cap, "tot_budget": d.tot_budget, "next_repl": d.next_repl} for uid, d in self.doms.items() if d.cap},
            "moves": dict(self.moves),
        }

