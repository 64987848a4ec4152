"""A small fake of the pCPU engine for unit tests of scheduler hooks (no host, no clock).

``FakeCtx`` implements ``hosts.sched.base.SchedContext`` the way ``hosts.pcpu.PcpuCore`` does
and records what a scheduler asks of it (tickles, timers, pool messages, steal requests,
parks). ``switch`` enacts a decision as the engine's ``_schedule`` does (runstates, the
current vCPU, ``context_saved``), so tests can drive a scheduler through its hooks alone.
The tests at the bottom check the fake itself.
"""

from __future__ import annotations

from typing import Any

from hosts.domain import DomainInfo
from hosts.sched.base import Decision, PcpuScheduler, SchedContext
from hosts.sched.messages import PoolMsg, PoolView
from hosts.sched.null import NullParams
from hosts.vcpu import RUNSTATE_BLOCKED, RUNSTATE_RUNNABLE, RUNSTATE_RUNNING, VPF_BLOCKED, VPF_DOWN, VPF_MIGRATING, VcpuState, make_vid

MS = 1_000_000
US = 1_000


def dom(uid: int, name: str = "", nr_vcpus: int = 1, **kw: Any) -> DomainInfo:
    return DomainInfo(uid=uid, name=name or f"d{uid}", nr_vcpus=nr_vcpus, mem_pages=256, max_pages=256, **kw)


class FakeCtx:
    """The engine as a scheduler sees it, recording every request."""

    def __init__(self, pcpu: int = 0, cpus: tuple[int, ...] = (0,), domains: tuple[DomainInfo, ...] = (), now: int = 0) -> None:
        self.pcpu = pcpu
        self.now = now
        self.view = PoolView(tuple(cpus))
        self.curr: VcpuState | None = None
        self.domains = {d.uid: d for d in domains}
        self.vcpus: dict[int, VcpuState] = {}
        self.sched: PcpuScheduler | None = None
        self.softirqs = 0
        self.tickles: list[int] = []
        self.timers: dict[str, int] = {}
        self.pool_msgs: list[PoolMsg] = []
        self.steals: list[int] = []
        self.parked: list[int] = []
        self.unparked: list[int] = []
        self.migrating: list[int] = []
        self.tracing = False  # Xen trace records: the fake keeps them in ``traced`` when set
        self.traced: list[tuple[int, tuple[int, ...]]] = []

    # --- SchedContext ----------------------------------------------------------------------
    def domain(self, uid: int) -> DomainInfo:
        return self.domains[uid]

    def trace(self, event: int, *args: int) -> None:
        self.traced.append((event, args))

    def trace_dom(self, v: VcpuState | None) -> tuple[int, int]:
        return (0x7FFF, self.pcpu) if v is None else (v.dom, v.idx)

    def trace_id(self, v: VcpuState | None) -> int:
        dom, idx = self.trace_dom(v)
        return idx | dom << 16

    def raise_softirq(self) -> None:
        self.softirqs += 1

    def tickle(self, cpu: int) -> None:
        if cpu == self.pcpu:
            self.raise_softirq()
        else:
            self.tickles.append(cpu)

    def set_timer(self, name: str, when_ns: int) -> None:
        self.timers[name] = when_ns

    def stop_timer(self, name: str) -> None:
        self.timers.pop(name, None)

    def pool_msg(self, payload: PoolMsg) -> None:
        self.pool_msgs.append(payload)

    def request_steal(self, pri: int) -> None:
        self.steals.append(pri)

    def park(self, v: VcpuState) -> None:
        """As PcpuCore._pause_vcpu: one more pause; a vCPU that was runnable sleeps."""
        self.parked.append(v.vid)
        was = v.runnable()
        v.pause_count += 1
        if was and self.sched is not None:
            self.sched.sleep(v)

    def unpark(self, v: VcpuState) -> None:
        """As PcpuCore._unpause_vcpu: one pause less; a vCPU runnable again wakes."""
        self.unparked.append(v.vid)
        if v.pause_count > 0:
            v.pause_count -= 1
        if v.runnable() and self.curr is not v and self.sched is not None:
            v.set_runstate(RUNSTATE_RUNNABLE, self.now)
            self.sched.wake(v)

    def set_migrating(self, v: VcpuState) -> None:
        self.migrating.append(v.vid)
        v.pause_flags |= VPF_MIGRATING

    # --- driving a scheduler -------------------------------------------------------------
    def bind(self, sched: PcpuScheduler) -> PcpuScheduler:
        self.sched = sched
        return sched

    def add(self, v: VcpuState, wake: bool = True) -> VcpuState:
        """A vCPU placed on this pCPU as the engine's XFER_PLACE does: held, inserted down,
        then brought up and woken."""
        assert self.sched is not None
        self.vcpus[v.vid] = v
        v.last_pcpu = self.pcpu
        down = v.pause_flags & VPF_DOWN
        v.pause_flags |= VPF_DOWN
        self.sched.insert(v)
        v.pause_flags = (v.pause_flags & ~VPF_DOWN) | down
        if wake and v.runnable():
            v.set_runstate(RUNSTATE_RUNNABLE, self.now)
            self.sched.wake(v)
        return v

    def block(self, v: VcpuState) -> None:
        """The vCPU blocks (SCHEDOP_block): not runnable any more."""
        assert self.sched is not None
        v.pause_flags |= VPF_BLOCKED
        self.sched.sleep(v)

    def unblock(self, v: VcpuState) -> None:
        assert self.sched is not None
        v.pause_flags &= ~VPF_BLOCKED
        if v.runnable() and self.curr is not v:
            v.set_runstate(RUNSTATE_RUNNABLE, self.now)
            self.sched.wake(v)

    def switch(self, now: int) -> Decision:
        """One SCHEDULE softirq at ``now``: decide, then switch as PcpuCore._schedule does."""
        assert self.sched is not None
        self.now = now
        prev = self.curr
        dec = self.sched.do_schedule(now, prev)
        nxt = dec.vcpu
        if nxt is prev:
            return dec
        if prev is not None:
            prev.set_runstate(RUNSTATE_RUNNABLE if prev.runnable() else RUNSTATE_BLOCKED, now)
        self.curr = nxt
        if nxt is not None:
            nxt.set_runstate(RUNSTATE_RUNNING, now)
            nxt.last_pcpu = self.pcpu
        if prev is not None:
            self.sched.context_saved(prev)
        return dec


