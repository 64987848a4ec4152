"""Credit2 caps: a capped domain's budget, on both halves.

What it does. A cap gives a domain a budget of ``cap`` % of ``cap_period_ms`` (10 ms),
refilled every period (overdraft carried, never above the total); a vCPU takes a quota of
max(total / nr_vcpus, 500 us) before it runs and returns what it did not use when it stops,
and a vCPU that finds none is parked (paused) until budget is back. In Xen the budget is one
pool per domain under a lock; here it is split among the pCPUs that hold the domain's vCPUs.

Which function does each step. pCPU half (:class:`Credit2PcpuBudget`, between
``runq.Credit2Slice`` and ``pcpu.Credit2Scheduler``): ``_grab``
(unit_grab_budget, park_unit), ``_return_budget`` (unit_return_budget), ``_unpark_dom``
(unpark_parked_units), and the instructions ``Credit2BudgetSet``, ``Credit2CapOn``,
``Credit2CapOff``. Pool half (:class:`Credit2PoolBudget`, mixed into ``pool.Credit2Pool``): ``_caps`` (replenish_domain_budget
and the cap changes of csched2_dom_cntl), ``_distribute`` (the split by demand),
``_rebalance_budget`` (a pCPU that ran out gathers what the others have left).

Ordering and determinism. Refills run at the first boundary round at or after each period,
domains in uid order; shares go by demand (runnable or parked vCPUs held, else vCPUs held),
the remainder of the integer division to the pCPU with the most demand (lowest id on ties).
A pCPU that runs out asks once per view (``Credit2BudgetWant``); the pool rebalances at the
next round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hosts.clock import NEVER
from hosts.sched.base import PoolScheduler
from hosts.sched.credit2.params import F_PARK_PENDING, F_PARKED, MIN_TIMER
from hosts.sched.credit2.records import Credit2Dom, Credit2Unit
from hosts.sched.credit2.runq import Credit2Slice
from hosts.sched.messages import Credit2BudgetSet, Credit2BudgetWant, Credit2CapOff, Credit2CapOn, Credit2Summary, Instruction
from hosts.vcpu import vid_dom

if TYPE_CHECKING:  # pragma: no cover
    from hosts.vcpu import VcpuState

Out = dict[int, list[Instruction]]


class Credit2PcpuBudget(Credit2Slice):
    """The budget part of the per-pCPU half."""

    def _quota(self, uid: int) -> int:
        d = self.doms.get(uid)
        if d is None or not d.cap:
            return MIN_TIMER
        tot = self.period * d.cap // 100
        return max(tot // max(d.nr_vcpus, 1), MIN_TIMER)

    def _grab(self, v: "VcpuState", running: bool) -> bool:
        """unit_grab_budget: take a quota from this pCPU's share of the domain's budget."""
        u: Credit2Unit = v.sched
        b = u.budget or 0
        if b > 0:
            return True
        pc = self.pc
        uid = v.dom
        r = pc.reserve.get(uid, 0) + b
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
            self.ctx.pool_msg(Credit2BudgetWant(uid))
            self._ring()
        return False

    def _return_budget(self, v: "VcpuState") -> bool:
        """unit_return_budget, without the unpark: True if the domain has budget here again
        (the caller unparks after its requeue, as csched2_context_saved does)."""
        u: Credit2Unit = v.sched
        b = u.budget
        if b is None or b <= 0:
            return False
        r = self.pc.reserve.get(v.dom, 0) + b
        self.pc.reserve[v.dom] = r
        u.budget = 0
        return r > 0

    def _park(self, v: "VcpuState") -> None:
        u: Credit2Unit = v.sched
        if u.flags & F_PARKED:
            return
        u.flags |= F_PARKED
        self.pc.parked.setdefault(v.dom, []).append(v.vid)
        self.ctx.park(v)

    def _unpark_dom(self, uid: int) -> None:
        """unpark_parked_units for the domain's vCPUs parked here."""
        vids = self.pc.parked.pop(uid, [])
        for vid in vids:
            v = self.held.get(vid)
            if v is None or not v.sched.flags & F_PARKED:
                continue
            v.sched.flags &= ~F_PARKED
            self.ctx.unpark(v)

    # --- instructions ------------------------------------------------------------------------
    def _budget_set(self, m: Credit2BudgetSet) -> None:
        self.pc.reserve[m.uid] = m.amount
        if m.amount > 0:
            self._unpark_dom(m.uid)

    def _cap_on(self, m: Credit2CapOn, now: int) -> None:
        ctx = self.ctx
        for vid in sorted(ctx.vcpus):
            v = ctx.vcpus[vid]
            if v.dom != m.uid or not isinstance(v.sched, Credit2Unit) or v.sched.budget is not None:
                continue
            if v is ctx.curr:
                self._burn(v, now)  # account what it ran uncapped first
                ctx.raise_softirq()
            v.sched.budget = 0

    def _cap_off(self, m: Credit2CapOff) -> None:
        ctx = self.ctx
        for vid in sorted(ctx.vcpus):
            v = ctx.vcpus[vid]
            if v.dom == m.uid and isinstance(v.sched, Credit2Unit):
                v.sched.budget = None
        self.pc.reserve.pop(m.uid, None)
        self._unpark_dom(m.uid)


