"""EpochEngine: one host's master, running the epoch protocol over its pCPUs.

The pCPUs of a host advance independently between **epoch boundaries** (a grid of
``epoch_ns``, 1 ms by default: Xen's default rate limit, so a cross-pCPU effect is late by at
most one epoch). At a boundary T the master:

1. gathers each pCPU's outbox (messages stamped with their emission time), its scheduler
   summary and its horizon (the time of its next event);
2. sorts every message by (time, source pCPU, sequence): the total order that makes the run
   deterministic whatever the processes' timing;
3. routes them: a vCPU moving to a pCPU first (the directory of who holds which vCPU is updated
   in that order), then wakes and event notifications to whoever holds the target vCPU,
   tickles to their pCPU, pool messages to the pool half of the scheduler;
4. runs each pool's boundary work (Credit's accounting when due, steal requests) as a pure
   function of the summaries, adding its instructions;
5. sends every pCPU its inbox; they handle it *at T* and reply; repeat from 1 until no pCPU has
   anything to deliver (micro-rounds, so a wake -> tickle -> steal -> move chain resolves at T).

A boundary at which nothing can happen is skipped: the next boundary is the first grid point
after the earliest pending event of any pCPU (any event may emit a message), or the pool's next
due time, whichever is earlier. Skipping only removes boundaries that would have had nothing to
deliver, so results are identical with and without it (a test checks this).

Toolstack commands (``hosts.host.HostEngine``) run between ``run_until`` calls, when every pCPU
stands at the same instant; their inbox items are handled at that instant and any messages they
cause wait for the next boundary, like any message emitted between boundaries.

The pCPUs are reached through ``ports``: ``InlinePorts`` calls ``PcpuCore.step`` in this
process; the Ray backend's ports reach actors over shared memory. The protocol is the same.
"""

from __future__ import annotations

from hosts.errors import HostError as HostError  # re-exported: defined apart so this module can be compiled

from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from pydantic import BaseModel

from hosts.clock import NEVER
from hosts.domain import DomainInfo, EvtchnBinding
from hosts.hypercalls import HypercallCosts
from hosts.memory import HostMemory
from hosts.messages import (
    Command,
    EvtchnBound,
    EvtchnUpdate,
    Evt,
    EvtOut,
    Exported,
    Finish,
    Frames,
    InboxItem,
    PcpuReport,
    PoolInstr,
    PoolOut,
    Probed,
    UsageOut,
    Reply,
    Run,
    RunReply,
    Shutdown,
    StealReq,
    Tickle,
    TickleOut,
    View,
    WantFrames,
    Xfer,
    XferOut,
)
from hosts.pcpu import PcpuCore
from hosts.sched import get as get_sched
from hosts.sched.base import PoolScheduler
from hosts.sched.messages import Give, StealRequest
from hosts.vcpu import vid_dom

_new: Final = tuple.__new__
#: message classes as native constants: a NamedTuple class is otherwise looked up in this
#: module's globals at each use (every message of every exchange)
_EvtOut: Final = EvtOut
_Evt: Final = Evt
_XferOut: Final = XferOut
_Xfer: Final = Xfer
_StealReq: Final = StealReq
_StealRequest: Final = StealRequest
_PoolOut: Final = PoolOut
_TickleOut: Final = TickleOut
_Give: Final = Give
_PoolInstr: Final = PoolInstr
_View: Final = View
_Exported: Final = Exported
_UsageOut: Final = UsageOut
_Probed: Final = Probed
_Run: Final = Run

MAX_REFILL: Final = 1 << 16  # frames given to one pCPU's allocation cache per boundary

_TICKLE: Final = Tickle()  # it carries nothing: one is enough


def _not_only_views(items: list[InboxItem]) -> bool:
    """Whether ``items`` hold anything but pool views (which wake nothing)."""
    for it in items:
        if type(it) is not _View:
            return True
    return False


#: a message as routed: (emission time, source pCPU, sequence, message); the sequence grows
#: with every message the master takes in, so (time, pCPU, sequence) is unique and orders
#: a pCPU's messages as it emitted them, earlier exchanges first
Routed = tuple[int, int, int, Any]
#: a ``RunReply``'s fields (the inline backend's pCPUs answer with the plain tuple)
Replied = tuple[list[Any], Any, int, int]