def vcpu(uid: int, idx: int = 0, hard: tuple[int, ...] = (), soft: tuple[int, ...] = ()) -> VcpuState:
    return VcpuState(make_vid(uid, idx), hard_affinity=hard, soft_affinity=soft)


# =============================================================================================
# the fake itself
# =============================================================================================


def test_the_fake_is_a_sched_context() -> None:
    ctx: SchedContext = FakeCtx()  # checked by mypy: every member of the Protocol is here
    assert ctx.view.extra is None and ctx.curr is None


def test_park_pauses_and_unpark_wakes_through_the_scheduler() -> None:
    calls: list[str] = []

    class Probe(PcpuScheduler):
        def insert(self, v: VcpuState, stolen: bool = False) -> None:
            calls.append("insert")

        def remove(self, v: VcpuState) -> None:
            calls.append("remove")

        def do_schedule(self, now: int, curr: VcpuState | None) -> Decision:
            return Decision(None, -1)

        def pick_pcpu(self, v: VcpuState, commit: bool) -> int:
            return 0

        def sleep(self, v: VcpuState) -> None:
            calls.append("sleep")

        def wake(self, v: VcpuState, migrating: bool = False) -> None:
            calls.append("wake")

    ctx = FakeCtx(domains=(dom(1),))
    s = ctx.bind(Probe(ctx, NullParams(name="null")))
    v = ctx.add(vcpu(1))
    ctx.park(v)
    assert not v.runnable() and ctx.parked == [v.vid]
    ctx.unpark(v)
    assert v.runnable() and ctx.unparked == [v.vid]
    assert calls == ["insert", "wake", "sleep", "wake"]
    assert s is ctx.sched