class Credit2PoolBudget(PoolScheduler[Credit2Summary]):
    """The budget part of the pool half."""

    doms: dict[int, Credit2Dom]
    period: int
    pending_work: bool

    def _demand(self, uid: int, S: dict[int, Credit2Summary]) -> dict[int, int]:
        dem: dict[int, int] = {}
        held: dict[int, int] = {}
        for c in self.cpus:
            s = S.get(c)
            if s is None:
                continue
            for ul in s.units:
                if vid_dom(ul.vid) != uid:
                    continue
                held[c] = held.get(c, 0) + 1
                if ul.runnable or ul.parked:
                    dem[c] = dem.get(c, 0) + 1
        return dem or held or {min(self.cpus): 1}

    def _distribute(self, uid: int, total: int, S: dict[int, Credit2Summary], out: Out) -> None:
        """Split a domain's budget pool among the pCPUs by demand (``Credit2BudgetSet``)."""
        dem = self._demand(uid, S)
        D = sum(dem.values())
        top = min(dem, key=lambda c: (-dem[c], c))
        shares = {c: total * d // D for c, d in dem.items()}
        shares[top] += total - sum(shares.values())
        for c in self.cpus:
            s = S.get(c)
            had = s is not None and any(r.uid == uid for r in s.reserves)
            if c in shares or had:
                out.setdefault(c, []).append(Credit2BudgetSet(uid, shares.get(c, 0)))

    @staticmethod
    def _reserves(uid: int, S: dict[int, Credit2Summary]) -> int:
        return sum(r.budget_ns for s in S.values() for r in s.reserves if r.uid == uid)

    def _caps(self, now: int, S: dict[int, Credit2Summary], out: Out) -> None:
        """Cap changes and replenish_domain_budget for every capped domain due."""
        self.pending_work = False
        for uid in sorted(self.doms):
            sd = self.doms[uid]
            if sd.pending == "on":
                sd.pending = None
                sd.tot_budget = self.period * sd.cap // 100
                sd.next_repl = now + self.period
                for c in self.cpus:
                    out.setdefault(c, []).append(Credit2CapOn(uid))
                self._distribute(uid, sd.tot_budget, S, out)
            elif sd.pending == "off":
                sd.pending = None
                sd.next_repl = NEVER
                for c in self.cpus:
                    out.setdefault(c, []).append(Credit2CapOff(uid))
            elif sd.cap and sd.next_repl <= now:
                budget = self._reserves(uid, S)
                while sd.next_repl <= now:
                    sd.next_repl += self.period
                    budget += sd.tot_budget
                if budget > 0:
                    budget = min(budget, sd.tot_budget)
                self._distribute(uid, budget, S, out)

    def _rebalance_budget(self, uid: int, S: dict[int, Credit2Summary], out: Out) -> None:
        """A pCPU found no budget for the domain: gather what the others have left."""
        sd = self.doms.get(uid)
        if sd is None or not sd.cap:
            return
        total = self._reserves(uid, S)
        if total > 0:
            self._distribute(uid, total, S, out)