class Ports(Protocol):
    def exchange(self, cmds: dict[int, Command]) -> dict[int, Any]: ...


@dataclass
class PoolSpec:
    """A cpupool: a set of the host's pCPUs running one scheduler instance."""

    pool_id: int
    name: str
    cpus: tuple[int, ...]
    sched: str
    params: BaseModel  # the scheduler's params model


@dataclass
class HostSpec:
    name: str
    nr_pcpus: int
    mem_pages: int
    pools: list[PoolSpec]
    full_memory: bool = False
    epoch_ns: int = 1_000_000
    skip_quiet: bool = True
    trace_max: int = 2_000_000
    costs: dict[str, int] = field(default_factory=dict)
    paging_costs: dict[str, Any] = field(default_factory=dict)
    checks: bool = False
    preempt_hypercalls: bool = True
    #: micro-rounds per boundary (0: deliver what a boundary causes with the next advance)
    max_rounds: int = 16
    #: keep Xen trace records on every pCPU (hosts.tracelog; returned in the reports)
    xentrace: bool = False

    def pool_of_cpu(self) -> dict[int, int]:
        return {c: p.pool_id for p in self.pools for c in p.cpus}

    def pool_for(self, pcpu: int) -> PoolSpec:
        for p in self.pools:
            if pcpu in p.cpus:
                return p
        raise HostError(f"host {self.name}: pCPU {pcpu} is in no pool")


def make_core(spec: HostSpec, pcpu: int, domains: dict[int, DomainInfo], memory: HostMemory | None, root_seed: int, start_ns: int) -> PcpuCore:
    """Build the PcpuCore for ``pcpu`` of host ``spec`` (the same everywhere it runs)."""
    pool = spec.pool_for(pcpu)
    return PcpuCore(
        host=spec.name,
        pcpu=pcpu,
        pool_cpus=pool.cpus,
        sched_entry=get_sched(pool.sched),
        sched_params=pool.params,
        domains=domains,
        memory=memory,
        root_seed=root_seed,
        trace_max=spec.trace_max,
        start_ns=start_ns,
        costs=HypercallCosts(**spec.costs),
        checks=spec.checks,
        paging_costs=spec.paging_costs,
        preempt=spec.preempt_hypercalls,
        xentrace=spec.xentrace,
    )


class InlinePorts:
    """All pCPUs in this process; ``exchange`` runs each one's step in pCPU order."""

    def __init__(self, cores: dict[int, PcpuCore]):
        self.cores = cores
        for c in cores.values():
            c.wire = c.checks  # hand vCPU objects over directly; checks keep the codec in the loop

    def exchange(self, cmds: dict[int, Command]) -> dict[int, Reply]:
        return {i: self.cores[i].step(cmd) for i, cmd in cmds.items()}  # built in pCPU order


