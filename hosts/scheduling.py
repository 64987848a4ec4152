"""SchedulingCpu: the scheduler's host on one pCPU; the middle layer of PcpuCore.

It owns the vCPUs assigned to this pCPU and its scheduler instance, implements what a
scheduler may ask of the engine (``hosts.sched.base.SchedContext``: tickle, timers, pool
messages, steal requests, park), enacts each decision (``_schedule``: runstates, the switch,
wake-to-run latency, the books) and carries the wake path: event-channel pending bits, vCPU
timers, block and unblock, pause and unpause. Guest execution (what the current vCPU runs)
is the layer above (``hosts.guest``), reached through ``_save_guest``/``_resume_guest``.

Everything for another pCPU (a wake for a vCPU held elsewhere, a tickle, a vCPU moving, a
message for the pool half, a steal request) goes into ``outbox`` with its emission time and is
delivered by the host at the next epoch boundary.

Ordering and determinism: all events at one instant are handled before SCHEDULE runs; it runs
again at the same instant while it is raised anew (also from inside a decision), at most
``SOFTIRQ_LOOP_MAX`` times.
"""

from __future__ import annotations

from array import array
from typing import Any, Final

from hosts.clock import NEVER
from hosts.codec import pack_vcpu
from hosts.domain import DomainInfo
from hosts.events import PRIO_TIMER, Event, heap_push
from hosts.hypercalls import LongOp
from hosts.loop import (
    EV_BURST,
    EV_POLL_TIMEOUT,
    EV_S_TIMER,
    EV_SCHED_TIMER,
    EV_VCPU_TIMER,
    MODE_GUEST,
    EventLoop,
    InvariantError,
)
from hosts.messages import XFER_PUSH, EvtOut, OutMsg, PoolOut, StealReq, TickleOut, XferOut
from hosts.sched.base import PcpuScheduler, UnitRecord
from hosts.sched.messages import PoolView
from hosts.tracelog import (
    DOMID_IDLE,
    TRC_SCHED_BLOCK,
    TRC_SCHED_CONTINUE_RUNNING,
    TRC_SCHED_SLEEP,
    TRC_SCHED_SWITCH,
    TRC_SCHED_SWITCH_INFCONT,
    TRC_SCHED_SWITCH_INFNEXT,
    TRC_SCHED_SWITCH_INFPREV,
    TRC_SCHED_WAKE,
    TRC_SCHED_YIELD,
    runstate_event,
)
from hosts.vcpu import (
    RUNSTATE_BLOCKED,
    RUNSTATE_OFFLINE,
    RUNSTATE_RUNNABLE,
    RUNSTATE_RUNNING,
    VPF_BLOCKED,
    VPF_MIGRATING,
    VcpuState,
)

#: builds a NamedTuple without its Python-level __new__ (messages are built at every step)
_new: Final = tuple.__new__
#: message classes as native constants: a NamedTuple class is otherwise looked up in this
#: module's globals at each use (every message of every exchange)
_TickleOut: Final = TickleOut
_PoolOut: Final = PoolOut
_StealReq: Final = StealReq
_XferOut: Final = XferOut
_EvtOut: Final = EvtOut

SOFTIRQ_LOOP_MAX: Final = 1000  # a scheduler that keeps re-raising at one instant is livelocked
VIRQ_TIMER: Final = -1  # ports below zero are virtual IRQs of one vCPU


