"""Guest workload models: what a vCPU's guest does when it runs.

A workload is a small state machine. Its parameters live in the domain table (a typed model per
kind, below); its state lives in the vCPU record (``v.wl``, plain data) together with its own
random stream (``v.rng``, derived from the run seed and the vCPU's name), so a vCPU can stop on
one pCPU and continue on another, or on another host, and draw the same numbers.

The engine asks ``next_action`` when the guest has nothing in flight; the answer is either
``(ACT_COMPUTE, ns)`` (run guest code for ``ns`` of CPU time, preemptible) or
``(ACT_HCALL, nr, args)`` (issue a hypercall; the engine guarantees it completes, through a
continuation if it is preempted, before asking again). The result of the last hypercall is in
``v.regs["rax"]``. ``on_compute`` is told how much CPU a burst actually consumed (also when it
was cut short by a preemption) and ``on_events`` runs when the guest's event upcall does.
"""

from __future__ import annotations

from typing import Any, Final, Generic, Protocol, TypeVar


import numpy as np
from mypy_extensions import mypyc_attr

from hosts import hypercalls as hc
from hosts.clock import MS, NEVER, US
from hosts.domain import DomainInfo
from hosts.paging import PAGE_2M, PAGE_4K, PagingModel
from hosts.vcpu import VcpuState
from hosts.workload_params import (  # re-exported: the parameters live apart so this module can be compiled
    MIN_STEP_NS as MIN_STEP_NS,
    MAX_SPAN_NS as MAX_SPAN_NS,
    MAX_BATCH_PAGES as MAX_BATCH_PAGES,
    MAX_DIRTY_MB_S as MAX_DIRTY_MB_S,
    MAX_PER_ITERATION as MAX_PER_ITERATION,
    MAX_ACCESSES as MAX_ACCESSES,
    MAX_MIB as MAX_MIB,
    MAX_PFN as MAX_PFN,
    MAX_STRUCT_DEPTH as MAX_STRUCT_DEPTH,
    MAX_STRUCT_VALUES as MAX_STRUCT_VALUES,
    MAX_PAYLOAD as MAX_PAYLOAD,
    StepMs as StepMs,
    StepUs as StepUs,
    TimeMs as TimeMs,
    TimeUs as TimeUs,
    Reg as Reg,
    check_struct as check_struct,
    _P as _P,
    CpuParams as CpuParams,
    PeriodicParams as PeriodicParams,
    IoParams as IoParams,
    YieldParams as YieldParams,
    IdleParams as IdleParams,
    MemWriteParams as MemWriteParams,
    PtChurnParams as PtChurnParams,
    TlbRandomParams as TlbRandomParams,
    IoClientParams as IoClientParams,
    IoBackendParams as IoBackendParams,
    BalloonParams as BalloonParams,
    HcallParams as HcallParams,
    PingPongParams as PingPongParams,
)

HUGE_NS: Final = 1 << 50

A: Final = hc.ACT_COMPUTE
H: Final = hc.ACT_HCALL

#: what a guest does next: (ACT_COMPUTE, ns, ()) or (ACT_HCALL, number, arguments)
Action = tuple[int, int, tuple[Any, ...]]


class GuestHost(Protocol):
    """What workloads may use of the pCPU engine (``hosts.guest.GuestCpu``)."""

    @property
    def now(self) -> int: ...
    def paging(self, dom: DomainInfo) -> PagingModel: ...
    def guest_write(self, v: VcpuState, dom: DomainInfo, gpfns: np.ndarray, tags: np.ndarray) -> int: ...
    def write_tags(self, dom: DomainInfo, gpfns: np.ndarray, values: np.ndarray) -> None: ...
    def read_tags(self, dom: DomainInfo, gpfns: np.ndarray) -> np.ndarray: ...
    def count(self, key: str, n: int) -> None: ...
    def sample(self, name: str, vid: int, value: int) -> None: ...


P = TypeVar("P", bound="_P")


# other workload modules (hosts/tracewl.py) and users' own workloads may derive from it
@mypyc_attr(allow_interpreted_subclasses=True)
class Workload(Generic[P]):
    """Parameters of one vCPU's guest program; stateless (state is in the vCPU record)."""

    kind = "base"

    def __init__(self, params: P, dom: DomainInfo, idx: int):
        self.p = params
        self.dom = dom
        self.idx = idx

    def start(self, v: VcpuState, core: GuestHost) -> None:
        v.wl = {"pc": 0, "rem": 0}

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        raise NotImplementedError

    def on_compute(self, v: VcpuState, ns: int, core: GuestHost) -> None:
        pass

    def on_events(self, v: VcpuState, core: GuestHost) -> None:
        v.pending_ports.clear()
        v.pending_payloads.clear()

    def on_restore(self, v: VcpuState, core: GuestHost) -> None:
        """The vCPU resumed on another host after a live migration."""


