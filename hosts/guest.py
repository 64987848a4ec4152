"""GuestCpu: what the current vCPU executes; the upper middle layer of PcpuCore.

Guest execution is stackless, as in Xen. A running vCPU is either in guest mode (computing,
preemptible at any instant) or in the hypervisor (inside a hypercall). A SCHEDULE softirq
raised while the current vCPU is in the hypervisor waits until the hypercall returns to the
guest. Long hypercalls (``hosts.hypercalls.LongOp``) run in chunks of one extent; before every
extent but the first they check for preemption (a softirq pending on this pCPU, including the
timer softirq raised by any timer interrupt, or events pending for the vCPU) and, if so,
return to the guest with a continuation written into the vCPU's argument registers; the guest
re-executes the hypercall when it next runs, on whatever pCPU. A descheduled vCPU is therefore
never inside Xen: its record (``hosts.vcpu.VcpuState``) is all of it.

The guest's program is its workload (``hosts.workload``); this layer asks it for the next
action, runs compute bursts as events, enters and leaves hypercalls, and offers workloads and
hypercall handlers the few services they use (``GuestHost``, ``HypercallHost``): guest memory
writes with their log-dirty cost, the paging cost model, counters, frame allocation. Memory
code returns what it did; the accounting is done here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hosts import hypercalls as hc
from hosts.domain import DomainInfo, EvtchnBinding
from hosts.events import PRIO_GUEST, Event, heap_push
from hosts.hypercalls import Effect, HypercallCosts, LongOp
from hosts.loop import EV_BURST, MODE_GUEST, MODE_XEN
from hosts.memory import HostMemory
from hosts.messages import EvtchnBound, Shutdown, WantFrames
from hosts.paging import PagingCosts, PagingModel
from hosts.scheduling import SchedulingCpu
from hosts.tracelog import (
    EXIT_REASON_VMCALL,
    HYPERCALL_V2_ARGS,
    TRC_HVM_VMENTRY,
    TRC_HVM_VMEXIT64,
    TRC_HVM_VMMCALL,
    TRC_PV_HYPERCALL_V2,
    TRC_SCHED_SHUTDOWN,
    hypercall_v2_arg_32,
    lo_hi,
)
from hosts.vcpu import REG_NAMES, VPF_BLOCKED_IN_XEN, VcpuState
from hosts.workload import Workload


class GuestCpu(SchedulingCpu):
    def __init__(
        self,
        host: str,
        pcpu: int,
        pool_cpus: tuple[int, ...],
        domains: dict[int, DomainInfo],
        memory: HostMemory | None,
        start_ns: int,
        trace_max: int,
        checks: bool,
        costs: HypercallCosts,
        paging_costs: PagingCosts,
        preempt: bool,
    ):
        super().__init__(host, pcpu, pool_cpus, domains, start_ns, trace_max, checks)
        self.memory = memory
        self.has_memory = memory is not None
        self.costs = costs
        self.preempt = preempt  # hypercall_preempt_check; False: long hypercalls run to completion
        self.workloads: dict[int, Workload[Any]] = {}  # vid -> workload object (parameters only)
        self.seg_start = 0  # when the current burst or hypercall chunk began
        self._pending_effect: Effect | None = None
        self.paging_costs = paging_costs
        self._paging: dict[int, PagingModel] = {}
        self._ld_seen: dict[int, tuple[int, np.ndarray]] = {}
        self.frame_cache: list[int] = []  # frames this pCPU may hand out mid-epoch
        self.frames_exhausted = False  # the host said it has no free frame left

    def _forget(self, vid: int) -> None:
        del self.vcpus[vid]
        self.workloads.pop(vid, None)

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
            self._enter_hypercall(v, v.regs["rax"], None)
            return
        rem = v.wl.get("rem", 0)
        if rem > 0:
            self._start_compute(rem)
        else:
            self._guest_next(v)

    def _start_compute(self, ns: int) -> None:
        self.mode = MODE_GUEST
        self.seg_start = self.now
        self.gen += 1
        self.busy_ev = True
        self.q._seq += 1
        heap_push(self._heap, Event(self.now + ns, PRIO_GUEST, self.q._seq, EV_BURST, self.gen))

    def _guest_next(self, v: VcpuState) -> None:
        wl = self.workloads[v.vid]
        self._consume_events(v)
        act = wl.next_action(v, self)
        if act[0] == hc.ACT_COMPUTE:
            ns = act[1]
            v.wl["rem"] = ns
            self._start_compute(ns)
        else:
            self._enter_hypercall(v, act[1], act[2])

    def _consume_events(self, v: VcpuState) -> None:
        """The guest's upcall handler runs on return to the guest and acknowledges events."""
        if v.upcall_pending:
            v.upcall_pending = False
            self.workloads[v.vid].on_events(v, self)

    def _burst_end(self) -> None:
        v = self.curr
        assert v is not None
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
    def _enter_hypercall(self, v: VcpuState, nr: int, args: tuple[Any, ...] | None) -> None:
        """Guest executes a hypercall instruction: we are now in Xen until it returns."""
        if args is not None:
            hc.load_args(v, nr, args)
        if self.tracing:
            self._trace_hypercall(v, nr)
        self.mode = MODE_XEN
        v.hv_entry_ns = self.now
        self.gen += 1
        res = hc.dispatch(self, v, nr)
        if isinstance(res, LongOp):
            self.long = res
            res.seg_start = self.now
            self._plan_long()
            return
        cost, effect = res
        self._pending_effect = effect
        self.busy_ev = True
        self.q._seq += 1
        heap_push(self._heap, Event(self.now + cost, PRIO_GUEST, self.q._seq, EV_BURST, self.gen))

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
                self.books.sample("hv_preempt_response", v.vid, self.now - op.cond_ns)
            op.encode(op.done)
            v.hcall_preempted = True
            self._leave_xen(v, op.nr, True)
            if not self.softirq:
                self._resume_guest(v)  # nothing to schedule: the guest re-executes at once
            return
        op.seg_start = self.now
        op.cond_ns = -1
        self._plan_long()

    def _plan_long(self) -> None:
        op = self.long
        assert op is not None
        self.gen += 1
        self.busy_ev = True
        self._push(op.seg_start + (op.total - op.done) * op.cost, PRIO_GUEST, EV_BURST, self.gen)

    def _replan_long(self) -> None:
        """A preemption condition arose: stop at the next extent boundary (never before the
        first extent of this entry)."""
        op = self.long
        if not self.preempt or op is None:
            return
        if op.cond_ns < 0:
            op.cond_ns = self.now
        elapsed = self.now - op.seg_start
        k = max(1, -(-elapsed // op.cost))
        if k > op.total - op.done:
            return  # completes first anyway
        self.gen += 1
        self.busy_ev = True
        self._push(op.seg_start + k * op.cost, PRIO_GUEST, EV_BURST, self.gen)

    def _exit_hypercall(self, v: VcpuState, result: int) -> None:
        nr = v.regs["rax"]
        v.regs["rax"] = result & 0xFFFFFFFFFFFFFFFF if result < 0 else result
        v.regs["rip"] += 2
        self._leave_xen(v, nr, False)
        if self.curr is v and not self.softirq and self.mode == MODE_GUEST:
            self._guest_next(v)

    def _trace_hypercall(self, v: VcpuState, nr: int) -> None:
        """A PV guest's hypercall: TRC_PV_HYPERCALL_V2 with the arguments __trace_hypercall
        keeps; an HVM guest's VMCALL: the VMEXIT (VMX reason 18) and TRC_HVM_VMMCALL."""
        d = self.domains.get(v.dom)
        regs = v.regs
        if d is not None and d.paging == "pv":
            op = nr
            words = []
            for i in HYPERCALL_V2_ARGS.get(nr, ()):
                op |= hypercall_v2_arg_32(i)
                words.append(regs[REG_NAMES[1 + i]] & 0xFFFFFFFF)  # arguments 1-5: rdi, rsi, rdx, r10, r8
            self.trace(TRC_PV_HYPERCALL_V2, op, *words)
        else:
            self.trace(TRC_HVM_VMEXIT64, EXIT_REASON_VMCALL, *lo_hi(regs["rip"]))
            self.trace(TRC_HVM_VMMCALL, nr & 0xFFFFFFFF)

    def _leave_xen(self, v: VcpuState, nr: int, preempted: bool) -> None:
        if self.tracing:
            d = self.domains.get(v.dom)
            if d is None or d.paging != "pv":
                self.trace(TRC_HVM_VMENTRY)
        self.books.hypercall_left(nr, preempted, self.now - v.hv_entry_ns)
        self.mode = MODE_GUEST
        self.timer_softirq = False
        self.gen += 1
        self.busy_ev = False
        self.seg_start = self.now

    # ========================================================================================
    # services for workloads (GuestHost) and hypercall handlers (HypercallHost)
    # ========================================================================================
    def paging(self, dom: DomainInfo) -> PagingModel:
        pm = self._paging.get(dom.uid)
        if pm is None or pm.mode != dom.paging:
            pm = self._paging[dom.uid] = PagingModel(dom.paging, self.paging_costs)
        return pm

    def _mem(self) -> HostMemory:
        if self.memory is None:
            raise RuntimeError(f"{self.host} pCPU {self.pcpu}: this engine has no guest memory")
        return self.memory

    def guest_write(self, v: VcpuState, dom: DomainInfo, gpfns: np.ndarray, tags: np.ndarray) -> int:
        """The guest writes ``gpfns``; returns the ns Xen charges it (log-dirty faults)."""
        self._mem().write_tags(dom, gpfns, tags)
        key = dom.uid
        books = self.books
        metrics = books.metrics
        k = f"pages_written.{key}"
        metrics[k] = metrics.get(k, 0) + len(gpfns)
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
        books.count(f"paging.{key}.logdirty_ns", ns)
        books.count(f"paging.{key}.logdirty_faults", int(new.size))
        return ns

    def write_tags(self, dom: DomainInfo, gpfns: np.ndarray, values: np.ndarray) -> None:
        self._mem().write_tags(dom, gpfns, values)

    def read_tags(self, dom: DomainInfo, gpfns: np.ndarray) -> np.ndarray:
        return self._mem().read_tags(dom, gpfns)

    def count(self, key: str, n: int) -> None:
        self.books.count(key, n)

    def sample(self, name: str, vid: int, value: int) -> None:
        self.books.sample(name, vid, value)

    def shutdown(self, v: VcpuState, reason: int) -> None:
        if self.tracing:
            dom, idx = self.trace_dom(v)
            self.trace(TRC_SCHED_SHUTDOWN, dom, idx, reason & 0xFFFFFFFF)
        self.outbox.append(Shutdown(self.now, v.dom, reason))
        self.park(v)

    def port_bound(self, dom: DomainInfo, b: EvtchnBinding) -> None:
        dom.evtchn[b.port] = b
        self.outbox.append(EvtchnBound(self.now, dom.uid, b.to_tuple()))

    def decrease_reservation(self, dom: DomainInfo, lo: int, hi: int) -> None:
        self.books.count("frames_freed", self._mem().decrease_reservation(dom, lo, hi))

    def populate(self, dom: DomainInfo, lo: int, hi: int) -> int:
        """Back pfns [lo, hi) from this pCPU's frame cache; fewer done when it runs dry (the
        host is then asked for more, unless it said it has none)."""
        res = self._mem().populate(dom, lo, hi, self.frame_cache)
        if res.taken:
            self.books.count("frames_populated", res.taken)
        if res.short and not self.frames_exhausted:
            self.outbox.append(WantFrames(self.now, res.short))
        return res.done

    def pt_update(self, dom: DomainInfo, reqs: list[list[int]]) -> None:
        self._mem().pt_update(dom, reqs)

