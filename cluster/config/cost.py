"""What a config asks of the simulator: events per simulated ms, and memory.

``events_per_ms`` is a conservative (upper) estimate of the events a run of the config handles
per simulated millisecond, as a list of contributions, each naming the place in the config it
comes from. It assumes every vCPU runs alone on a pCPU (the fastest it can generate events)
and counts:

* per guest vCPU, its workload's cycle (a periodic task's period, an I/O guest's mean think
  plus burst time, a memory writer's quantum, a fork-like iteration's length with its paging
  costs, a trace-driven guest's slot), times the events one cycle takes (compute, hypercalls, timer, wake), plus the pages
  one cycle writes (each counted as :data:`PAGE_WRITE_EVENTS` of an event);
* per pCPU, its scheduler's timers (Credit's tick and timeslice, Credit2's shortest timer,
  RTDS's replenishments and budget ends per vCPU, ARINC653's minor frames);
* per host, the epoch boundaries (each one steps every pCPU of the host);
* the domain manager's control steps (each one steps every pCPU of every host).

``check_cost`` refuses a config whose estimate exceeds :data:`MAX_EVENTS_PER_MS`, with the
figure and its largest contributions, and a host whose RAM buffer exceeds
:data:`MAX_HOST_BUFFER_BYTES`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import hosts.sched as sched_registry
from hosts.clock import MS, US
from hosts.domain import mib_to_pages
from hosts.memory import buffer_size
from hosts.paging import PAGE_4K
from hosts.tracewl import TraceParams
from hosts.workload import (
    BalloonParams,
    CpuParams,
    HcallParams,
    IdleParams,
    IoBackendParams,
    IoClientParams,
    IoParams,
    MemWriteParams,
    PeriodicParams,
    PingPongParams,
    PtChurnParams,
    TlbRandomParams,
    YieldParams,
)

from cluster.config.schema import ClusterConfig, DomainCfg, HostCfg
from cluster.errors import ConfigError

#: The most events per simulated ms a config may generate (by this module's estimate). Measured
#: wall cost per estimated event: 0.5-10 us (inline, one core: bench/memory 0.5, quickstart 3.5,
#: paging-modes 10), so the limit is 0.05-1 wall s per simulated ms, up to a quarter of an hour
#: per simulated second; past it a run of the default length (1 s) is not told from a hang.
#: The shipped configs estimate at most about 3 100 (bench/memory: full 4 KiB pages).
MAX_EVENTS_PER_MS = 100_000
#: A page written by a guest costs about this share of an event: with 8-byte tags a few numpy
#: element operations (pick, tag, mark dirty), against ~1 us for an event through the heap;
#: with full 4 KiB pages (``hosts[].full_memory``) a page copy, about as much as an event.
PAGE_WRITE_EVENTS = 1 / 16
FULL_PAGE_WRITE_EVENTS = 1.0
#: The largest RAM buffer of one simulated host (content tags or pages, owner, p2m, dirty map),
#: in bytes: 16 GiB, 1 TiB of guest memory in tag mode or 4 GiB with full 4 KiB pages.
MAX_HOST_BUFFER_BYTES = 16 << 30

NS_PER_MS = 1_000_000


class Share(NamedTuple):
    """One contribution to the estimate: where in the config, why, and events per ms."""

    where: str
    why: str
    per_ms: float


def _rate(events: float, cycle_ns: float) -> float:
    return events * NS_PER_MS / max(cycle_ns, 1.0)


def _workload_rate(w: Any, d: DomainCfg, h: HostCfg) -> tuple[float, str]:
    """(events per ms, a short reason) of one vCPU running ``w`` alone on a pCPU."""
    costs = h.hypercall_costs
    pc = h.paging_costs
    page = FULL_PAGE_WRITE_EVENTS if h.full_memory else PAGE_WRITE_EVENTS
    if isinstance(w, (CpuParams, IdleParams, IoBackendParams, BalloonParams, HcallParams)):
        return 0.0, ""  # no cycle of its own (the scheduler's timers are counted per pCPU)
    if isinstance(w, PeriodicParams):
        return _rate(4, int(w.period_ms * MS)), f"periodic: a release every {w.period_ms:g} ms"
    if isinstance(w, IoParams):
        return _rate(4, w.think_ms * MS + w.burst_us * US), f"io: a wake-up every {w.think_ms:g} ms + {w.burst_us:g} us on average"
    if isinstance(w, YieldParams):
        return _rate(3, int(w.run_ms * MS)), f"yield: a yield every {w.run_ms:g} ms"
    if isinstance(w, MemWriteParams):
        pages = w.dirty_mb_s * 1e6 / PAGE_4K * w.quantum_us / 1e6
        return _rate(1 + pages * page, int(w.quantum_us * US)), f"memwrite: a batch of {pages:.3g} pages every {w.quantum_us:g} us"
    if isinstance(w, PtChurnParams):
        mode = d.paging
        ns = int(w.compute_us * US) + w.page_faults * pc.page_fault_ns[mode]
        events = 1 + w.pages_touched * page
        if mode == "pv":
            calls = math.ceil(w.pt_updates / w.mmu_batch)
            ns += w.pt_updates * pc.pt_update_ns["pv"] + calls * costs.entry_ns + w.cr3_switches * (pc.cr3_switch_ns["pv"] + costs.entry_ns)
            events += calls + w.cr3_switches
        else:
            ns += w.pt_updates * pc.pt_update_ns[mode] + w.cr3_switches * pc.cr3_switch_ns[mode]
        return _rate(events, ns), f"ptchurn: an iteration every {ns:,} ns"
    if isinstance(w, TlbRandomParams):
        ns = int(w.accesses_per_quantum * pc.dram_ns)
        return _rate(1 + int(w.accesses_per_quantum * w.write_fraction) * page, ns), f"tlbrandom: a burst every {ns:,} ns"
    if isinstance(w, IoClientParams):
        return _rate(8, w.think_us * US + w.service_us * US), f"io_client: a request every {w.think_us:g} + {w.service_us:g} us"
    if isinstance(w, PingPongParams):
        return _rate(6, w.think_us * US), f"pingpong: a round every {w.think_us:g} us"
    if isinstance(w, TraceParams):
        # a slot: compute, set_timer, block, wake (at most: a busy slot); pages at full demand
        slot_ns = w.slot_ms * MS
        pages = w.dirty_mb_s * 1e6 / PAGE_4K * slot_ns / 1e9
        return _rate(4 + pages * page, slot_ns), f"trace: a slot of work every {w.slot_ms:g} ms"
    return 0.0, ""


def _sched_rate(sched: Any, nr_pcpus: int, rt_vcpus: list[tuple[int, int]]) -> tuple[float, str]:
    """(events per ms, reason) of one pool's scheduler timers; ``rt_vcpus``: RTDS (period_us,
    budget_us) of each vCPU in the pool."""
    name = sched.name
    if name == "credit":
        tick_ns = sched.tslice_ms * MS / sched.ticks_per_tslice
        return nr_pcpus * (_rate(1, tick_ns) + _rate(1, sched.tslice_ms * MS)), f"credit: a tick every {tick_ns / US:g} us per pCPU"
    if name == "credit2":
        return nr_pcpus * _rate(1, 500 * US) + _rate(1, sched.cap_period_ms * MS), "credit2: its shortest timer (500 us) per pCPU"
    if name == "rtds":
        per = sum(_rate(1, p * US) + _rate(1, b * US) for p, b in rt_vcpus)
        return per, "rtds: a replenishment and a budget end per vCPU period"
    if name == "arinc653":
        if sched.schedule is None:
            return nr_pcpus * _rate(1, 10 * MS), "arinc653: 10 ms frames"
        frames = [max(1, int(round(e.runtime_ms * MS))) for e in sched.schedule]
        major = int(round(sched.major_frame_ms * MS)) if sched.major_frame_ms is not None else sum(frames)
        return nr_pcpus * _rate(len(frames) + 1, max(major, 1)), f"arinc653: {len(frames)} minor frames per {major:,} ns major frame on each pCPU"
    return 0.0, ""


def events_per_ms(cfg: ClusterConfig) -> list[Share]:
    """The estimate's contributions, largest first."""
    from cluster.config.checks import check_domain_sched, pool_scheduler

    shares: list[Share] = []
    hosts = {h.name: h for h in cfg.hosts}
    rt: dict[tuple[str, str | None], list[tuple[int, int]]] = {}
    for d in cfg.domains:
        h = hosts[d.host]
        wls = list(d.vcpu_workloads) if d.vcpu_workloads is not None else [d.workload or CpuParams(kind="cpu")] * d.vcpus
        for i, w in enumerate(wls):
            r, why = _workload_rate(w, d, h)
            if r:
                where = f"domains[{d.name}]." + (f"vcpu_workloads[{i}]" if d.vcpu_workloads is not None else "workload")
                shares.append(Share(where, why + ("" if d.vcpu_workloads is not None or d.vcpus == 1 else f", x {d.vcpus} vCPUs"), r))
        if pool_scheduler(h, d.pool).name == "rtds":
            pool = d.pool if h.pools else None
            per_vcpu = check_domain_sched(d, h, "<config>") or [{"period_us": 10_000, "budget_us": 4_000}] * d.vcpus
            rt.setdefault((h.name, pool or (h.pools[0].name if h.pools else None)), []).extend((p["period_us"], p["budget_us"]) for p in per_vcpu)
    shares = _merge(shares)
    for h in cfg.hosts:
        pools = [(p.name, p.scheduler, len(p.cpus)) for p in h.pools] if h.pools else [(None, h.scheduler, h.pcpus)]
        for pname, sched, n in pools:
            r, why = _sched_rate(sched, n, rt.get((h.name, pname), []))
            if r:
                where = f"hosts[{h.name}]" + (f".pools[{pname}]" if pname else "") + ".scheduler"
                shares.append(Share(where, why, r))
    epoch_ns = cfg.run.epoch_us * US
    total_pcpus = sum(1 + h.pcpus for h in cfg.hosts)
    shares.append(Share("run.epoch_us", f"an epoch boundary every {cfg.run.epoch_us:g} us on each host, stepping its pCPUs", _rate(total_pcpus, epoch_ns)))
    ctl_ns = int(round(cfg.run.control_period_ms * MS))
    if cfg.has_control_loop():
        shares.append(Share("run.control_period_ms", f"a domain-manager step every {cfg.run.control_period_ms:g} ms, stepping every pCPU", _rate(total_pcpus, ctl_ns)))
    return sorted(shares, key=lambda s: -s.per_ms)


