"""PcpuCore: the engine of one physical CPU, and the top of its layers.

The layers, each in its own module and each with its own state:

* ``hosts.loop.EventLoop``: clock, event heap, softirq flags, timers;
* ``hosts.scheduling.SchedulingCpu``: the vCPUs held here, the scheduler instance and what it
  may ask of the engine, the enactment of its decisions, the wake path;
* ``hosts.guest.GuestCpu``: guest execution (compute bursts, hypercalls, continuations) and
  the services workloads and hypercall handlers use;
* this module: the boundary protocol with the host's master (``hosts.host.HostEngine``): a
  command (:class:`hosts.messages.Run` or ``Finish``) carries an inbox of typed items, each
  handled through the table ``INBOX`` at the command's instant; the reply carries the outbox.

The same class runs in-process (inline backend) and inside a Ray actor.

Ordering and determinism: inbox items are handled in the order the host gives (gives, arrivals,
then messages in (time, source pCPU, sequence) order, then pool instructions), before the
SCHEDULE softirq runs.
"""

from __future__ import annotations

from typing import Any, Callable, Final

from hosts.codec import pack_vcpu, unpack_vcpu
from hosts.domain import DomainInfo, EvtchnBinding
from hosts.events import PRIO_TIMER
from hosts.guest import GuestCpu
from hosts.hypercalls import HypercallCosts
from hosts.loop import EV_POLL_TIMEOUT, EV_VCPU_TIMER, MODE_GUEST, InvariantError
from hosts.memory import HostMemory
from hosts.messages import (
    XFER_PLACE,
    XFER_PUSH,
    XFER_STOLEN,
    Affinity,
    Command,
    DomDel,
    DomUpdate,
    Evt,
    EvtchnUpdate,
    EvtOut,
    Export,
    Exported,
    Finish,
    Frames,
    Kill,
    OutMsg,
    PauseDom,
    PcpuReport,
    PoolInstr,
    PoolOut,
    Probe,
    Probed,
    UsageOut,
    UsageProbe,
    Run,
    RunReply,
    Tickle,
    UnknownMessage,
    UnpauseDom,
    VcpuReport,
    View,
    Xfer,
)
from hosts.paging import PagingCosts
from hosts.rng import generator
from hosts.sched.base import SchedulerEntry
from hosts.sched.messages import Give, GiveFailed
from hosts.clock import NEVER
from hosts.tracelog import TRC_SCHED_DOM_ADD, TRC_SCHED_DOM_REM, TRC_SCHED_WAKE
from hosts.vcpu import RUNSTATE_RUNNABLE, RUNSTATE_RUNNING, VPF_BLOCKED_IN_XEN, VPF_DOWN, VPF_MIGRATING, VcpuState
from hosts.workload import make_workload
from hosts import hypercalls as hc
from pydantic import BaseModel

__all__ = ["PcpuCore", "InvariantError"]

_new: Final = tuple.__new__
#: message classes as native constants: a NamedTuple class is otherwise looked up in this
#: module's globals at each use (every message of every exchange)
_View: Final = View
_PoolInstr: Final = PoolInstr
_Evt: Final = Evt
_Xfer: Final = Xfer
_Give: Final = Give
_RunReply: Final = RunReply


