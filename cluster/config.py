"""The cluster config: typed pydantic models, YAML loading, and the one builder.

Every field is typed, described and carries its unit in its name; unknown keys are errors.
A scheduler's parameters are the model at the top of its module (``hosts/sched/*.py``) and a
workload's at the top of ``hosts/workload.py``; this module gathers them into discriminated
unions, so an unknown scheduler or workload name is an error that lists the known ones.

``load_config`` turns a file (plus ``--set`` overrides) into a validated :class:`ClusterConfig`
or raises :class:`ConfigError` naming the file, the field and what is allowed. ``build_plan``
turns a config into the runtime objects (host specs, domain table entries with stable uids,
timed events): the single place where specs become runtime objects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import hosts.sched as sched_registry
from hosts.clock import MS, US
from hosts.domain import DomainInfo, mib_to_pages
from hosts.host import HostSpec, PoolSpec
from hosts.workload import WORKLOADS

from cluster.paths import PathError, parse_assignment, set_path


class ConfigError(ValueError):
    """Bad input: names the file, the field and what is allowed. The CLI exits 2 on it."""

    def __init__(self, file: str | None, field: str | None, msg: str):
        self.file = file
        self.field = field
        self.msg = msg
        where = file or "<config>"
        super().__init__(f"{where}: {field}: {msg}" if field else f"{where}: {msg}")


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _union(models: tuple, key: str):
    if len(models) == 1:
        return Annotated[models[0], Field(discriminator=key)]
    return Annotated[Union[models], Field(discriminator=key)]  # type: ignore[valid-type]


SchedulerCfg = _union(tuple(e.params for e in sched_registry.REGISTRY.values()), "name")
WorkloadCfg = _union(tuple(p for p, _ in WORKLOADS.values()), "kind")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def default_scheduler() -> Any:
    """Credit2, Xen's default since 4.12."""
    return sched_registry.get("credit2").params()


class RunCfg(_M):
    seed: int = Field(0, ge=0, lt=1 << 63, description="Root seed; every entity derives its own stream from it and its name.")
    duration_ms: float = Field(1000.0, gt=0, le=1e9, description="Simulated time to run, in ms.")
    epoch_us: float = Field(
        1000.0, ge=1, le=1e6, description="Epoch length in us: cross-pCPU effects (wakes, tickles, steals) are delivered at epoch boundaries."
    )
    skip_quiet_epochs: bool = Field(True, description="Skip boundaries at which provably nothing can happen (results are identical).")
    trace_max_events: int = Field(2_000_000, ge=0, description="Run intervals kept per pCPU for the Perfetto trace (the digest covers all).")
    control_period_ms: float = Field(100.0, gt=0, description="Longest simulated stretch hosts run between domain-manager steps, in ms.")
    debug_checks: bool = Field(False, description="Check the scheduler contract at every context switch (slower; for tests).")
    boundary_rounds: int = Field(
        16,
        ge=0,
        le=64,
        description="Micro-rounds per epoch boundary: what a delivery causes (a tickle, a steal) is itself delivered at the same instant, up to this many times; 0 delivers it with the next epoch (faster, less faithful).",
    )


class HypercallCostsCfg(_M):
    entry_ns: int = Field(150, ge=1, description="Cost of entering and leaving Xen for any hypercall, in ns.")
    evtchn_send_ns: int = Field(300, ge=0, description="EVTCHNOP_send, in ns.")
    sched_op_ns: int = Field(200, ge=0, description="SCHEDOP_yield/block/poll, in ns.")
    set_timer_ns: int = Field(200, ge=0, description="set_timer_op, in ns.")
    memop_extent_ns: int = Field(250, ge=1, description="One 4 KiB extent of memory_op (increase/decrease/populate), in ns.")
    mmu_update_ns: int = Field(180, ge=1, description="One validated PTE write of mmu_update (PV), in ns.")
    mmuext_ns: int = Field(400, ge=1, description="One mmuext_op request (PV), in ns.")


