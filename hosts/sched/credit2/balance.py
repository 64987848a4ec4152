"""Credit2 load tracking and load balancing between runqueues (the pool half, mixed into
``Credit2Pool``).

What it does. Each runqueue's load (runnable vCPUs) is an exponentially weighted average over
a ~1 s window in fixed point (``load_window_shift``, ``load_precision_shift``), sampled at
boundaries from the exact load integrals the pCPUs report. After a credit reset on a runqueue
the balancer finds the other runqueue with the most different load and, when the difference
is worth it (>= 1 below full load, >= 1/8 when overloaded), applies the one push, pull or swap
of single vCPUs that leaves the smallest difference.

Which function does each step: ``_update_loads`` (update_runq_load, update_max_weight, and the
runqueue membership _runq_assign/_runq_deassign keep), ``_balance`` (balance_load, consider),
``_migrate`` (migrate: a ``Credit2RqMigrate`` to the pCPU holding the vCPU).

Ordering and determinism. Runqueues are updated in id order; the balancer scans members in
vid order, pushes before pulls, and keeps the first best candidate (a strictly smaller
difference replaces it). A vCPU moved by the balancer is left alone until it arrives.
"""

from __future__ import annotations

from hosts.sched.affinity import cycle
from hosts.sched.credit2.caps import Credit2PoolBudget
from hosts.sched.credit2.params import LOADAVG_GRANULARITY_SHIFT, Credit2Params
from hosts.sched.credit2.records import Credit2Runqueue, load_update, svc_load_at
from hosts.sched.messages import Credit2RqMigrate, Credit2Summary, Instruction

Out = dict[int, list[Instruction]]


class Credit2Balancer(Credit2PoolBudget):
    """Load tracking and the balancer of the pool half (over the caps' budget half: one line of
    inheritance, as a compiled native class needs)."""

    params: Credit2Params
    rqs: list[Credit2Runqueue]
    unit_rq: dict[int, int]  # vid -> the runqueue it is assigned to
    unit_avg: dict[int, int]  # vid -> its load average as last reported
    last_area: dict[int, int]  # pCPU -> its load integral at the last sample
    inflight: dict[int, int]  # vid -> pCPU it was sent to, until it shows up there
    moves: dict[str, int]
    W: int
    P: int

    def _update_loads(self, now: int, S: dict[int, Credit2Summary]) -> None:
        """update_runq_load for every runqueue, from the pCPUs' load integrals; max_weight;
        with several runqueues, membership (the svc lists) and b_avgload as _runq_assign and
        _runq_deassign keep it."""
        now_u = now >> LOADAVG_GRANULARITY_SHIFT
        multi = len(self.rqs) > 1
        seen = {ul.vid for s in S.values() for ul in s.units} if multi else set()
        for r in self.rqs:
            area = 0
            load = 0
            members = []
            mw = 1
            for c in r.cpus:
                s = S.get(c)
                if s is None:
                    continue
                a_now = s.load_area + s.load * max(now - s.now, 0)
                area += max(a_now - self.last_area.get(c, a_now), 0)
                self.last_area[c] = a_now
                load += s.load
                if s.max_weight > mw:
                    mw = s.max_weight
                if not multi:
                    continue
                for ul in s.units:
                    vid = ul.vid
                    members.append(vid)
                    prev = self.unit_rq.get(vid)
                    if prev != r.id:
                        if prev is not None:
                            pr = self.rqs[prev]
                            pr.b_avgload = max(pr.b_avgload - self.unit_avg.get(vid, 0), 0)
                        r.b_avgload += ul.avgload
                        self.unit_rq[vid] = r.id
                    self.unit_avg[vid] = ul.avgload
            area_u = area >> LOADAVG_GRANULARITY_SHIFT
            r.avgload = load_update(r.avgload, r.load_last_update, now_u, area_u, r.load, self.W, self.P)
            r.b_avgload = load_update(r.b_avgload, r.load_last_update, now_u, area_u, r.load, self.W, self.P)
            r.load_last_update = now_u
            r.load = load
            r.max_weight = mw
            if multi:
                r.members = sorted(set(members) | {v for v in r.members if self.unit_rq.get(v) == r.id and v in self.affinity and v not in seen})

    def _balance(self, lr: Credit2Runqueue, now: int, S: dict[int, Credit2Summary], out: Out) -> None:
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
        avg: dict[int, int] = {}
        mig: set[int] = set()
        now_u = now >> LOADAVG_GRANULARITY_SHIFT
        for s in S.values():
            for ul in s.units:
                avg[ul.vid] = svc_load_at(ul.avgload, ul.load_last_update, now_u, ul.runnable, self.W, P)
                if ul.migrating:
                    mig.add(ul.vid)

        def migrateable(vid: int, r: Credit2Runqueue) -> bool:
            return vid not in mig and vid not in self.inflight and bool(self.masks(vid)[0] & r.cpuset)

        best_d = load_delta
        best_push: int | None = None
        best_pull: int | None = None

        def consider(push: int | None, pull: int | None) -> None:
            nonlocal best_d, best_push, best_pull
            lo, oo = lr.b_avgload, orq.b_avgload
            if push is not None:
                lo -= avg.get(push, 0)
                oo += avg.get(push, 0)
            if pull is not None:
                lo += avg.get(pull, 0)
                oo -= avg.get(pull, 0)
            d = abs(lo - oo)
            if d < best_d:
                best_d, best_push, best_pull = d, push, pull

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
        if best_push is not None:
            self._migrate(best_push, orq, lr, avg, out)
        if best_pull is not None:
            self._migrate(best_pull, lr, orq, avg, out)

    def _migrate(self, vid: int, trq: Credit2Runqueue, frq: Credit2Runqueue, avg: dict[int, int], out: Out) -> None:
        """migrate(): the unit goes to a pCPU of ``trq`` (after its switch-out if running)."""
        mask = self.masks(vid)[0] & trq.cpuset
        if not mask:
            return
        cpu = cycle(trq.pick_bias, mask)
        trq.pick_bias = cpu
        try:
            holder = self.locate(vid)
        except KeyError:
            return
        out.setdefault(holder, []).append(Credit2RqMigrate(vid, cpu))
        self.moves["balance"] += 1
        a = avg.get(vid, 0)
        frq.b_avgload = max(frq.b_avgload - a, 0)
        trq.b_avgload += a
        self.unit_rq[vid] = trq.id
        self.unit_avg[vid] = a
        self.inflight[vid] = cpu