class PcpuCore(GuestCpu):
    """One pCPU: event loop, scheduler host, guest runner. Runs in-process or inside an actor."""

    def __init__(
        self,
        *,
        host: str,
        pcpu: int,
        pool_cpus: tuple[int, ...],
        sched_entry: SchedulerEntry,
        sched_params: BaseModel,
        domains: dict[int, DomainInfo],
        memory: HostMemory | None = None,
        root_seed: int = 0,
        trace_max: int = 2_000_000,
        start_ns: int = 0,
        costs: HypercallCosts | None = None,
        checks: bool = False,
        paging_costs: dict[str, Any] | None = None,
        preempt: bool = True,
        xentrace: bool = False,
    ):
        super().__init__(
            host, pcpu, pool_cpus, domains, memory, start_ns, trace_max, checks,
            costs or HypercallCosts(), PagingCosts.from_dict(paging_costs), preempt,
        )
        self.root_seed = root_seed
        self._wl_cache: dict[tuple[int, int], Any] = {}
        self.departed: dict[int, list[int]] = {}  # runstates of vCPUs of destroyed domains
        self.destroyed: dict[int, int] = {}  # uid -> when its domain left this pCPU's table
        self.tracing = xentrace  # record Xen trace records (hosts.tracelog); before the scheduler reads it
        self.sched = sched_entry.pcpu(self, sched_params)
        self.skip_noops = self.sched.timeless_summary  # see EventLoop.horizon

    # ========================================================================================
    # the boundary protocol
    # ========================================================================================
    def step(self, cmd: Command) -> RunReply | PcpuReport:
        """One command of the host protocol (the same in-process and in an actor)."""
        if type(cmd) is Run:
            inbox, at, until = cmd
            # tuple.__new__ skips the NamedTuple's Python-level __new__: one reply per command
            return _new(_RunReply, self.run(inbox, at, until))
        if type(cmd) is Finish:
            if cmd.end > self.now:
                self.advance(cmd.end)
            if cmd.inbox:
                self.handle(cmd.inbox)
            return self.finish(cmd.end)
        raise UnknownMessage(f"pCPU {self.pcpu}: unknown command {type(cmd).__name__}")

    def run(self, inbox: tuple[Any, ...], at: int, until: int) -> tuple[list[OutMsg], Any, int, int]:
        """A ``Run`` command's work; its reply's fields as a plain tuple (the inline backend
        calls this directly, without building the command and reply records)."""
        if at > self.now:
            self.advance(at)  # a pCPU left out of earlier exchanges had nothing before ``at``
        if inbox:
            self.handle(inbox)
        self.advance(until)
        out = self.outbox
        self.outbox = []
        return (out, self.sched.summary(), self.horizon() if self.skip_noops else self.next_event_ns(), self.curr.vid if self.curr is not None else -1)

    def handle(self, items: tuple[Any, ...] | list[Any]) -> None:
        """Process a boundary inbox at ``self.now``."""
        table = INBOX
        for it in items:
            t = type(it)
            if t is _View:  # the two most frequent kinds are handled here, without a call
                self.view.idlers = set(it.idlers)
                self.view.epoch = it.epoch
                self.view.extra = it.extra
            elif t is _PoolInstr:
                self.sched.apply_pool(it.instr)
            elif t is _Evt:  # and the next most frequent ones with a direct (native) call
                _on_evt(self, it)
            elif t is _Xfer:
                _on_xfer(self, it)
            elif t is _Give:
                _on_give(self, it)
            else:
                h = table.get(t)
                if h is None:
                    raise UnknownMessage(f"pCPU {self.pcpu}: unknown inbox item {t.__name__}")
                h(self, it)

    def emit(self, msg: OutMsg) -> None:
        self.outbox.append(msg)

    # --- the vCPUs held here ----------------------------------------------------------------
    def adopt(self, v: VcpuState) -> None:
        """Take a vCPU (record already decoded) onto this pCPU's books."""
        self.vcpus[v.vid] = v
        dom = self.domains[v.dom]
        wl = make_workload(dom, v.idx, self._wl_cache)
        self.workloads[v.vid] = wl
        if not v.has_rng():
            v.rng = generator(self.root_seed, f"{dom.key or dom.name}/vcpu{v.idx}/workload")
            wl.start(v, self)
        v.sched = self.sched.udata_from_wire(v.sched) if isinstance(v.sched, dict) else v.sched
        if v.singleshot_ns < NEVER:
            self._push(max(v.singleshot_ns, self.now), PRIO_TIMER, EV_VCPU_TIMER, (v.vid, v.singleshot_ns))
        if v.poll_timeout_ns < NEVER:
            self._push(max(v.poll_timeout_ns, self.now), PRIO_TIMER, EV_POLL_TIMEOUT, (v.vid, v.poll_timeout_ns))

    def _arrive(self, v: VcpuState, how: int) -> None:
        self.adopt(v)
        if how == XFER_STOLEN:
            self.sched.insert(v, stolen=True)
        elif how == XFER_PUSH:
            self.sched.insert(v)
            v.pause_flags &= ~VPF_MIGRATING
            if v.runnable():
                if self.tracing:
                    self._trace_pair(TRC_SCHED_WAKE, v)
                self.sched.wake(v, migrating=True)
        else:  # XFER_PLACE: a vCPU entering the pool here, inserted down then brought up
            v.last_pcpu = self.pcpu
            down = v.pause_flags & VPF_DOWN
            v.pause_flags |= VPF_DOWN
            self.sched.insert(v)
            v.pause_flags = (v.pause_flags & ~VPF_DOWN) | down
            if v.runnable() and v.runstate != RUNSTATE_RUNNING:
                if self.tracing:
                    self._trace_pair(TRC_SCHED_WAKE, v)
                if v.runstate != RUNSTATE_RUNNABLE:
                    if self.tracing:
                        self._trace_rs(v, RUNSTATE_RUNNABLE)
                    v.set_runstate(RUNSTATE_RUNNABLE, self.now)
                self.sched.wake(v)

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
        self._forget(vid)
        self.departed[vid] = v.runstate_totals(self.now)

    # ========================================================================================
    # end of run
    # ========================================================================================
    def digest(self) -> str:
        return self.books.digest()

    def finish(self, end_ns: int) -> PcpuReport:
        """Close the books at ``end_ns`` and return this pCPU's report (plain data)."""
        if end_ns > self.now:
            self.now = end_ns
        b = self.books
        b.close(self.now, self.curr.vid if self.curr is not None else -1)
        vcpus = {
            vid: VcpuReport(v.runstate_totals(self.now), dict(v.regs), _plain_wl(v.wl), v.hcall_preempted)
            for vid, v in self.vcpus.items()
        }
        return PcpuReport(
            host=self.host,
            pcpu=self.pcpu,
            busy_ns=b.busy_ns,
            idle_ns=b.idle_ns,
            switches=b.switches,
            events=b.events,
            digest=b.digest(),
            trace=b.trace.tobytes(),
            trace_dropped=b.trace_dropped,
            wake_lat={vid: lat.tolist() for vid, lat in b.wake_lat.items()},
            hv_stays={hc.NAMES.get(nr, str(nr)): st[1].tolist() for nr, st in b.hv.items()},
            hv_by_kind={hc.NAMES.get(nr, str(nr)): list(st[0]) for nr, st in b.hv.items()},
            vcpus=vcpus,
            departed=dict(self.departed),
            metrics=dict(b.metrics),
            samples=b.samples,
            xentrace=self.tbuf.tobytes(),
        )