class PagingCostsCfg(_M):
    """Costs of memory virtualisation, per paging mode, in ns (see hosts/paging.py)."""

    pt_update_ns: dict[Literal["pv", "hvm-shadow", "hvm-hap"], int] = Field(
        default_factory=lambda: {"pv": 450, "hvm-shadow": 1450, "hvm-hap": 260},
        description="One guest page-table update: PV validated mmu_update, shadow trap+emulate, HAP plain write.",
    )
    page_fault_ns: dict[Literal["pv", "hvm-shadow", "hvm-hap"], int] = Field(
        default_factory=lambda: {"pv": 900, "hvm-shadow": 2700, "hvm-hap": 480}, description="One guest page fault."
    )
    cr3_switch_ns: dict[Literal["pv", "hvm-shadow", "hvm-hap"], int] = Field(
        default_factory=lambda: {"pv": 650, "hvm-shadow": 2300, "hvm-hap": 420}, description="One guest address-space switch."
    )
    walk_ref_ns: float = Field(1.2, gt=0, description="One page-walk memory reference, averaged (upper levels cached).")
    dram_ns: float = Field(85.0, gt=0, description="One random access missing the data caches.")
    tlb_entries: int = Field(1536, ge=1, description="Second-level TLB entries.")
    logdirty_fault_ns: dict[Literal["hvm-shadow", "hvm-hap"], int] = Field(
        default_factory=lambda: {"hvm-hap": 1700, "hvm-shadow": 2600},
        description="First write to a page per log-dirty round: EPT violation (HAP) or write-protect fault (shadow, and PV in shadow mode).",
    )
    shadow_rebuild_ns: float = Field(900.0, ge=0, description="Rebuilding one page's shadow entry after a CLEAN discarded all shadows.")


class PoolCfg(_M):
    name: str = Field(pattern=NAME_PATTERN, description="Pool name (Xen's Pool-0 holds dom0).")
    cpus: list[int] = Field(min_length=1, description="pCPU ids of this host in the pool.")
    scheduler: SchedulerCfg = Field(default_factory=default_scheduler, description="The pool's scheduler and its parameters.")  # type: ignore[valid-type]


class Dom0Cfg(_M):
    vcpus: int = Field(1, ge=1, le=512, description="vCPUs of Domain-0.")
    mem_mib: int = Field(256, ge=1, description="Memory of Domain-0, in MiB.")
    weight: int = Field(256, ge=1, le=65535, description="Scheduler weight of Domain-0.")
    cap: int = Field(0, ge=0, description="Cap of Domain-0 in % of one pCPU (0 = none).")
    pin: bool = Field(False, description="Pin dom0 vCPU i to pCPU i (dom0_vcpus_pin).")


class PlacementCfg(_M):
    """Where a host's pCPU actors go under Ray (they always stay together on one node)."""

    node: Literal["any", "spread"] = Field("any", description="any: wherever Ray has room; spread: one simulated host per Ray node where possible.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom resources the node must offer for this host (ray start --resources), e.g. {zone_a: 1}.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels the node must carry (ray start --labels), e.g. {rack: r1}.")


class HostCfg(_M):
    name: str = Field(pattern=NAME_PATTERN, description="Host name, unique in the cluster.")
    pcpus: int = Field(ge=1, le=1024, description="Physical CPUs; each one is a Ray actor under the Ray backend.")
    mem_mib: int = Field(4096, ge=1, le=1 << 24, description="Host RAM in MiB.")
    full_memory: bool = Field(False, description="Keep the 4 KiB of every page (default: an 8-byte content tag per page).")
    scheduler: SchedulerCfg = Field(default_factory=default_scheduler, description="Scheduler of the host's single pool (when 'pools' is not given).")  # type: ignore[valid-type]
    pools: Optional[list[PoolCfg]] = Field(None, description="cpupools: split the host's pCPUs, each pool with its own scheduler.")
    dom0: Dom0Cfg = Field(default_factory=Dom0Cfg, description="Domain-0 of this host.")
    hypercall_costs: HypercallCostsCfg = Field(default_factory=HypercallCostsCfg, description="Time spent in Xen per hypercall.")
    nic_mbit_s: Optional[float] = Field(None, gt=0, description="Capacity of the host's network interface, shared by all its transfers, in Mbit/s (default: no limit beyond the links).")
    placement: PlacementCfg = Field(default_factory=PlacementCfg, description="Ray placement of this host's pCPU actors (ignored by the inline backend).")
    paging_costs: PagingCostsCfg = Field(default_factory=PagingCostsCfg, description="Costs of PV / shadow / HAP memory virtualisation.")
    preempt_hypercalls: bool = Field(True, description="Xen's hypercall_preempt_check; false lets long hypercalls run to completion (a reference for experiments).")


