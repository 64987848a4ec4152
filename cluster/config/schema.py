"""The config schema: typed pydantic models of everything a config file may say.

Every field is typed, described and carries its unit in its name; unknown keys are errors.
A scheduler's parameters are the model at the top of its module (``hosts/sched/``) and a
workload's at the top of ``hosts/workload.py``; they are gathered here into discriminated
unions, so an unknown scheduler or workload name is an error that lists the known ones.
Defaults live here and nowhere else: the runtime reads these models, never re-defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

from hosts.clock import MS

from pydantic import BaseModel, ConfigDict, Field, field_validator

import hosts.sched as sched_registry
from hosts.workload import MAX_MIB, MAX_SPAN_NS, MIN_STEP_NS, WORKLOADS, StepMs, StepUs, TimeMs, TimeUs

from cluster.policies import PoliciesCfg
from cluster.power import PowerCfg


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Bounds of the numbers a run acts on (the time bounds, MIN_STEP_NS and MAX_SPAN_NS, are with the
# workload parameters in hosts/workload.py: a step of at least 1 ns, nothing past the longest run).

#: Longest a run may be, in ms (11.6 simulated days): MAX_SPAN_NS.
MAX_DURATION_MS = MAX_SPAN_NS / MS
#: Most hypercall or paging cost a config may name, in ns (1 s; real ones are 100 ns to 10 us).
MAX_COST_NS = 1_000_000_000
#: Slowest and fastest link or NIC, in Mbit/s: 1 kbit/s (a 4 MiB batch of pages then takes
#: 9 simulated hours, still a representable time) to 10 Tbit/s.
MIN_MBIT_S = 0.001
MAX_MBIT_S = 10_000_000.0
#: Most run intervals kept per pCPU for the trace (24 bytes each: 1.2 GB per pCPU at most).
MAX_TRACE_EVENTS = 50_000_000
#: Largest cap: 100 % of one pCPU for each of the most vCPUs a domain may have (512).
MAX_CAP = 100 * 512

Cost = Annotated[int, Field(ge=0, le=MAX_COST_NS)]
Mbit = Annotated[float, Field(ge=MIN_MBIT_S, le=MAX_MBIT_S, allow_inf_nan=False)]


def _union(models: tuple[type[BaseModel], ...], key: str) -> Any:
    if len(models) == 1:
        return Annotated[models[0], Field(discriminator=key)]
    return Annotated[Union[models], Field(discriminator=key)]


if TYPE_CHECKING:  # the registries decide the members at run time; what every member has:

    class SchedulerCfg(BaseModel):
        name: str

    class WorkloadCfg(BaseModel):
        kind: str

else:
    SchedulerCfg = _union(tuple(e.params for e in sched_registry.REGISTRY.values()), "name")
    WorkloadCfg = _union(tuple(p for p, _ in WORKLOADS.values()), "kind")

Mode = Literal["pv", "hvm-shadow", "hvm-hap"]
HvmMode = Literal["hvm-shadow", "hvm-hap"]


def _per_mode(pv: int, shadow: int, hap: int) -> dict[Mode, int]:
    return {"pv": pv, "hvm-shadow": shadow, "hvm-hap": hap}


def _per_hvm_mode(shadow: int, hap: int) -> dict[HvmMode, int]:
    return {"hvm-hap": hap, "hvm-shadow": shadow}


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def default_scheduler() -> Any:
    """Credit2, Xen's default since 4.12."""
    return sched_registry.get("credit2").params()