def _merge(shares: list[Share]) -> list[Share]:
    """vCPUs of one domain sharing one workload count together."""
    out: dict[str, Share] = {}
    for s in shares:
        prev = out.get(s.where)
        out[s.where] = s if prev is None else Share(s.where, s.why, prev.per_ms + s.per_ms)
    return list(out.values())


def check_cost(cfg: ClusterConfig, file: str) -> None:
    for h in cfg.hosts:
        need = buffer_size(mib_to_pages(h.mem_mib), h.full_memory)
        if need > MAX_HOST_BUFFER_BYTES:
            mode = "full 4 KiB pages" if h.full_memory else "8-byte page tags"
            raise ConfigError(
                file,
                f"hosts[{h.name}].mem_mib",
                f"{h.mem_mib} MiB with {mode} needs a {need / 2**30:.1f} GiB buffer to simulate; at most {MAX_HOST_BUFFER_BYTES >> 30} GiB per host",
            )
    shares = events_per_ms(cfg)
    total = sum(s.per_ms for s in shares)
    if total > MAX_EVENTS_PER_MS:
        top = shares[0]
        rest = "; ".join(f"{s.where} {s.per_ms:,.0f}" for s in shares[1:3] if s.per_ms >= 1)
        raise ConfigError(
            file,
            top.where,
            f"the config would generate about {total:,.0f} events per simulated ms (limit {MAX_EVENTS_PER_MS:,}); "
            f"{top.per_ms:,.0f} of them from here ({top.why})" + (f"; then {rest}" if rest else "")
            + "; lengthen the period, quantum or interval",
        )
