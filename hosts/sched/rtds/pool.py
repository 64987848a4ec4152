"""RTDS's pool half: the global part of EDF, from the pCPUs' summaries.

What it does. Whenever a pCPU rings it, :class:`RtdsPool` takes every pCPU's slice from the
summaries and computes what global EDF runs (the m highest-priority runnable vCPUs, each on a
pCPU of its hard affinity: on the pCPU already running it, else an idle one, its holder's
first, else the one running the lowest priority), then moves each of those vCPUs that waits
on another pCPU to its pCPU (``Give``) and makes a holder that should run its own queued vCPU
reschedule (``RtdsResched``). Replenishments falling on a boundary are done first
(``RtdsReplenish``, ``next_due``). It publishes what runs and waits where (``RtdsView``).

Which function does each step: ``boundary`` (replenishments due, then ``_assign``),
``_assign`` (global EDF), ``_refresh_view``, ``place`` (rt_res_pick at insert).

Ordering and determinism. vCPUs are taken in priority order, ties by vid; pCPUs are
scanned in id order; a vCPU given at an earlier round keeps its pCPU until it shows up there.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from hosts.clock import NEVER
from hosts.domain import DomainInfo
from hosts.sched.affinity import cycle
from hosts.sched.base import PoolScheduler, unknown
from hosts.sched.messages import (
    Give,
    GiveFailed,
    Instruction,
    PoolMsg,
    RtdsReplenish,
    RtdsResched,
    RtdsRunning,
    RtdsSummary,
    RtdsView,
    RtdsWaiting,
    StealRequest,
)
from hosts.sched.rtds.params import RtdsParams
from hosts.vcpu import make_vid

Out = dict[int, list[Instruction]]
#: a runnable vCPU as the assignment ranks it: (level, deadline, vid, holder, pCPU running it or -1)
Ranked = tuple[int, int, int, int, int]


class RtdsPool(PoolScheduler[RtdsSummary]):
    """Pool-wide part of global EDF (Xen's ``struct rt_private`` queues, seen through the
    pCPUs' summaries)."""

    name = "rtds"
    params: RtdsParams

    def __init__(self, params: RtdsParams, cpus: tuple[int, ...], start_ns: int = 0) -> None:
        super().__init__(params, cpus, start_ns)
        self.seq = 0
        self.view = RtdsView(0, {}, ())
        self.next_repl: dict[int, int] = {}
        self.inflight: dict[int, int] = {}  # vid -> pCPU it was given to, until it shows up

    def add_domain(self, dom: DomainInfo) -> None:
        self.set_affinity(dom)

    def adjust(self, dom: DomainInfo) -> None:
        self.set_affinity(dom)

    def remove_domain(self, dom: DomainInfo) -> None:
        for i in range(dom.nr_vcpus):
            vid = make_vid(dom.uid, i)
            self.affinity.pop(vid, None)
            self.inflight.pop(vid, None)

    def on_msg(self, src: int, payload: PoolMsg) -> None:
        match payload:
            case GiveFailed(vid, _):
                self.inflight.pop(vid, None)
            case _:
                raise unknown("pool half", self.name, payload)

    def place(self, vid: int, hint: int, summaries: Mapping[int, RtdsSummary | None], domain: DomainInfo) -> int:
        hard = self.masks(vid)[0]
        return hint if hint in hard else cycle(hint, hard)

    def next_due(self, now: int) -> int:
        if len(self.cpus) < 2 or not self.next_repl:
            return NEVER
        return min(self.next_repl.values())

    def view_extra(self) -> RtdsView:
        return self.view

    def boundary(self, now: int, summaries: Mapping[int, RtdsSummary | None], steal_reqs: Sequence[StealRequest], first_round: bool) -> Out:
        out: Out = {}
        for c in self.cpus:
            s = summaries.get(c)
            self.next_repl[c] = s.next_repl_ns if s is not None else NEVER
        if len(self.cpus) < 2:
            return out
        due = [c for c in self.cpus if self.next_repl[c] <= now]
        if due:
            # replenishments falling on this boundary happen before the pool looks
            for c in due:
                out[c] = [RtdsReplenish()]
                self.next_repl[c] = NEVER
            return out
        self._assign(summaries, out)
        return out

    def _assign(self, summaries: Mapping[int, RtdsSummary | None], out: Out) -> None:
        """Global EDF: the m highest-priority runnable vCPUs, each on a pCPU."""
        running: dict[int, RtdsRunning] = {}
        units: list[Ranked] = []
        seen: set[int] = set()
        for c in self.cpus:
            s = summaries.get(c)
            if s is None:
                continue
            ci = s.curr
            if ci is not None:
                running[c] = RtdsRunning(ci.level, ci.deadline_ns, ci.vid)
                units.append((ci.level, ci.deadline_ns, ci.vid, c, c))
                seen.add(ci.vid)
            for q in s.queued:
                units.append((q.level, q.deadline_ns, q.vid, c, -1))
                seen.add(q.vid)
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
            cands = sorted(self.masks(vid)[0] - set(taken))
            if not cands:
                continue
            idle = [c for c in cands if c not in running]
            if idle:
                cpu = holder if holder in idle else cycle(holder, idle)
            else:
                cpu = max(cands, key=lambda c: (running[c], -c))
                low = running[cpu]
                if (level, dl) >= (low.level, low.deadline_ns):
                    continue  # beats nobody it may preempt
            taken[cpu] = vid
            if run_on < 0:
                moves.append((vid, holder, cpu))
        for vid, holder, cpu in moves:
            if holder == cpu:
                cur = running.get(cpu)
                if cur is None or cur.vid != vid:
                    out.setdefault(cpu, []).append(RtdsResched())
            else:
                out.setdefault(holder, []).append(Give(vid, cpu))
                self.inflight[vid] = cpu
        self._refresh_view(running, units)

    def _refresh_view(self, running: dict[int, RtdsRunning], units: list[Ranked]) -> None:
        q = []
        for lv, dl, vid, holder, run_on in units:
            if run_on >= 0:
                continue
            hard = self.masks(vid)[0]
            q.append(RtdsWaiting(lv, dl, vid, holder, tuple(sorted(hard)) if hard != self.pool else ()))
        cur = {c: running[c] for c in sorted(running)}
        v = self.view
        if cur != v.cur or tuple(q) != v.q:
            self.seq += 1
            self.view = RtdsView(self.seq, cur, tuple(q))

    def dump(self) -> dict[str, Any]:
        return {"view": self.view._asdict(), "inflight": dict(self.inflight)}
