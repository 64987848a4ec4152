"""PcpuCore: the engine of one physical CPU.

It owns an event queue and the vCPUs currently assigned to it, advances simulated time on its
own between epoch boundaries, asks its scheduler for decisions and enacts them (switches,
runstates, timers, busy/idle accounting, the trace), and runs the current vCPU's guest program:
compute bursts and hypercalls.

Guest execution is stackless, as in Xen. A running vCPU is either in guest mode (computing,
preemptible at any instant) or in the hypervisor (inside a hypercall). A SCHEDULE softirq
raised while the current vCPU is in the hypervisor waits until the hypercall returns to the
guest. Long hypercalls run in chunks of one extent; before every extent but the first they
check for preemption (a softirq pending on this pCPU, including the timer softirq raised by any
timer interrupt, or events pending for the vCPU) and, if so, return to the guest with a
continuation written into the vCPU's argument registers; the guest re-executes the hypercall
when it next runs, on whatever pCPU. A descheduled vCPU is therefore never inside Xen: its
record (``hosts.vcpu.VcpuState``) is all of it.

Everything that crosses to another pCPU (a wake for a vCPU held elsewhere, a tickle, a vCPU
moving, a message for the pool half of the scheduler, a steal request) goes into the outbox
with its emission time and is delivered by the host at the next epoch boundary.

Ordering and determinism: events fire in (time, priority, sequence) order; all events at one
instant are handled before the SCHEDULE softirq runs; inbox items at a boundary are handled in
the order the host gives (gives, arrivals, then messages in (time, source pCPU, sequence)
order, then pool instructions), before the softirq.
"""

from __future__ import annotations

import hashlib
from array import array

import numpy as np
from heapq import heappop, heappush
from typing import Any, Callable

from hosts import hypercalls as hc
from hosts.clock import NEVER
from hosts.codec import pack_vcpu, unpack_vcpu
from hosts.domain import DomainInfo
from hosts.events import PRIO_GUEST, PRIO_TIMER, EventQueue
from hosts.paging import PagingCosts, PagingModel
from hosts.sched.messages import PoolView
from hosts.vcpu import (
    RUNSTATE_BLOCKED,
    RUNSTATE_OFFLINE,
    RUNSTATE_RUNNABLE,
    RUNSTATE_RUNNING,
    VPF_BLOCKED,
    VPF_BLOCKED_IN_XEN,
    VPF_DOWN,
    VPF_MIGRATING,
    VcpuState,
    vid_dom,
)
from hosts.workload import VIRQ_TIMER, make_workload

# Event kinds.
EV_S_TIMER = 0  # the scheduler's decision timer (Xen's s_timer)
EV_SCHED_TIMER = 1  # a timer the scheduler armed by name (Credit's tick)
EV_VCPU_TIMER = 2  # a vCPU's singleshot timer (set_timer_op)
EV_BURST = 3  # the running vCPU's compute burst or hypercall ends
EV_POLL_TIMEOUT = 4

MODE_GUEST = 0
MODE_XEN = 1

SOFTIRQ_LOOP_MAX = 1000  # a scheduler that keeps re-raising at one instant is livelocked

# Transfer kinds.
XFER_PUSH = 0  # a running vCPU migrating at switch-out (VPF_migrating)
XFER_STOLEN = 1  # taken from a peer's runqueue by work stealing
XFER_PLACE = 2  # placed by the host (new domain, arrival from another host, pool move)


class InvariantError(AssertionError):
    """A broken scheduler contract (only raised with checks on)."""


class LongOp:
    """A hypercall in progress that runs in chunks of one extent each."""

    __slots__ = ("nr", "total", "done", "cost", "seg_start", "apply", "encode", "finish", "cond_ns")

    def __init__(self, nr: int, total: int, done: int, cost: int, apply: Callable, encode: Callable, finish: Callable):
        self.nr = nr
        self.total = total
        self.done = done
        self.cost = cost
        self.seg_start = 0
        self.apply = apply  # apply(lo, hi): do extents [lo, hi)
        self.encode = encode  # encode(done): write the continuation into the vCPU's registers
        self.finish = finish  # finish(done) -> return value
        self.cond_ns = -1  # when a preemption condition first arose in this entry


