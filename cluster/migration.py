"""Live migration: Xen's pre-copy save/restore, driven by the domain manager.

A :class:`Migration` is an activity of the domain manager, stepped at the simulated instants
it has something to do (a batch has left the wire, a round ended, the domain has stopped...).
With its source and destination standing at that instant (the other hosts may stand behind:
the manager steps only the hosts a step concerns) it:

1. checks the destination has room (refused before anything happens otherwise), reserves the
   domain there (memory populated, domain-table entry, paused, no vCPUs), opens a flow on the
   link, sends the DOMAIN record, and turns log-dirty on at the source;
2. runs live rounds: round 1 sends every page, later rounds the pages dirtied meanwhile, as
   PAGE_DATA records of at most 1024 pages read from the source's memory *when the batch
   starts* and written into the destination's; a batch occupies the link for its bytes on the
   wire (16 + 8 per page + 4096 per page with data) at the flow's current max-min fair rate;
3. asks its policy when to stop (``xen``, ``xen-legacy``, ``downtime-target``, below);
4. stop-and-copy: pauses the domain (its vCPUs leave their pCPUs at their next scheduling
   point; nothing else needs saving, they are stackless), takes the final dirty set with a
   log-dirty CLEAN, sends it, then the vCPU records (with any hypercall continuation) and END;
5. at END's arrival the destination applies the vCPU records (scheduler insert and pick_pcpu),
   the toolstack unpauses it after ``resume_us``; downtime runs from the pause to that unpause.
   The destination reports success back over the link, and only then is the source destroyed.

A failure (destination host down, link cut) at any phase aborts: the source turns log-dirty
off and unpauses the domain if it had paused it, the destination's reservation is released.

The policies (``validation.md``, Live migration):

* ``xen`` (Xen >= 4.6, ``simple_precopy_policy`` + ``send_memory_live``): at most 5 live rounds;
  after live round x, if x = 5 stop (the final round sends D_5); otherwise CLEAN gives D_x,
  which is sent live as round x+1 in every case, and if |D_x| < 50 the loop stops after it.
* ``xen-legacy`` (last ``xc_domain_save.c``): after iteration i the next one is the last
  (paused) when i >= 29, or sent + skipped < 50 in iteration i, or total sent > 3 x guest pages,
  or (with ``rate_limit``) the iteration sent more than the previous one while at the maximum
  rate. Iterations other than the first and last skip pages already re-dirtied (a PEEK per
  batch). ``rate_limit`` (older Xen, off by default): 100 Mbit/s to start, then the measured
  dirty rate + 50 when it exceeds the current rate, capped at 500, "Mbit" being 2^20 bits.
* ``downtime-target`` (QEMU/KVM, SimGrid): after each round, stop when the pages dirtied
  during it would take no longer than ``max_downtime_ms`` at the bandwidth measured in it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

from hosts.clock import MS, NEVER, US
from hosts.codec import MAX_BATCH_PAGES, REC_DOMAIN, REC_END, REC_VCPU, header, pack_record, unpack_record
from hosts.host import PAGE_XTAB

from cluster.config.schema import MigrationCfg
from cluster.hostclient import HostClient, Pending

if TYPE_CHECKING:
    from cluster.manager import DomainManager

T = TypeVar("T")

PAGE = 4096
PAGE_RECORD_HDR = 16  # type, length, count, padding
PFN_ENTRY = 8
MBIT_2_20 = 1 << 20

XEN_MAX_ITERATIONS = 5
XEN_TARGET_DIRTY = 50
LEGACY_MAX_ITERS = 29
LEGACY_MAX_FACTOR = 3
LEGACY_START_MBIT = 100
LEGACY_MAX_MBIT = 500
SETTLE_NS = 10 * US


@dataclass
class RoundStats:
    index: int
    live: bool
    start_ns: int
    end_ns: int = -1
    pages_planned: int = 0
    pages_sent: int = 0
    pages_skipped: int = 0
    bytes_sent: int = 0
    pages_dirtied: int = -1  # D after this round (the CLEAN that followed it)
    rate_limit_mbit: int | None = None


# --- policies ------------------------------------------------------------------------------------


class Policy:
    name = "base"
    skips_redirtied = False

    def __init__(self, m: "Migration"):
        self.m = m

    def after_round(self, rnd: RoundStats, clean: Callable[[], int]) -> tuple[str, str]:
        """Decide after a live round: ("live", reason) to send the CLEANed set live next,
        or ("final", reason) to stop and copy. ``clean()`` runs the CLEAN and returns the count."""
        raise NotImplementedError

    def cap_bps(self) -> float | None:
        return None


class XenPolicy(Policy):
    """Xen >= 4.6: simple_precopy_policy inside send_memory_live's loop."""

    name = "xen"

    def __init__(self, m: "Migration"):
        super().__init__(m)
        self.stop_after_send: str | None = None

    def after_round(self, rnd: RoundStats, clean: Callable[[], int]) -> tuple[str, str]:
        x = rnd.index
        if self.stop_after_send:
            return "final", self.stop_after_send
        if x >= XEN_MAX_ITERATIONS:  # checked before the CLEAN: no further live pass
            return "final", f"{XEN_MAX_ITERATIONS} live rounds"
        d = clean()
        if d < XEN_TARGET_DIRTY:
            self.stop_after_send = f"dirty set {d} < {XEN_TARGET_DIRTY} pages"
            if d == 0:
                return "final", self.stop_after_send
        return "live", ""