class RunCfg(_M):
    seed: int = Field(0, ge=0, lt=1 << 63, description="Root seed; every entity derives its own stream from it and its name.")
    duration_ms: float = Field(1000.0, ge=MIN_STEP_NS / MS, le=MAX_DURATION_MS, description="Simulated time to run, in ms (at most 1e9).")
    epoch_us: float = Field(
        1000.0, ge=1, le=1e6, description="Epoch length in us: cross-pCPU effects (wakes, tickles, steals) are delivered at epoch boundaries."
    )
    skip_quiet_epochs: bool = Field(True, description="Skip boundaries at which provably nothing can happen (results are identical).")
    trace_max_events: int = Field(2_000_000, ge=0, le=MAX_TRACE_EVENTS, description="Run intervals kept per pCPU for the Perfetto trace (the digest covers all).")
    control_period_ms: StepMs = Field(100.0, description="Period of the domain manager's control loop (policies, power accounting, evacuations), in ms (at least 1 ns); without one, hosts run uninterrupted between events.")
    debug_checks: bool = Field(False, description="Check the scheduler contract at every context switch (slower; for tests).")
    boundary_rounds: int = Field(
        16,
        ge=0,
        le=64,
        description="Micro-rounds per epoch boundary: what a delivery causes (a tickle, a steal) is itself delivered at the same instant, up to this many times; 0 delivers it with the next epoch (faster, less faithful).",
    )
    ray_processes_per_host: Union[Literal["auto"], Annotated[int, Field(ge=1, le=4096)]] = Field(
        "auto",
        description="Ray backend: how many processes step each host's pCPUs (groups of consecutive pCPUs; every pCPU stays an actor). auto: one per pCPU where the node has more cores than the pCPUs placed on it, else one per host; a number splits each host into that many groups of consecutive pCPUs (capped at its pCPUs). Results do not depend on it.",
    )
    @field_validator("ray_processes_per_host", mode="before")
    @classmethod
    def _auto_or_count(cls, v: Any) -> Any:
        if v == "auto" or (type(v) is int and 1 <= v <= 4096):
            return v
        raise ValueError(f"must be auto or a whole number of processes from 1 to 4096, not {v!r}")

    xentrace: bool = Field(
        False,
        description="Write Xen's binary trace (what xentrace records: runstate changes, context switches, wakes, scheduler and hypercall records, TSC at 4 GHz) as xentrace.bin in the run directory (one xentrace.HOST.bin per host when there are several); xenalyze reads it.",
    )


class HypercallCostsCfg(_M):
    entry_ns: int = Field(150, ge=1, le=MAX_COST_NS, description="Cost of entering and leaving Xen for any hypercall, in ns.")
    evtchn_send_ns: Cost = Field(300, description="EVTCHNOP_send, in ns.")
    sched_op_ns: Cost = Field(200, description="SCHEDOP_yield/block/poll, in ns.")
    set_timer_ns: Cost = Field(200, description="set_timer_op, in ns.")
    memop_extent_ns: int = Field(250, ge=1, le=MAX_COST_NS, description="One 4 KiB extent of memory_op (increase/decrease/populate), in ns.")
    mmu_update_ns: int = Field(180, ge=1, le=MAX_COST_NS, description="One validated PTE write of mmu_update (PV), in ns.")
    mmuext_ns: int = Field(400, ge=1, le=MAX_COST_NS, description="One mmuext_op request (PV), in ns.")


class PagingCostsCfg(_M):
    """Costs of memory virtualisation, per paging mode, in ns (see hosts/paging.py)."""

    pt_update_ns: dict[Mode, Cost] = Field(
        default_factory=lambda: _per_mode(450, 1450, 260),
        description="One guest page-table update: PV validated mmu_update, shadow trap+emulate, HAP plain write.",
    )
    page_fault_ns: dict[Mode, Cost] = Field(
        default_factory=lambda: _per_mode(900, 2700, 480), description="One guest page fault."
    )
    cr3_switch_ns: dict[Mode, Cost] = Field(
        default_factory=lambda: _per_mode(650, 2300, 420), description="One guest address-space switch."
    )
    walk_ref_ns: float = Field(1.2, gt=0, le=MAX_COST_NS, description="One page-walk memory reference, averaged (upper levels cached).")
    dram_ns: float = Field(85.0, gt=0, le=MAX_COST_NS, description="One random access missing the data caches.")
    tlb_entries: int = Field(1536, ge=1, le=1 << 30, description="Second-level TLB entries.")
    logdirty_fault_ns: dict[HvmMode, Cost] = Field(
        default_factory=lambda: _per_hvm_mode(2600, 1700),
        description="First write to a page per log-dirty round: EPT violation (HAP) or write-protect fault (shadow, and PV in shadow mode).",
    )
    shadow_rebuild_ns: float = Field(900.0, ge=0, le=MAX_COST_NS, description="Rebuilding one page's shadow entry after a CLEAN discarded all shadows.")


class PoolCfg(_M):
    name: str = Field(pattern=NAME_PATTERN, description="Pool name (Xen's Pool-0 holds dom0).")
    cpus: list[Annotated[int, Field(ge=0, le=1023)]] = Field(min_length=1, max_length=1024, description="pCPU ids of this host in the pool.")
    scheduler: SchedulerCfg = Field(default_factory=default_scheduler, description="The pool's scheduler and its parameters.")