def _exp_ns(v: VcpuState, mean_ns: float) -> int:
    return int(v.rng.exponential(mean_ns)) + 1


class CpuHog(Workload[CpuParams]):
    kind = "cpu"

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        return (A, HUGE_NS, ())


class Periodic(Workload[PeriodicParams]):
    kind = "periodic"

    def __init__(self, params: PeriodicParams, dom: DomainInfo, idx: int):
        super().__init__(params, dom, idx)
        # in ns, once: the parameters are a pydantic model, slow to read on every action
        self.run_ns = int(params.run_ms * MS)
        self.period_ns = int(params.period_ms * MS)

    def start(self, v: VcpuState, core: GuestHost) -> None:
        period = self.period_ns
        phase = int(v.rng.integers(0, period)) if self.p.random_phase else 0
        v.wl = {"pc": 1 if phase else 0, "rem": 0, "rel": core.now + phase, "miss": 0}

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        w = v.wl
        pc = w["pc"]
        if pc == 0:
            w["pc"] = 1
            return (A, self.run_ns, ())
        now = core.now
        if pc == 1:
            period = self.period_ns
            rel = w["rel"]
            if rel <= now:
                rel += period
                while rel <= now:
                    rel += period
                    w["miss"] += 1
            w["rel"] = rel
            w["pc"] = 2
            return (H, hc.HYPERVISOR_set_timer_op, (rel,))
        # pc == 2: block until the release time (re-block if woken early)
        if w["rel"] <= now:
            w["pc"] = 1
            return (A, self.run_ns, ())
        return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))



class IoLike(Workload[IoParams]):
    kind = "io"

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        w = v.wl
        pc = w["pc"]
        if pc == 0:
            w["pc"] = 1
            w["due"] = core.now + _exp_ns(v, self.p.think_ms * MS)
            return (H, hc.HYPERVISOR_set_timer_op, (w["due"],))
        if pc == 1:
            if w["due"] <= core.now:
                w["pc"] = 0
                return (A, _exp_ns(v, self.p.burst_us * US), ())
            return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))
        w["pc"] = 0
        return (A, _exp_ns(v, self.p.burst_us * US), ())


class YieldLoop(Workload[YieldParams]):
    kind = "yield"

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        w = v.wl
        if w["pc"] == 0:
            w["pc"] = 1
            return (A, int(self.p.run_ms * MS), ())
        w["pc"] = 0
        return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_yield,))


class Idle(Workload[IdleParams]):
    kind = "idle"

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))


# --- memory ------------------------------------------------------------------------------------


def _tags(v: VcpuState, n: int) -> np.ndarray:
    """Distinct content tags for n page writes by this vCPU: (vid << 32) | sequence."""
    seq = v.wl.get("seq", 0)
    v.wl["seq"] = seq + n
    return (np.uint64(v.vid) << np.uint64(32)) | (np.arange(seq, seq + n, dtype=np.uint64) & np.uint64(0xFFFFFFFF))


