"""HostEngine: one host's master, running the epoch protocol over its pCPUs.

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

Toolstack commands (create, destroy, pause, unpause, export vCPUs, memory operations) run
between ``run_until`` calls, when every pCPU stands at the same instant; their inbox items are
handled at that instant and any messages they cause wait for the next boundary, like any
message emitted between boundaries.

The pCPUs are reached through ``ports``: ``InlinePorts`` calls ``PcpuCore.step`` in this
process; the Ray backend's ports reach actors over shared memory. The protocol is the same.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hosts.clock import NEVER
from hosts.codec import pack_vcpu, unpack_vcpu
from hosts.domain import DomainInfo, EvtchnBinding
from hosts.memory import HostMemory
from hosts.pcpu import XFER_PLACE, PcpuCore
from hosts.sched import get as get_sched
from hosts.sched.messages import Give
from hosts.vcpu import RUNSTATE_OFFLINE, VcpuState, make_vid, vid_dom

PAGE_NOTAB = 0x0  # PAGE_DATA types (Xen's stream: bits 63-60 of each pfn entry)
PAGE_XTAB = 0xF
MAX_REFILL = 1 << 16  # frames given to one pCPU's allocation cache per boundary


class Ports(Protocol):
    def exchange(self, cmds: dict[int, tuple]) -> dict[int, Any]: ...


@dataclass
class PoolSpec:
    """A cpupool: a set of the host's pCPUs running one scheduler instance."""

    pool_id: int
    name: str
    cpus: tuple[int, ...]
    sched: str
    params: Any  # the scheduler's params model


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
    costs: dict = field(default_factory=dict)
    paging_costs: dict = field(default_factory=dict)
    checks: bool = False
    preempt_hypercalls: bool = True
    #: micro-rounds per boundary (0: deliver what a boundary causes with the next advance)
    max_rounds: int = 16

    def pool_of_cpu(self) -> dict[int, int]:
        out = {}
        for p in self.pools:
            for c in p.cpus:
                out[c] = p.pool_id
        return out


class HostError(RuntimeError):
    pass


def make_core(spec: HostSpec, pcpu: int, domains: dict[int, DomainInfo], memory, root_seed: int, start_ns: int) -> PcpuCore:
    """Build the PcpuCore for ``pcpu`` of host ``spec`` (the same everywhere it runs)."""
    from hosts.hypercalls import HypercallCosts

    pool = next(p for p in spec.pools if pcpu in p.cpus)
    entry = get_sched(pool.sched)
    return PcpuCore(
        host=spec.name,
        pcpu=pcpu,
        pool_cpus=pool.cpus,
        sched_entry=entry,
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
    )


class InlinePorts:
    """All pCPUs in this process; ``exchange`` runs each one's step in pCPU order."""

    def __init__(self, cores: dict[int, PcpuCore]):
        self.cores = cores
        for c in cores.values():
            c.wire = c.checks  # hand vCPU objects over directly; checks keep the codec in the loop

    def exchange(self, cmds: dict[int, tuple]) -> dict[int, Any]:
        return {i: self.cores[i].step(cmd) for i, cmd in sorted(cmds.items())}