class Dom0Cfg(_M):
    vcpus: int = Field(1, ge=1, le=512, description="vCPUs of Domain-0.")
    mem_mib: int = Field(256, ge=1, le=MAX_MIB, description="Memory of Domain-0, in MiB.")
    weight: int = Field(256, ge=1, le=65535, description="Scheduler weight of Domain-0.")
    cap: int = Field(0, ge=0, le=MAX_CAP, description="Cap of Domain-0 in % of one pCPU (0 = none).")
    pin: bool = Field(False, description="Pin dom0 vCPU i to pCPU i (dom0_vcpus_pin).")


class PlacementCfg(_M):
    """Where a host's pCPU actors go under Ray (they always stay together on one node)."""

    node: Literal["any", "spread"] = Field("any", description="any: wherever Ray has room; spread: one simulated host per Ray node where possible.")
    resources: dict[str, Annotated[float, Field(ge=0, le=1e9)]] = Field(default_factory=dict, description="Custom resources the node must offer for this host (ray start --resources), e.g. {zone_a: 1}.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels the node must carry (ray start --labels), e.g. {rack: r1}.")


class HostCfg(_M):
    name: str = Field(pattern=NAME_PATTERN, description="Host name, unique in the cluster.")
    pcpus: int = Field(ge=1, le=1024, description="Physical CPUs; each one is a Ray actor under the Ray backend.")
    mem_mib: int = Field(4096, ge=1, le=MAX_MIB, description="Host RAM in MiB.")
    full_memory: bool = Field(False, description="Keep the 4 KiB of every page (default: an 8-byte content tag per page).")
    scheduler: SchedulerCfg = Field(default_factory=default_scheduler, description="Scheduler of the host's single pool (when 'pools' is not given).")
    pools: Optional[list[PoolCfg]] = Field(None, description="cpupools: split the host's pCPUs, each pool with its own scheduler.")
    dom0: Dom0Cfg = Field(default_factory=Dom0Cfg, description="Domain-0 of this host.")
    hypercall_costs: HypercallCostsCfg = Field(default_factory=HypercallCostsCfg, description="Time spent in Xen per hypercall.")
    nic_mbit_s: Optional[Mbit] = Field(None, description="Capacity of the host's network interface, shared by all its transfers, in Mbit/s (default: no limit beyond the links).")
    placement: PlacementCfg = Field(default_factory=PlacementCfg, description="Ray placement of this host's pCPU actors (ignored by the inline backend).")
    paging_costs: PagingCostsCfg = Field(default_factory=PagingCostsCfg, description="Costs of PV / shadow / HAP memory virtualisation.")
    preempt_hypercalls: bool = Field(True, description="Xen's hypercall_preempt_check; false lets long hypercalls run to completion (a reference for experiments).")


Affinity = Union[list[int], list[list[int]]]


class DomainCfg(_M):
    name: str = Field(pattern=NAME_PATTERN, description="Domain name, unique in the cluster.")
    host: str = Field(description="Name of the host the domain starts on, or auto: the host the placement policy (policies.placement) picks when the config is loaded.")
    pool: Optional[str] = Field(None, description="cpupool of the host (default: the first).")
    vcpus: int = Field(1, ge=1, le=512, description="Number of vCPUs.")
    mem_mib: int = Field(256, ge=1, le=MAX_MIB, description="Guest memory in MiB.")
    max_mem_mib: Optional[int] = Field(None, ge=1, le=MAX_MIB, description="Upper bound for ballooning up, in MiB (default: mem_mib); it must fit on the host with the other domains.")
    weight: int = Field(256, ge=1, le=65535, description="Scheduler weight (Credit/Credit2), per vCPU.")
    cap: int = Field(0, ge=0, le=MAX_CAP, description="Cap in % of one pCPU for the whole domain (0 = none); at most 100 x vCPUs.")
    paging: Literal["pv", "hvm-shadow", "hvm-hap"] = Field("hvm-hap", description="Memory virtualisation mode.")
    hard_affinity: Optional[Affinity] = Field(None, description="pCPUs the vCPUs may run on: one list for all, or one list per vCPU.")
    soft_affinity: Optional[Affinity] = Field(None, description="pCPUs the vCPUs prefer: one list for all, or one list per vCPU.")
    workload: Optional[WorkloadCfg] = Field(None, description="The guest program of every vCPU (default: cpu).")
    vcpu_workloads: Optional[list[WorkloadCfg]] = Field(None, description="One guest program per vCPU (instead of 'workload').")
    start_paused: bool = Field(False, description="Create the domain paused (unpause with an event).")
    sched: Optional[dict[str, Any]] = Field(
        None, description="Per-vCPU scheduler parameters for all vCPUs, checked against the pool's scheduler (e.g. RTDS: period_us, budget_us, extratime)."
    )
    vcpu_sched: Optional[list[dict[str, Any]]] = Field(None, description="Per-vCPU scheduler parameters, one entry per vCPU (instead of 'sched').")
    xl: Optional[str] = Field(
        None,
        description="An xl domain config file (xl.cfg(5): name, memory, maxmem, vcpus, maxvcpus, cpus, cpus_soft, type, hap, cpu_weight, cap, pool), relative to this YAML file; fields given here override the file's.",
    )


