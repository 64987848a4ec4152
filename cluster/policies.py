"""Placement, consolidation and load balancing: the ``policies:`` section and its decisions.

What it does, as CloudSim's power-aware policies (Beloglazov & Buyya, "Optimal online
deterministic algorithms and adaptive heuristics for energy and performance efficient dynamic
consolidation of virtual machines in Cloud data centers", CCPE 2012) over hvsim's real hosts:

* **initial placement** (``place_auto``, at validation): a domain with ``host: auto`` goes to
  the first host with room (``first-fit``) or to the host it fills most (``best-fit``, by the
  CPU or the memory left), in config order, after the domains placed by name. Room: memory
  (Domain-0 and every domain's maximum, as ``checks.check_memory``) and CPU demand (a trace
  guest's value at time 0, a CPU hog's whole vCPU, others by their duty cycle) within
  ``cpu_limit`` x pCPUs.
* **consolidation** (``plan_consolidation``, every control period): a host is **overloaded**
  when its utilisation exceeds the upper threshold, static (``mode: threshold``, CloudSim's
  THR, default 0.8) or adaptive (``mode: mad``, CloudSim's MAD: upper = 1 - s x MAD of the
  host's last ``history`` utilisations, s = 2.5; the static threshold until ``min_history``
  samples exist). From each overloaded host domains are taken, the one of **minimum migration
  time** first (the least memory: MMT; or ``max-cpu``, the busiest), until the rest fits under
  the threshold, and each is given a destination by **power-aware best fit** (PABFD: the host
  whose power rises least, among hosts it fits without overloading them; busiest domains
  first). Then **underloaded** hosts (utilisation under the lower threshold, default 0.2,
  least loaded first) are drained: all their domains move if all fit elsewhere (never onto an
  empty host or another host being drained), so that the host can be switched off.
* **load balancing** (``plan_balance``): while the busiest and the least busy hosts differ by
  more than ``imbalance``, move the domain of the busiest that narrows the gap most.
* **evacuation** (``plan_evacuation``, the ``evacuate`` event): every domain of a host goes
  elsewhere, by power-aware best fit; the host takes no domain afterwards.

The decisions are pure functions of a snapshot (``HostView``, ``DomView``); the control loop
(``cluster/control.py``) takes the snapshot from the hosts' usage probe, enacts the moves as
live migrations and keeps the concurrency limits.

Ordering and determinism: hosts are visited in config order and domains by (key, uid); ties
go to the earlier host. Projections (utilisation, memory) include the migrations already under
way and those planned earlier in the same decision.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from hosts.domain import mib_to_pages
from hosts.tracewl import TraceParams, interpolate
from hosts.workload import CpuParams, IdleParams, IoParams, PeriodicParams

from cluster.errors import ConfigError
from cluster.power import PowerModelCfg

if TYPE_CHECKING:
    from cluster.config.schema import ClusterConfig, DomainCfg, HostCfg

PrecopyPolicy = Literal["xen", "xen-legacy", "downtime-target"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PlacementPolicyCfg(_M):
    strategy: Literal["first-fit", "best-fit"] = Field("first-fit", description="first-fit: the first host (config order) with room; best-fit: the host left with the least room.")
    by: Literal["cpu", "memory"] = Field("cpu", description="best-fit: which room to leave least of (CPU demand or memory).")
    cpu_limit: float = Field(1.0, gt=0, le=64, description="A host takes domains while their CPU demand is at most this many times its pCPUs (1: no overcommit).")


class ConsolidationCfg(_M):
    mode: Literal["threshold", "mad"] = Field("threshold", description="threshold: static upper threshold (CloudSim THR); mad: upper = 1 - mad_s x median absolute deviation of the host's recent utilisation (CloudSim MAD).")
    upper: float = Field(0.8, gt=0, le=1, description="Overloaded above this utilisation (threshold; mad's fallback until min_history samples).")
    lower: float = Field(0.2, ge=0, lt=1, description="Underloaded below this utilisation: the host's domains are moved off if they all fit elsewhere.")
    mad_s: float = Field(2.5, ge=0, le=100, description="mad: the safety parameter s (Beloglazov & Buyya: 2.5).")
    history: int = Field(30, ge=2, le=10_000, description="mad: utilisation samples (control periods) kept per host.")
    min_history: int = Field(12, ge=2, le=10_000, description="mad: samples needed before the adaptive threshold is used (CloudSim: 12).")
    select: Literal["mmt", "max-cpu"] = Field("mmt", description="Which domain leaves an overloaded host first: mmt (minimum migration time: least memory) or max-cpu (the busiest).")
    underload: bool = Field(True, description="Drain underloaded hosts (so they can be switched off).")


class LoadBalanceCfg(_M):
    imbalance: float = Field(0.25, gt=0, le=1, description="Act when the busiest and least busy hosts' utilisations differ by more than this.")
    max_moves: int = Field(1, ge=1, le=1024, description="Most migrations started per control period.")


class PoliciesCfg(_M):
    placement: PlacementPolicyCfg = Field(default_factory=PlacementPolicyCfg, description="Initial placement of domains with host: auto.")
    consolidation: Optional[ConsolidationCfg] = Field(None, description="Threshold consolidation by live migration, every control period (off when absent).")
    load_balance: Optional[LoadBalanceCfg] = Field(None, description="Load balancing by live migration, every control period (off when absent).")
    migration_policy: PrecopyPolicy = Field("xen", description="Pre-copy policy of the migrations the policies start.")
    max_concurrent_per_host: int = Field(1, ge=1, le=1024, description="The policies never start a migration while this many involve its source or its destination.")
    max_concurrent_per_link: int = Field(1, ge=1, le=1024, description="... nor while this many run between the same two hosts.")


# --- snapshots and moves -------------------------------------------------------------------------


@dataclass
class DomView:
    uid: int
    name: str
    pages: int  # reserved on a host (its maximum)
    cpu: float  # pCPUs it used over the last control period


@dataclass
class HostView:
    name: str
    pcpus: int
    mem_pages: int
    used_pages: int  # Domain-0, resident domains, incoming migrations
    util: float  # projected utilisation (0..1): measured, with the migrations under way
    doms: list[DomView] = field(default_factory=list)  # guests that may move (not migrating)
    guests: int = 0  # guests resident or arriving (migrating ones included)
    history: list[float] = field(default_factory=list)
    model: PowerModelCfg = field(default_factory=PowerModelCfg)
    switch_off: bool = False


@dataclass(frozen=True)
class Move:
    uid: int
    name: str
    src: str
    dst: str
    why: str


def mad_upper(history: list[float], s: float) -> float:
    med = statistics.median(history)
    mad = statistics.median(abs(x - med) for x in history)
    return min(1.0, max(0.0, 1.0 - s * mad))


def upper_of(cfg: ConsolidationCfg, h: HostView) -> float:
    if cfg.mode == "mad" and len(h.history) >= cfg.min_history:
        return mad_upper(h.history[-cfg.history :], cfg.mad_s)
    return cfg.upper


def _power(h: HostView, util: float, guests: int) -> float:
    if guests == 0 and h.switch_off:
        return 0.0
    return h.model.watts(util)


def best_fit(d: DomView, hosts: list[HostView], limit: dict[str, float], skip: set[str]) -> HostView | None:
    """Power-aware best fit: the host whose power rises least by taking ``d`` (the earlier
    on a tie), among hosts not in ``skip`` where it fits in memory and stays within
    ``limit[host]`` utilisation."""
    best: HostView | None = None
    best_dp = 0.0
    for h in hosts:
        if h.name in skip or h.used_pages + d.pages > h.mem_pages:
            continue
        du = d.cpu / h.pcpus
        if h.util + du > limit[h.name] + 1e-12:
            continue
        dp = _power(h, h.util + du, h.guests + 1) - _power(h, h.util, h.guests)
        if best is None or dp < best_dp - 1e-12:
            best, best_dp = h, dp
    return best


def _apply(d: DomView, src: HostView, dst: HostView) -> None:
    src.util = max(0.0, src.util - d.cpu / src.pcpus)
    src.used_pages -= d.pages
    src.guests -= 1
    src.doms = [x for x in src.doms if x.uid != d.uid]
    dst.util += d.cpu / dst.pcpus
    dst.used_pages += d.pages
    dst.guests += 1


def plan_consolidation(cfg: ConsolidationCfg, hosts: list[HostView]) -> list[Move]:
    """The migrations of one consolidation step (see the module's description)."""
    by_name = {h.name: h for h in hosts}
    limit = {h.name: upper_of(cfg, h) for h in hosts}
    over = [h for h in hosts if h.util > limit[h.name] + 1e-12]
    moves: list[Move] = []
    leaving: list[tuple[DomView, HostView, str]] = []
    for h in over:
        order = sorted(h.doms, key=(lambda d: (d.pages, d.uid)) if cfg.select == "mmt" else (lambda d: (-d.cpu, d.uid)))
        u = h.util
        for d in order:
            if u <= limit[h.name] + 1e-12:
                break
            leaving.append((d, h, f"{h.name} overloaded: utilisation {h.util:.3f} > {limit[h.name]:.3f}"))
            u -= d.cpu / h.pcpus
    skip = {h.name for h in over}
    touched: set[str] = set(skip)
    for d, src, why in sorted(leaving, key=lambda x: (-x[0].cpu, x[0].uid)):
        dst = best_fit(d, hosts, limit, skip)
        if dst is None:
            continue
        _apply(d, src, dst)
        moves.append(Move(d.uid, d.name, src.name, dst.name, why))
        touched.add(dst.name)
    if not cfg.underload:
        return moves
    drained: set[str] = set()
    while True:
        cands = [h for h in hosts if h.name not in touched and h.name not in drained and h.guests > 0 and h.doms and len(h.doms) == h.guests and h.util < cfg.lower]
        if not cands:
            break
        h = min(cands, key=lambda x: (x.util, hosts.index(x)))
        drained.add(h.name)
        trial = {x.name: replace(x, doms=list(x.doms)) for x in hosts}
        ex = skip | drained | {x.name for x in hosts if x.guests == 0}
        plan: list[Move] = []
        why = f"{h.name} underloaded: utilisation {h.util:.3f} < {cfg.lower:.3f}"
        src = trial[h.name]
        for d in sorted(h.doms, key=lambda d: (-d.cpu, d.uid)):
            dst = best_fit(d, list(trial.values()), limit, ex)
            if dst is None:
                plan = []
                break
            _apply(d, src, dst)
            plan.append(Move(d.uid, d.name, h.name, dst.name, why))
        if not plan:
            continue
        for m in plan:
            d = next(x for x in by_name[m.src].doms if x.uid == m.uid)
            _apply(d, by_name[m.src], by_name[m.dst])
            touched.add(m.dst)
        moves.extend(plan)
    return moves


def plan_balance(cfg: LoadBalanceCfg, hosts: list[HostView]) -> list[Move]:
    """Up to ``max_moves`` migrations, each narrowing the gap between the busiest and the
    least busy host the most."""
    moves: list[Move] = []
    for _ in range(cfg.max_moves):
        live = [h for h in hosts if h.guests > 0 or not h.switch_off]
        if len(live) < 2:
            break
        hi = max(live, key=lambda h: (h.util, -hosts.index(h)))
        lo = min(live, key=lambda h: (h.util, hosts.index(h)))
        gap = hi.util - lo.util
        if gap <= cfg.imbalance:
            break
        best: tuple[float, DomView] | None = None
        for d in sorted(hi.doms, key=lambda d: d.uid):
            if lo.used_pages + d.pages > lo.mem_pages:
                continue
            new_gap = abs((hi.util - d.cpu / hi.pcpus) - (lo.util + d.cpu / lo.pcpus))
            if new_gap < gap - 1e-12 and (best is None or new_gap < best[0] - 1e-12):
                best = (new_gap, d)
        if best is None:
            break
        d = best[1]
        moves.append(Move(d.uid, d.name, hi.name, lo.name, f"imbalance {gap:.3f} > {cfg.imbalance:.3f} ({hi.name} {hi.util:.3f}, {lo.name} {lo.util:.3f})"))
        _apply(d, hi, lo)
    return moves


def plan_evacuation(host: HostView, hosts: list[HostView], limit: float, skip: set[str]) -> list[Move]:
    """Destinations for every movable domain of ``host`` (busiest first), by power-aware best
    fit within ``limit`` utilisation, else wherever its memory fits (the host must be
    emptied); a domain that fits nowhere stays (it is tried again later)."""
    moves: list[Move] = []
    lim = {h.name: limit for h in hosts}
    anywhere = {h.name: float(h.pcpus) * 1e6 for h in hosts}
    for d in sorted(host.doms, key=lambda d: (-d.cpu, d.uid)):
        dst = best_fit(d, hosts, lim, skip | {host.name}) or best_fit(d, hosts, anywhere, skip | {host.name})
        if dst is None:
            continue
        _apply(d, host, dst)
        moves.append(Move(d.uid, d.name, host.name, dst.name, f"evacuating {host.name}"))
    return moves


# --- initial placement (host: auto) -----------------------------------------------------------------

AUTO = "auto"


def cpu_demand(d: "DomainCfg") -> float:
    """A domain's CPU demand in pCPUs at time 0, for placement."""
    wls = list(d.vcpu_workloads) if d.vcpu_workloads is not None else [d.workload] * d.vcpus
    total = 0.0
    for w in wls:
        if w is None or isinstance(w, CpuParams):
            total += 1.0
        elif isinstance(w, TraceParams):
            try:
                series = w.cpu_series()
            except ValueError:
                total += 1.0
                continue
            total += interpolate(series, w.start_min / w.step_min, w.interpolation == "linear") / 100.0
        elif isinstance(w, IdleParams):
            pass
        elif isinstance(w, PeriodicParams):
            total += min(1.0, w.run_ms / w.period_ms)
        elif isinstance(w, IoParams):
            total += w.burst_us / (w.burst_us + w.think_ms * 1000.0)
        else:
            total += 1.0
    return total


def _fits_shape(d: "DomainCfg", h: "HostCfg") -> bool:
    pools = [p.name for p in h.pools] if h.pools else ["Pool-0"]
    if d.pool is not None and d.pool not in pools:
        return False
    for aff in (d.hard_affinity, d.soft_affinity):
        for x in aff or []:
            cpus = x if isinstance(x, list) else [x]
            if any(not isinstance(c, int) or c >= h.pcpus for c in cpus):
                return False
    return True


def place_auto(cfg: "ClusterConfig", file: str) -> "ClusterConfig":
    """``cfg`` with every ``host: auto`` replaced by the host the placement policy picks."""
    autos = [i for i, d in enumerate(cfg.domains) if d.host == AUTO]
    if not autos:
        return cfg
    if any(h.name == AUTO for h in cfg.hosts):
        raise ConfigError(file, f"hosts[{AUTO}].name", f"{AUTO!r} is reserved for domains placed by the policy (host: auto); rename the host")
    pol = cfg.policies.placement if cfg.policies is not None else PlacementPolicyCfg()
    mem_left = {h.name: mib_to_pages(h.mem_mib) - mib_to_pages(h.dom0.mem_mib) for h in cfg.hosts}
    cpu_left = {h.name: h.pcpus * pol.cpu_limit for h in cfg.hosts}
    for d in cfg.domains:
        if d.host != AUTO and d.host in mem_left:
            mem_left[d.host] -= mib_to_pages(max(d.mem_mib, d.max_mem_mib or 0))
            cpu_left[d.host] -= cpu_demand(d)
    domains = list(cfg.domains)
    for i in autos:
        d = domains[i]
        pages = mib_to_pages(max(d.mem_mib, d.max_mem_mib or 0))
        need = cpu_demand(d)
        fits = [h for h in cfg.hosts if _fits_shape(d, h) and mem_left[h.name] >= pages and cpu_left[h.name] + 1e-9 >= need]
        if not fits:
            raise ConfigError(
                file,
                f"domains[{d.name}].host",
                f"auto: no host has room for {d.mem_mib} MiB and {need:.3g} pCPU(s) of demand ({pol.strategy}, cpu_limit {pol.cpu_limit:g}); "
                + "room left: " + ", ".join(f"{h.name} {mem_left[h.name] * 4096 >> 20} MiB / {cpu_left[h.name]:.3g} pCPUs" for h in cfg.hosts),
            )
        if pol.strategy == "first-fit":
            pick = fits[0]
        elif pol.by == "cpu":
            pick = min(fits, key=lambda h: (cpu_left[h.name] - need, cfg.hosts.index(h)))
        else:
            pick = min(fits, key=lambda h: (mem_left[h.name] - pages, cfg.hosts.index(h)))
        mem_left[pick.name] -= pages
        cpu_left[pick.name] -= need
        domains[i] = d.model_copy(update={"host": pick.name})
    return cfg.model_copy(update={"domains": domains})


__all__ = [
    "AUTO", "ConsolidationCfg", "DomView", "HostView", "LoadBalanceCfg", "Move", "PlacementPolicyCfg", "PoliciesCfg",
    "cpu_demand", "mad_upper", "place_auto", "plan_balance", "plan_consolidation", "plan_evacuation", "upper_of",
]