class HostEngine:
    """The master of one host. Plain class: runs in the driver (inline) or in pCPU 0's actor."""

    def __init__(self, spec: HostSpec, ports: Ports, memory: HostMemory | None, root_seed: int, start_ns: int = 0):
        self.spec = spec
        self.ports = ports
        self.memory = memory
        self.root_seed = root_seed
        self.now = start_ns
        self.epoch = spec.epoch_ns
        self.cpus = tuple(range(spec.nr_pcpus))
        self.pool_of = spec.pool_of_cpu()
        self.pools: dict[int, Any] = {}
        self.pool_specs = {p.pool_id: p for p in spec.pools}
        for p in spec.pools:
            entry = get_sched(p.sched)
            ps = entry.pool(p.params, p.cpus, start_ns)
            ps.locate = self.locate
            self.pools[p.pool_id] = ps
        self.domains: dict[int, DomainInfo] = {}
        self.directory: dict[int, int] = {}
        self.summaries: dict[int, Any] = {c: None for c in self.cpus}
        self.idle: dict[int, bool] = {c: True for c in self.cpus}
        self.curr_vid: dict[int, int] = {c: -1 for c in self.cpus}
        self.horizons: dict[int, int] = {c: start_ns for c in self.cpus}
        self.held: list[tuple] = []  # messages emitted between boundaries by command rounds
        self.sent_view: dict[int, tuple] = {}
        self.exported: dict[int, bytes | None] = {}
        self.host_events: list[tuple] = []  # (time, kind, ...) for the toolstack (shutdowns)
        self.pending: dict[int, list] = {}
        self.incoming: dict[int, DomainInfo] = {}
        self.want_frames: dict[int, int] = {}
        self.boundaries = 0
        self.rounds = 0
        self.rounds_here = 0
        self.max_rounds = spec.max_rounds
        self.probed: dict[str, int] = {}
        self.finished = False
        self.dead = False

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
        if any(it[0] != "view" for items in self.pending.values() for it in items):
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
                self._absorb(replies, hold=True)
                return
            replies = self._run({}, T, everyone=True)
            self.now = T
            self._boundary(replies)

    def _run(self, inbox: dict[int, list], until: int, everyone: bool = False) -> dict[int, Any]:
        """One exchange: each pCPU handles its pending items and inbox at ``self.now``, then
        advances to ``until``. With ``everyone``, a pCPU is left out when it provably has
        nothing to do (no event before ``until``, nothing but pool views to receive): leaving it
        out changes nothing, it simply catches up at its next command."""
        cmds = {}
        for c in self.cpus:
            items = inbox.get(c)
            pend = self.pending.get(c)
            if not items:
                if not everyone:
                    continue
                if self.horizons[c] >= until and not (pend and any(it[0] != "view" for it in pend)):
                    continue
            cmds[c] = ("run", tuple(self._take_pending(c) + (items or [])), self.now, until)
        return self.ports.exchange(cmds) if cmds else {}

    # --- the boundary ----------------------------------------------------------------------------
    def _absorb(self, replies: dict[int, Any], hold: bool) -> list[tuple]:
        """Record summaries and horizons; return (or hold) the messages, sorted. Answers to the
        toolstack (exported records, probes) are taken out here."""
        msgs = []
        for c, (out, summ, horizon, curr) in replies.items():
            self.summaries[c] = summ
            self.horizons[c] = horizon
            self.idle[c] = curr < 0
            self.curr_vid[c] = curr
            for j, m in enumerate(out):
                kind = m[0]
                if kind == "exported":
                    self.exported[m[2]] = m[3]
                    if m[3] is not None:
                        self.directory.pop(m[2], None)
                elif kind == "probed":
                    for k, v in m[3].items():
                        self.probed[k] = self.probed.get(k, 0) + v
                else:
                    msgs.append((m[1], c, j, m))
        if hold:
            self.held.extend(msgs)
            return []
        if self.held:
            msgs = self.held + msgs
            self.held = []
        msgs.sort(key=lambda x: (x[0], x[1], x[2]))
        return msgs

    def _boundary(self, replies: dict[int, Any]) -> None:
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

    def _route(self, msgs: list[tuple], first_round: bool) -> dict[int, list]:
        """Turn sorted messages (and the pools' boundary work) into per-pCPU inboxes, in the
        order a pCPU must handle them: gives, arrivals, messages, pool instructions."""
        gives: dict[int, list] = {}
        xfers: dict[int, list] = {}
        others: dict[int, list] = {}
        pool_items: dict[int, list] = {}
        steal_reqs: dict[int, list] = {}
        told: set[int] = set()  # pools that received messages this round
        directory = self.directory
        for t, src, _j, m in msgs:
            kind = m[0]
            if kind == "evt":
                c = directory.get(m[2])
                if c is not None:
                    others.setdefault(c, []).append(("evt", m[2], m[3], m[4]))
            elif kind == "xfer":
                if vid_dom(m[2]) in self.domains:  # else destroyed meanwhile: the pCPU drops it
                    directory[m[2]] = m[3]
                xfers.setdefault(m[3], []).append(("xfer", m[4], m[5], None))
            elif kind == "steal":
                steal_reqs.setdefault(self.pool_of[src], []).append((t, src, m[2]))
            elif kind == "pool":
                pid = self.pool_of[src]
                self.pools[pid].on_msg(src, m[2])
                told.add(pid)
            elif kind == "tickle":
                others.setdefault(m[2], []).append(("tickle",))
            elif kind == "host":
                self._host_msg(src, t, m[2], others)
        summaries = self.summaries
        for pid, ps in self.pools.items():
            reqs = steal_reqs.get(pid, ())
            if not reqs and pid not in told and not (first_round and ps.next_due(self.now) <= self.now):
                continue  # nothing for the pool half at this round
            instr = ps.boundary(self.now, {c: summaries[c] for c in ps.cpus}, list(reqs), first_round)
            for c, items in instr.items():
                for it in items:
                    if type(it) is Give:
                        gives.setdefault(c, []).append(("give", it.vid, it.to_pcpu))
                    else:
                        pool_items.setdefault(c, []).append(("pool", it))
        inbox: dict[int, list] = {}
        for c in set(gives) | set(xfers) | set(others) | set(pool_items):
            inbox[c] = gives.get(c, []) + xfers.get(c, []) + others.get(c, []) + pool_items.get(c, [])
        return inbox

    def _take_pending(self, c: int) -> list:
        p = self.pending.get(c)
        if not p:
            return []
        self.pending[c] = []
        return p

    def _after_boundary(self) -> None:
        """Queue the refreshed pool views (and frame refills) for the next command."""
        self.rounds_here = 0
        idle = self.idle
        for ps in self.pools.values():
            v = ("view", tuple(x for x in ps.cpus if idle[x]), ps.view_epoch(), ps.view_extra())
            for c in ps.cpus:
                if self.sent_view.get(c) != v:
                    self.sent_view[c] = v
                    pend = self.pending.setdefault(c, [])
                    if pend and pend[-1][0] == "view":
                        pend[-1] = v  # back-to-back views: only the last one matters (a pCPU left out gathers many)
                    else:
                        pend.append(v)
        if self.want_frames and self.memory is not None:
            want = self.want_frames
            got = self.memory.refill_caches(want)
            self.want_frames = {}
            for c, n in want.items():
                mfns = got.get(c, [])
                self.pending.setdefault(c, []).append(("frames", mfns, len(mfns) < n))

    def _host_msg(self, src: int, t: int, payload: tuple, others: dict[int, list]) -> None:
        kind = payload[0]
        if kind == "evtchn":
            uid, b = payload[1], payload[2]
            dom = self.domains.get(uid)
            if dom is not None:
                dom.evtchn[b[0]] = EvtchnBinding.from_list(b)
                for c in self.cpus:
                    if c != src:
                        others[c].append(("evtchn", uid, b))
        elif kind == "shutdown":
            self.host_events.append((t, "shutdown", payload[1], payload[2]))
        elif kind == "want_frames":
            self.want_frames[src] = min(self.want_frames.get(src, 0) + payload[1], MAX_REFILL)

    # --- toolstack commands ----------------------------------------------------------------------
    def _command_round(self, inbox: dict[int, list]) -> None:
        if not any(inbox.values()):
            return
        replies = self._run(inbox, self.now)
        if self.now % self.epoch == 0:
            # we stand on a boundary: resolve what the command caused at once
            self._boundary(replies)
        else:
            self._absorb(replies, hold=True)

    def create_domain(self, dom: DomainInfo, vcpus: list[VcpuState] | None = None, populate: bool = True) -> None:
        """Admit a domain: memory, scheduler, domain tables, then place and wake its vCPUs.

        ``vcpus`` are records of an arriving domain (migration); otherwise fresh vCPUs are made.
        """
        if dom.uid in self.domains:
            raise HostError(f"host {self.spec.name}: domain uid {dom.uid} exists")
        if dom.pool not in self.pools:
            known = ", ".join(str(p) for p in self.pools)
            raise HostError(f"host {self.spec.name}: domain {dom.name!r} names pool {dom.pool}; pools here: {known}")
        moved: list[int] = []
        if self.memory is not None:
            moved = self.memory.create_domain(dom, populate=populate, domains=self.domains)
        self.domains[dom.uid] = dom
        if dom.is_dom0:
            self.dom0_uid = dom.uid
        ps = self.pools[dom.pool]
        ps.add_domain(dom)
        touched = self._auto_bind(dom) + [self.domains[u] for u in moved if u in self.domains and u != dom.uid]
        inbox: dict[int, list] = {c: [("dom", d.to_dict()) for d in [dom] + touched] for c in self.cpus}
        if vcpus is None:
            vcpus = []
            for i in range(dom.nr_vcpus):
                v = VcpuState(
                    make_vid(dom.uid, i),
                    hard_affinity=tuple(dom.hard_affinity[i]) if i < len(dom.hard_affinity) else (),
                    soft_affinity=tuple(dom.soft_affinity[i]) if i < len(dom.soft_affinity) else (),
                )
                v.runstate = RUNSTATE_OFFLINE
                v.state_entry_ns = self.now
                v.pause_count = 1 if dom.paused else 0
                vcpus.append(v)
        pcpu_cpus = ps.cpus
        prev = None
        for v in vcpus:
            hard = [c for c in (v.hard_affinity or pcpu_cpus) if c in pcpu_cpus] or list(pcpu_cpus)
            if prev is None:
                hint = min(hard)
            else:
                later = [c for c in hard if c > prev]
                hint = min(later) if later else min(hard)
            c = ps.place(v.vid, hint, {x: self.summaries[x] for x in pcpu_cpus}, dom)
            prev = c
            self.directory[v.vid] = c
            v.sched = {}
            inbox[c].append(("xfer", pack_vcpu(v, with_sched=False), XFER_PLACE, None))
        self._command_round(inbox)

    def _auto_bind(self, dom: DomainInfo) -> list[DomainInfo]:
        """Toolstack device set-up: connect split-driver frontends to Domain-0's backend
        (one interdomain channel per I/O-client vCPU, backends spread over dom0's vCPUs) and
        the two vCPUs of a ping-pong pair. Returns other domains whose tables changed."""
        touched: list[DomainInfo] = []
        kinds = [w.get("kind") for w in dom.workloads]
        d0 = self.domains.get(getattr(self, "dom0_uid", -1))
        if d0 is not None and d0 is not dom and "io_client" in kinds:
            for i, k in enumerate(kinds):
                if k != "io_client" or any(b.notify_vcpu == i and b.remote_uid == d0.uid for b in dom.evtchn.values()):
                    continue
                pa = max(dom.evtchn, default=0) + 1
                pb = max(d0.evtchn, default=0) + 1
                back = self._backend_rr % d0.nr_vcpus
                self._backend_rr += 1
                dom.evtchn[pa] = EvtchnBinding(pa, d0.uid, pb, i)
                d0.evtchn[pb] = EvtchnBinding(pb, dom.uid, pa, back)
            touched.append(d0)
        if kinds[:2] == ["pingpong", "pingpong"] and not any(b.remote_uid == dom.uid for b in dom.evtchn.values()):
            pa = max(dom.evtchn, default=0) + 1
            pb = pa + 1
            dom.evtchn[pa] = EvtchnBinding(pa, dom.uid, pb, 0)
            dom.evtchn[pb] = EvtchnBinding(pb, dom.uid, pa, 1)
        return touched

    _backend_rr = 0

    def destroy_domain(self, uid: int) -> int:
        """Remove a domain whose vCPUs were exported (or never ran); free its memory."""
        dom = self.domains.pop(uid, None)
        if dom is None:
            return 0
        for other in self.domains.values():  # the other ends of its channels become unbound
            gone = [p for p, b in other.evtchn.items() if b.remote_uid == uid]
            for p in gone:
                other.evtchn[p].remote_uid = -1
                other.evtchn[p].remote_port = -1
            if gone:
                self._command_round({c: [("dom", other.to_dict())] for c in self.cpus})
        self.pools[dom.pool].remove_domain(dom)
        for i in range(dom.nr_vcpus):
            self.directory.pop(make_vid(uid, i), None)
        freed = self.memory.destroy_domain(dom) if self.memory is not None else 0
        self._command_round({c: [("domdel", uid)] for c in self.cpus})
        return freed

    def pause_domain(self, uid: int) -> None:
        self.domains[uid].paused += 1
        self._command_round({c: [("pause", uid)] for c in self.cpus})

    def unpause_domain(self, uid: int) -> None:
        self.domains[uid].paused = max(0, self.domains[uid].paused - 1)
        self._command_round({c: [("unpause", uid)] for c in self.cpus})

    def export_vcpus(self, uid: int, with_sched: bool = False) -> list[bytes]:
        """Take the (paused, descheduled) vCPUs of a domain off their pCPUs as records."""
        dom = self.domains[uid]
        inbox: dict[int, list] = {c: [] for c in self.cpus}
        vids = [make_vid(uid, i) for i in range(dom.nr_vcpus)]
        for vid in vids:
            inbox[self.directory[vid]].append(("export", vid, with_sched))
        return self._collect_exports(inbox, vids)

    def move_domain_pool(self, uid: int, pool_name: str) -> None:
        """xl cpupool-migrate, for a domain paused by the toolstack whose vCPUs are off their
        pCPUs (``settled``): they leave their pool's scheduler, enter the other pool's, and the
        domain is unpaused."""
        dom = self.domains[uid]
        target = next((p.pool_id for p in self.spec.pools if p.name == pool_name), None)
        if target is None:
            raise HostError(f"host {self.spec.name}: no pool named {pool_name!r}")
        if target == dom.pool:
            self.unpause_domain(uid)
            return
        recs = self.export_vcpus(uid, False)
        self.pools[dom.pool].remove_domain(dom)
        dom.pool = target
        self.pools[target].add_domain(dom)
        self._command_round({c: [("dom", dom.to_dict())] for c in self.cpus})
        from hosts.codec import unpack_vcpu

        self._place_vcpus(dom, [unpack_vcpu(r) for r in recs], migrated=False)
        self.unpause_domain(uid)

    def _collect_exports(self, inbox: dict[int, list], vids: list[int]) -> list[bytes]:
        self._absorb(self._run(inbox, self.now), hold=True)
        recs = []
        for vid in vids:
            rec = self.exported.pop(vid, None)
            if rec is None:
                raise HostError(f"host {self.spec.name}: vCPU {vid_dom(vid)}.{vid & 0xFFF} could not be taken off its pCPU")
            recs.append(rec)
        return recs

    def set_affinity(self, uid: int, idx: int, hard: list[int], soft: list[int]) -> None:
        dom = self.domains[uid]
        while len(dom.hard_affinity) <= idx:
            dom.hard_affinity.append([])
        while len(dom.soft_affinity) <= idx:
            dom.soft_affinity.append([])
        dom.hard_affinity[idx] = list(hard)
        dom.soft_affinity[idx] = list(soft)
        self.pools[dom.pool].adjust(dom)
        vid = make_vid(uid, idx)
        inbox = {c: [("dom", dom.to_dict())] for c in self.cpus}
        inbox[self.directory[vid]].append(("affinity", vid, tuple(hard), tuple(soft)))
        self._command_round(inbox)

    def create_domains(self, dicts: list[dict]) -> None:
        for d in dicts:
            self.create_domain(DomainInfo.from_dict(d))

    def kill_domain(self, uid: int) -> int:
        """xl destroy: take the domain's vCPUs off (even mid-hypercall) and free it."""
        dom = self.domains.get(uid)
        if dom is None:
            return 0
        inbox: dict[int, list] = {c: [] for c in self.cpus}
        for i in range(dom.nr_vcpus):
            vid = make_vid(uid, i)
            if vid in self.directory:
                inbox[self.directory[vid]].append(("kill", vid))
        self._command_round(inbox)
        return self.destroy_domain(uid)

    def adjust_domain(self, uid: int, changes: dict) -> None:
        dom = self.domains[uid]
        for k, val in changes.items():
            setattr(dom, k, val)
        self.pools[dom.pool].adjust(dom)
        self._command_round({c: [("dom", dom.to_dict())] for c in self.cpus})

    def bind_evtchn(self, a_uid: int, a_vcpu: int, b_uid: int, b_vcpu: int) -> tuple[int, int]:
        """Toolstack set-up of an interdomain channel (as xenstore-negotiated split drivers do)."""
        a, b = self.domains[a_uid], self.domains[b_uid]
        pa = max(a.evtchn, default=0) + 1
        pb = max(b.evtchn, default=0) + 1
        a.evtchn[pa] = EvtchnBinding(pa, b_uid, pb, a_vcpu)
        b.evtchn[pb] = EvtchnBinding(pb, a_uid, pa, b_vcpu)
        self._command_round({c: [("dom", a.to_dict()), ("dom", b.to_dict())] for c in self.cpus})
        return pa, pb

    # --- memory (master side, pCPUs stopped) ---------------------------------------------------
    def enable_log_dirty(self, uid: int) -> None:
        dom = self.domains[uid]
        self.memory.enable_log_dirty(dom)
        dom.dirty_round += 1
        self._command_round({c: [("dom", dom.to_dict())] for c in self.cpus})

    def clean_log_dirty(self, uid: int) -> np.ndarray:
        dom = self.domains[uid]
        pfns = self.memory.clean_dirty(dom)
        dom.dirty_round += 1
        self._command_round({c: [("dom", dom.to_dict())] for c in self.cpus})
        return pfns

    def disable_log_dirty(self, uid: int) -> None:
        dom = self.domains[uid]
        self.memory.disable_log_dirty(dom)
        self._command_round({c: [("dom", dom.to_dict())] for c in self.cpus})

    # --- live migration: both ends (the toolstack drives, see cluster/migration.py) ---------------
    def room_for(self, dom_dict: dict) -> str | None:
        """Why this host cannot take the domain (None if it can)."""
        dom = DomainInfo.from_dict(dom_dict)
        if dom.uid in self.domains:
            return f"domain uid {dom.uid} is already on host {self.spec.name}"
        if dom.pool not in self.pools:
            dom.pool = 0
        if self.memory is not None:
            from hosts.memory import MemoryError_

            try:
                self.memory.check_fits(dom.name, dom.mem_pages, dom.max_pages)
            except MemoryError_ as exc:
                return str(exc)
        return None

    def prepare_incoming(self, dom_dict: dict) -> None:
        """Reserve a domain arriving by migration: memory and a domain-table entry, paused,
        no vCPUs yet. Its channels to the old host's Domain-0 are dropped; split drivers
        reconnect to this host's Domain-0 (as netfront/blkfront do after a migration)."""
        dom = DomainInfo.from_dict(dom_dict)
        dom.evtchn = {p: b for p, b in dom.evtchn.items() if b.remote_uid == dom.uid}
        dom.log_dirty = False
        dom.paused = 1
        if dom.pool not in self.pools:
            dom.pool = 0
        self.incoming[dom.uid] = dom
        moved = self.memory.create_domain(dom, populate=True, domains=self.domains) if self.memory is not None else []
        self.domains[dom.uid] = dom
        self.pools[dom.pool].add_domain(dom)
        touched = self._auto_bind(dom) + [self.domains[u] for u in moved if u in self.domains and u != dom.uid]
        self._command_round({c: [("dom", d.to_dict()) for d in [dom] + touched] for c in self.cpus})

    def apply_page_data(self, uid: int, record: bytes) -> int:
        """Restore side of a PAGE_DATA record: populate as needed, store the bytes; XTAB pfns
        (no frame at the source) are released. Returns the pages stored."""
        from hosts.codec import REC_PAGE_DATA, RecordError, _unpackb

        rtype, body = _unpackb(record, "PAGE_DATA record")
        if rtype != REC_PAGE_DATA:
            raise RecordError(f"expected PAGE_DATA, found record type {rtype}")
        dom = self.domains[uid]
        mem = self.memory
        pfns = np.frombuffer(body["pfns"], dtype=np.uint64)
        types = (pfns >> np.uint64(60)).astype(np.int64)
        pfns = (pfns & np.uint64((1 << 52) - 1)).astype(np.int64)
        present = types != PAGE_XTAB
        mem.set_backing(dom, pfns[~present], False)
        have = pfns[present]
        mem.set_backing(dom, have, True)
        if have.size:
            mem.store_pages(dom, have, body["data"], body.get("mode", "tag"))
        return int(have.size)

    def restore_incoming(self, uid: int, records: list[bytes]) -> dict:
        """After END: apply the vCPU records (scheduler insert and pick_pcpu on this host), the
        domain stays paused until ``unpause_domain``. Returns digests for the toolstack's checks."""
        from hosts.codec import pack_vcpu, unpack_vcpu

        dom = self.incoming.pop(uid)
        vcpus = [unpack_vcpu(r) for r in records]
        repacked = hashlib.blake2b(b"".join(pack_vcpu(v, with_sched=False) for v in vcpus), digest_size=16).hexdigest()
        mem_digest = self.memory_digest(uid)
        self._place_vcpus(dom, vcpus, migrated=True)
        return {"memory_digest": mem_digest, "vcpu_digest": repacked}

    def abort_incoming(self, uid: int) -> int:
        """Release the reservation of a migration that failed."""
        self.incoming.pop(uid, None)
        return self.destroy_domain(uid)

    def read_page_data(self, uid: int, pfns: bytes) -> bytes:
        """Save side: one PAGE_DATA record (<= 1024 pages) with the pages' current bytes."""
        from hosts.codec import MAX_BATCH_PAGES, REC_PAGE_DATA, pack_record

        dom = self.domains[uid]
        arr = np.frombuffer(pfns, dtype=np.int64)
        if arr.size > MAX_BATCH_PAGES:
            raise HostError(f"PAGE_DATA batch of {arr.size} pages exceeds {MAX_BATCH_PAGES}")
        mfns = self.memory.p2m[dom.p2m_off + arr]
        present = mfns >= 0
        types = np.where(present, PAGE_NOTAB, PAGE_XTAB).astype(np.uint64)
        words = (types << np.uint64(60)) | arr.astype(np.uint64)
        data = self.memory.read_pages(dom, arr[present]) if present.any() else b""
        mode = "full" if self.memory.full else "tag"
        return pack_record(REC_PAGE_DATA, {"count": int(arr.size), "pfns": words.tobytes(), "data": data, "mode": mode})

    def dirty_clean(self, uid: int) -> bytes:
        return self.clean_log_dirty(uid).astype(np.int64).tobytes()

    def dirty_peek(self, uid: int, pfns: bytes) -> bytes:
        dom = self.domains[uid]
        arr = np.frombuffer(pfns, dtype=np.int64)
        return self.memory.dirty[dom.dirty_off + arr].astype(bool).tobytes()

    def populated(self, uid: int) -> bytes:
        dom = self.domains[uid]
        return np.flatnonzero(self.memory.p2m[dom.p2m_off : dom.p2m_off + dom.max_pages] >= -1).astype(np.int64).tobytes()

    def settled(self, uid: int) -> bool:
        """Every vCPU of the (paused) domain is off its pCPU: its records can be taken."""
        dom = self.domains[uid]
        vids = {make_vid(uid, i) for i in range(dom.nr_vcpus)}
        return not any(v in vids for v in self.curr_vid.values())

    def memory_digest(self, uid: int) -> str:
        dom = self.domains[uid]
        snap = self.memory.snapshot(dom)
        valid = (self.memory.p2m[dom.p2m_off : dom.p2m_off + dom.max_pages] >= 0)
        h = hashlib.blake2b(digest_size=16)
        h.update(valid.tobytes())
        h.update(np.ascontiguousarray(snap).tobytes())
        return h.hexdigest()

    def domain_dict(self, uid: int) -> dict:
        return self.domains[uid].to_dict()

    def probe_domain(self, uid: int) -> dict:
        """CPU time of the domain's vCPUs and log-dirty cost charged to it, summed over pCPUs."""
        self.probed = {}
        self._absorb(self._run({c: [("probe", uid)] for c in self.cpus}, self.now), hold=True)
        return dict(self.probed)

    def release_outgoing(self, uid: int) -> int:
        """The destination runs the domain: destroy the source's copy (its vCPUs were exported)."""
        return self.destroy_domain(uid)

    def take_back(self, uid: int, records: list[bytes]) -> None:
        """A migration failed after the vCPUs were taken off: put them back, still paused."""
        from hosts.codec import unpack_vcpu

        dom = self.domains[uid]
        self._place_vcpus(dom, [unpack_vcpu(r) for r in records], migrated=False)

    def _place_vcpus(self, dom: DomainInfo, vcpus: list, migrated: bool) -> None:
        ps = self.pools[dom.pool]
        inbox: dict[int, list] = {c: [] for c in self.cpus}
        prev = None
        for v in vcpus:
            hard = [c for c in (v.hard_affinity or ps.cpus) if c in ps.cpus] or list(ps.cpus)
            if prev is None:
                hint = min(hard)
            else:
                later = [c for c in hard if c > prev]
                hint = min(later) if later else min(hard)
            c = ps.place(v.vid, hint, {x: self.summaries[x] for x in ps.cpus}, dom)
            prev = c
            self.directory[v.vid] = c
            v.sched = {}
            inbox[c].append(("xfer", pack_vcpu(v, with_sched=False), XFER_PLACE, "migrated" if migrated else None))
        self._command_round(inbox)

    # --- end of run ----------------------------------------------------------------------------
    def finish(self) -> list[dict]:
        """Deliver what is in flight, close every pCPU's books at ``now``; return reports."""
        msgs = self._absorb({}, hold=False)
        inbox: dict[int, list] = {c: [] for c in self.cpus}
        for _t, _src, _j, m in msgs:
            if m[0] == "xfer":
                _, _t2, vid, to, rec, xk = m
                self.directory[vid] = to
                inbox[to].append(("xfer", rec, xk, None))
        reports = self.ports.exchange({c: ("finish", tuple(self._take_pending(c) + inbox[c]), self.now) for c in self.cpus})
        self.finished = True
        return [reports[c] for c in self.cpus]

    def stats(self) -> dict:
        out = {"boundaries": self.boundaries, "rounds": self.rounds, "now": self.now}
        if self.memory is not None:
            out["frames"] = {uid: self.memory.domain_frames(uid) for uid in self.domains}
            out["free_frames"] = self.memory.free_frames()
        return out

    def dump(self) -> dict:
        return {
            "now": self.now,
            "boundaries": self.boundaries,
            "rounds": self.rounds,
            "pools": {pid: ps.dump() for pid, ps in self.pools.items()},
            "directory": dict(self.directory),
        }


def unpack_records(recs: list[bytes]) -> list[VcpuState]:
    return [unpack_vcpu(r) for r in recs]