class MemWriter(Workload[MemWriteParams]):
    """Writes ``dirty_mb_s`` worth of pages per CPU second, in batches every ``quantum_us``.

    Log-dirty faults (and, under shadow, the rebuild storm after each CLEAN) are charged as
    extra CPU time spent in Xen before the next quantum, so a migrated guest gets less done.
    """

    kind = "memwrite"

    def __init__(self, params: MemWriteParams, dom: DomainInfo, idx: int):
        super().__init__(params, dom, idx)
        self.rate_mpps = int(round(params.dirty_mb_s * 1e6 / PAGE_4K * 1000))  # milli-pages/s
        ws = dom.mem_pages if params.working_set_mib is None else int(params.working_set_mib * (1 << 20) // PAGE_4K)
        self.ws = max(1, min(ws, dom.mem_pages))
        self.hot = max(1, int(self.ws * params.hot_set_pct / 100))
        self.quantum = int(params.quantum_us * US)

    def start(self, v: VcpuState, core: GuestHost) -> None:
        v.wl = {"pc": 0, "rem": 0, "acc": 0, "ovh": 0, "seq": 0, "work": 1}

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        w = v.wl
        if w["ovh"] > 0:
            ns, w["ovh"], w["work"] = w["ovh"], 0, 0
            return (A, ns, ())
        w["work"] = 1
        return (A, self.quantum, ())

    def on_compute(self, v: VcpuState, ns: int, core: GuestHost) -> None:
        w = v.wl
        if not w["work"]:
            return
        w["acc"] += ns * self.rate_mpps
        n, w["acc"] = divmod(w["acc"], 10**12)
        if n <= 0:
            return
        n_hot = int(round(n * self.p.hot_fraction))
        pf = np.empty(n, dtype=np.int64)
        if n_hot:
            pf[:n_hot] = v.rng.integers(0, self.hot, n_hot)
        if n - n_hot:
            pf[n_hot:] = v.rng.integers(0, self.ws, n - n_hot)
        w["ovh"] += core.guest_write(v, self.dom, pf, _tags(v, n))


class PtChurn(Workload[PtChurnParams]):
    """fork/exec-like iterations; the paging mode decides what each part costs.

    HVM: one burst per iteration of compute plus the mode's costs. PV: compute and faults,
    then real ``mmu_update`` hypercalls in batches (preemptible, with continuations) and a
    ``mmuext_op`` per address-space switch.
    """

    kind = "ptchurn"

    def start(self, v: VcpuState, core: GuestHost) -> None:
        v.wl = {"pc": 0, "rem": 0, "left": 0, "seq": 0}

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        w = v.wl
        p = self.p
        pm = core.paging(self.dom)
        pc = w["pc"]
        if pc == 0:
            if w.get("it"):
                core.count(f"work.{self.dom.uid}", 1)
            w["it"] = 1
            ns = int(p.compute_us * US) + pm.page_faults(p.page_faults)
            if self.dom.paging != "pv":
                ns += pm.pt_updates(p.pt_updates) + pm.cr3_switches(p.cr3_switches)
                core.count(f"paging.{self.dom.uid}.pt_ns", pm.pt_updates(p.pt_updates) + pm.cr3_switches(p.cr3_switches))
            else:
                w["left"] = p.pt_updates
                w["cr3"] = p.cr3_switches
                w["pc"] = 1
            core.count(f"paging.{self.dom.uid}.fault_ns", pm.page_faults(p.page_faults))
            if p.pages_touched:
                pf = v.rng.integers(0, max(1, self.dom.mem_pages), p.pages_touched)
                ns += core.guest_write(v, self.dom, pf, _tags(v, p.pages_touched))
            return (A, max(1, ns), ())
        if pc == 1 and w["left"] > 0:
            k = min(p.mmu_batch, w["left"])
            w["left"] -= k
            base = int(v.rng.integers(0, max(1, self.dom.mem_pages)))
            reqs = [[base + i, (v.vid << 20) + i] for i in range(k)]
            return (H, hc.HYPERVISOR_mmu_update, (0, k, {"reqs": reqs}))
        if pc == 1 and w.get("cr3", 0) > 0:
            w["cr3"] -= 1
            return (H, hc.HYPERVISOR_mmuext_op, (0, 1, {"ops": [[hc.MMUEXT_NEW_BASEPTR, 0]]}))
        w["pc"] = 0
        return self.next_action(v, core)


class TlbRandom(Workload[TlbRandomParams]):
    """Bursts of random accesses; each costs a DRAM access plus, on a TLB miss, the walk."""

    kind = "tlbrandom"

    def __init__(self, params: TlbRandomParams, dom: DomainInfo, idx: int):
        super().__init__(params, dom, idx)
        self.guest_page = PAGE_2M if params.page_size == "2m" else PAGE_4K
        self.host_page = PAGE_2M if params.host_page_size == "2m" else PAGE_4K
        self.ws_bytes = int(params.working_set_mib * (1 << 20))

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        w = v.wl
        if w.get("it"):
            core.count(f"work.{self.dom.uid}", self.p.accesses_per_quantum)
        w["it"] = 1
        pm = core.paging(self.dom)
        n = self.p.accesses_per_quantum
        misses = n * pm.tlb_miss_rate(self.ws_bytes, self.guest_page)
        walk = pm.tlb_misses(misses, self.guest_page, self.host_page)
        core.count(f"paging.{self.dom.uid}.tlb_ns", walk)
        ns = int(n * pm.c.dram_ns) + walk
        if self.p.write_fraction > 0:
            k = int(n * self.p.write_fraction)
            if k:
                pf = v.rng.integers(0, max(1, self.dom.mem_pages), k)
                ns += core.guest_write(v, self.dom, pf, _tags(v, k))
        return (A, max(1, ns), ())


# --- I/O through Domain-0 --------------------------------------------------------------------


def io_port(dom: DomainInfo, idx: int) -> int:
    """The port of vCPU ``idx`` bound to another domain (the toolstack bound it at creation)."""
    best = -1
    found = False
    for p, b in dom.evtchn.items():  # the lowest such port (once per request: no sort)
        if b.notify_vcpu == idx and b.remote_uid >= 0 and b.remote_uid != dom.uid and (not found or p < best):
            best = p
            found = True
    return best


class IoClient(Workload[IoClientParams]):
    """Frontend of a split driver: post a request on the shared ring, notify, block until the
    backend's response event; the request-to-completion latency is sampled per request."""

    kind = "io_client"

    def __init__(self, params: IoClientParams, dom: DomainInfo, idx: int):
        super().__init__(params, dom, idx)
        # once: the parameters are a pydantic model, slow to read on every action
        self.think_mean_ns = params.think_us * US
        self.service_ns = int(params.service_us * US)
        self.work_key = f"work.{dom.uid}"

    def start(self, v: VcpuState, core: GuestHost) -> None:
        v.wl = {"pc": 0, "rem": 0, "req": 0, "got": -1}

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        w = v.wl
        pc = w["pc"]
        if pc == 0:
            w["pc"] = 1
            return (A, _exp_ns(v, self.think_mean_ns), ())
        if pc == 1:
            port = io_port(self.dom, self.idx)
            if port < 0:
                w["pc"] = 0
                return (A, int(self.think_mean_ns), ())  # no backend: just compute
            w["req"] += 1
            w["pc"] = 2
            payload = [w["req"], core.now, self.service_ns]
            return (H, hc.HYPERVISOR_event_channel_op, (hc.EVTCHNOP_send, port, {"port": port, "payload": payload}))
        if w["got"] >= w["req"]:
            w["pc"] = 0
            return self.next_action(v, core)
        return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))

    def on_restore(self, v: VcpuState, core: GuestHost) -> None:
        # the frontend reconnected to this host's backend: resubmit an outstanding request
        if v.wl.get("got", -1) < v.wl.get("req", 0):
            v.wl["pc"] = 1
            v.wl["got"] = v.wl["req"]

    def on_events(self, v: VcpuState, core: GuestHost) -> None:
        for port, payload in v.pending_payloads:
            if payload is not None and len(payload) >= 2:
                req, t_post = payload[0], payload[1]
                core.sample("io_lat", v.vid, core.now - t_post)
                core.count(self.work_key, 1)
                v.wl["got"] = max(v.wl["got"], req)
        super().on_events(v, core)


