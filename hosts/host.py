"""HostEngine: one host's master with the toolstack's operations on top of the epoch protocol.

Every operation runs between ``run_until`` calls, with every pCPU standing at ``now``: the
master changes its own tables (domains, memory, the pools' domain lists, the directory), then
sends the pCPUs what they must know in one command round (``EpochEngine._command_round``).
The operations are Xen's toolstack's: create and destroy domains (memory, scheduler, device
channels), pause, unpause, affinity and parameter changes, cpupool moves; and both ends of a
live migration: log-dirty, PAGE_DATA records read at the source and applied at the
destination, vCPU records exported and restored. ``hosts.hostops`` lists them as typed
requests, which is how the domain manager reaches them.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import numpy as np

from hosts.codec import MAX_BATCH_PAGES, REC_PAGE_DATA, RecordError, pack_record, pack_vcpu, unpack_record, unpack_vcpu
from hosts.domain import DomainInfo, bind_pair
from hosts.epoch import EpochEngine, HostError, HostSpec, InlinePorts, Ports, make_core
from hosts.memory import HostMemory, MemoryError_
from hosts.messages import XFER_PLACE, Affinity, DomDel, DomUpdate, Export, HostUsage, InboxItem, Kill, PauseDom, Probe, UnpauseDom, UsageProbe, Xfer
from hosts.vcpu import RUNSTATE_OFFLINE, VcpuState, make_vid, vid_dom

PAGE_NOTAB: Final = 0x0  # PAGE_DATA types (Xen's stream: bits 63-60 of each pfn entry)
PAGE_XTAB: Final = 0xF

__all__ = ["HostEngine", "HostError", "HostSpec", "InlinePorts", "Ports", "make_core"]


class HostEngine(EpochEngine):
    """The master of one host. Plain class: runs in the driver (inline) or in pCPU 0's actor."""

    def __init__(self, spec: HostSpec, ports: Ports, memory: HostMemory | None, root_seed: int, start_ns: int = 0):
        super().__init__(spec, ports, memory, root_seed, start_ns)
        self.incoming: dict[int, DomainInfo] = {}  # domains arriving by migration, not yet restored
        self.dom0_uid = -1
        self._backend_rr = 0  # Domain-0 vCPU serving the next split-driver frontend

    def _dom_updates(self, doms: list[DomainInfo]) -> dict[int, list[InboxItem]]:
        return {c: [DomUpdate(d.to_dict()) for d in doms] for c in self.cpus}

    # --- domains -----------------------------------------------------------------------------
    def create_domains(self, dicts: list[dict[str, Any]]) -> None:
        for d in dicts:
            self.create_domain(DomainInfo.from_dict(d))

    def create_domain(self, dom: DomainInfo) -> None:
        """Admit a domain: memory, scheduler, domain tables, then place and wake its vCPUs."""
        if dom.uid in self.domains:
            raise HostError(f"host {self.spec.name}: domain uid {dom.uid} exists")
        if dom.pool not in self.pools:
            known = ", ".join(str(p) for p in self.pools)
            raise HostError(f"host {self.spec.name}: domain {dom.name!r} names pool {dom.pool}; pools here: {known}")
        touched = self._admit(dom)
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
        inbox = self._dom_updates([dom] + touched)
        self._place_into(inbox, dom, vcpus, migrated=False)
        self._command_round(inbox)

    def _admit(self, dom: DomainInfo) -> list[DomainInfo]:
        """Memory, domain table, pool and device channels of a new domain; returns the other
        domains whose entries changed (frames moved by compaction, Domain-0's backend ports)."""
        moved = self.memory.create_domain(dom, populate=True, domains=self.domains) if self.memory is not None else []
        self.domains[dom.uid] = dom
        if dom.is_dom0:
            self.dom0_uid = dom.uid
        self.pools[dom.pool].add_domain(dom)
        return self._auto_bind(dom) + [self.domains[u] for u in moved if u in self.domains and u != dom.uid]

    def _place_into(self, inbox: dict[int, list[InboxItem]], dom: DomainInfo, vcpus: list[VcpuState], migrated: bool) -> None:
        """Choose each vCPU's pCPU (the pool's placement, hinted round-robin within its hard
        affinity) and add its arrival to ``inbox``."""
        ps = self.pools[dom.pool]
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
            inbox[c].append(Xfer(pack_vcpu(v, with_sched=False), XFER_PLACE, migrated))

    def _place_vcpus(self, dom: DomainInfo, vcpus: list[VcpuState], migrated: bool) -> None:
        inbox: dict[int, list[InboxItem]] = {c: [] for c in self.cpus}
        self._place_into(inbox, dom, vcpus, migrated)
        self._command_round(inbox)

    def _auto_bind(self, dom: DomainInfo) -> list[DomainInfo]:
        """Toolstack device set-up: connect split-driver frontends to Domain-0's backend
        (one interdomain channel per I/O-client vCPU, backends spread over dom0's vCPUs) and
        the two vCPUs of a ping-pong pair. Returns other domains whose tables changed."""
        touched: list[DomainInfo] = []
        kinds = [w.get("kind") for w in dom.workloads]
        d0 = self.domains.get(self.dom0_uid)
        if d0 is not None and d0 is not dom and "io_client" in kinds:
            for i, k in enumerate(kinds):
                if k != "io_client" or any(b.notify_vcpu == i and b.remote_uid == d0.uid for b in dom.evtchn.values()):
                    continue
                back = self._backend_rr % d0.nr_vcpus
                self._backend_rr += 1
                bind_pair(dom, i, d0, back)
            touched.append(d0)
        if kinds[:2] == ["pingpong", "pingpong"] and not any(b.remote_uid == dom.uid for b in dom.evtchn.values()):
            bind_pair(dom, 0, dom, 1)
        return touched

    def bind_evtchn(self, a_uid: int, a_vcpu: int, b_uid: int, b_vcpu: int) -> tuple[int, int]:
        """Toolstack set-up of an interdomain channel (as xenstore-negotiated split drivers do)."""
        a, b = self.domains[a_uid], self.domains[b_uid]
        ports = bind_pair(a, a_vcpu, b, b_vcpu)
        self._command_round(self._dom_updates([a, b]))
        return ports

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
                self._command_round(self._dom_updates([other]))
        self.pools[dom.pool].remove_domain(dom)
        for i in range(dom.nr_vcpus):
            self.directory.pop(make_vid(uid, i), None)
        freed = self.memory.destroy_domain(dom) if self.memory is not None else 0
        self._to_all(DomDel(uid))
        return freed

    def kill_domain(self, uid: int) -> int:
        """xl destroy: take the domain's vCPUs off (even mid-hypercall) and free it."""
        dom = self.domains.get(uid)
        if dom is None:
            return 0
        inbox: dict[int, list[InboxItem]] = {c: [] for c in self.cpus}
        for i in range(dom.nr_vcpus):
            vid = make_vid(uid, i)
            if vid in self.directory:
                inbox[self.directory[vid]].append(Kill(vid))
        self._command_round(inbox)
        return self.destroy_domain(uid)

    def pause_domain(self, uid: int) -> None:
        self.domains[uid].paused += 1
        self._to_all(PauseDom(uid))

    def unpause_domain(self, uid: int) -> None:
        self.domains[uid].paused = max(0, self.domains[uid].paused - 1)
        self._to_all(UnpauseDom(uid))

    def adjust_domain(self, uid: int, weight: int | None, cap: int | None) -> None:
        dom = self.domains[uid]
        if weight is not None:
            dom.weight = weight
        if cap is not None:
            dom.cap = cap
        self.pools[dom.pool].adjust(dom)
        self._command_round(self._dom_updates([dom]))

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
        inbox = self._dom_updates([dom])
        inbox[self.directory[vid]].append(Affinity(vid, tuple(hard), tuple(soft)))
        self._command_round(inbox)

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
        self._command_round(self._dom_updates([dom]))
        self._place_vcpus(dom, [unpack_vcpu(r) for r in recs], migrated=False)
        self.unpause_domain(uid)

    def export_vcpus(self, uid: int, with_sched: bool = False) -> list[bytes]:
        """Take the (paused, descheduled) vCPUs of a domain off their pCPUs as records."""
        dom = self.domains[uid]
        inbox: dict[int, list[InboxItem]] = {c: [] for c in self.cpus}
        vids = [make_vid(uid, i) for i in range(dom.nr_vcpus)]
        for vid in vids:
            inbox[self.directory[vid]].append(Export(vid, with_sched))
        self._absorb(self._run(inbox, self.now), hold=True)
        recs = []
        for vid in vids:
            rec = self.exported.pop(vid, None)
            if rec is None:
                raise HostError(f"host {self.spec.name}: vCPU {vid_dom(vid)}.{vid & 0xFFF} could not be taken off its pCPU")
            recs.append(rec)
        return recs

    def settled(self, uid: int) -> bool:
        """Every vCPU of the (paused) domain is off its pCPU: its records can be taken."""
        dom = self.domains[uid]
        vids = {make_vid(uid, i) for i in range(dom.nr_vcpus)}
        return not any(v in vids for v in self.curr_vid.values())

    def probe_domain(self, uid: int) -> dict[str, int]:
        """CPU time of the domain's vCPUs and log-dirty cost charged to it, summed over pCPUs."""
        self.probed = {}
        self._absorb(self._run({c: [Probe(uid)] for c in self.cpus}, self.now), hold=True, learn=False)
        return dict(self.probed)

    def usage(self) -> HostUsage:
        """Busy time of every pCPU and running/runnable time of every domain, since the start
        (what the toolstack's policies and power model read; a pure pause point)."""
        self.usage_answers = []
        self._absorb(self._run({c: [UsageProbe()] for c in self.cpus}, self.now), hold=True, learn=False)
        run: dict[int, int] = {}
        wait: dict[int, int] = {}
        busy = []
        for u in self.usage_answers:
            busy.append(u.busy_ns)
            for d, ns in u.running_ns.items():
                run[d] = run.get(d, 0) + ns
            for d, ns in u.runnable_ns.items():
                wait[d] = wait.get(d, 0) + ns
        self.usage_answers = []
        return HostUsage(self.now, tuple(busy), run, wait)

    def domain_dict(self, uid: int) -> dict[str, Any]:
        return self.domains[uid].to_dict()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"boundaries": self.boundaries, "rounds": self.rounds, "now": self.now}
        if self.memory is not None:
            out["frames"] = {uid: self.memory.domain_frames(uid) for uid in self.domains}
            out["free_frames"] = self.memory.free_frames()
        return out

    # --- log-dirty (pCPUs stopped) -----------------------------------------------------------
    def _mem(self) -> HostMemory:
        if self.memory is None:
            raise HostError(f"host {self.spec.name}: no guest memory")
        return self.memory

    def enable_log_dirty(self, uid: int) -> None:
        dom = self.domains[uid]
        self._mem().enable_log_dirty(dom)
        dom.dirty_round += 1
        self._command_round(self._dom_updates([dom]))

    def dirty_clean(self, uid: int) -> bytes:
        """XEN_DOMCTL_SHADOW_OP_CLEAN: the dirty pfns (int64 bytes); a new log-dirty round."""
        dom = self.domains[uid]
        pfns = self._mem().clean_dirty(dom)
        dom.dirty_round += 1
        self._command_round(self._dom_updates([dom]))
        return pfns.astype(np.int64).tobytes()

    def dirty_peek(self, uid: int, pfns: bytes) -> bytes:
        """XEN_DOMCTL_SHADOW_OP_PEEK on ``pfns``: one bool byte each."""
        dom = self.domains[uid]
        arr = np.frombuffer(pfns, dtype=np.int64)
        return bytes(self._mem().dirty[dom.dirty_off + arr].astype(bool).tobytes())

    def disable_log_dirty(self, uid: int) -> None:
        dom = self.domains[uid]
        self._mem().disable_log_dirty(dom)
        self._command_round(self._dom_updates([dom]))

    # --- live migration: both ends (the toolstack drives, see cluster/migration.py) -----------
    def room_for(self, dom_dict: dict[str, Any]) -> str | None:
        """Why this host cannot take the domain (None if it can)."""
        dom = DomainInfo.from_dict(dom_dict)
        if dom.uid in self.domains:
            return f"domain uid {dom.uid} is already on host {self.spec.name}"
        if self.memory is not None:
            try:
                self.memory.check_fits(dom.name, dom.mem_pages, dom.max_pages)
            except MemoryError_ as exc:
                return str(exc)
        return None

    def prepare_incoming(self, dom_dict: dict[str, Any]) -> None:
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
        touched = self._admit(dom)
        self._command_round(self._dom_updates([dom] + touched))

    def read_page_data(self, uid: int, pfns: bytes) -> bytes:
        """Save side: one PAGE_DATA record (<= 1024 pages) with the pages' current bytes."""
        mem = self._mem()
        dom = self.domains[uid]
        arr = np.frombuffer(pfns, dtype=np.int64)
        if arr.size > MAX_BATCH_PAGES:
            raise HostError(f"PAGE_DATA batch of {arr.size} pages exceeds {MAX_BATCH_PAGES}")
        mfns = mem.p2m[dom.p2m_off + arr]
        present = mfns >= 0
        types = np.where(present, PAGE_NOTAB, PAGE_XTAB).astype(np.uint64)
        words = (types << np.uint64(60)) | arr.astype(np.uint64)
        data = mem.read_pages(dom, arr[present]) if present.any() else b""
        mode = "full" if mem.full else "tag"
        return pack_record(REC_PAGE_DATA, {"count": int(arr.size), "pfns": words.tobytes(), "data": data, "mode": mode})

    def apply_page_data(self, uid: int, record: bytes) -> int:
        """Restore side of a PAGE_DATA record: populate as needed, store the bytes; XTAB pfns
        (no frame at the source) are released. Returns the pages stored."""
        rtype, body = unpack_record(record, "PAGE_DATA record")
        if rtype != REC_PAGE_DATA:
            raise RecordError(f"expected PAGE_DATA, found record type {rtype}")
        dom = self.domains[uid]
        mem = self._mem()
        pfns = np.frombuffer(body["pfns"], dtype=np.uint64)
        types = (pfns >> np.uint64(60)).astype(np.int64)
        idx = (pfns & np.uint64((1 << 52) - 1)).astype(np.int64)
        present = types != PAGE_XTAB
        mem.set_backing(dom, idx[~present], False)
        have = idx[present]
        mem.set_backing(dom, have, True)
        if have.size:
            mem.store_pages(dom, have, body["data"], body.get("mode", "tag"))
        return int(have.size)

    def restore_incoming(self, uid: int, records: list[bytes]) -> tuple[str, str]:
        """After END: apply the vCPU records (scheduler insert and pick_pcpu on this host); the
        domain stays paused until ``unpause_domain``. Returns (memory digest, vCPU digest) for
        the toolstack's checks."""
        dom = self.incoming.pop(uid)
        vcpus = [unpack_vcpu(r) for r in records]
        repacked = hashlib.blake2b(b"".join(pack_vcpu(v, with_sched=False) for v in vcpus), digest_size=16).hexdigest()
        mem_digest = self.memory_digest(uid)
        self._place_vcpus(dom, vcpus, migrated=True)
        return mem_digest, repacked

    def abort_incoming(self, uid: int) -> int:
        """Release the reservation of a migration that failed."""
        self.incoming.pop(uid, None)
        return self.destroy_domain(uid)

    def release_outgoing(self, uid: int) -> int:
        """The destination runs the domain: destroy the source's copy (its vCPUs were exported)."""
        return self.destroy_domain(uid)

    def take_back(self, uid: int, records: list[bytes]) -> None:
        """A migration failed after the vCPUs were taken off: put them back, still paused."""
        self._place_vcpus(self.domains[uid], [unpack_vcpu(r) for r in records], migrated=False)

    def memory_digest(self, uid: int) -> str:
        mem = self._mem()
        dom = self.domains[uid]
        snap = mem.snapshot(dom)
        valid = mem.p2m[dom.p2m_off : dom.p2m_off + dom.max_pages] >= 0
        h = hashlib.blake2b(digest_size=16)
        h.update(valid.tobytes())
        h.update(np.ascontiguousarray(snap).tobytes())
        return h.hexdigest()