# ============================================================================================
# inbox handlers, one per item type
# ============================================================================================


def _on_evt(core: PcpuCore, m: Evt) -> None:
    v = core.vcpus.get(m.vid)
    if v is not None:
        core.mark_pending(v, m.port, m.payload)
    else:  # moved meanwhile: forward
        core.outbox.append(EvtOut(core.now, m.vid, m.port, m.payload))


def _on_tickle(core: PcpuCore, m: Tickle) -> None:
    core.raise_softirq()


def _on_pool(core: PcpuCore, m: PoolInstr) -> None:
    core.sched.apply_pool(m.instr)


def _on_give(core: PcpuCore, m: Give) -> None:
    v = core.vcpus.get(m.vid)
    if v is None or v is core.curr or not v.runnable():
        core.outbox.append(PoolOut(core.now, GiveFailed(m.vid, m.to_pcpu)))
        return
    core.sched.migrate(v, m.to_pcpu)
    core._send_vcpu(v, m.to_pcpu, XFER_STOLEN)


def _on_xfer(core: PcpuCore, m: Xfer) -> None:
    v = m.vcpu if isinstance(m.vcpu, VcpuState) else unpack_vcpu(m.vcpu)
    if v.dom not in core.domains:
        # its domain was destroyed while the record was between pCPUs
        core.departed[v.vid] = v.runstate_totals(max(core.destroyed.get(v.dom, core.now), v.state_entry_ns))
        return
    core._arrive(v, m.how)
    if m.migrated:
        core.workloads[v.vid].on_restore(v, core)


def _on_view(core: PcpuCore, m: View) -> None:
    core.view.idlers = set(m.idlers)
    core.view.epoch = m.epoch
    core.view.extra = m.extra


def _on_dom(core: PcpuCore, m: DomUpdate) -> None:
    info = DomainInfo.from_dict(m.info)
    if core.tracing and core.pcpu == 0 and info.uid not in core.domains:
        # sched_init_domain, on the host's pCPU 0 (Xen: wherever the toolstack's domctl runs)
        core.trace(TRC_SCHED_DOM_ADD, 0 if info.is_dom0 else info.uid)
    core.domains[info.uid] = info
    for vid, v in core.vcpus.items():  # workloads read the domain table entry
        if v.dom == info.uid:
            core.workloads[vid] = make_workload(info, v.idx, core._wl_cache)


def _on_domdel(core: PcpuCore, m: DomDel) -> None:
    # a vCPU that arrived after the kill (a give or move in flight) goes now
    for vid in [vid for vid, v in core.vcpus.items() if v.dom == m.uid]:
        core._kill(vid)
    gone = core.domains.pop(m.uid, None)
    if gone is not None:
        core.destroyed[m.uid] = core.now
        if core.tracing and core.pcpu == 0:
            core.trace(TRC_SCHED_DOM_REM, 0 if gone.is_dom0 else m.uid)