Affinity = Union[list[int], list[list[int]]]


class DomainCfg(_M):
    name: str = Field(pattern=NAME_PATTERN, description="Domain name, unique in the cluster.")
    host: str = Field(description="Name of the host the domain starts on.")
    pool: Optional[str] = Field(None, description="cpupool of the host (default: the first).")
    vcpus: int = Field(1, ge=1, le=512, description="Number of vCPUs.")
    mem_mib: int = Field(256, ge=1, description="Guest memory in MiB.")
    max_mem_mib: Optional[int] = Field(None, ge=1, description="Upper bound for ballooning up, in MiB (default: mem_mib).")
    weight: int = Field(256, ge=1, le=65535, description="Scheduler weight (Credit/Credit2), per vCPU.")
    cap: int = Field(0, ge=0, description="Cap in % of one pCPU for the whole domain (0 = none); at most 100 x vCPUs.")
    paging: Literal["pv", "hvm-shadow", "hvm-hap"] = Field("hvm-hap", description="Memory virtualisation mode.")
    hard_affinity: Optional[Affinity] = Field(None, description="pCPUs the vCPUs may run on: one list for all, or one list per vCPU.")
    soft_affinity: Optional[Affinity] = Field(None, description="pCPUs the vCPUs prefer: one list for all, or one list per vCPU.")
    workload: Optional[WorkloadCfg] = Field(None, description="The guest program of every vCPU (default: cpu).")  # type: ignore[valid-type]
    vcpu_workloads: Optional[list[WorkloadCfg]] = Field(None, description="One guest program per vCPU (instead of 'workload').")  # type: ignore[valid-type]
    start_paused: bool = Field(False, description="Create the domain paused (unpause with an event).")
    sched: Optional[dict[str, Any]] = Field(
        None, description="Per-vCPU scheduler parameters for all vCPUs, checked against the pool's scheduler (e.g. RTDS: period_us, budget_us, extratime)."
    )
    vcpu_sched: Optional[list[dict[str, Any]]] = Field(None, description="Per-vCPU scheduler parameters, one entry per vCPU (instead of 'sched').")


class LinkCfg(_M):
    a: str = Field(description="One host.")
    b: str = Field(description="The other host.")
    bandwidth_mbit_s: float = Field(gt=0, description="Bandwidth in Mbit/s (decimal: 1000 = 1 Gbit/s).")
    latency_us: float = Field(100.0, ge=0, description="One-way latency in us.")


class NetworkCfg(_M):
    default_bandwidth_mbit_s: float = Field(1000.0, gt=0, description="Bandwidth of host pairs without a 'links' entry, in Mbit/s.")
    default_latency_us: float = Field(100.0, ge=0, description="Latency of host pairs without a 'links' entry, in us.")


class MigrationCfg(_M):
    resume_us: float = Field(0.0, ge=0, description="Toolstack work between the destination having every record and unpausing the domain (counted in the downtime), in us.")
    max_downtime_ms: float = Field(300.0, gt=0, description="downtime-target: stop pre-copy when the remaining dirty set fits in this, in ms (QEMU's default 300).")
    max_rounds: int = Field(30, ge=1, description="downtime-target: stop after this many live rounds anyway.")
    rate_limit: bool = Field(False, description="xen-legacy: the rate limiting of older Xen (100 to 500 Mbit/s, the +50 rule).")


