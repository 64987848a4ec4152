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
    Credit2Pulled,
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
#: a vCPU waiting on a pCPU, as the boundary ranks it: (credit, vid, holder, tickled, processor)
Queued = tuple[int, int, int, int, int]


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
        self._queued_view: dict[int, tuple[Queued, ...]] = {}
        self.pending_work = False
        self.moves = {"tickled": 0, "idle": 0, "pull": 0, "balance": 0}  # gives by reason

    # --- domain table ----------------------------------------------------------------------
    def add_domain(self, dom: DomainInfo) -> None:
        self.doms[dom.uid] = Credit2Dom(dom.weight, dom.cap, dom.nr_vcpus)
        self.set_affinity(dom)
        if dom.cap:
            self.pending_work = True

    def adjust(self, dom: DomainInfo) -> None:
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
        self.set_affinity(dom)

    def remove_domain(self, dom: DomainInfo) -> None:
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
        self._moves(now, S, steal_reqs, out)
        self._refresh_view(S)
        return out

    # --- the shared runqueue: moves between pCPUs of a runqueue ---------------------------------
    def _moves(self, now: int, S: dict[int, Credit2Summary], steal_reqs: Sequence[StealRequest], out: Out) -> None:
        queued: dict[int, list[Queued]] = {r.id: [] for r in self.rqs}
        cur: dict[int, tuple[int, int]] = {}  # pCPU -> (credit now, entry_ns) of what it runs
        present: set[int] = set()
        local_head: dict[int, int] = {}
        for c in self.cpus:
            s = S.get(c)
            if s is None:
                continue
            present.update(s.held)
            ci = s.curr
            if ci is not None:
                mw = max(self.rqs[self.rq_of[c]].max_weight, 1)
                cur[c] = (extrapolate(ci.credit, now - s.now, mw, ci.weight), ci.entry_ns)
            for q in s.queued:
                queued[self.rq_of[c]].append((q.credit, q.vid, c, q.tickled, q.processor))
            if s.queued:
                local_head[c] = s.queued[0].credit
        for vid in [v for v in self.inflight if v in present]:
            del self.inflight[vid]
        busy_target = set(self.inflight.values())
        moved: set[int] = set()

        def give(vid: int, holder: int, to: int, why: str) -> None:
            self.moves[why] += 1
            out.setdefault(holder, []).append(_new(Give, (vid, to)))
            self.inflight[vid] = to
            moved.add(vid)
            busy_target.add(to)

        # (1) vCPUs tickled for another pCPU go there, if the tickle still holds with what
        # that pCPU runs now (runq_tickle decided from the last view; Xen from the truth)
        for rqid in sorted(queued):
            for credit, vid, holder, tickled, processor in queued[rqid]:
                if tickled < 0 or tickled == holder or vid in self.inflight:
                    continue
                hard = self.masks(vid)[0]
                ok = tickled in self.pool and self.rq_of.get(tickled) == rqid and tickled in hard and tickled not in busy_target
                if ok and tickled in cur:
                    cc, entry = cur[tickled]
                    score = credit - cc - (self.resist if processor != tickled else 0)
                    ok = score > 0 and is_preemptable(entry, now, self.ratelimit)
                if ok:
                    give(vid, holder, tickled, "tickled")
                else:
                    out.setdefault(holder, []).append(_new(Credit2Untickle, (vid,)))
        # (2) idle pCPUs take the best vCPU waiting elsewhere in their runqueue
        for c in self.cpus:
            if c in cur or c in busy_target or c in local_head or S.get(c) is None:
                continue
            got = self._best_waiting(c, queued, moved, IDLE_CREDIT, None)
            if got is not None:
                give(got[0], got[1], c, "idle")
        # (3) pull requests, in request order
        for _t, c, kind in steal_reqs:
            if kind != PULL or c in busy_target:
                continue
            cc = cur[c][0] if c in cur else IDLE_CREDIT
            got = self._best_waiting(c, queued, moved, cc, local_head.get(c))
            if got is not None:
                give(got[0], got[1], c, "pull")
                out.setdefault(c, []).append(_new(Credit2Pulled, (got[0],)))
        self._queued_view = {rid: tuple(sorted((x for x in lst if x[1] not in moved), key=_rank)) for rid, lst in queued.items()}

    def _best_waiting(self, c: int, queued: dict[int, list[Queued]], moved: set[int], snext_credit: int, local_head: int | None) -> tuple[int, int] | None:
        """(vid, holder) of the first vCPU in credit order (ties: vid) waiting on another pCPU
        of c's runqueue that runq_candidate on c would take."""
        for credit, vid, holder, tickled, processor in sorted(queued[self.rq_of[c]], key=_rank):
            if holder == c or vid in moved or vid in self.inflight:
                continue
            if c not in self.masks(vid)[0]:
                continue
            if not may_take(c, holder, tickled, processor, credit, snext_credit, self.resist):
                continue
            if local_head is not None and not credit > local_head:
                return None
            if credit > snext_credit:
                return (vid, holder)
            return None
        return None

    def _refresh_view(self, S: dict[int, Credit2Summary]) -> None:
        rq = {r.id: _new(Credit2RqView, (r.gen, r.max_weight, r.b_avgload, r.pick_bias, r.gen_amount)) for r in self.rqs}
        cpu: dict[int, Credit2CpuView] = {}
        for c in self.cpus:
            s = S.get(c)
            if s is None or s.curr is None:
                continue
            ci = s.curr
            cpu[c] = _new(Credit2CpuView, (ci.vid, ci.credit, ci.weight, ci.entry_ns, bool(ci.soft_ok), s.now))
        q: dict[int, tuple[Credit2Waiting, ...]] = {}
        for rid, lst in self._queued_view.items():
            ent = []
            for credit, vid, holder, tickled, processor in lst:
                hard = self.masks(vid)[0]
                ent.append(_new(Credit2Waiting, (credit, vid, holder, tickled, processor, tuple(sorted(hard)) if hard != self.pool else ())))
            if ent:
                q[rid] = tuple(ent)
        v = self.view
        if (rq, cpu, q) != (v.rq, v.cpu, v.q):
            self.seq += 1
            self.view = _new(Credit2View, (self.seq, rq, cpu, q))

    def dump(self) -> dict[str, Any]:
        return {
            "runqueues": [
                {"id": r.id, "cpus": list(r.cpus), "gen": r.gen, "max_weight": r.max_weight, "load": r.load, "avgload": r.avgload, "b_avgload": r.b_avgload, "members": list(r.members)}
                for r in self.rqs
            ],
            "caps": {uid: {"cap": d.cap, "tot_budget": d.tot_budget, "next_repl": d.next_repl} for uid, d in self.doms.items() if d.cap},
            "moves": dict(self.moves),
        }


def _rank(x: Queued) -> tuple[int, int]:
    return (-x[0], x[1])
