"""ARINC653: Xen's static cyclic partition scheduler, as in ``xen/common/sched/arinc653.c``.

What it does. Time is cut into a repeating *major frame*; the major frame is cut into *minor
frames*, one per schedule entry (domain, vCPU, runtime), in the order given, and whatever is
left of the major frame after the last entry is idle. In each minor frame the pCPU runs that
entry's vCPU if it is runnable and sits on this pCPU, and otherwise idles: a partition never
gets another's time, even when the other has nothing to do (no work conservation), and a vCPU
never migrates to run. The decision timer is always the end of the current minor frame. There
are no weights, caps or priorities.

When to use it. Avionics-style robust partitioning (ARINC 653): every partition's CPU time
and its position in the cycle are fixed in advance. Xen's default schedule (no ``schedule``
given) gives each of Domain-0's vCPUs a 10 ms minor frame and nothing else ever runs, as in
Xen; give a ``schedule`` to run guests. At most 64 entries; the runtimes must fit in the major
frame (``major_frame_ms``, default: their sum).

Which function does each step: ``Arinc653Scheduler._frame`` (the minor-frame lookup of
a653sched_do_schedule), ``do_schedule`` (a653sched_do_schedule), ``wake``/``sleep``
(a653sched_unit_wake/sleep: just reschedule), ``pick_pcpu`` and ``Arinc653Pool.place``
(a653sched_pick_resource: the vCPU's initial pCPU, which Xen takes from
sched_select_initial_cpu: vCPU 0 on the first pCPU of its affinity in the pool, vCPU n on the
next after vCPU n-1's).

Ordering and determinism. Major frames are anchored at the start of the simulation (Xen: at
the first decision after boot), so every pCPU of the pool walks the same sequence of minor
frames at the same instants; a pCPU only runs the entry's vCPU if it holds it (in Xen the
schedule index is a single static shared by all pCPUs, with the same effect). Schedule entries
name domains; they are resolved against the pCPU's copy of the domain table at each decision,
so a domain created later joins its frames at once, and an entry naming an absent domain is
an idle frame. Nothing waits for an epoch boundary. Deviations from Xen: Xen re-anchors the
major frame at the first decision at or after its end (it can drift when that decision is
late; hvsim's never drifts); Xen's pick_resource ignores hard affinity, hvsim keeps a vCPU
inside it (an affinity change can move a vCPU, which then runs in its frames on its new pCPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from hosts.domain import DomainInfo
from hosts.clock import ms
from hosts.sched.arinc653_params import DEFAULT_TIMESLICE_NS, MAX_ENTRIES, Arinc653Params
from hosts.sched.base import Decision, PcpuScheduler, PoolScheduler, SchedContext, SchedulerEntry, register
from hosts.vcpu import make_vid

if TYPE_CHECKING:  # pragma: no cover
    from hosts.vcpu import VcpuState

class Arinc653Pcpu:
    """Per-pCPU data: the anchor of the major frames."""

    __slots__ = ("anchor_ns",)

    def __init__(self, anchor_ns: int) -> None:
        self.anchor_ns = anchor_ns


class Arinc653Scheduler(PcpuScheduler):
    name = "arinc653"
    timeless_summary = True  # no summary
    params: Arinc653Params

    def __init__(self, ctx: SchedContext, params: Arinc653Params) -> None:
        super().__init__(ctx, params)
        self.pc = Arinc653Pcpu(ctx.now)
        self.spec: list[tuple[str, int, int]] | None  # (domain name, vCPU index, runtime ns)
        if params.schedule is not None:
            self.spec = [(e.domain, e.vcpu, ms(e.runtime_ms)) for e in params.schedule]
            total = sum(rt for _, _, rt in self.spec)
            self.major = ms(params.major_frame_ms) if params.major_frame_ms is not None else total
        else:
            self.spec = None
            self.major = 0

    def _entries(self) -> tuple[list[tuple[int, int]], int]:
        """The schedule as (vid or -1, runtime_ns) entries and the major frame length."""
        doms = self.ctx.domains
        if self.spec is None:  # Xen's default: every Domain-0 vCPU, 10 ms each
            d0 = next((d for _, d in sorted(doms.items()) if d.is_dom0), None)
            if d0 is None:
                return [], 0
            n = min(d0.nr_vcpus, MAX_ENTRIES)
            return [(make_vid(d0.uid, i), DEFAULT_TIMESLICE_NS) for i in range(n)], n * DEFAULT_TIMESLICE_NS
        by_name = {d.name: d for _, d in sorted(doms.items())}
        out: list[tuple[int, int]] = []
        for name, idx, rt in self.spec:
            d = by_name.get(name)
            out.append((make_vid(d.uid, idx) if d is not None and idx < d.nr_vcpus else -1, rt))
        return out, self.major

    def _frame(self, now: int) -> tuple[int, int]:
        """The vid of the current minor frame (-1: idle) and the ns until it ends."""
        entries, major = self._entries()
        if not entries or major <= 0:
            return -1, DEFAULT_TIMESLICE_NS
        pos = (now - self.pc.anchor_ns) % major
        start = 0
        for vid, rt in entries:
            if pos < start + rt:
                return vid, start + rt - pos
            start += rt
        return -1, major - pos

    # --- ops table -----------------------------------------------------------------------
    def insert(self, v: "VcpuState", stolen: bool = False) -> None:
        v.sched = {}
        if stolen:
            self.ctx.raise_softirq()

    def remove(self, v: "VcpuState") -> None:
        pass

    def wake(self, v: "VcpuState", migrating: bool = False) -> None:
        self.ctx.raise_softirq()

    def do_schedule(self, now: int, curr: "VcpuState | None") -> Decision:
        vid, left = self._frame(now)
        v = self.ctx.vcpus.get(vid) if vid >= 0 else None
        if v is None or not v.runnable():
            return Decision(None, left)
        return Decision(v, left)

    def pick_pcpu(self, v: "VcpuState", commit: bool) -> int:
        hard = self.affinity(v)[0]
        cur = v.last_pcpu if v.last_pcpu >= 0 else self.ctx.pcpu
        return cur if cur in hard else min(hard)

    def dump(self) -> dict[str, Any]:
        entries, major = self._entries()
        return {"major_frame_ns": major, "entries": entries}


class Arinc653Pool(PoolScheduler[None]):
    """Pool-wide data: nothing to do at boundaries (the schedule is static); its pCPU half
    reports no summary and neither sends nor takes messages."""

    name = "arinc653"

    def place(self, vid: int, hint: int, summaries: Mapping[int, None], domain: DomainInfo) -> int:
        return hint if hint in self.cpus else min(self.cpus)


ENTRY = register(
    SchedulerEntry(
        name="arinc653",
        sched_id=7,
        params=Arinc653Params,
        pcpu=Arinc653Scheduler,
        pool=Arinc653Pool,
        summary="static cyclic schedule of minor frames in a major frame (avionics partitioning)",
    )
)

__all__ = ["ENTRY", "Arinc653Params", "Arinc653Scheduler", "Arinc653Pool"]