class MigrateAction(_M):
    domain: str = Field(description="Domain to migrate.")
    to: str = Field(description="Destination host.")
    policy: Literal["xen", "xen-legacy", "downtime-target"] = Field("xen", description="Pre-copy policy.")
    resume_us: Optional[float] = Field(None, ge=0, description="Overrides migration.resume_us.")
    max_downtime_ms: Optional[float] = Field(None, gt=0, description="Overrides migration.max_downtime_ms.")
    max_rounds: Optional[int] = Field(None, ge=1, description="Overrides migration.max_rounds.")
    rate_limit: Optional[bool] = Field(None, description="Overrides migration.rate_limit.")


class PoolMoveAction(_M):
    domain: str = Field(description="Domain to move.")
    pool: str = Field(description="Destination cpupool of the same host (xl cpupool-migrate).")


class HostAction(_M):
    host: str = Field(description="Host name.")


class LinkAction(_M):
    a: str = Field(description="One host of the link.")
    b: str = Field(description="The other host.")


class PinAction(_M):
    domain: str = Field(description="Domain name.")
    vcpu: int = Field(ge=0, description="vCPU index.")
    hard: list[int] = Field(description="New hard affinity (pCPU ids).")
    soft: list[int] = Field(default_factory=list, description="New soft affinity (pCPU ids).")


class SetAction(_M):
    domain: str = Field(description="Domain name.")
    weight: Optional[int] = Field(None, ge=1, le=65535, description="New weight.")
    cap: Optional[int] = Field(None, ge=0, description="New cap in % of one pCPU.")


class DomainAction(_M):
    domain: str = Field(description="Domain name.")


class EventCfg(_M):
    at_ms: float = Field(ge=0, description="Simulated time of the event, in ms.")
    pin: Optional[PinAction] = Field(None, description="Change a vCPU's affinity (xl vcpu-pin).")
    set: Optional[SetAction] = Field(None, description="Change a domain's scheduler parameters (xl sched-credit -d).")
    pause: Optional[DomainAction] = Field(None, description="Pause a domain (xl pause).")
    unpause: Optional[DomainAction] = Field(None, description="Unpause a domain (xl unpause).")
    destroy: Optional[DomainAction] = Field(None, description="Destroy a domain (xl destroy).")
    migrate: Optional[MigrateAction] = Field(None, description="Live-migrate a domain (xl migrate).")
    move_pool: Optional[PoolMoveAction] = Field(None, description="Move a domain to another cpupool of its host (xl cpupool-migrate).")
    fail_host: Optional[HostAction] = Field(None, description="The host crashes: its domains are lost, migrations to or from it abort.")
    cut_link: Optional[LinkAction] = Field(None, description="The link between two hosts goes down: transfers on it fail.")
    restore_link: Optional[LinkAction] = Field(None, description="The link comes back.")

    def action(self) -> tuple[str, BaseModel]:
        acts = [(k, getattr(self, k)) for k in ACTIONS if getattr(self, k) is not None]
        return acts[0]


ACTIONS = ("pin", "set", "pause", "unpause", "destroy", "migrate", "move_pool", "fail_host", "cut_link", "restore_link")


class ClusterConfig(_M):
    run: RunCfg = Field(default_factory=RunCfg, description="Run-wide settings.")
    hosts: list[HostCfg] = Field(min_length=1, description="The physical hosts.")
    domains: list[DomainCfg] = Field(default_factory=list, description="Guest domains (each host also has a Domain-0).")
    events: list[EventCfg] = Field(default_factory=list, description="Timed toolstack actions.")
    network: NetworkCfg = Field(default_factory=NetworkCfg, description="Defaults for links between hosts.")
    links: list[LinkCfg] = Field(default_factory=list, description="Links between pairs of hosts (others get the network's defaults).")
    migration: MigrationCfg = Field(default_factory=MigrationCfg, description="Defaults for migrate events.")

    @field_validator("events")
    @classmethod
    def _one_action(cls, events: list[EventCfg]) -> list[EventCfg]:
        for i, e in enumerate(events):
            n = sum(getattr(e, k) is not None for k in ACTIONS)
            if n != 1:
                raise ValueError(f"event {i} must have exactly one action of: {', '.join(ACTIONS)}")
        return events


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


