"""Credit's pool half: the 30 ms accounting (csched_acct) and work stealing.

What it does. :class:`CreditPool` (Xen's ``csched_private``) keeps the pool weight, the
active domains and their active vCPUs (from ``CreditAcctStart``/``CreditAcctStop``), and at
boundaries hands out one timeslice of credit per pCPU by weight (``account``, one
``CreditAcct`` per active vCPU to the pCPU holding it) and resolves steal requests against the
runqueues in the summaries (``steal``, a ``Give`` to the peer).

Which function does each step: ``account`` (csched_acct), ``steal`` (csched_load_balance and
csched_runq_steal), ``place`` (csched_res_pick at insert, through ``records.cpu_pick``).

Ordering and determinism. Accounting runs at the first boundary round at or after each
multiple of ``tslice_ms``, walking the active domains in list order (Xen's, including its
move-to-head of saturated domains); steals are resolved in (request time, pCPU) order, each
against the runqueues as the earlier steals of the round left them, peers walked with
``cycle`` from the rotating ``balance_bias``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Mapping, Sequence

from hosts.clock import MS, US
from hosts.domain import DomainInfo
from hosts.sched.affinity import balance_mask, cycle, has_soft_affinity
from hosts.sched.base import PoolScheduler, unknown
from hosts.sched.credit.params import CREDITS_PER_MSEC, PRI_OVER, CreditParams
from hosts.sched.credit.records import CreditDom, cpu_pick
from hosts.sched.messages import (
    CreditAcct,
    CreditAcctCredit,
    CreditAcctStart,
    CreditAcctStop,
    CreditQueued,
    CreditSummary,
    Give,
    GiveFailed,
    Instruction,
    PoolMsg,
    StealRequest,
)
from hosts.vcpu import make_vid, vid_dom

Out = dict[int, list[Instruction]]

#: builds a NamedTuple without its Python-level __new__
_new: Final = tuple.__new__


@dataclass(slots=True)
class _Peer:
    """A pCPU's summary as the steals of one round change it."""

    curr_vid: int
    curr_pri: int
    runq: list[CreditQueued]
    nr_runnable: int


def _touch(state: dict[int, _Peer], summaries: Mapping[int, CreditSummary | None], c: int) -> _Peer:
    """pCPU c's copy in ``state``, made from its summary the first time."""
    ps = state.get(c)
    if ps is None:
        s = summaries[c]
        assert s is not None
        ps = state[c] = _Peer(s.curr_vid, s.curr_pri, list(s.runq), s.nr_runnable)
    return ps