class PcpuCore:
    """One pCPU: event loop, scheduler host, guest runner. Runs in-process or inside an actor."""

    def __init__(
        self,
        *,
        host: str,
        pcpu: int,
        pool_cpus: tuple[int, ...],
        sched_entry,
        sched_params,
        domains: dict[int, DomainInfo],
        memory=None,
        root_seed: int = 0,
        trace_max: int = 2_000_000,
        start_ns: int = 0,
        costs: "hc.HypercallCosts | None" = None,
        checks: bool = False,
        paging_costs: dict | None = None,
        preempt: bool = True,
    ):
        self.host = host
        self.pcpu = pcpu
        self.now = start_ns
        self.q = EventQueue()
        self._heap = self.q._heap
        self.vcpus: dict[int, VcpuState] = {}
        self.domains = domains
        self.memory = memory
        self.root_seed = root_seed
        self.costs = costs or hc.HypercallCosts()
        self.curr: VcpuState | None = None
        self.mode = MODE_GUEST
        self.long: LongOp | None = None
        self.seg_start = 0
        self.softirq = False
        self.timer_softirq = False
        self.busy_ev = False
        self.gen = 0  # invalidates the current burst event on every switch / replan
        # Xen's s_timer, re-armed at every decision. The heap holds at most one live entry,
        # at ``s_armed`` <= ``s_deadline``; an entry that fires early re-arms for the
        # deadline. Moving the deadline later (the common case) thus costs no heap traffic.
        self.s_deadline = NEVER
        self.s_armed = NEVER
        # vCPUs moving between this host's pCPUs travel as records (True in actors; in one
        # process the object itself is handed over, unless checks ask for the codec)
        self.wire = True
        self.timers: dict[str, int] = {}  # scheduler timer name -> token
        self._timer_tok = 0
        self.outbox: list[tuple] = []
        self.view = PoolView(tuple(pool_cpus))
        self.workloads: dict[int, Any] = {}  # vid -> workload object (parameters only)
        self._wl_cache: dict = {}
        self.frame_cache: list[int] = []  # frames this pCPU may hand out mid-epoch
        self.frames_exhausted = False  # the host said it has no free frame left
        self.departed: dict[int, list[int]] = {}  # runstates of vCPUs of destroyed domains
        self.destroyed: dict[int, int] = {}  # uid -> when its domain left this pCPU's table
        self.samples: dict[str, dict[int, list[int]]] = {}
        self.paging_costs = PagingCosts.from_dict(paging_costs)
        self._paging: dict[int, PagingModel] = {}
        self._ld_seen: dict[int, tuple] = {}
        # accounting
        self.busy_ns = 0
        self.idle_ns = 0
        self.last_switch_ns = start_ns
        self.switches = 0
        self.events = 0
        # trace: run intervals (start, end, vid) and a digest of switches
        self.trace_max = trace_max
        self.trace = array("q")
        self.trace_dropped = 0
        self._dig = hashlib.blake2b(digest_size=16)
        self._dbuf = array("q")
        # metrics
        self.wake_lat: dict[int, array] = {}
        self.hv: dict[int, list] = {}  # hypercall number -> [count, preemptions, stays (ns)]
        self.metrics: dict[str, int] = {}
        self.checks = checks
        self.preempt = preempt  # hypercall_preempt_check; False: long hypercalls run to completion
        self.sched = sched_entry.pcpu(self, sched_params)

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
            self.outbox.append(("tickle", self.now, cpu))

    def set_timer(self, name: str, when_ns: int) -> None:
        self._timer_tok += 1
        self.timers[name] = self._timer_tok
        heappush(self._heap, (when_ns, PRIO_TIMER, self._next_seq(), EV_SCHED_TIMER, (name, self._timer_tok)))

    def stop_timer(self, name: str) -> None:
        self.timers.pop(name, None)

    def pool_msg(self, payload: tuple) -> None:
        self.outbox.append(("pool", self.now, payload))

    def request_steal(self, pri: int) -> None:
        self.outbox.append(("steal", self.now, pri))

    def park(self, v: VcpuState) -> None:
        self._pause_vcpu(v)

    def unpark(self, v: VcpuState) -> None:
        self._unpause_vcpu(v)

    def set_migrating(self, v: VcpuState) -> None:
        v.pause_flags |= VPF_MIGRATING
        if self.curr is v:
            self.raise_softirq()
        else:
            self.sched.sleep(v)
            self._migrate_finish(v)

    # ========================================================================================
    # event loop
    # ========================================================================================
    def _next_seq(self) -> int:
        self.q._seq += 1
        return self.q._seq

    def _push(self, t: int, prio: int, kind: int, arg: Any) -> None:
        self.q._seq += 1
        heappush(self._heap, (t, prio, self.q._seq, kind, arg))

    def next_event_ns(self) -> int:
        return self._heap[0][0] if self._heap else NEVER

    def advance(self, until: int) -> None:
        """Process every event with time < ``until``; then stand at ``until``."""
        heap = self._heap
        dispatch = self._dispatch
        if self.softirq and self.mode == MODE_GUEST:
            self._softirqs()
        while heap and heap[0][0] < until:
            t = heap[0][0]
            self.now = t
            while heap and heap[0][0] == t:
                ev = heappop(heap)
                self.events += 1
                dispatch(ev[3], ev[4])
            if self.softirq and self.mode == MODE_GUEST:
                self._softirqs()
        if until > self.now:
            self.now = until

    def _dispatch(self, kind: int, arg: Any) -> None:
        if kind == EV_BURST:
            if arg == self.gen:
                self.busy_ev = False
                self._burst_end()
        elif kind == EV_S_TIMER:
            if arg == self.s_armed:
                self.s_armed = NEVER
                if self.now >= self.s_deadline:
                    self.s_deadline = NEVER
                    self._timer_irq()
                    self.softirq = True
                elif self.s_deadline < NEVER:
                    self.s_armed = d = self.s_deadline
                    self.q._seq += 1
                    heappush(self._heap, (d, PRIO_TIMER, self.q._seq, EV_S_TIMER, d))
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
            if d < self.s_armed:
                self.s_armed = d
                self.q._seq += 1
                heappush(self._heap, (d, PRIO_TIMER, self.q._seq, EV_S_TIMER, d))
        else:
            self.s_deadline = NEVER
        if nxt is prev:
            if prev is not None and not self.busy_ev:
                self._resume_guest(prev)
            return
        self.switches += 1
        delta = now - self.last_switch_ns
        if prev is None:
            self.idle_ns += delta
        else:
            self.busy_ns += delta
            self._save_guest(prev)
            if prev.runnable() or prev.pause_flags & VPF_MIGRATING and not prev.pause_flags & ~VPF_MIGRATING and not prev.pause_count:
                prev.set_runstate(RUNSTATE_RUNNABLE, now)
            elif prev.pause_flags & VPF_BLOCKED:
                prev.set_runstate(RUNSTATE_BLOCKED, now)
            else:
                prev.set_runstate(RUNSTATE_OFFLINE, now)
            if now > self.last_switch_ns:
                if len(self.trace) < self.trace_max:
                    self.trace.extend((self.last_switch_ns, now, prev.vid))
                else:
                    self.trace_dropped += 1
        self.last_switch_ns = now
        d = self._dbuf
        d.extend((now, prev.vid if prev is not None else -1, nxt.vid if nxt is not None else -1))
        if len(d) >= 3 * 4096:
            self._dig.update(d.tobytes())
            del d[:]
        self.curr = nxt
        if nxt is not None:
            if self.checks:
                self._check_switch_in(nxt)
            nxt.set_runstate(RUNSTATE_RUNNING, now)
            if nxt.wake_ns >= 0:
                lat = self.wake_lat.get(nxt.vid)
                if lat is None:
                    lat = self.wake_lat[nxt.vid] = array("q")
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
                self.sched.wake(v, migrating=True)
            return
        self.sched.migrate(v, new)
        self._send_vcpu(v, new, XFER_PUSH)

    def _send_vcpu(self, v: VcpuState, to_pcpu: int, kind: int) -> None:
        del self.vcpus[v.vid]
        self.workloads.pop(v.vid, None)
        v.sched = self.sched.udata_to_wire(v.sched)
        self.outbox.append(("xfer", self.now, v.vid, to_pcpu, pack_vcpu(v, with_sched=True) if self.wire else v, kind))

    # ========================================================================================
    # guest execution
    # ========================================================================================
    def _save_guest(self, v: VcpuState) -> None:
        """v leaves the pCPU (always from guest mode: stackless)."""
        self.gen += 1
        self.busy_ev = False
        consumed = self.now - self.seg_start
        rem = v.wl.get("rem", 0)
        if rem > 0 and consumed > 0:
            if consumed > rem:
                consumed = rem
            v.wl["rem"] = rem - consumed
            self.workloads[v.vid].on_compute(v, consumed, self)

    def _resume_guest(self, v: VcpuState) -> None:
        if v.hcall_preempted:
            self._consume_events(v)
            v.hcall_preempted = False
            self._enter_hypercall(v, v.regs["rax"], None, restart=True)
            return
        rem = v.wl.get("rem", 0)
        if rem > 0:
            self._start_compute(v, rem)
        else:
            self._guest_next(v)

    def _start_compute(self, v: VcpuState, ns: int) -> None:
        self.mode = MODE_GUEST
        self.seg_start = self.now
        self.gen += 1
        self.busy_ev = True
        self.q._seq += 1
        heappush(self._heap, (self.now + ns, PRIO_GUEST, self.q._seq, EV_BURST, self.gen))

    def _guest_next(self, v: VcpuState) -> None:
        wl = self.workloads[v.vid]
        self._consume_events(v)
        act = wl.next_action(v, self)
        if act[0] == hc.ACT_COMPUTE:
            ns = act[1]
            v.wl["rem"] = ns
            self._start_compute(v, ns)
        else:
            self._enter_hypercall(v, act[1], act[2])

    def _consume_events(self, v: VcpuState) -> None:
        """The guest's upcall handler runs on return to the guest and acknowledges events."""
        if v.upcall_pending:
            v.upcall_pending = False
            self.workloads[v.vid].on_events(v, self)

    def _burst_end(self) -> None:
        v = self.curr
        if self.mode == MODE_XEN:
            self._hypercall_segment_end(v)
            return
        consumed = self.now - self.seg_start
        v.wl["rem"] = 0
        self.gen += 1
        self.workloads[v.vid].on_compute(v, consumed, self)
        if self.softirq:
            return  # the scheduler runs first; v resumes later from its saved state
        self._guest_next(v)

    # --- hypercalls -----------------------------------------------------------------------
    def _enter_hypercall(self, v: VcpuState, nr: int, args, restart: bool = False) -> None:
        """Guest executes a hypercall instruction: we are now in Xen until it returns."""
        if args is not None:
            hc.load_args(v, nr, args)
        self.mode = MODE_XEN
        v.hv_entry_ns = self.now
        self.gen += 1
        res = hc.dispatch(self, v, nr)
        if isinstance(res, LongOp):
            self.long = res
            res.seg_start = self.now
            self._plan_long(first=True)
            return
        cost, effect = res
        self._pending_effect = effect
        self.busy_ev = True
        self.q._seq += 1
        heappush(self._heap, (self.now + cost, PRIO_GUEST, self.q._seq, EV_BURST, self.gen))

    def _hypercall_segment_end(self, v: VcpuState) -> None:
        op = self.long
        if op is None:
            effect = self._pending_effect
            self._pending_effect = None
            result = effect() if effect is not None else 0
            self._exit_hypercall(v, result)
            return
        k = (self.now - op.seg_start) // op.cost
        if k > op.total - op.done:
            k = op.total - op.done
        starved = False
        if k > 0:
            got = op.apply(op.done, op.done + k)
            if got is not None and got < k:
                k = got
                starved = True
            op.done += k
        if op.done >= op.total or (starved and self.frames_exhausted):
            # done, or the host is out of memory: Xen returns the extents done so far
            self.long = None
            self._exit_hypercall(v, op.finish(op.done))
            return
        if starved:
            # wait in Xen for this pCPU's frame cache to be refilled at the next boundary
            self.long = None
            op.encode(op.done)
            v.hcall_preempted = True
            self._leave_xen(v, op.nr, True)
            v.pause_flags |= VPF_BLOCKED_IN_XEN
            self.sched.sleep(v)
            self.softirq = True
            return
        if self.preempt and (self.softirq or self.timer_softirq or v.upcall_pending):
            # hypercall_create_continuation: progress into the guest's registers.
            self.long = None
            if op.cond_ns >= 0:
                self.sample("hv_preempt_response", v.vid, self.now - op.cond_ns)
            op.encode(op.done)
            v.hcall_preempted = True
            self._leave_xen(v, op.nr, True)
            if not self.softirq:
                self._resume_guest(v)  # nothing to schedule: the guest re-executes at once
            return
        op.seg_start = self.now
        op.cond_ns = -1
        self._plan_long(first=True)

    def _plan_long(self, first: bool) -> None:
        op = self.long
        self.gen += 1
        self.busy_ev = True
        end = op.seg_start + (op.total - op.done) * op.cost
        self.q._seq += 1
        heappush(self._heap, (end, PRIO_GUEST, self.q._seq, EV_BURST, self.gen))

    def _replan_long(self) -> None:
        """A preemption condition arose: stop at the next extent boundary (never before the
        first extent of this entry)."""
        op = self.long
        if not self.preempt:
            return
        if op.cond_ns < 0:
            op.cond_ns = self.now
        elapsed = self.now - op.seg_start
        k = max(1, -(-elapsed // op.cost))
        if k > op.total - op.done:
            return  # completes first anyway
        self.gen += 1
        self.busy_ev = True
        self.q._seq += 1
        heappush(self._heap, (op.seg_start + k * op.cost, PRIO_GUEST, self.q._seq, EV_BURST, self.gen))

    def _exit_hypercall(self, v: VcpuState, result: int) -> None:
        nr = v.regs["rax"]
        v.regs["rax"] = result & 0xFFFFFFFFFFFFFFFF if result < 0 else result
        v.regs["rip"] += 2
        self._leave_xen(v, nr, False)
        if self.curr is v and not self.softirq and self.mode == MODE_GUEST:
            self._guest_next(v)

    def _leave_xen(self, v: VcpuState, nr: int, preempted: bool) -> None:
        st = self.hv.get(nr)
        if st is None:
            st = self.hv[nr] = [0, 0, array("q")]
        st[1 if preempted else 0] += 1
        st[2].append(self.now - v.hv_entry_ns)
        self.mode = MODE_GUEST
        self.timer_softirq = False
        self.gen += 1
        self.busy_ev = False
        self.seg_start = self.now

    _pending_effect = None

    # ========================================================================================
    # guest memory and accounting helpers (for workloads)
    # ========================================================================================
    def paging(self, dom: DomainInfo) -> PagingModel:
        pm = self._paging.get(dom.uid)
        if pm is None or pm.mode != dom.paging:
            pm = self._paging[dom.uid] = PagingModel(dom.paging, self.paging_costs)
        return pm

    def guest_write(self, v: VcpuState, dom: DomainInfo, gpfns, tags) -> int:
        """The guest writes ``gpfns``; returns the ns Xen charges it (log-dirty faults)."""
        self.memory.write_tags(dom, gpfns, tags)
        key = dom.uid
        self.metrics[f"pages_written.{key}"] = self.metrics.get(f"pages_written.{key}", 0) + len(gpfns)
        if not dom.log_dirty:
            return 0
        seen = self._ld_seen.get(key)
        if seen is None or seen[0] != dom.dirty_round or seen[1].size != dom.max_pages:
            seen = (dom.dirty_round, np.zeros(dom.max_pages, dtype=bool))
            self._ld_seen[key] = seen
        bm = seen[1]
        u = np.unique(gpfns)
        new = u[~bm[u]]
        if not new.size:
            return 0
        bm[new] = True
        pm = self.paging(dom)
        ns = pm.logdirty_faults(int(new.size)) + pm.shadow_rebuilds(int(new.size))
        self.metrics[f"paging.{key}.logdirty_ns"] = self.metrics.get(f"paging.{key}.logdirty_ns", 0) + ns
        self.metrics[f"paging.{key}.logdirty_faults"] = self.metrics.get(f"paging.{key}.logdirty_faults", 0) + int(new.size)
        return ns

    def count(self, key: str, n: int) -> None:
        self.metrics[key] = self.metrics.get(key, 0) + n

    def sample(self, name: str, vid: int, value: int) -> None:
        d = self.samples.get(name)
        if d is None:
            d = self.samples[name] = {}
        lst = d.get(vid)
        if lst is None:
            lst = d[vid] = []
        lst.append(value)

    # ========================================================================================
    # wake path (event channels, timers, pause)
    # ========================================================================================
    def send_virq(self, v: VcpuState, virq: int) -> None:
        self.mark_pending(v, virq, None)

    def mark_pending(self, v: VcpuState, port: int, payload) -> None:
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

    def deliver_event(self, vid: int, port: int, payload) -> None:
        """Raise ``port`` for vCPU ``vid``: here at once, or by message for another pCPU."""
        v = self.vcpus.get(vid)
        if v is not None:
            self.mark_pending(v, port, payload)
        else:
            self.outbox.append(("evt", self.now, vid, port, payload))

    def unblock(self, v: VcpuState) -> None:
        """vcpu_unblock: clear VPF_blocked and any poll state, then vcpu_wake."""
        v.pause_flags &= ~VPF_BLOCKED
        v.poll_ports = ()
        v.poll_timeout_ns = NEVER
        if v.runnable():
            v.set_runstate(RUNSTATE_RUNNABLE, self.now)
            v.wake_ns = self.now
            self.sched.wake(v)

    def block(self, v: VcpuState) -> bool:
        """vcpu_block: returns False (and does not block) if events are already pending."""
        if v.upcall_pending:
            return False
        v.pause_flags |= VPF_BLOCKED
        self.sched.sleep(v)
        return True

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
        if was:
            if self.curr is v:
                self.sched.sleep(v)
                self.raise_softirq()
            else:
                self.sched.sleep(v)
                if v.runstate == RUNSTATE_RUNNABLE:
                    v.set_runstate(RUNSTATE_OFFLINE, self.now)

    def _unpause_vcpu(self, v: VcpuState) -> None:
        if v.pause_count > 0:
            v.pause_count -= 1
        if v.runnable() and self.curr is not v and v.runstate != RUNSTATE_RUNNABLE:
            v.set_runstate(RUNSTATE_RUNNABLE, self.now)
            self.sched.wake(v)

    # ========================================================================================
    # boundary protocol (driven by hosts.host.HostEngine)
    # ========================================================================================
    def adopt(self, v: VcpuState) -> None:
        """Take a vCPU (record already decoded) onto this pCPU's books."""
        self.vcpus[v.vid] = v
        dom = self.domains[v.dom]
        wl = make_workload(dom, v.idx, self._wl_cache)
        self.workloads[v.vid] = wl
        if not v.has_rng():
            from hosts.rng import generator

            v.rng = generator(self.root_seed, f"{dom.key or dom.name}/vcpu{v.idx}/workload")
            wl.start(v, self)
        v.sched = self.sched.udata_from_wire(v.sched) if isinstance(v.sched, dict) else v.sched
        if v.singleshot_ns < NEVER:
            self._push(max(v.singleshot_ns, self.now), PRIO_TIMER, EV_VCPU_TIMER, (v.vid, v.singleshot_ns))
        if v.poll_timeout_ns < NEVER:
            self._push(max(v.poll_timeout_ns, self.now), PRIO_TIMER, EV_POLL_TIMEOUT, (v.vid, v.poll_timeout_ns))

    def handle(self, items) -> None:
        """Process a boundary inbox at ``self.now``."""
        for it in items:
            kind = it[0]
            if kind == "evt":
                v = self.vcpus.get(it[1])
                if v is not None:
                    self.mark_pending(v, it[2], it[3])
                else:  # moved meanwhile: forward
                    self.outbox.append(("evt", self.now, it[1], it[2], it[3]))
            elif kind == "tickle":
                self.raise_softirq()
            elif kind == "pool":
                self.sched.apply_pool(it[1])
            elif kind == "give":
                self._give(it[1], it[2])
            elif kind == "xfer":
                rec = it[1]
                v = rec if isinstance(rec, VcpuState) else unpack_vcpu(rec)
                if v.dom not in self.domains:
                    # its domain was destroyed while the record was between pCPUs
                    self.departed[v.vid] = v.runstate_totals(max(self.destroyed.get(v.dom, self.now), v.state_entry_ns))
                    continue
                self._arrive(v, it[2], it[3])
                if it[3] == "migrated":
                    self.workloads[v.vid].on_restore(v, self)
            elif kind == "view":
                _, idlers, epoch, extra = it
                self.view.idlers = set(idlers)
                self.view.epoch = epoch
                self.view.extra = extra
            elif kind == "dom":
                info = DomainInfo.from_dict(it[1])
                self.domains[info.uid] = info
                for vid, v in self.vcpus.items():  # workloads read the domain table entry
                    if v.dom == info.uid:
                        self.workloads[vid] = make_workload(info, v.idx, self._wl_cache)
            elif kind == "domdel":
                # a vCPU that arrived after the kill (a give or move in flight) goes now
                for vid in [vid for vid, v in self.vcpus.items() if v.dom == it[1]]:
                    self._kill(vid)
                if self.domains.pop(it[1], None) is not None:
                    self.destroyed[it[1]] = self.now
            elif kind == "pause":
                for v in list(self.vcpus.values()):
                    if v.dom == it[1]:
                        self._pause_vcpu(v)
            elif kind == "unpause":
                for v in list(self.vcpus.values()):
                    if v.dom == it[1]:
                        self._unpause_vcpu(v)
            elif kind == "export":
                self._export(it[1], it[2])
            elif kind == "kill":
                self._kill(it[1])
            elif kind == "affinity":
                self._set_affinity(it[1], it[2], it[3])
            elif kind == "probe":
                uid = it[1]
                run = sum(v.runstate_totals(self.now)[0] for v in self.vcpus.values() if v.dom == uid)
                ld = self.metrics.get(f"paging.{uid}.logdirty_ns", 0)
                self.outbox.append(("probed", self.now, uid, {"running_ns": run, "logdirty_ns": ld}))
            elif kind == "frames":
                self.frame_cache.extend(it[1])
                self.frames_exhausted = bool(it[2])
                for v in list(self.vcpus.values()):
                    if v.pause_flags & VPF_BLOCKED_IN_XEN:
                        v.pause_flags &= ~VPF_BLOCKED_IN_XEN
                        if v.runnable() and v is not self.curr:
                            v.set_runstate(RUNSTATE_RUNNABLE, self.now)
                            self.sched.wake(v)
            else:
                hc.handle_host_item(self, it)

    def _give(self, vid: int, to_pcpu: int) -> None:
        v = self.vcpus.get(vid)
        if v is None or v is self.curr or not v.runnable():
            self.outbox.append(("pool", self.now, ("give_failed", vid, to_pcpu)))
            return
        self.sched.migrate(v, to_pcpu)
        self._send_vcpu(v, to_pcpu, XFER_STOLEN)

    def _arrive(self, v: VcpuState, kind: int, extra) -> VcpuState:
        self.adopt(v)
        if kind == XFER_STOLEN:
            self.sched.insert(v, stolen=True)
        elif kind == XFER_PUSH:
            self.sched.insert(v)
            v.pause_flags &= ~VPF_MIGRATING
            if v.runnable():
                self.sched.wake(v, migrating=True)
        else:  # XFER_PLACE: a vCPU entering the pool here, inserted down then brought up
            v.last_pcpu = self.pcpu
            down = v.pause_flags & VPF_DOWN
            v.pause_flags |= VPF_DOWN
            self.sched.insert(v)
            v.pause_flags = (v.pause_flags & ~VPF_DOWN) | down
            if v.runnable() and v.runstate != RUNSTATE_RUNNING:
                if v.runstate != RUNSTATE_RUNNABLE:
                    v.set_runstate(RUNSTATE_RUNNABLE, self.now)
                self.sched.wake(v)
        return v

    def _export(self, vid: int, with_sched: bool) -> None:
        """Hand a (paused, descheduled) vCPU's record to the host: it leaves the pool."""
        v = self.vcpus.get(vid)
        if v is None or v is self.curr:
            self.outbox.append(("exported", self.now, vid, None))
            return
        self.sched.remove(v)
        del self.vcpus[vid]
        self.workloads.pop(vid, None)
        v.sched = self.sched.udata_to_wire(v.sched) if with_sched else {}
        self.outbox.append(("exported", self.now, vid, pack_vcpu(v, with_sched=with_sched)))

    def _kill(self, vid: int) -> None:
        """domain_kill: the vCPU goes, abandoning any hypercall in progress."""
        v = self.vcpus.get(vid)
        if v is None:
            return
        if v is self.curr:
            self.long = None
            self.mode = MODE_GUEST
            self.gen += 1
            self.busy_ev = False
            v.pause_flags |= VPF_DOWN
            self._schedule()
        self.sched.remove(v)
        del self.vcpus[vid]
        self.workloads.pop(vid, None)
        self.departed[vid] = v.runstate_totals(self.now)

    def _set_affinity(self, vid: int, hard, soft) -> None:
        v = self.vcpus.get(vid)
        if v is None:
            return
        v.hard_affinity = tuple(hard)
        v.soft_affinity = tuple(soft)
        self.sched.adjust_affinity(v)
        pool = set(self.view.cpus)
        allowed = set(hard) & pool if hard else pool
        if self.pcpu not in allowed:
            self.set_migrating(v)

    def step(self, cmd: tuple):
        """One command of the host protocol (the same in-process and in an actor)."""
        kind = cmd[0]
        if kind == "run":
            _, inbox, at, until = cmd
            if at > self.now:
                self.advance(at)  # a pCPU left out of earlier exchanges had nothing before ``at``
            if inbox:
                self.handle(inbox)
            self.advance(until)
            return (self.take_outbox(), self.sched.summary(), self.next_event_ns(), self.curr.vid if self.curr is not None else -1)
        if kind == "finish":
            _, inbox, end = cmd
            if end > self.now:
                self.advance(end)
            if inbox:
                self.handle(inbox)
            return self.finish(end)
        raise ValueError(f"pCPU {self.pcpu}: unknown command {kind!r}")

    def take_outbox(self) -> list[tuple]:
        out = self.outbox
        self.outbox = []
        return out

    def summary(self):
        return self.sched.summary()

    def horizon(self) -> int:
        """Earliest time this pCPU may emit a message if nothing arrives (see the host)."""
        return self.next_event_ns()

    # ========================================================================================
    # end of run
    # ========================================================================================
    def digest(self) -> str:
        if self._dbuf:
            self._dig.update(self._dbuf.tobytes())
            del self._dbuf[:]
        return self._dig.hexdigest()

    def finish(self, end_ns: int) -> dict:
        """Close the books at ``end_ns`` and return this pCPU's report (plain data)."""
        if end_ns > self.now:
            self.now = end_ns
        delta = self.now - self.last_switch_ns
        if self.curr is None:
            self.idle_ns += delta
        else:
            self.busy_ns += delta
            if delta > 0 and len(self.trace) < self.trace_max:
                self.trace.extend((self.last_switch_ns, self.now, self.curr.vid))
        self.last_switch_ns = self.now
        vcpus = {}
        for vid, v in self.vcpus.items():
            vcpus[vid] = {"runstate_ns": v.runstate_totals(self.now), "regs": dict(v.regs), "wl": _plain_wl(v.wl), "hcall_preempted": v.hcall_preempted}
        return {
            "host": self.host,
            "pcpu": self.pcpu,
            "busy_ns": self.busy_ns,
            "idle_ns": self.idle_ns,
            "switches": self.switches,
            "events": self.events,
            "digest": self.digest(),
            "trace": self.trace.tobytes(),
            "trace_dropped": self.trace_dropped,
            "wake_lat": {vid: lat.tolist() for vid, lat in self.wake_lat.items()},
            "hv_stays": {hc.NAMES.get(nr, str(nr)): st[2].tolist() for nr, st in self.hv.items()},
            "hv_by_kind": {hc.NAMES.get(nr, str(nr)): [st[0], st[1]] for nr, st in self.hv.items()},
            "vcpus": vcpus,
            "departed": dict(self.departed),
            "metrics": dict(self.metrics),
            "samples": self.samples,
        }


def _plain_wl(wl: dict) -> dict:
    """A workload state small enough for the report (long lists are summarised)."""
    return {k: (v if not isinstance(v, (list, tuple)) or len(v) <= 16 else len(v)) for k, v in wl.items()}


__all__ = ["PcpuCore", "LongOp", "XFER_PUSH", "XFER_STOLEN", "XFER_PLACE", "vid_dom", "RUNSTATE_RUNNING"]