class LinkCfg(_M):
    a: str = Field(description="One host.")
    b: str = Field(description="The other host.")
    bandwidth_mbit_s: Mbit = Field(description="Bandwidth in Mbit/s (decimal: 1000 = 1 Gbit/s), from 0.001 to 1e7.")
    latency_us: TimeUs = Field(100.0, description="One-way latency in us.")


class NetworkCfg(_M):
    default_bandwidth_mbit_s: Mbit = Field(1000.0, description="Bandwidth of host pairs without a 'links' entry, in Mbit/s, from 0.001 to 1e7.")
    default_latency_us: TimeUs = Field(100.0, description="Latency of host pairs without a 'links' entry, in us.")


class MigrationCfg(_M):
    resume_us: TimeUs = Field(0.0, description="Toolstack work between the destination having every record and unpausing the domain (counted in the downtime), in us.")
    max_downtime_ms: StepMs = Field(300.0, description="downtime-target: stop pre-copy when the remaining dirty set fits in this, in ms (QEMU's default 300).")
    max_rounds: int = Field(30, ge=1, le=10_000, description="downtime-target: stop after this many live rounds anyway.")
    rate_limit: bool = Field(False, description="xen-legacy: the rate limiting of older Xen (100 to 500 Mbit/s, the +50 rule).")


class MigrationOverrides(_M):
    """Per-event overrides of the run's ``migration`` defaults (None: keep the default)."""

    resume_us: Optional[TimeUs] = Field(None, description="Overrides migration.resume_us.")
    max_downtime_ms: Optional[StepMs] = Field(None, description="Overrides migration.max_downtime_ms.")
    max_rounds: Optional[int] = Field(None, ge=1, le=10_000, description="Overrides migration.max_rounds.")
    rate_limit: Optional[bool] = Field(None, description="Overrides migration.rate_limit.")

    def over(self, defaults: MigrationCfg) -> MigrationCfg:
        """The migration's own parameters: the defaults with this event's overrides."""
        return defaults.model_copy(update={k: v for k, v in self.model_dump().items() if v is not None and k in MigrationCfg.model_fields})


class MigrateAction(MigrationOverrides):
    domain: str = Field(description="Domain to migrate.")
    to: str = Field(description="Destination host.")
    policy: Literal["xen", "xen-legacy", "downtime-target"] = Field("xen", description="Pre-copy policy.")


class EvacuateAction(_M):
    host: str = Field(description="Host to empty: every domain on it is live-migrated elsewhere (power-aware best fit, within the policies' concurrency limits), and it takes no domain afterwards.")
    policy: Literal["xen", "xen-legacy", "downtime-target"] = Field("xen", description="Pre-copy policy of the migrations.")


class PoolMoveAction(_M):
    domain: str = Field(description="Domain to move.")
    pool: str = Field(description="Destination cpupool of the same host (xl cpupool-migrate).")


class FailHostAction(_M):
    host: str = Field(description="Host name.")


class LinkAction(_M):
    a: str = Field(description="One host of the link.")
    b: str = Field(description="The other host.")


class CutLinkAction(LinkAction):
    pass


class RestoreLinkAction(LinkAction):
    pass


class PinAction(_M):
    domain: str = Field(description="Domain name.")
    vcpu: int = Field(ge=0, le=511, description="vCPU index.")
    hard: list[int] = Field(max_length=1024, description="New hard affinity (pCPU ids).")
    soft: list[int] = Field(default_factory=list, max_length=1024, description="New soft affinity (pCPU ids).")