def _loc_str(loc: tuple, doc: Any) -> str:
    """A pydantic location as a readable path, using element names where they exist."""
    parts: list[str] = []
    node = doc
    for step in loc:
        if isinstance(step, int):
            name = None
            if isinstance(node, list) and 0 <= step < len(node) and isinstance(node[step], dict):
                name = node[step].get("name")
            parts.append(f"[{name}]" if name else f"[{step}]")
            node = node[step] if isinstance(node, list) and 0 <= step < len(node) else None
        else:
            if isinstance(node, dict):
                node = node.get(step)
            else:
                node = None
            parts.append(f".{step}" if parts else str(step))
    return "".join(parts)


def _clean_loc(loc: tuple) -> tuple:
    # pydantic adds union/discriminator tags ("credit", "function-after[...]") into locations
    out = []
    for step in loc:
        if isinstance(step, str) and (step.startswith("function-") or step in _TAGS or "[" in step):
            continue
        out.append(step)
    return tuple(out)


_TAGS = set(sched_registry.REGISTRY) | set(WORKLOADS) | {"list[int]", "list[list[int]]"}


def format_validation_error(exc: ValidationError, doc: Any) -> tuple[str, str]:
    errs = exc.errors()
    e = errs[0]
    loc = _clean_loc(tuple(e["loc"]))
    field_name = _loc_str(loc, doc) or "<top>"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r}" + _allowed_keys_hint(loc, doc)
    elif e["type"] == "missing":
        msg = "required field is missing"
    elif e["type"] == "union_tag_invalid":
        ctx = e.get("ctx", {})
        what = {"name": "scheduler", "kind": "workload kind"}.get(str(ctx.get("discriminator", "")).strip("'"), "value")
        msg = f"unknown {what} {ctx.get('tag')!r}; known: {ctx.get('expected_tags')}"
        if ctx.get("tag") == "None":
            msg += ' (YAML reads a bare null as "no value": write "null" in quotes)'
    if len(errs) > 1:
        msg += f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})"
    return field_name, msg


def _allowed_keys_hint(loc: tuple, doc: Any = None) -> str:
    model: Any = ClusterConfig
    node = doc
    for step in loc[:-1]:
        node = node[step] if isinstance(node, (dict, list)) and _has(node, step) else None
        if isinstance(step, int):
            continue
        f = getattr(model, "model_fields", {}).get(step)
        if f is None:
            return ""
        model = _model_of(f.annotation, node)
        if model is None:
            return ""
    fields = getattr(model, "model_fields", None)
    return f"; allowed keys: {', '.join(fields)}" if fields else ""


def _has(node: Any, step: Any) -> bool:
    if isinstance(node, dict):
        return step in node
    return isinstance(step, int) and 0 <= step < len(node)


def _model_of(ann: Any, node: Any = None):
    """The model an annotation designates; for a discriminated union, the member the
    document's element selects (by its "name" or "kind")."""
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    members = [m for m in (_model_of(a) for a in typing.get_args(ann)) if m is not None]
    if isinstance(node, list) and node:
        node = node[0]
    if isinstance(node, dict):
        for key in ("name", "kind"):
            tag = node.get(key)
            for m in members:
                f = m.model_fields.get(key)
                if f is not None and typing.get_args(f.annotation) == (tag,):
                    return m
    return members[0] if members else None


def load_doc(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(str(path), None, "file not found")
    if p.is_dir():
        raise ConfigError(str(path), None, "is a directory, expected a YAML config file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), None, f"cannot read ({exc.__class__.__name__}: {exc})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), where, f"not valid YAML: {problem}") from None
    if doc is None:
        raise ConfigError(str(path), None, "empty file; a config needs at least 'hosts'")
    if not isinstance(doc, dict):
        raise ConfigError(str(path), None, f"the top level must be a mapping, found {type(doc).__name__}")
    return doc


def apply_overrides(doc: dict, overrides: list[str], file: str) -> dict:
    for text in overrides:
        try:
            path, value = parse_assignment(text)
            doc = set_path(doc, path, value)
        except PathError as exc:
            raise ConfigError(file, f"--set {exc.path}", exc.msg) from None
    return doc