class IoBackend(Workload[IoBackendParams]):
    """Domain-0's backend: each request costs its service time, then a response event."""

    kind = "io_backend"

    def start(self, v: VcpuState, core: GuestHost) -> None:
        v.wl = {"pc": 0, "rem": 0, "q": []}

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        w = v.wl
        q = w["q"]
        if w["pc"] == 1 and q:  # finished serving the head: answer it
            port, req, t_post, _svc = q.pop(0)
            w["pc"] = 0
            return (H, hc.HYPERVISOR_event_channel_op, (hc.EVTCHNOP_send, port, {"port": port, "payload": [req, t_post]}))
        if q:
            w["pc"] = 1
            return (A, max(1, int(q[0][3])), ())
        w["pc"] = 0
        return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))

    def on_events(self, v: VcpuState, core: GuestHost) -> None:
        for port, payload in v.pending_payloads:
            if payload is not None and len(payload) >= 3:
                v.wl["q"].append([port, payload[0], payload[1], payload[2]])
        super().on_events(v, core)


# --- hypercall drivers ---------------------------------------------------------------------------


OneCallP = TypeVar("OneCallP", "HcallParams", "BalloonParams")


class OneCall(Workload[OneCallP]):
    """One hypercall at ``at_ms`` (sleeping on a singleshot timer until then); its result and
    completion time are kept in the vCPU's workload state. Then burn CPU or block. Subclasses
    say which call (``call``)."""

    def start(self, v: VcpuState, core: GuestHost) -> None:
        v.wl = {"pc": 0, "rem": 0, "result": None, "done_ns": -1}

    def call(self) -> tuple[int, tuple[Any, ...]]:
        """(hypercall number, arguments) of the one call."""
        raise NotImplementedError

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        w = v.wl
        at = int(self.p.at_ms * MS)
        if w["pc"] == 0:
            if core.now < at:
                if v.singleshot_ns == NEVER:
                    return (H, hc.HYPERVISOR_set_timer_op, (at,))
                return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))
            w["pc"] = 1
            nr, args = self.call()
            return (H, nr, args)
        if w["pc"] == 1:
            w["result"] = hc.signed(v.regs["rax"])
            w["done_ns"] = core.now
            w["pc"] = 2
        if self.p.then == "cpu":
            return (A, HUGE_NS, ())
        return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))