class SetAction(_M):
    domain: str = Field(description="Domain name.")
    weight: Optional[int] = Field(None, ge=1, le=65535, description="New weight.")
    cap: Optional[int] = Field(None, ge=0, le=MAX_CAP, description="New cap in % of one pCPU.")


class DomainAction(_M):
    domain: str = Field(description="Domain name.")


class PauseAction(DomainAction):
    pass


class UnpauseAction(DomainAction):
    pass


class DestroyAction(DomainAction):
    pass


#: what one timed event does: exactly one of these (the field of EventCfg that names it)
Action = Union[
    PinAction, SetAction, PauseAction, UnpauseAction, DestroyAction, MigrateAction, PoolMoveAction, FailHostAction, CutLinkAction, RestoreLinkAction, EvacuateAction
]


class EventCfg(_M):
    at_ms: TimeMs = Field(description="Simulated time of the event, in ms (within the run).")
    pin: Optional[PinAction] = Field(None, description="Change a vCPU's affinity (xl vcpu-pin).")
    set: Optional[SetAction] = Field(None, description="Change a domain's scheduler parameters (xl sched-credit -d).")
    pause: Optional[PauseAction] = Field(None, description="Pause a domain (xl pause).")
    unpause: Optional[UnpauseAction] = Field(None, description="Unpause a domain (xl unpause).")
    destroy: Optional[DestroyAction] = Field(None, description="Destroy a domain (xl destroy).")
    migrate: Optional[MigrateAction] = Field(None, description="Live-migrate a domain (xl migrate).")
    move_pool: Optional[PoolMoveAction] = Field(None, description="Move a domain to another cpupool of its host (xl cpupool-migrate).")
    fail_host: Optional[FailHostAction] = Field(None, description="The host crashes: its domains are lost, migrations to or from it abort.")
    cut_link: Optional[CutLinkAction] = Field(None, description="The link between two hosts goes down: transfers on it fail.")
    restore_link: Optional[RestoreLinkAction] = Field(None, description="The link comes back.")
    evacuate: Optional[EvacuateAction] = Field(None, description="Migrate every domain off a host (maintenance); it takes no domain afterwards.")

    def action(self) -> tuple[str, Action]:
        """(the field's name, its action); the schema makes sure there is exactly one."""
        for k in ACTIONS:
            act = getattr(self, k)
            if act is not None:
                return k, act
        raise ValueError("event without an action")


ACTIONS = ("pin", "set", "pause", "unpause", "destroy", "migrate", "move_pool", "fail_host", "cut_link", "restore_link", "evacuate")


class ClusterConfig(_M):
    run: RunCfg = Field(default_factory=RunCfg, description="Run-wide settings.")
    hosts: list[HostCfg] = Field(min_length=1, description="The physical hosts.")
    domains: list[DomainCfg] = Field(default_factory=list, description="Guest domains (each host also has a Domain-0).")
    events: list[EventCfg] = Field(default_factory=list, description="Timed toolstack actions.")
    network: NetworkCfg = Field(default_factory=NetworkCfg, description="Defaults for links between hosts.")
    links: list[LinkCfg] = Field(default_factory=list, description="Links between pairs of hosts (others get the network's defaults).")
    migration: MigrationCfg = Field(default_factory=MigrationCfg, description="Defaults for migrate events.")
    policies: Optional[PoliciesCfg] = Field(
        None, description="Placement (host: auto), consolidation and load balancing by live migration, run by the domain manager every run.control_period_ms."
    )
    power: Optional[PowerCfg] = Field(None, description="Host power model and energy accounting (summary.json power, power.csv), every run.control_period_ms.")

    def has_control_loop(self) -> bool:
        """The domain manager runs its control loop (cluster/control.py) every
        ``run.control_period_ms``: for policies, power or an evacuation."""
        return self.policies is not None or self.power is not None or any(e.evacuate is not None for e in self.events)

    @field_validator("events")
    @classmethod
    def _one_action(cls, events: list[EventCfg]) -> list[EventCfg]:
        for i, e in enumerate(events):
            n = sum(getattr(e, k) is not None for k in ACTIONS)
            if n != 1:
                raise ValueError(f"event {i} must have exactly one action of: {', '.join(ACTIONS)}")
        return events