def validate_doc(doc: dict, file: str = "<config>") -> ClusterConfig:
    try:
        cfg = ClusterConfig.model_validate(doc)
    except ValidationError as exc:
        fld, msg = format_validation_error(exc, doc)
        raise ConfigError(file, fld, msg) from None
    check_config(cfg, file)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, seed: int | None = None) -> tuple[ClusterConfig, dict]:
    """Read, override, validate. Returns the config and the resolved document."""
    doc = load_doc(path)
    doc = apply_overrides(doc, overrides or [], str(path))
    if seed is not None:
        doc = set_path(doc, "run.seed", seed) if "run" in doc else {**doc, "run": {"seed": seed}}
    cfg = validate_doc(doc, str(path))
    return cfg, resolved_doc(cfg)


def resolved_doc(cfg: ClusterConfig) -> dict:
    return cfg.model_dump(mode="json", exclude_none=True)


def config_digest(cfg: ClusterConfig) -> str:
    return hashlib.sha256(json.dumps(resolved_doc(cfg), sort_keys=True).encode()).hexdigest()[:16]


def check_config(cfg: ClusterConfig, file: str) -> None:
    """Cross-field rules pydantic cannot see field by field."""
    host_names = [h.name for h in cfg.hosts]
    _unique(host_names, "hosts", file)
    _unique([d.name for d in cfg.domains], "domains", file)
    hosts = {h.name: h for h in cfg.hosts}
    for h in cfg.hosts:
        if h.pools:
            seen: dict[int, str] = {}
            _unique([p.name for p in h.pools], f"hosts[{h.name}].pools", file)
            for p in h.pools:
                for c in p.cpus:
                    if not 0 <= c < h.pcpus:
                        raise ConfigError(file, f"hosts[{h.name}].pools[{p.name}].cpus", f"pCPU {c} does not exist; this host has pCPUs 0..{h.pcpus - 1}")
                    if c in seen:
                        raise ConfigError(file, f"hosts[{h.name}].pools[{p.name}].cpus", f"pCPU {c} is already in pool {seen[c]!r}; a pCPU is in at most one pool")
                    seen[c] = p.name
        dom0_pages = mib_to_pages(h.dom0.mem_mib)
        if dom0_pages > mib_to_pages(h.mem_mib):
            raise ConfigError(file, f"hosts[{h.name}].dom0.mem_mib", f"{h.dom0.mem_mib} MiB exceeds the host's {h.mem_mib} MiB")
        if h.dom0.cap > 100 * h.dom0.vcpus:
            raise ConfigError(file, f"hosts[{h.name}].dom0.cap", f"{h.dom0.cap} exceeds 100 x vCPUs ({100 * h.dom0.vcpus})")
    for d in cfg.domains:
        where = f"domains[{d.name}]"
        if d.host not in hosts:
            raise ConfigError(file, f"{where}.host", f"unknown host {d.host!r}; hosts: {', '.join(host_names)}")
        h = hosts[d.host]
        if d.cap > 100 * d.vcpus:
            raise ConfigError(file, f"{where}.cap", f"{d.cap} exceeds 100 x vCPUs ({100 * d.vcpus}); a cap is in % of one pCPU for the whole domain")
        if d.max_mem_mib is not None and d.max_mem_mib < d.mem_mib:
            raise ConfigError(file, f"{where}.max_mem_mib", f"{d.max_mem_mib} is below mem_mib ({d.mem_mib})")
        if d.workload is not None and d.vcpu_workloads is not None:
            raise ConfigError(file, f"{where}.vcpu_workloads", "give either 'workload' (all vCPUs) or 'vcpu_workloads' (one per vCPU), not both")
        if d.vcpu_workloads is not None and len(d.vcpu_workloads) != d.vcpus:
            raise ConfigError(file, f"{where}.vcpu_workloads", f"has {len(d.vcpu_workloads)} entries; expected one per vCPU ({d.vcpus})")
        pools = [p.name for p in h.pools] if h.pools else ["Pool-0"]
        if d.pool is not None and d.pool not in pools:
            raise ConfigError(file, f"{where}.pool", f"unknown pool {d.pool!r} on host {h.name}; pools: {', '.join(pools)}")
        pool_cpus = _pool_cpus(h, d.pool)
        for key in ("hard_affinity", "soft_affinity"):
            aff = getattr(d, key)
            if aff is None:
                continue
            lists = _affinity_lists(aff, d.vcpus)
            if lists is None:
                raise ConfigError(file, f"{where}.{key}", f"give one list of pCPUs, or one list per vCPU ({d.vcpus} lists)")
            for lst in lists:
                for c in lst:
                    if not 0 <= c < h.pcpus:
                        raise ConfigError(file, f"{where}.{key}", f"pCPU {c} does not exist on host {h.name} (pCPUs 0..{h.pcpus - 1})")
                if key == "hard_affinity" and lst and not set(lst) & set(pool_cpus):
                    raise ConfigError(file, f"{where}.{key}", f"no pCPU of {lst} is in the domain's pool ({pool_cpus})")
    for i, ln in enumerate(cfg.links):
        for end in (ln.a, ln.b):
            if end not in hosts:
                raise ConfigError(file, f"links[{i}]", f"unknown host {end!r}; hosts: {', '.join(host_names)}")
        if ln.a == ln.b:
            raise ConfigError(file, f"links[{i}]", "a link joins two different hosts")
    for d in cfg.domains:
        check_domain_sched(d, hosts[d.host], file)
    names = {d.name for d in cfg.domains}
    for i, e in enumerate(cfg.events):
        kind, act = e.action()
        for fld in ("host", "a", "b", "to"):
            h = getattr(act, fld, None)
            if h is not None and h not in hosts:
                raise ConfigError(file, f"events[{i}].{kind}.{fld}", f"unknown host {h!r}; hosts: {', '.join(host_names)}")
        dom = getattr(act, "domain", None)
        if dom is not None and dom not in names:
            raise ConfigError(file, f"events[{i}].{kind}.domain", f"unknown domain {dom!r}; domains: {', '.join(sorted(names))}")
        if kind == "pin":
            d = next(x for x in cfg.domains if x.name == dom)
            if act.vcpu >= d.vcpus:
                raise ConfigError(file, f"events[{i}].pin.vcpu", f"domain {dom} has vCPUs 0..{d.vcpus - 1}")
            h = hosts[d.host]
            for c in list(act.hard) + list(act.soft):
                if not 0 <= c < h.pcpus:
                    raise ConfigError(file, f"events[{i}].pin", f"pCPU {c} does not exist on host {h.name}")
        if kind == "move_pool":
            d = next(x for x in cfg.domains if x.name == dom)
            h = hosts[d.host]
            pools = [p.name for p in h.pools] if h.pools else ["Pool-0"]
            if act.pool not in pools:
                raise ConfigError(file, f"events[{i}].move_pool.pool", f"unknown pool {act.pool!r} on host {h.name}; pools: {', '.join(pools)}")
        if kind == "set" and act.cap is not None:
            d = next(x for x in cfg.domains if x.name == dom)
            if act.cap > 100 * d.vcpus:
                raise ConfigError(file, f"events[{i}].set.cap", f"{act.cap} exceeds 100 x vCPUs ({100 * d.vcpus})")
        if e.at_ms > cfg.run.duration_ms:
            raise ConfigError(file, f"events[{i}].at_ms", f"{e.at_ms} is after the end of the run ({cfg.run.duration_ms} ms)")
    check_memory(cfg, file)