class XenLegacyPolicy(Policy):
    """Last xc_domain_save.c: 29 iterations, 3x memory, < 50 sent + skipped, rate limiting."""

    name = "xen-legacy"
    skips_redirtied = True

    def __init__(self, m: "Migration"):
        super().__init__(m)
        self.rate_limit = m.params.rate_limit
        self.mbit_rate = LEGACY_START_MBIT if self.rate_limit else None
        self.sent_last = 0
        self.total_sent = 0
        self.last_print_ns = m.start_ns

    def cap_bps(self) -> float | None:
        return float(self.mbit_rate * MBIT_2_20) if self.mbit_rate is not None else None

    def after_round(self, rnd: RoundStats, clean: Callable[[], int]) -> tuple[str, str]:
        self.total_sent += rnd.pages_sent
        p2m = self.m.dom["max_pages"]
        reason = None
        if self.rate_limit and rnd.pages_sent > self.sent_last and self.mbit_rate == LEGACY_MAX_MBIT:
            reason = "sent more than the last iteration at the maximum rate"
        elif rnd.index >= LEGACY_MAX_ITERS:
            reason = f"{LEGACY_MAX_ITERS} iterations"
        elif rnd.pages_sent + rnd.pages_skipped < 50:
            reason = "sent + skipped < 50 pages"
        elif self.total_sent > p2m * LEGACY_MAX_FACTOR:
            reason = f"sent more than {LEGACY_MAX_FACTOR} x guest memory"
        if reason:
            return "final", reason  # suspend, then the CLEAN gives the last iteration's set
        d = clean()
        self.sent_last = rnd.pages_sent
        if self.rate_limit:
            # print_stats: dirtied Mb/s = dirty_count * PAGE_SIZE / (wall_ms * 125)
            wall_ms = max(1, (rnd.end_ns - self.last_print_ns) // MS)
            dirty_mbit = (d * PAGE) // (wall_ms * 125)
            if self.mbit_rate is not None and dirty_mbit > self.mbit_rate:
                self.mbit_rate = min(dirty_mbit + 50, LEGACY_MAX_MBIT)
            self.m.set_cap(self.cap_bps())
        self.last_print_ns = rnd.end_ns
        return "live", ""


class DowntimeTargetPolicy(Policy):
    """Stop when the remaining dirty set fits in max_downtime at the measured bandwidth."""

    name = "downtime-target"

    def __init__(self, m: "Migration"):
        super().__init__(m)
        self.max_downtime_ns = int(m.params.max_downtime_ms * MS)
        self.max_rounds = m.params.max_rounds

    def after_round(self, rnd: RoundStats, clean: Callable[[], int]) -> tuple[str, str]:
        d = clean()
        dur = max(1, rnd.end_ns - rnd.start_ns)
        bw_bytes_per_ns = rnd.bytes_sent / dur if rnd.bytes_sent else 0.0
        need = d * (PAGE + PFN_ENTRY)
        if bw_bytes_per_ns > 0 and need / bw_bytes_per_ns <= self.max_downtime_ns:
            self.m.carry_final = True
            return "final", f"remaining {d} pages fit in {self.max_downtime_ns / MS:g} ms at {bw_bytes_per_ns * 8e3:.0f} Mbit/s"
        if rnd.index >= self.max_rounds:
            self.m.carry_final = True
            return "final", f"{self.max_rounds} rounds"
        return "live", ""


POLICIES: dict[str, type[Policy]] = {"xen": XenPolicy, "xen-legacy": XenLegacyPolicy, "downtime-target": DowntimeTargetPolicy}


# --- the migration ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a migration reports (summary.json ``migrations``)."""

    id: str
    domain: str
    src: str
    dst: str
    policy: str
    status: str = "running"  # completed | aborted | refused
    reason: str = ""
    stop_reason: str = ""
    start_ns: int = 0
    pause_ns: int = -1
    resume_ns: int = -1
    end_ns: int = -1
    total_ms: float | None = None
    downtime_ms: float | None = None
    rounds: int = 0
    pages_sent: int = 0
    bytes_sent: int = 0
    per_round: list[Any] = field(default_factory=list)
    guest_slowdown_pct: float | None = None
    memory_match: bool | None = None
    vcpu_match: bool | None = None
    continuations: int = 0


class Migration:
    """One live migration, as a state machine stepped by the domain manager."""

    def __init__(self, mgr: "DomainManager", uid: int, dst: str, policy: str, params: MigrationCfg, now: int, mid: str):
        self.mgr = mgr
        self.uid = uid
        self.src = mgr.where[uid]
        self.dst = dst
        self.records_fut: Pending[list[bytes]] | None = None
        self.params = params
        self.start_ns = now
        self.fid = mid
        self.dom: dict[str, Any] = {}
        self.out = Outcome(mid, mgr.domains[uid].name, self.src, dst, policy, start_ns=now)
        self.policy = POLICIES[policy](self)
        self.state = "start"
        self.t_next = now
        self.done = False
        self.rounds: list[RoundStats] = []
        self.queue: list[np.ndarray] = []  # batches left in the current round
        self.batch: np.ndarray | None = None
        self.final = False
        self.carry_final = False
        self.carried: np.ndarray = np.empty(0, dtype=np.int64)
        self.records: list[bytes] = []
        self.paused_here = False
        self.reserved = False
        self.logdirty_on = False
        self.flow_open = False
        self.counters0: dict[str, int] = {}
        self.src_digest = ""
        #: (instant, pfns, PAGE_DATA record) read by the source while reaching that instant
        self.prefetched: tuple[int, bytes, bytes] | None = None
        self.applying: list[Pending[int]] = []  # PAGE_DATA records the destination is storing

    # --- plumbing ------------------------------------------------------------------------------
    @property
    def srch(self) -> HostClient:
        return self.mgr.hosts[self.src]

    @property
    def dsth(self) -> HostClient:
        return self.mgr.hosts[self.dst]

    def next_ns(self) -> int:
        return self.t_next if not self.done else NEVER

    def ask(self, host: str, answer: "Pending[T]") -> T:
        return self.mgr.ask(host, answer)

    def prefetch(self, t: int) -> tuple[int, bytes] | None:
        """(uid, pfns) of the PAGE_DATA batch this migration will read from its source at ``t``,
        if it knows it already (not where a PEEK first decides which pages go)."""
        if self.done or self.state != "batch" or self.t_next != t or not self.queue or self.src in self.mgr.failed:
            return None
        rnd = self.rounds[-1]
        if self.policy.skips_redirtied and rnd.live and rnd.index > 1:
            return None
        return self.uid, self.queue[0].tobytes()

    def collect(self) -> None:
        """Wait for the destination's answers to the batches sent so far (raising its errors)."""
        applying, self.applying = self.applying, []
        for p in applying:
            self.ask(self.dst, p)

    def set_cap(self, cap_bps: float | None) -> None:
        if self.flow_open:
            self.mgr.net.set_cap(self.fid, cap_bps, self.mgr.now)

    def _send(self, nbytes: int, now: int) -> int:
        net = self.mgr.net
        net.send(self.fid, nbytes, now)
        self.out.bytes_sent += nbytes
        return net.completion_ns(self.fid)

    # --- steps ---------------------------------------------------------------------------------
    def step(self, now: int) -> None:
        if self.done:
            return
        self.collect()
        self._STEPS[self.state](self, now)

    def _st_start(self, now: int) -> None:
        mgr = self.mgr
        dom = mgr.domains[self.uid]
        if self.dst == self.src:
            return self._refuse(now, f"domain {dom.name} is already on {self.dst}")
        if self.dst in mgr.failed:
            return self._refuse(now, f"host {self.dst} has failed")
        self.dom = self.ask(self.src, self.srch.domain_dict(self.uid))
        why = self.ask(self.dst, self.dsth.room_for(self.dom))
        if why:
            return self._refuse(now, why)
        if not mgr.net.link(self.src, self.dst).up:
            return self._refuse(now, f"link {self.src}-{self.dst} is down")
        self.counters0 = mgr.domain_counters(self.uid)
        self.ask(self.dst, self.dsth.prepare_incoming(self.dom))
        self.reserved = True
        mgr.net.open(self.fid, self.src, self.dst, now, self.policy.cap_bps())
        self.flow_open = True
        self.ask(self.src, self.srch.enable_log_dirty(self.uid))
        self.logdirty_on = True
        hdr = pack_record(REC_DOMAIN, {"header": header("migration", domain=self.dom["name"]), "domain": self.dom})
        self.t_next = self._send(len(hdr), now)
        self.state = "first_round"

    def _st_first_round(self, now: int) -> None:
        pfns = np.arange(self.dom["max_pages"], dtype=np.int64)
        self._begin_round(now, pfns, live=True)

    def _begin_round(self, now: int, pfns: np.ndarray, live: bool) -> None:
        rnd = RoundStats(len(self.rounds) + 1, live, now, pages_planned=int(pfns.size))
        cap = self.policy.cap_bps()
        if cap is not None:
            rnd.rate_limit_mbit = int(cap // MBIT_2_20)
        self.rounds.append(rnd)
        self.queue = [pfns[i : i + MAX_BATCH_PAGES] for i in range(0, pfns.size, MAX_BATCH_PAGES)]
        self.state = "batch"
        self._st_batch(now)

    def _st_batch(self, now: int) -> None:
        """The previous batch has left the wire: send the next one, or end the round."""
        rnd = self.rounds[-1]
        while self.queue:
            pfns = self.queue.pop(0)
            if self.policy.skips_redirtied and rnd.live and rnd.index > 1:
                skip = np.frombuffer(self.ask(self.src, self.srch.dirty_peek(self.uid, pfns.tobytes())), dtype=bool)
                rnd.pages_skipped += int(skip.sum())
                pfns = pfns[~skip]
            if not pfns.size:
                continue
            pre, self.prefetched = self.prefetched, None
            key = pfns.tobytes()
            if pre is not None and pre[0] == now and pre[1] == key:
                record = pre[2]
            else:
                record = self.ask(self.src, self.srch.read_page_data(self.uid, key))
            self.applying.append(self.mgr.apply_pages(self.dst, self.uid, record))
            wire = pages_with_data(record)
            rnd.pages_sent += int(pfns.size)
            self.out.pages_sent += int(pfns.size)
            nbytes = PAGE_RECORD_HDR + PFN_ENTRY * int(pfns.size) + PAGE * wire
            rnd.bytes_sent += nbytes
            self.t_next = self._send(nbytes, now)
            return
        rnd.end_ns = now
        if self.final:
            return self._send_records(now)
        self._end_live_round(now)

    def _end_live_round(self, now: int) -> None:
        rnd = self.rounds[-1]
        dirty: list[np.ndarray] = []

        def clean() -> int:
            d = np.frombuffer(self.ask(self.src, self.srch.dirty_clean(self.uid)), dtype=np.int64)
            dirty.append(d)
            rnd.pages_dirtied = int(d.size)
            return int(d.size)

        decision, reason = self.policy.after_round(rnd, clean)
        if decision == "live":
            self._begin_round(now, dirty[0], live=True)
            return
        self.out.stop_reason = reason
        if self.carry_final and dirty:
            self.carried = dirty[0]
        self._pause(now)

    def _pause(self, now: int) -> None:
        self.ask(self.src, self.srch.pause_domain(self.uid))
        self.paused_here = True
        self.out.pause_ns = now
        self.state = "settle"
        self._st_settle(now)

    def _st_settle(self, now: int) -> None:
        if not self.ask(self.src, self.srch.settled(self.uid)):
            self.t_next = now + SETTLE_NS  # a vCPU is finishing a chunk in Xen
            return
        final = np.frombuffer(self.ask(self.src, self.srch.dirty_clean(self.uid)), dtype=np.int64)
        if self.carried.size:
            final = np.union1d(final, self.carried)
        self.src_digest = self.ask(self.src, self.srch.memory_digest(self.uid))
        self.records_fut = self.srch.export_vcpus(self.uid, False)
        self.records = list(self.ask(self.src, self.records_fut))
        self.out.continuations = sum(1 for r in self.records if _preempted(r))
        self.final = True
        self._begin_round(now, final, live=False)

    def _send_records(self, now: int) -> None:
        """vCPU records and END follow the last pages; END's arrival triggers the restore."""
        nbytes = sum(len(r) for r in self.records) + len(pack_record(REC_END, None))
        self.out.bytes_sent += 0
        t = self._send(nbytes, now)
        self.rounds[-1].bytes_sent += nbytes
        self.t_next = t + self.mgr.net.latency_ns(self.src, self.dst)
        self.state = "restore"

    def _st_restore(self, now: int) -> None:
        self.mgr.net.close(self.fid, now)
        self.flow_open = False
        assert self.records_fut is not None
        mem_digest, vcpu_digest = self.ask(self.dst, self.dsth.restore_incoming(self.uid, self.records_fut))
        self.out.memory_match = mem_digest == self.src_digest
        self.out.vcpu_match = vcpu_digest == hashlib.blake2b(b"".join(self.records), digest_size=16).hexdigest()
        self.t_next = now + int(self.params.resume_us * US)
        self.state = "unpause"
        if self.t_next == now:
            self._st_unpause(now)

    def _st_unpause(self, now: int) -> None:
        mgr = self.mgr
        mgr.where[self.uid] = self.dst
        self.ask(self.dst, self.dsth.unpause_domain(self.uid))
        self.out.resume_ns = now
        self.out.downtime_ms = (now - self.out.pause_ns) / MS
        self.out.total_ms = (now - self.start_ns) / MS
        # the destination tells the source it runs the domain; only then is the source destroyed
        self.t_next = now + mgr.net.latency_ns(self.src, self.dst)
        self.state = "release"

    def _st_release(self, now: int) -> None:
        c1 = self.mgr.domain_counters(self.uid, hosts=[self.src, self.dst])
        self.ask(self.src, self.srch.disable_log_dirty(self.uid))
        self.logdirty_on = False
        self.ask(self.src, self.srch.release_outgoing(self.uid))
        self._finish(now, "completed", "", c1)

    # --- endings ---------------------------------------------------------------------------------
    def _finish(self, now: int, status: str, reason: str, counters1: dict[str, Any] | None = None) -> None:
        o = self.out
        o.status = status
        o.reason = reason
        o.end_ns = now
        o.rounds = sum(1 for r in self.rounds if r.live)
        o.per_round = [asdict(r) for r in self.rounds]
        if counters1 is not None and self.counters0:
            ld = counters1.get("logdirty_ns", 0) - self.counters0.get("logdirty_ns", 0)
            run = counters1.get("running_ns", 0) - self.counters0.get("running_ns", 0)
            o.guest_slowdown_pct = round(100.0 * ld / run, 3) if run > 0 else 0.0
        self.done = True
        self.mgr.migration_done(self)

    def _refuse(self, now: int, why: str) -> None:
        self._finish(now, "refused", why)

    def abort(self, now: int, why: str) -> None:
        """The link or a host failed: the domain stays (or goes back) on the source."""
        if self.done:
            return
        mgr = self.mgr
        self.prefetched = None
        try:
            self.collect()  # whatever the destination says of the batches, they are dropped now
        except Exception:  # noqa: BLE001 - the abort goes on; a lost host is the caller's business
            pass
        if self.flow_open:
            mgr.net.close(self.fid, now)
            self.flow_open = False
        src_alive = self.src not in mgr.failed
        dst_alive = self.dst not in mgr.failed
        if self.reserved and dst_alive:
            self.ask(self.dst, self.dsth.abort_incoming(self.uid))
        if src_alive:
            if self.records and self.state in ("restore", "unpause", "batch"):
                self.ask(self.src, self.srch.take_back(self.uid, self.records))
            if self.logdirty_on:
                self.ask(self.src, self.srch.disable_log_dirty(self.uid))
            if self.paused_here:
                self.ask(self.src, self.srch.unpause_domain(self.uid))
        self._finish(now, "aborted", why)


    _STEPS: dict[str, Callable[["Migration", int], None]] = {
        "start": _st_start,
        "first_round": _st_first_round,
        "batch": _st_batch,
        "settle": _st_settle,
        "restore": _st_restore,
        "unpause": _st_unpause,
        "release": _st_release,
    }


def pages_with_data(record: bytes) -> int:
    """The pages of a PAGE_DATA record that carry data (all but XTAB: no frame at the source);
    what the destination stores of it."""
    _rtype, body = unpack_record(record, "PAGE_DATA record")
    words = np.frombuffer(body["pfns"], dtype=np.uint64)
    return int(np.count_nonzero((words >> np.uint64(60)) != np.uint64(PAGE_XTAB)))


def _preempted(record: bytes) -> bool:
    from hosts.codec import unpack_vcpu

    return unpack_vcpu(record).hcall_preempted


__all__ = ["Migration", "POLICIES", "Outcome", "REC_VCPU"]