class SchedulingCpu(EventLoop):
    sched: PcpuScheduler

    def __init__(self, host: str, pcpu: int, pool_cpus: tuple[int, ...], domains: dict[int, DomainInfo], start_ns: int, trace_max: int, checks: bool):
        super().__init__(host, pcpu, start_ns, trace_max)
        self.vcpus: dict[int, VcpuState] = {}
        self.domains = domains
        self.curr: VcpuState | None = None
        self.view = PoolView(tuple(pool_cpus))
        self.outbox: list[OutMsg] = []
        self.long: LongOp | None = None  # the hypercall in progress, if it runs in chunks
        self.checks = checks
        # vCPUs moving between this host's pCPUs travel as records (True in actors; in one
        # process the object itself is handed over, unless checks ask for the codec)
        self.wire = True
        self._idle_since = start_ns  # when this pCPU's idle vCPU entered its runstate (traces)

    # ========================================================================================
    # SchedContext: what the scheduler may ask of the engine
    # ========================================================================================
    def domain(self, uid: int) -> DomainInfo:
        return self.domains[uid]

    def raise_softirq(self) -> None:
        self.softirq = True
        if self.long is not None:
            self._replan_long()

    def tickle(self, cpu: int) -> None:
        if cpu == self.pcpu:
            self.raise_softirq()
        else:
            self.outbox.append(_new(_TickleOut, (self.now, cpu)))

    def pool_msg(self, payload: Any) -> None:
        self.outbox.append(_new(_PoolOut, (self.now, payload)))

    def request_steal(self, pri: int) -> None:
        self.outbox.append(_new(_StealReq, (self.now, pri)))

    def park(self, v: VcpuState) -> None:
        self._pause_vcpu(v)

    def unpark(self, v: VcpuState) -> None:
        self._unpause_vcpu(v)

    # --- Xen trace records (only called while ``tracing``; see hosts.tracelog) ---------------
    def trace(self, event: int, *args: int) -> None:
        """Record ``event`` with its 32-bit words at ``now`` (callers test ``tracing`` first)."""
        self.tbuf.extend((self.now, event | len(args) << 28, *args))

    def trace_dom(self, v: VcpuState | None) -> tuple[int, int]:
        """(domain id, vCPU id) as Xen numbers them: Domain-0 is 0, guests keep their uid, the
        idle vCPU of this pCPU is (DOMID_IDLE, pcpu)."""
        if v is None:
            return DOMID_IDLE, self.pcpu
        d = self.domains.get(v.dom)
        return (0 if d is not None and d.is_dom0 else v.dom), v.idx

    def trace_id(self, v: VcpuState | None) -> int:
        """The packed ``{vcpu:16, domain:16}`` word of most records."""
        dom, idx = self.trace_dom(v)
        return idx | dom << 16

    def _trace_rs(self, v: VcpuState, new: int) -> None:
        """TRC_SCHED_RUNSTATE_CHANGE for v entering ``new`` (nothing if it is there already)."""
        if v.runstate != new:
            self.trace(runstate_event(v.runstate, new), self.trace_id(v))

    def _trace_pair(self, event: int, v: VcpuState) -> None:
        dom, idx = self.trace_dom(v)
        self.trace(event, dom, idx)

    def _trace_switch(self, prev: VcpuState | None, nxt: VcpuState | None, prev_state: int, next_time: int) -> None:
        """sched_switch_units: INFPREV, INFNEXT, SWITCH, then the runstate changes of prev (the
        next's follows when the engine enters it)."""
        now = self.now
        pd, pu = self.trace_dom(prev)
        nd, nu = self.trace_dom(nxt)
        self.trace(TRC_SCHED_SWITCH_INFPREV, pd, pu, now - (prev.state_entry_ns if prev is not None else self._idle_since))
        if nxt is None:
            waited = now - self._idle_since
        else:
            waited = now - nxt.state_entry_ns if nxt.runstate == RUNSTATE_RUNNABLE else 0
        self.trace(TRC_SCHED_SWITCH_INFNEXT, nd, nu, waited, next_time)
        self.trace(TRC_SCHED_SWITCH, pd, pu, nd, nu)
        if prev is None:  # the idle vCPU: running -> runnable
            self.trace(runstate_event(RUNSTATE_RUNNING, RUNSTATE_RUNNABLE), pu | pd << 16)
            self._idle_since = now
        else:
            self._trace_rs(prev, prev_state)
        if nxt is None:
            self.trace(runstate_event(RUNSTATE_RUNNABLE, RUNSTATE_RUNNING), nu | nd << 16)
            self._idle_since = now

    def _trace_cont(self, v: VcpuState | None, next_time: int) -> None:
        """sched_context_switch with prev == next: INFCONT and CONTINUE_RUNNING."""
        dom, idx = self.trace_dom(v)
        self.trace(TRC_SCHED_SWITCH_INFCONT, dom, idx, self.now - (v.state_entry_ns if v is not None else self._idle_since), next_time)
        self.trace(TRC_SCHED_CONTINUE_RUNNING, idx | dom << 16)

    def set_migrating(self, v: VcpuState) -> None:
        v.pause_flags |= VPF_MIGRATING
        if self.curr is v:
            self.raise_softirq()
        else:
            self.sched.sleep(v)
            self._migrate_finish(v)

    # ========================================================================================
    # events and softirqs
    # ========================================================================================
    def _dispatch(self, kind: int, arg: Any) -> None:
        if kind == EV_S_TIMER:
            # lazy re-arm (see hosts.loop): only the live entry counts; an early one re-arms
            if arg == self.s_armed:
                self.s_armed = NEVER
                if self.now >= self.s_deadline:
                    self.s_deadline = NEVER
                    self._timer_irq()
                    self.softirq = True
                elif self.s_deadline < NEVER:
                    self.s_armed = d = self.s_deadline
                    self.q._seq += 1
                    heap_push(self._heap, Event(d, PRIO_TIMER, self.q._seq, EV_S_TIMER, d))
        elif kind == EV_SCHED_TIMER:
            name, tok = arg
            if self.timers.get(name) == tok:
                del self.timers[name]
                self._timer_irq()
                self.sched.timer(name, self.now)
        elif kind == EV_VCPU_TIMER:
            vid, t = arg
            v = self.vcpus.get(vid)
            if v is not None and v.singleshot_ns == t:
                self._timer_irq()
                v.singleshot_ns = NEVER
                self.send_virq(v, VIRQ_TIMER)
        elif kind == EV_POLL_TIMEOUT:
            vid, t = arg
            v = self.vcpus.get(vid)
            if v is not None and v.poll_timeout_ns == t and v.pause_flags & VPF_BLOCKED and v.poll_ports:
                self._timer_irq()
                self.unblock(v)

    def _live_at(self, t: int, kind: int, arg: Any) -> int:
        """What ``_dispatch`` (and the loop, for a burst) would do with the event now: the
        same tests, without the effects."""
        if kind == EV_BURST:
            return t if arg == self.gen else NEVER
        if kind == EV_S_TIMER:
            if arg != self.s_armed:
                return NEVER
            return t if t >= self.s_deadline else self.s_deadline  # early: re-arms for the deadline
        if kind == EV_SCHED_TIMER:
            name, tok = arg
            return t if self.timers.get(name) == tok else NEVER
        vid, when = arg
        v = self.vcpus.get(vid)
        if v is None:
            return NEVER
        if kind == EV_VCPU_TIMER:
            return t if v.singleshot_ns == when else NEVER
        if kind == EV_POLL_TIMEOUT and v.poll_timeout_ns == when and v.pause_flags & VPF_BLOCKED and v.poll_ports:
            return t
        return NEVER

    def _softirqs(self) -> None:
        """do_softirq: SCHEDULE runs again while it is raised anew at this instant, also from
        inside schedule() itself (a wake in context_saved or in a migration's tail)."""
        for _ in range(SOFTIRQ_LOOP_MAX):
            self._schedule()
            if not (self.softirq and self.mode == MODE_GUEST):
                return
        raise InvariantError(f"{self.host} pCPU {self.pcpu}: the scheduler raised SCHEDULE_SOFTIRQ {SOFTIRQ_LOOP_MAX} times at one instant")

    def _timer_irq(self) -> None:
        """A timer interrupt raises TIMER_SOFTIRQ, which preempts a long hypercall."""
        if self.long is not None:
            self.timer_softirq = True
            self._replan_long()

    # --- what the guest layer provides --------------------------------------------------------
    def _replan_long(self) -> None:
        raise NotImplementedError

    def _save_guest(self, v: VcpuState) -> None:
        raise NotImplementedError

    def _resume_guest(self, v: VcpuState) -> None:
        raise NotImplementedError

    # ========================================================================================
    # scheduling
    # ========================================================================================
    def _schedule(self) -> None:
        self.softirq = False
        now = self.now
        prev = self.curr
        dec = self.sched.do_schedule(now, prev)
        nxt = dec.vcpu
        if dec.next_time_ns >= 0:
            self.s_deadline = d = now + dec.next_time_ns
            if d < self.s_armed:  # the heap is touched only when the deadline moves earlier
                self.s_armed = d
                self.q._seq += 1
                heap_push(self._heap, Event(d, PRIO_TIMER, self.q._seq, EV_S_TIMER, d))
        else:
            self.s_deadline = NEVER
        if nxt is prev:
            if self.tracing:
                self._trace_cont(prev, dec.next_time_ns)
            if prev is not None and not self.busy_ev:
                self._resume_guest(prev)
            return
        if prev is not None:
            self._save_guest(prev)
            if prev.runnable() or prev.pause_flags & VPF_MIGRATING and not prev.pause_flags & ~VPF_MIGRATING and not prev.pause_count:
                ps = RUNSTATE_RUNNABLE
            elif prev.pause_flags & VPF_BLOCKED:
                ps = RUNSTATE_BLOCKED
            else:
                ps = RUNSTATE_OFFLINE
            if self.tracing:
                self._trace_switch(prev, nxt, ps, dec.next_time_ns)
            prev.set_runstate(ps, now)
        elif self.tracing:
            self._trace_switch(None, nxt, RUNSTATE_RUNNABLE, dec.next_time_ns)
        books = self.books
        books.switch(now, prev.vid if prev is not None else -1, nxt.vid if nxt is not None else -1)
        self.curr = nxt
        if nxt is not None:
            if self.checks:
                self._check_switch_in(nxt)
            if self.tracing:
                self._trace_rs(nxt, RUNSTATE_RUNNING)
            nxt.set_runstate(RUNSTATE_RUNNING, now)
            if nxt.wake_ns >= 0:
                lat = books.wake_lat.get(nxt.vid)
                if lat is None:
                    lat = books.wake_lat[nxt.vid] = array("q")
                lat.append(now - nxt.wake_ns)
                nxt.wake_ns = -1
            nxt.last_pcpu = self.pcpu
            self._resume_guest(nxt)
        if prev is not None:
            self.sched.context_saved(prev)
            if prev.pause_flags & VPF_MIGRATING:
                self._migrate_finish(prev)

    def _check_switch_in(self, v: VcpuState) -> None:
        """Scheduler contract, checked at every switch when ``checks`` is on."""
        if not v.runnable():
            raise InvariantError(f"{self.host} pCPU {self.pcpu}: scheduler chose d{v.dom}v{v.idx}, which is not runnable (flags {v.pause_flags:#x}, paused {v.pause_count})")
        if self.vcpus.get(v.vid) is not v:
            raise InvariantError(f"{self.host} pCPU {self.pcpu}: scheduler chose d{v.dom}v{v.idx}, which this pCPU does not hold")
        hard = v.hard_affinity
        if hard and self.pcpu not in hard and any(c in self.view.cpus for c in hard):
            raise InvariantError(f"{self.host} pCPU {self.pcpu}: d{v.dom}v{v.idx} runs outside its hard affinity {list(hard)}")
        if self.pcpu not in self.view.cpus:
            raise InvariantError(f"{self.host} pCPU {self.pcpu}: not in its own pool")

    def _migrate_finish(self, v: VcpuState) -> None:
        """sched_unit_migrate_finish: pick a pCPU; move there, or just wake here."""
        new = self.sched.pick_pcpu(v, commit=True)
        if new == self.pcpu:
            v.pause_flags &= ~VPF_MIGRATING
            if v.runnable():
                if self.tracing:
                    self._trace_pair(TRC_SCHED_WAKE, v)
                self.sched.wake(v, migrating=True)
            return
        self.sched.migrate(v, new)
        self._send_vcpu(v, new, XFER_PUSH)

    def _send_vcpu(self, v: VcpuState, to_pcpu: int, how: int) -> None:
        self._forget(v.vid)
        u = v.sched
        if not self.wire and self.sched.keeps_record and isinstance(u, UnitRecord) and type(u) is self.sched.unit_type:
            u.restored()  # the record itself is handed over with the vCPU object
        else:
            v.sched = self.sched.udata_to_wire(u)
        self.outbox.append(_new(_XferOut, (self.now, v.vid, to_pcpu, pack_vcpu(v, with_sched=True) if self.wire else v, how)))

    def _forget(self, vid: int) -> None:
        """A vCPU leaves this pCPU's books (the guest layer drops its workload too)."""
        del self.vcpus[vid]

    # ========================================================================================
    # wake path (event channels, timers, pause)
    # ========================================================================================
    def send_virq(self, v: VcpuState, virq: int) -> None:
        self.mark_pending(v, virq, None)

    def mark_pending(self, v: VcpuState, port: int, payload: Any) -> None:
        """evtchn_set_pending + vcpu_mark_events_pending + vcpu_kick for a vCPU held here."""
        if port not in v.pending_ports:
            v.pending_ports.append(port)
        if payload is not None:
            v.pending_payloads.append((port, payload))
        v.upcall_pending = True
        if v.pause_flags & VPF_BLOCKED:
            if not v.poll_ports or port in v.poll_ports or port < 0:
                self.unblock(v)
        elif v is self.curr and self.long is not None:
            self._replan_long()

    def deliver_event(self, vid: int, port: int, payload: Any) -> None:
        """Raise ``port`` for vCPU ``vid``: here at once, or by message for another pCPU."""
        v = self.vcpus.get(vid)
        if v is not None:
            self.mark_pending(v, port, payload)
        else:
            self.outbox.append(_new(_EvtOut, (self.now, vid, port, payload)))

    def unblock(self, v: VcpuState) -> None:
        """vcpu_unblock: clear VPF_blocked and any poll state, then vcpu_wake."""
        v.pause_flags &= ~VPF_BLOCKED
        v.poll_ports = ()
        v.poll_timeout_ns = NEVER
        if self.tracing:
            self._trace_pair(TRC_SCHED_WAKE, v)
        if v.runnable():
            if self.tracing:
                self._trace_rs(v, RUNSTATE_RUNNABLE)
            v.set_runstate(RUNSTATE_RUNNABLE, self.now)
            v.wake_ns = self.now
            self.sched.wake(v)

    def block(self, v: VcpuState) -> bool:
        """vcpu_block: returns False (and does not block) if events are already pending."""
        if v.upcall_pending:
            return False
        v.pause_flags |= VPF_BLOCKED
        if self.tracing:
            self._trace_pair(TRC_SCHED_BLOCK, v)
        self.sched.sleep(v)
        return True

    def yield_(self, v: VcpuState) -> None:
        """SCHEDOP_yield: the scheduler's yield hook, then reschedule."""
        self.sched.yield_(v)
        if self.tracing:
            self._trace_pair(TRC_SCHED_YIELD, v)
        self.raise_softirq()

    def arm_vcpu_timer(self, v: VcpuState, when_ns: int) -> None:
        v.singleshot_ns = when_ns
        if when_ns < NEVER:
            self._push(max(when_ns, self.now), PRIO_TIMER, EV_VCPU_TIMER, (v.vid, when_ns))

    def arm_poll_timeout(self, v: VcpuState, when_ns: int) -> None:
        v.poll_timeout_ns = when_ns
        if when_ns < NEVER:
            self._push(max(when_ns, self.now), PRIO_TIMER, EV_POLL_TIMEOUT, (v.vid, when_ns))

    def _pause_vcpu(self, v: VcpuState) -> None:
        was = v.runnable()
        v.pause_count += 1
        if self.tracing:
            self._trace_pair(TRC_SCHED_SLEEP, v)
        if was:
            if self.curr is v:
                self.sched.sleep(v)
                self.raise_softirq()
            else:
                self.sched.sleep(v)
                if v.runstate == RUNSTATE_RUNNABLE:
                    if self.tracing:
                        self._trace_rs(v, RUNSTATE_OFFLINE)
                    v.set_runstate(RUNSTATE_OFFLINE, self.now)

    def _unpause_vcpu(self, v: VcpuState) -> None:
        if v.pause_count > 0:
            v.pause_count -= 1
            if self.tracing and not v.pause_count:  # vcpu_unpause -> vcpu_wake, runnable or not
                self._trace_pair(TRC_SCHED_WAKE, v)
        if v.runnable() and self.curr is not v and v.runstate != RUNSTATE_RUNNABLE:
            if self.tracing:
                self._trace_rs(v, RUNSTATE_RUNNABLE)
            v.set_runstate(RUNSTATE_RUNNABLE, self.now)
            self.sched.wake(v)