def pool_scheduler(h: HostCfg, pool: str | None) -> Any:
    if not h.pools:
        return h.scheduler
    p = next((p for p in h.pools if p.name == pool), h.pools[0])
    return p.scheduler


def check_domain_sched(d: DomainCfg, h: HostCfg, file: str) -> list[dict]:
    """Validate ``sched``/``vcpu_sched`` against the domain's pool scheduler; one dict per vCPU."""
    where = f"domains[{d.name}]"
    if d.sched is not None and d.vcpu_sched is not None:
        raise ConfigError(file, f"{where}.vcpu_sched", "give either 'sched' (all vCPUs) or 'vcpu_sched' (one per vCPU), not both")
    if d.sched is None and d.vcpu_sched is None:
        return []
    sched = pool_scheduler(h, d.pool).name
    model = sched_registry.get(sched).domain_params
    if model is None:
        raise ConfigError(file, f"{where}.sched", f"scheduler {sched!r} has no per-domain parameters")
    items = [d.sched] * d.vcpus if d.sched is not None else list(d.vcpu_sched)
    key = "sched" if d.sched is not None else "vcpu_sched"
    if len(items) != d.vcpus:
        raise ConfigError(file, f"{where}.vcpu_sched", f"has {len(items)} entries; expected one per vCPU ({d.vcpus})")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(model.model_validate(item).model_dump())
        except ValidationError as exc:
            e = exc.errors()[0]
            loc = ".".join(str(x) for x in e["loc"])
            msg = e["msg"] if e["type"] != "extra_forbidden" else f"unknown key {e['loc'][-1]!r}; allowed keys: {', '.join(model.model_fields)}"
            idx = "" if key == "sched" else f"[{i}]"
            raise ConfigError(file, f"{where}.{key}{idx}.{loc}", msg) from None
    return out