class EpochEngine:
    """The epoch protocol of one host. Plain class: runs in the driver (inline) or in pCPU 0's
    actor; ``hosts.host.HostEngine`` adds the toolstack's operations on top."""

    def __init__(self, spec: HostSpec, ports: Ports, memory: HostMemory | None, root_seed: int, start_ns: int = 0):
        self.spec = spec
        self.ports = ports
        # in-process pCPUs are run directly, without command and reply records
        self.cores: dict[int, PcpuCore] | None = ports.cores if isinstance(ports, InlinePorts) else None
        self.memory = memory
        self.root_seed = root_seed
        self.now = start_ns
        self.epoch = spec.epoch_ns
        self.cpus = tuple(range(spec.nr_pcpus))
        self.pool_of = spec.pool_of_cpu()
        self.pools: dict[int, PoolScheduler[Any]] = {}
        for p in spec.pools:
            ps = get_sched(p.sched).pool(p.params, p.cpus, start_ns)
            ps.locate = self.locate
            self.pools[p.pool_id] = ps
        self.domains: dict[int, DomainInfo] = {}
        self.directory: dict[int, int] = {}  # vid -> pCPU holding it
        self.summaries: dict[int, Any] = {c: None for c in self.cpus}
        self.idle: dict[int, bool] = {c: True for c in self.cpus}
        self.curr_vid: dict[int, int] = {c: -1 for c in self.cpus}
        self.horizons: dict[int, int] = {c: start_ns for c in self.cpus}
        self.held: list[Routed] = []  # messages emitted between boundaries by command rounds
        self.msg_seq = 0
        self.sent_view: dict[int, tuple[tuple[int, ...], int, Any]] = {}  # pool -> its last view
        self.exported: dict[int, bytes | None] = {}
        self.host_events: list[tuple[int, str, int, int]] = []  # (time, kind, uid, reason)
        self.pending: dict[int, list[InboxItem]] = {}
        self.want_frames: dict[int, int] = {}
        self.boundaries = 0
        self.rounds = 0
        self.rounds_here = 0
        self.max_rounds = spec.max_rounds
        self.probed: dict[str, int] = {}
        self.usage_answers: list[UsageOut] = []  # answers to a usage probe
        self.finished = False

    # --- directory ---------------------------------------------------------------------------
    def locate(self, vid: int) -> int:
        return self.directory[vid]

    # --- time --------------------------------------------------------------------------------
    def _grid_after(self, t: int) -> int:
        return (t // self.epoch + 1) * self.epoch

    def _grid_ceil(self, t: int) -> int:
        return -(-t // self.epoch) * self.epoch

    def next_boundary(self) -> int:
        nxt = self._grid_after(self.now)
        if not self.spec.skip_quiet or self.held:
            return nxt
        # pending items other than views can wake vCPUs: no skipping past them
        for items in self.pending.values():
            if _not_only_views(items):
                return nxt
        h = min(self.horizons.values())
        cand = self._grid_after(h) if h < NEVER else NEVER
        for ps in self.pools.values():
            due = ps.next_due(self.now)
            if due < NEVER:
                cand = min(cand, max(self._grid_ceil(due), nxt))
        return max(nxt, cand)

    def run_until(self, t_end: int) -> None:
        """Advance every pCPU to ``t_end``, holding every boundary on the way."""
        if self.finished:
            raise HostError(f"host {self.spec.name}: already finished")
        while self.now < t_end:
            T = self.next_boundary()
            if T > t_end:
                replies = self._run({}, t_end, everyone=True)
                self.now = t_end
                self._absorb(replies, hold=True, learn=False)
                return
            replies = self._run({}, T, everyone=True)
            self.now = T
            self._boundary(replies)

    def _run(self, inbox: dict[int, list[InboxItem]], until: int, everyone: bool = False) -> dict[int, Replied]:
        """One exchange: each pCPU handles its pending items and inbox at ``self.now``, then
        advances to ``until``. With ``everyone``, a pCPU is left out when it provably has
        nothing to do (no event before ``until``, nothing but pool views to receive): leaving it
        out changes nothing, it simply catches up at its next command."""
        cmds: dict[int, Command] = {}
        replies: dict[int, Replied] = {}
        cores = self.cores
        pending = self.pending
        horizons = self.horizons
        now = self.now
        for c in self.cpus:
            items = inbox.get(c)
            pend = pending.get(c)
            if not items:
                if not everyone:
                    continue
                if horizons[c] >= until and not (pend and _not_only_views(pend)):
                    continue
            if pend:
                pending[c] = []
                box = tuple(pend + items) if items else tuple(pend)
            else:
                box = tuple(items) if items else ()
            if cores is not None:
                replies[c] = cores[c].run(box, now, until)
            else:
                cmds[c] = _new(_Run, (box, now, until))  # Run(...), without its Python __new__
        if cores is not None:
            return replies
        return self.ports.exchange(cmds) if cmds else {}

    # --- the boundary ----------------------------------------------------------------------------
    def _absorb(self, replies: dict[int, Replied], hold: bool, learn: bool = True) -> list[Routed]:
        """Record summaries and horizons; return (or hold) the messages, sorted. Answers to the
        toolstack (exported records, probes) are taken out here.

        ``learn=False`` (a pause or a probe between boundaries, which change nothing) keeps
        what the pools and the boundary schedule know: a pause must not decide which
        boundaries are held nor what the pools read there (Credit2's summaries change with time
        alone). A horizon may only move earlier, which a pause cannot cause. Only ``curr_vid``
        (the toolstack's view of who runs) is refreshed."""
        msgs: list[Routed] = []
        seq = self.msg_seq
        for c, (out, summary, horizon, curr) in replies.items():
            self.curr_vid[c] = curr
            if learn:
                self.summaries[c] = summary
                self.horizons[c] = horizon
                self.idle[c] = curr < 0
            elif horizon < self.horizons[c]:
                self.horizons[c] = horizon
            for m in out:
                if type(m) is _Exported:
                    self.exported[m.vid] = m.record
                    if m.record is not None:
                        self.directory.pop(m.vid, None)
                elif type(m) is _UsageOut:
                    self.usage_answers.append(m)
                elif type(m) is _Probed:
                    self.probed["running_ns"] = self.probed.get("running_ns", 0) + m.running_ns
                    self.probed["logdirty_ns"] = self.probed.get("logdirty_ns", 0) + m.logdirty_ns
                else:
                    msgs.append((m.t, c, seq, m))
                    seq += 1
        self.msg_seq = seq
        if hold:
            self.held.extend(msgs)
            return []
        if self.held:
            msgs = self.held + msgs
            self.held = []
        if len(msgs) > 1:
            msgs.sort()  # by (time, pCPU, sequence): unique, the message itself is never compared
        return msgs

    def _boundary(self, replies: dict[int, Replied]) -> None:
        self.boundaries += 1
        first = True
        for _ in range(self.max_rounds + 1):
            msgs = self._absorb(replies, hold=False)
            inbox = self._route(msgs, first)
            first = False
            if not any(inbox.values()):
                self._after_boundary()
                return
            if self.rounds_here == self.max_rounds:
                # merged mode (or out of rounds): deliver with the next advance, at this instant
                for c, items in inbox.items():
                    if items:
                        self.pending.setdefault(c, []).extend(items)
                self.rounds_here = 0
                self._after_boundary()
                return
            self.rounds += 1
            self.rounds_here += 1
            replies = self._run(inbox, self.now)
        self._absorb(replies, hold=True)
        self._after_boundary()

    def _route(self, msgs: list[Routed], first_round: bool) -> dict[int, list[InboxItem]]:
        """Turn sorted messages (and the pools' boundary work) into per-pCPU inboxes, in the
        order a pCPU must handle them: gives, arrivals, messages, pool instructions."""
        if not msgs:
            if not first_round:
                return {}
            now = self.now
            for ps in self.pools.values():
                if ps.next_due(now) <= now:
                    break
            else:
                return {}  # no message and no pool due: nothing to route
        gives: dict[int, list[InboxItem]] = {}
        xfers: dict[int, list[InboxItem]] = {}
        others: dict[int, list[InboxItem]] = {}
        pool_items: dict[int, list[InboxItem]] = {}
        steal_reqs: dict[int, list[StealRequest]] = {}
        told: set[int] = set()  # pools that received messages this round
        directory = self.directory
        for t, src, _j, m in msgs:
            if type(m) is _EvtOut:
                c = directory.get(m.vid)
                if c is not None:
                    others.setdefault(c, []).append(_new(_Evt, (m.vid, m.port, m.payload)))
            elif type(m) is _XferOut:
                if vid_dom(m.vid) in self.domains:  # else destroyed meanwhile: the pCPU drops it
                    directory[m.vid] = m.to_pcpu
                xfers.setdefault(m.to_pcpu, []).append(_new(_Xfer, (m.vcpu, m.how, False)))
            elif type(m) is _StealReq:
                steal_reqs.setdefault(self.pool_of[src], []).append(_new(_StealRequest, (t, src, m.pri)))
            elif type(m) is _PoolOut:
                pid = self.pool_of[src]
                self.pools[pid].on_msg(src, m.payload)
                told.add(pid)
            elif type(m) is _TickleOut:
                others.setdefault(m.cpu, []).append(_TICKLE)
            elif type(m) is EvtchnBound:
                dom = self.domains.get(m.uid)
                if dom is not None:
                    dom.evtchn[m.binding[0]] = EvtchnBinding.from_list(m.binding)
                    for c in self.cpus:
                        if c != src:
                            others.setdefault(c, []).append(EvtchnUpdate(m.uid, m.binding))
            elif type(m) is Shutdown:
                self.host_events.append((t, "shutdown", m.uid, m.reason))
            elif type(m) is WantFrames:
                self.want_frames[src] = min(self.want_frames.get(src, 0) + m.frames, MAX_REFILL)
            else:
                raise HostError(f"host {self.spec.name}: pCPU {src} sent an unknown message {type(m).__name__}")
        summaries = self.summaries
        for pid, ps in self.pools.items():
            reqs = steal_reqs.get(pid, ())
            if not reqs and pid not in told and not (first_round and ps.next_due(self.now) <= self.now):
                continue  # nothing for the pool half at this round
            instr = ps.boundary(self.now, {c: summaries[c] for c in ps.cpus}, list(reqs), first_round)
            for c, items in instr.items():
                for it in items:
                    if type(it) is _Give:
                        gives.setdefault(c, []).append(it)
                    else:
                        pool_items.setdefault(c, []).append(_new(_PoolInstr, (it,)))
        inbox: dict[int, list[InboxItem]] = {}
        for part in (gives, xfers, others, pool_items):  # in this order for each pCPU
            for c, its in part.items():
                box = inbox.get(c)
                if box is None:
                    inbox[c] = its
                else:
                    box.extend(its)
        return inbox

    def _take_pending(self, c: int) -> list[InboxItem]:
        p = self.pending.get(c)
        if not p:
            return []
        self.pending[c] = []
        return p

    def _after_boundary(self) -> None:
        """Queue the refreshed pool views (and frame refills) for the next command."""
        self.rounds_here = 0
        idle = self.idle
        for pid, ps in self.pools.items():
            key = (tuple([x for x in ps.cpus if idle[x]]), ps.view_epoch(), ps.view_extra())
            if self.sent_view.get(pid) == key:
                continue  # every pCPU of the pool has this view already
            self.sent_view[pid] = key
            v = _new(_View, key)
            for c in ps.cpus:
                pend = self.pending.setdefault(c, [])
                if pend and type(pend[-1]) is _View:
                    pend[-1] = v  # back-to-back views: only the last one matters (a pCPU left out gathers many)
                else:
                    pend.append(v)
        if self.want_frames and self.memory is not None:
            want = self.want_frames
            got = self.memory.refill_caches(want)
            self.want_frames = {}
            for c, n in want.items():
                mfns = got.get(c, [])
                self.pending.setdefault(c, []).append(Frames(tuple(mfns), len(mfns) < n))

    # --- toolstack command rounds ----------------------------------------------------------------
    def _command_round(self, inbox: dict[int, list[InboxItem]]) -> None:
        if not any(inbox.values()):
            return
        replies = self._run(inbox, self.now)
        if self.now % self.epoch == 0:
            # we stand on a boundary: resolve what the command caused at once
            self._boundary(replies)
        else:
            self._absorb(replies, hold=True)

    def _to_all(self, *items: InboxItem) -> None:
        """One command round giving every pCPU the same items."""
        self._command_round({c: list(items) for c in self.cpus})

    # --- end of run ----------------------------------------------------------------------------
    def finish(self) -> list[PcpuReport]:
        """Deliver what is in flight, close every pCPU's books at ``now``; return reports."""
        msgs = self._absorb({}, hold=False)
        inbox: dict[int, list[InboxItem]] = {c: [] for c in self.cpus}
        for _t, _src, _j, m in msgs:
            if type(m) is _XferOut:
                self.directory[m.vid] = m.to_pcpu
                inbox[m.to_pcpu].append(Xfer(m.vcpu, m.how, False))
        reports = self.ports.exchange({c: Finish(tuple(self._take_pending(c) + inbox[c]), self.now) for c in self.cpus})
        self.finished = True
        return [reports[c] for c in self.cpus]

    def dump(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "boundaries": self.boundaries,
            "rounds": self.rounds,
            "pools": {pid: ps.dump() for pid, ps in self.pools.items()},
            "directory": dict(self.directory),
        }