class CreditPool(PoolScheduler[CreditSummary]):
    """Pool-wide data (``struct csched_private``): accounting and work stealing."""

    name = "credit"
    params: CreditParams

    def __init__(self, params: CreditParams, cpus: tuple[int, ...], start_ns: int = 0) -> None:
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
        self._now = 0
        self._soft: bool | None = None  # whether any vCPU has a soft affinity (None: to be found)

    # --- domain table ----------------------------------------------------------------------
    def add_domain(self, dom: DomainInfo) -> None:
        self.doms[dom.uid] = CreditDom(dom.weight, dom.cap)
        self.set_affinity(dom)
        self._soft = None

    def adjust(self, dom: DomainInfo) -> None:
        """csched_dom_cntl putinfo: a weight change rescales the pool weight."""
        sd = self.doms.get(dom.uid)
        if sd is None:
            return
        if dom.uid in self.active_sdom:
            self.weight -= sd.weight * len(sd.active)
            self.weight += dom.weight * len(sd.active)
        sd.weight = dom.weight
        sd.cap = dom.cap
        self.set_affinity(dom)
        self._soft = None

    def remove_domain(self, dom: DomainInfo) -> None:
        sd = self.doms.pop(dom.uid, None)
        if sd is None:
            return
        if dom.uid in self.active_sdom:
            self.weight -= sd.weight * len(sd.active)
            self.active_sdom.remove(dom.uid)
        for i in range(dom.nr_vcpus):
            self.affinity.pop(make_vid(dom.uid, i), None)
        self._soft = None

    def on_msg(self, src: int, payload: PoolMsg) -> None:
        match payload:
            case CreditAcctStart(vid):
                uid = vid_dom(vid)
                sd = self.doms.get(uid)
                if sd is None or vid in sd.active:
                    return
                sd.active.insert(0, vid)
                self.weight += sd.weight
                if uid not in self.active_sdom:
                    self.active_sdom.insert(0, uid)
            case CreditAcctStop(vid):
                uid = vid_dom(vid)
                sd = self.doms.get(uid)
                if sd is None or vid not in sd.active:
                    return
                sd.active.remove(vid)
                self.weight -= sd.weight
                if not sd.active and uid in self.active_sdom:
                    self.active_sdom.remove(uid)
            case CreditAcctCredit(credit):
                self._balance_acc += credit
            case GiveFailed():
                pass  # a steal that found its vCPU gone: nothing is kept in flight
            case _:
                raise unknown("pool half", self.name, payload)

    # --- placement -----------------------------------------------------------------------
    def place(self, vid: int, hint: int, summaries: Mapping[int, CreditSummary | None], domain: DomainInfo) -> int:
        hard, soft = self.masks(vid)
        idlers = {c for c, s in summaries.items() if s is not None and s.curr_vid < 0}
        cur = hint if hint in self.pool else min(self.pool)
        s = summaries.get(cur)
        runq_idle = s is not None and not s.runq
        return cpu_pick(cur, hard, soft, self.pool, idlers, runq_idle)

    # --- boundary --------------------------------------------------------------------------
    def next_due(self, now: int) -> int:
        return self.next_acct

    def view_epoch(self) -> int:
        return self.runq_sort

    def boundary(self, now: int, summaries: Mapping[int, CreditSummary | None], steal_reqs: Sequence[StealRequest], first_round: bool) -> Out:
        out: Out = {}
        self._now = now
        if first_round and now >= self.next_acct:
            self.account(out)
            while self.next_acct <= now:
                self.next_acct += self.tslice
        if steal_reqs:
            self.steal(summaries, steal_reqs, out)
        return out

    def account(self, out: Out) -> None:
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
                out.setdefault(pcpu, []).append(_new(CreditAcct, (vid, per_unit, sd.cap != 0, cap_thr)))
        self.runq_sort += 1

    def steal(self, summaries: Mapping[int, CreditSummary | None], steal_reqs: Sequence[StealRequest], out: Out) -> None:
        """csched_load_balance for each pCPU that asked, against the current runqueues."""
        # the summaries as the steals of this call change them: a pCPU's copy is made when
        # a steal first touches it (most requests find better work or nothing to take)
        state: dict[int, _Peer] = {}
        any_soft = self._soft
        if any_soft is None:
            any_soft = self._soft = any(has_soft_affinity(h, sa, self.pool) for h, sa in self.affinity.values())
        for _t, cpu, _pri in steal_reqs:
            s = summaries.get(cpu)
            if s is None:
                continue
            me = state.get(cpu)
            if me is not None:
                pri = me.curr_pri
                if me.runq:
                    pri = max(pri, me.runq[0].pri)
            else:
                pri = s.curr_pri
                if s.runq:
                    pri = max(pri, s.runq[0].pri)
            if pri > PRI_OVER:
                continue  # found better work since asking
            workers = set()
            for c, sc in summaries.items():
                if sc is None or c == cpu:
                    continue
                pc = state.get(c)
                if (pc.curr_vid if pc is not None else sc.curr_vid) >= 0:
                    workers.add(c)
            if not workers:
                continue
            got = None
            for step in (0, 1):
                if step == 0 and not any_soft:
                    continue  # the soft step takes only vCPUs with a soft affinity: none here
                first = cycle(self.balance_bias, workers)
                peer = first
                while True:
                    ps = state.get(peer)
                    sp = summaries[peer]
                    assert sp is not None  # workers have summaries
                    runq = ps.runq if ps is not None else sp.runq
                    if (ps.nr_runnable if ps is not None else sp.nr_runnable) > 1:
                        for j, q in enumerate(runq):
                            if q.pri <= pri:
                                break
                            hard, soft = self.masks(q.vid)
                            if step == 0 and not has_soft_affinity(hard, soft, self.pool):
                                continue
                            if cpu not in balance_mask(step, hard, soft):
                                continue
                            if self.migr_delay and (self._now - q.last_sched_ns) < self.migr_delay:
                                continue
                            got = (peer, j, q)
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
            peer, j, q = got
            self.balance_bias = peer
            ps = _touch(state, summaries, peer)
            del ps.runq[j]
            ps.nr_runnable -= 1
            me = _touch(state, summaries, cpu)
            me.curr_vid, me.curr_pri = q.vid, q.pri
            me.nr_runnable += 1
            out.setdefault(peer, []).append(_new(Give, (q.vid, cpu)))

    def dump(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "credit": self.credit,
            "credit_balance": self.credit_balance,
            "active_sdom": list(self.active_sdom),
            "active": {uid: list(d.active) for uid, d in self.doms.items()},
        }