def check_memory(cfg: ClusterConfig, file: str) -> None:
    used: dict[str, int] = {h.name: mib_to_pages(h.dom0.mem_mib) for h in cfg.hosts}
    cap = {h.name: mib_to_pages(h.mem_mib) for h in cfg.hosts}
    for d in cfg.domains:
        pages = mib_to_pages(d.mem_mib)
        if used[d.host] + pages > cap[d.host]:
            free = cap[d.host] - used[d.host]
            raise ConfigError(
                file,
                f"domains[{d.name}].mem_mib",
                f"{d.mem_mib} MiB does not fit on host {d.host}: {free * 4096 >> 20} MiB free after Domain-0 and the domains before it",
            )
        used[d.host] += pages


def _unique(names: list[str], where: str, file: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ConfigError(file, f"{where}[{n}].name", f"duplicate name {n!r}")
        seen.add(n)


def _affinity_lists(aff: Any, nvcpus: int) -> list[list[int]] | None:
    if not aff:
        return [[] for _ in range(nvcpus)]
    if all(isinstance(x, int) for x in aff):
        return [list(aff) for _ in range(nvcpus)]
    if all(isinstance(x, list) for x in aff) and len(aff) == nvcpus:
        return [list(x) for x in aff]
    return None


def _pool_cpus(h: HostCfg, pool: str | None) -> list[int]:
    if not h.pools:
        return list(range(h.pcpus))
    p = next((p for p in h.pools if p.name == pool), h.pools[0])
    return list(p.cpus)


# ---------------------------------------------------------------------------------------------
# the builder
# ---------------------------------------------------------------------------------------------


@dataclass
class TimedEvent:
    at_ns: int
    index: int
    kind: str
    args: dict


@dataclass
class Plan:
    """Everything a backend needs, as plain runtime objects."""

    seed: int
    duration_ns: int
    control_period_ns: int
    hosts: dict[str, HostSpec]
    host_cfgs: dict[str, dict]
    domains: list[DomainInfo]  # dom0s first, then guests, uids 1..n
    dom_host: dict[int, str]
    events: list[TimedEvent] = field(default_factory=list)
    links: list[dict] = field(default_factory=list)
    net_default_mbit_s: float = 1000.0
    net_default_latency_us: float = 100.0
    nics: dict[str, float] = field(default_factory=dict)
    migration_defaults: dict = field(default_factory=dict)


def host_spec(h: HostCfg | dict, run: RunCfg | dict) -> HostSpec:
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
                hard_affinity=_affinity_lists(d.hard_affinity, d.vcpus) if d.hard_affinity else [],
                soft_affinity=_affinity_lists(d.soft_affinity, d.vcpus) if d.soft_affinity else [],
                vcpu_sched=vcpu_sched,
                paused=1 if d.start_paused else 0,
            )
        )
        dom_host[uid] = d.host
    events = []
    for i, e in enumerate(cfg.events):
        kind, act = e.action()
        events.append(TimedEvent(int(round(e.at_ms * MS)), i, kind, act.model_dump()))
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
        migration_defaults=cfg.migration.model_dump(),
    )


def json_schema() -> dict:
    return ClusterConfig.model_json_schema()
