"""The one builder: a validated config becomes the runtime objects a backend needs (host
specs, domain-table entries with stable uids, timed events)."""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass, field

from hosts.clock import MS, US
from hosts.domain import DomainInfo, mib_to_pages
from hosts.epoch import HostSpec, PoolSpec

from cluster.config.checks import _affinity_lists, check_domain_sched
from cluster.config.schema import Action, ClusterConfig, HostCfg, LinkCfg, MigrationCfg, RunCfg
from cluster.policies import PoliciesCfg
from cluster.power import PowerCfg


@dataclass(frozen=True, slots=True)
class TimedEvent:
    """A config event in simulated time: ``kind`` is the config's name for it (``migrate``),
    ``action`` the typed action with every default of the schema filled in."""

    at_ns: int
    index: int
    kind: str
    action: Action


@dataclass
class Plan:
    """Everything a backend needs, as plain runtime objects."""

    seed: int
    duration_ns: int
    control_period_ns: int
    hosts: dict[str, HostSpec]
    host_cfgs: dict[str, dict[str, Any]]
    domains: list[DomainInfo]  # dom0s first, then guests, uids 1..n
    dom_host: dict[int, str]
    events: list[TimedEvent] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    net_default_mbit_s: float = 1000.0
    net_default_latency_us: float = 100.0
    nics: dict[str, float] = field(default_factory=dict)
    migration_defaults: MigrationCfg = field(default_factory=MigrationCfg)
    policies: PoliciesCfg | None = None
    power: PowerCfg | None = None
    #: the domain manager runs its control loop (cluster/control.py): policies, power or evacuations
    control: bool = False
    #: Ray backend: processes stepping each host's pCPUs (a number, or "auto")
    ray_processes_per_host: int | str = "auto"


def host_spec(h: HostCfg | dict[str, Any], run: RunCfg | dict[str, Any]) -> HostSpec:
    """A HostSpec from a host config (also used inside actors, from the plain dict)."""
    if isinstance(h, dict):
        h = HostCfg.model_validate(h)
    if isinstance(run, dict):
        run = RunCfg.model_validate(run)
    if h.pools:
        pools = [PoolSpec(i, p.name, tuple(sorted(p.cpus)), p.scheduler.name, p.scheduler) for i, p in enumerate(h.pools)]
    else:
        pools = [PoolSpec(0, "Pool-0", tuple(range(h.pcpus)), h.scheduler.name, h.scheduler)]
    return HostSpec(
        name=h.name,
        nr_pcpus=h.pcpus,
        mem_pages=mib_to_pages(h.mem_mib),
        pools=pools,
        full_memory=h.full_memory,
        epoch_ns=int(round(run.epoch_us * US)),
        skip_quiet=run.skip_quiet_epochs,
        trace_max=run.trace_max_events * 3,
        costs=h.hypercall_costs.model_dump(),
        paging_costs=h.paging_costs.model_dump(),
        checks=run.debug_checks,
        preempt_hypercalls=h.preempt_hypercalls,
        max_rounds=run.boundary_rounds,
        xentrace=run.xentrace,
    )


def build_plan(cfg: ClusterConfig) -> Plan:
    hosts = {h.name: host_spec(h, cfg.run) for h in cfg.hosts}
    domains: list[DomainInfo] = []
    dom_host: dict[int, str] = {}
    uid = 0
    for h in cfg.hosts:
        uid += 1
        d0 = h.dom0
        aff = [[i % h.pcpus] for i in range(d0.vcpus)] if d0.pin else []
        pages = mib_to_pages(d0.mem_mib)
        domains.append(
            DomainInfo(
                uid=uid,
                name="Domain-0",
                key=f"{h.name}/Domain-0",
                nr_vcpus=d0.vcpus,
                mem_pages=pages,
                max_pages=pages,
                paging="pv",
                weight=d0.weight,
                cap=d0.cap,
                pool=0,
                is_dom0=True,
                workloads=[{"kind": "io_backend"} for _ in range(d0.vcpus)],
                hard_affinity=aff,
            )
        )
        dom_host[uid] = h.name
    host_cfg = {h.name: h for h in cfg.hosts}
    for d in cfg.domains:
        uid += 1
        h = host_cfg[d.host]
        pool_names = [p.name for p in h.pools] if h.pools else ["Pool-0"]
        pool = pool_names.index(d.pool) if d.pool else 0
        if d.vcpu_workloads is not None:
            wls = [w.model_dump() for w in d.vcpu_workloads]
        else:
            w = d.workload.model_dump() if d.workload is not None else {"kind": "cpu"}
            wls = [dict(w) for _ in range(d.vcpus)]
        pages = mib_to_pages(d.mem_mib)
        vcpu_sched = check_domain_sched(d, h, "<config>")
        domains.append(
            DomainInfo(
                uid=uid,
                name=d.name,
                key=d.name,
                nr_vcpus=d.vcpus,
                mem_pages=pages,
                max_pages=mib_to_pages(d.max_mem_mib) if d.max_mem_mib else pages,
                paging=d.paging,
                weight=d.weight,
                cap=d.cap,
                pool=pool,
                workloads=wls,
                hard_affinity=(_affinity_lists(d.hard_affinity, d.vcpus) or []) if d.hard_affinity else [],
                soft_affinity=(_affinity_lists(d.soft_affinity, d.vcpus) or []) if d.soft_affinity else [],
                vcpu_sched=vcpu_sched,
                paused=1 if d.start_paused else 0,
            )
        )
        dom_host[uid] = d.host
    events = []
    for i, e in enumerate(cfg.events):
        kind, act = e.action()
        events.append(TimedEvent(int(round(e.at_ms * MS)), i, kind, act))
    events.sort(key=lambda x: (x.at_ns, x.index))
    return Plan(
        seed=cfg.run.seed,
        duration_ns=int(round(cfg.run.duration_ms * MS)),
        control_period_ns=int(round(cfg.run.control_period_ms * MS)),
        hosts=hosts,
        host_cfgs={h.name: h.model_dump(mode="json") for h in cfg.hosts},
        domains=domains,
        dom_host=dom_host,
        events=events,
        links=[ln.model_dump() for ln in cfg.links],
        net_default_mbit_s=cfg.network.default_bandwidth_mbit_s,
        net_default_latency_us=cfg.network.default_latency_us,
        nics={h.name: h.nic_mbit_s for h in cfg.hosts if h.nic_mbit_s},
        migration_defaults=cfg.migration,
        policies=cfg.policies,
        power=cfg.power,
        control=cfg.has_control_loop(),
        ray_processes_per_host=cfg.run.ray_processes_per_host,
    )