def _on_pause(core: PcpuCore, m: PauseDom) -> None:
    for v in list(core.vcpus.values()):
        if v.dom == m.uid:
            core._pause_vcpu(v)


def _on_unpause(core: PcpuCore, m: UnpauseDom) -> None:
    for v in list(core.vcpus.values()):
        if v.dom == m.uid:
            core._unpause_vcpu(v)


def _on_export(core: PcpuCore, m: Export) -> None:
    """Hand a (paused, descheduled) vCPU's record to the host: it leaves the pool."""
    v = core.vcpus.get(m.vid)
    if v is None or v is core.curr:
        core.outbox.append(Exported(core.now, m.vid, None))
        return
    core.sched.remove(v)
    core._forget(m.vid)
    v.sched = core.sched.udata_to_wire(v.sched) if m.with_sched else {}
    core.outbox.append(Exported(core.now, m.vid, pack_vcpu(v, with_sched=m.with_sched)))


def _on_kill(core: PcpuCore, m: Kill) -> None:
    core._kill(m.vid)


def _on_affinity(core: PcpuCore, m: Affinity) -> None:
    v = core.vcpus.get(m.vid)
    if v is None:
        return
    v.hard_affinity = tuple(m.hard)
    v.soft_affinity = tuple(m.soft)
    core.sched.adjust_affinity(v)
    pool = set(core.view.cpus)
    allowed = set(m.hard) & pool if m.hard else pool
    if core.pcpu not in allowed:
        core.set_migrating(v)


def _on_probe(core: PcpuCore, m: Probe) -> None:
    run = sum(v.runstate_totals(core.now)[0] for v in core.vcpus.values() if v.dom == m.uid)
    ld = core.books.metrics.get(f"paging.{m.uid}.logdirty_ns", 0)
    core.outbox.append(Probed(core.now, m.uid, run, ld))


def _on_usage(core: PcpuCore, m: UsageProbe) -> None:
    now = core.now
    b = core.books
    busy = b.busy_ns + (now - b.last_switch_ns if core.curr is not None else 0)
    run: dict[int, int] = {}
    wait: dict[int, int] = {}
    for v in core.vcpus.values():
        tot = v.runstate_totals(now)
        run[v.dom] = run.get(v.dom, 0) + tot[0]
        wait[v.dom] = wait.get(v.dom, 0) + tot[1]
    for vid, tot in core.departed.items():  # what vCPUs of destroyed domains did here
        d = vid >> 12
        run[d] = run.get(d, 0) + tot[0]
        wait[d] = wait.get(d, 0) + tot[1]
    core.outbox.append(UsageOut(now, busy, run, wait))


def _on_frames(core: PcpuCore, m: Frames) -> None:
    core.frame_cache.extend(m.mfns)
    core.frames_exhausted = bool(m.exhausted)
    for v in list(core.vcpus.values()):
        if v.pause_flags & VPF_BLOCKED_IN_XEN:
            v.pause_flags &= ~VPF_BLOCKED_IN_XEN
            if v.runnable() and v is not core.curr:
                if core.tracing:
                    core._trace_pair(TRC_SCHED_WAKE, v)
                    core._trace_rs(v, RUNSTATE_RUNNABLE)
                v.set_runstate(RUNSTATE_RUNNABLE, core.now)
                core.sched.wake(v)


def _on_evtchn(core: PcpuCore, m: EvtchnUpdate) -> None:
    dom = core.domains.get(m.uid)
    if dom is not None:
        b = EvtchnBinding.from_list(m.binding)
        dom.evtchn[b.port] = b


INBOX: dict[type, Callable[[PcpuCore, Any], None]] = {
    Evt: _on_evt,
    Tickle: _on_tickle,
    PoolInstr: _on_pool,
    Give: _on_give,
    Xfer: _on_xfer,
    View: _on_view,
    DomUpdate: _on_dom,
    DomDel: _on_domdel,
    PauseDom: _on_pause,
    UnpauseDom: _on_unpause,
    Export: _on_export,
    Kill: _on_kill,
    Affinity: _on_affinity,
    Probe: _on_probe,
    UsageProbe: _on_usage,
    Frames: _on_frames,
    EvtchnUpdate: _on_evtchn,
}


def _plain_wl(wl: dict[str, Any]) -> dict[str, Any]:
    """A workload state small enough for the report (long lists are summarised)."""
    return {k: (v if not isinstance(v, (list, tuple)) or len(v) <= 16 else len(v)) for k, v in wl.items()}