class Hcall(OneCall[HcallParams]):
    """Any hypercall, number and arguments as configured."""

    kind = "hcall"

    def call(self) -> tuple[int, tuple[Any, ...]]:
        return self.p.nr, tuple(self.p.args) + ((dict(self.p.struct),) if self.p.struct else ())


class Balloon(OneCall[BalloonParams]):
    """A balloon driver's one memory_op: decrease, increase or populate a run of pages."""

    kind = "balloon"

    CMD = {"decrease": hc.XENMEM_decrease_reservation, "increase": hc.XENMEM_increase_reservation, "populate": hc.XENMEM_populate_physmap}

    def call(self) -> tuple[int, tuple[Any, ...]]:
        args = {"extent_start": self.p.first_pfn, "nr_extents": self.p.pages, "extent_order": 0, "domid": self.dom.uid}
        return hc.HYPERVISOR_memory_op, (self.CMD[self.p.op], 0, args)


class PingPong(Workload[PingPongParams]):
    """Two vCPUs of one domain talk through guest memory: vCPU 0 writes round k into page 0 and
    notifies; vCPU 1 reads page 0 and writes what it read into page 1 and notifies; vCPU 0
    checks page 1. Counts matches and mismatches (a mismatch would mean memory is not shared)."""

    kind = "pingpong"

    def start(self, v: VcpuState, core: GuestHost) -> None:
        v.wl = {"pc": 0, "rem": 0, "k": 0, "ok": 0, "bad": 0, "woke": 0}

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        w = v.wl
        port = self._port(v)
        if port < 0:
            return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))
        if self.idx == 0:
            if w["pc"] == 0:
                w["k"] += 1
                core.write_tags(self.dom, np.array([0]), np.array([w["k"]], dtype=np.uint64))
                w["pc"] = 1
                return (H, hc.HYPERVISOR_event_channel_op, (hc.EVTCHNOP_send, port, {"port": port}))
            if w["pc"] == 1:
                if not w["woke"]:
                    return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))
                w["woke"] = 0
                got = int(core.read_tags(self.dom, np.array([1]))[0])
                w["ok" if got == w["k"] else "bad"] += 1
                w["pc"] = 0
                return (A, _exp_ns(v, self.p.think_us * US), ())
        else:
            if w["woke"]:
                w["woke"] = 0
                got = int(core.read_tags(self.dom, np.array([0]))[0])
                w["k"] = got
                w["ok" if got > 0 else "bad"] += 1
                core.write_tags(self.dom, np.array([1]), np.array([got], dtype=np.uint64))
                return (H, hc.HYPERVISOR_event_channel_op, (hc.EVTCHNOP_send, port, {"port": port}))
            return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))
        return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))

    def _port(self, v: VcpuState) -> int:
        for p, b in sorted(self.dom.evtchn.items()):
            if b.notify_vcpu == self.idx and b.remote_uid == self.dom.uid:
                return p
        return -1

    def on_events(self, v: VcpuState, core: GuestHost) -> None:
        if v.pending_ports:
            v.wl["woke"] = 1
        super().on_events(v, core)


WORKLOADS: dict[str, tuple[type[_P], type[Workload[Any]]]] = {
    "cpu": (CpuParams, CpuHog),
    "periodic": (PeriodicParams, Periodic),
    "io": (IoParams, IoLike),
    "yield": (YieldParams, YieldLoop),
    "idle": (IdleParams, Idle),
    "memwrite": (MemWriteParams, MemWriter),
    "ptchurn": (PtChurnParams, PtChurn),
    "tlbrandom": (TlbRandomParams, TlbRandom),
    "io_client": (IoClientParams, IoClient),
    "io_backend": (IoBackendParams, IoBackend),
    "balloon": (BalloonParams, Balloon),
    "pingpong": (PingPongParams, PingPong),
    "hcall": (HcallParams, Hcall),
}


def make_workload(dom: DomainInfo, idx: int, cache: dict[tuple[int, int], Workload[Any]]) -> Workload[Any]:
    """The workload object of vCPU ``idx`` of ``dom`` (cached per domain-table entry)."""
    key = (dom.uid, idx)
    wl = cache.get(key)
    if wl is None or wl.dom is not dom:
        spec = dom.workloads[idx] if idx < len(dom.workloads) else {"kind": "idle"}
        params_cls, cls = WORKLOADS[spec["kind"]]
        wl = cls(params_cls.model_validate(spec), dom, idx)
        cache[key] = wl
    return wl


from hosts import tracewl as _tracewl  # noqa: E402,F401  registers the trace-driven workload ("trace")
