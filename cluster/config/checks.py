"""Cross-field rules of a config, which pydantic cannot see field by field: names that must
exist or be unique, pools that cover the host's pCPUs, affinities inside the host, per-domain
scheduler parameters against the pool's scheduler, memory (and every domain's maximum) that
must fit on its host, and what the run would cost (``cost``: events per simulated ms, the
host's RAM buffer)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

import hosts.sched as sched_registry
from hosts.clock import MS
from hosts.domain import mib_to_pages
from hosts.tracewl import TraceParams
from hosts.workload import MAX_SPAN_NS

from cluster.config.schema import ClusterConfig, DomainCfg, HostCfg, PinAction, PoolMoveAction, SetAction
from cluster.errors import ConfigError


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
            left = [c for c in range(h.pcpus) if c not in seen]
            if left:
                raise ConfigError(
                    file, f"hosts[{h.name}].pools", f"pCPU(s) {', '.join(map(str, left))} of {h.pcpus} are in no pool; every pCPU of the host must be in exactly one"
                )
            for p in h.pools:
                check_sched_steps(p.scheduler, f"hosts[{h.name}].pools[{p.name}].scheduler", file)
        else:
            check_sched_steps(h.scheduler, f"hosts[{h.name}].scheduler", file)
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
                _no_repeats(lst, f"{where}.{key}", file)
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
    doms = {d.name: d for d in cfg.domains}
    for i, e in enumerate(cfg.events):
        kind, act = e.action()
        where = f"events[{i}].{kind}"
        for fld in ("host", "a", "b", "to"):
            hn = getattr(act, fld, None)
            if hn is not None and hn not in hosts:
                raise ConfigError(file, f"{where}.{fld}", f"unknown host {hn!r}; hosts: {', '.join(host_names)}")
        dom_name = getattr(act, "domain", None)
        if dom_name is not None and dom_name not in doms:
            raise ConfigError(file, f"{where}.domain", f"unknown domain {dom_name!r}; domains: {', '.join(sorted(doms))}")
        if isinstance(act, PinAction):
            d = doms[act.domain]
            if act.vcpu >= d.vcpus:
                raise ConfigError(file, f"{where}.vcpu", f"domain {d.name} has vCPUs 0..{d.vcpus - 1}")
            h = hosts[d.host]
            for c in list(act.hard) + list(act.soft):
                if not 0 <= c < h.pcpus:
                    raise ConfigError(file, where, f"pCPU {c} does not exist on host {h.name}")
            _no_repeats(act.hard, f"{where}.hard", file)
            _no_repeats(act.soft, f"{where}.soft", file)
        elif isinstance(act, PoolMoveAction):
            d = doms[act.domain]
            h = hosts[d.host]
            pools = [p.name for p in h.pools] if h.pools else ["Pool-0"]
            if act.pool not in pools:
                raise ConfigError(file, f"{where}.pool", f"unknown pool {act.pool!r} on host {h.name}; pools: {', '.join(pools)}")
        elif isinstance(act, SetAction) and act.cap is not None:
            d = doms[act.domain]
            if act.cap > 100 * d.vcpus:
                raise ConfigError(file, f"{where}.cap", f"{act.cap} exceeds 100 x vCPUs ({100 * d.vcpus})")
        if e.at_ms > cfg.run.duration_ms:
            raise ConfigError(file, f"events[{i}].at_ms", f"{e.at_ms} is after the end of the run ({cfg.run.duration_ms} ms)")
    check_memory(cfg, file)
    check_experiments(cfg, file)
    from cluster.config.cost import check_cost

    check_cost(cfg, file)


def check_experiments(cfg: ClusterConfig, file: str) -> None:
    """Trace files read, policies and power sections that fit together and name known hosts."""
    hosts = [h.name for h in cfg.hosts]
    for d in cfg.domains:
        wls = [("workload", d.workload)] if d.workload is not None else []
        wls += [(f"vcpu_workloads[{i}]", w) for i, w in enumerate(d.vcpu_workloads or [])]
        for where, w in wls:
            if isinstance(w, TraceParams) and w.path is not None:
                raise ConfigError(
                    file,
                    f"domains[{d.name}].{where}.path",
                    "the trace file was not read: trace files are read when a config file is loaded (hvsim run / validate / batch); a document given directly must carry 'samples' or 'cpu_pct'",
                )
    pol = cfg.policies
    if pol is not None:
        c = pol.consolidation
        if c is not None:
            if c.lower >= c.upper:
                raise ConfigError(file, "policies.consolidation.lower", f"{c.lower:g} is not below upper ({c.upper:g}); a host is underloaded below lower and overloaded above upper")
            if c.min_history > c.history:
                raise ConfigError(file, "policies.consolidation.min_history", f"{c.min_history} exceeds history ({c.history}), the samples kept")
            if pol.load_balance is not None:
                raise ConfigError(file, "policies.load_balance", "consolidation packs hosts and load balancing spreads them: enable one of the two")
    if cfg.power is not None:
        for name in cfg.power.hosts:
            if name not in hosts:
                raise ConfigError(file, f"power.hosts.{name}", f"unknown host {name!r}; hosts: {', '.join(hosts)}")
    if len(cfg.hosts) < 2 and pol is not None and (pol.consolidation is not None or pol.load_balance is not None):
        raise ConfigError(file, "policies", "consolidation and load balancing move domains between hosts: the cluster needs at least two")


def check_sched_steps(sched: Any, where: str, file: str) -> None:
    """Scheduler times the simulation acts on must be whole ns of at least 1 (ARINC653's frames;
    the other schedulers' parameters are whole us or ms with lower bounds of their own)."""
    if sched.name != "arinc653" or sched.schedule is None:
        return
    for i, e in enumerate(sched.schedule):
        if int(round(e.runtime_ms * MS)) < 1:
            raise ConfigError(file, f"{where}.schedule[{i}].runtime_ms", f"{e.runtime_ms:g} ms is under 1 ns; simulated time counts whole ns")
        if e.runtime_ms * MS > MAX_SPAN_NS:
            raise ConfigError(file, f"{where}.schedule[{i}].runtime_ms", f"{e.runtime_ms:g} ms is longer than the longest run ({MAX_SPAN_NS / MS:g} ms)")
    if sched.major_frame_ms is not None and sched.major_frame_ms * MS > MAX_SPAN_NS:
        raise ConfigError(file, f"{where}.major_frame_ms", f"{sched.major_frame_ms:g} ms is longer than the longest run ({MAX_SPAN_NS / MS:g} ms)")


def pool_scheduler(h: HostCfg, pool: str | None) -> Any:
    if not h.pools:
        return h.scheduler
    p = next((p for p in h.pools if p.name == pool), h.pools[0])
    return p.scheduler


def check_domain_sched(d: DomainCfg, h: HostCfg, file: str) -> list[dict[str, Any]]:
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
    items = [d.sched] * d.vcpus if d.sched is not None else list(d.vcpu_sched or [])
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
            msg = msg[len("Value error, "):] if msg.startswith("Value error, ") else msg
            idx = "" if key == "sched" else f"[{i}]"
            raise ConfigError(file, f"{where}.{key}{idx}" + (f".{loc}" if loc else ""), msg) from None
    return out


def check_memory(cfg: ClusterConfig, file: str) -> None:
    """Every domain's memory fits on its host, and so does its maximum: a host keeps one p2m
    entry per page of each domain's ``max_mem_mib`` (hosts/memory.py), in a pool as large as
    its RAM."""
    used: dict[str, int] = {h.name: mib_to_pages(h.dom0.mem_mib) for h in cfg.hosts}
    reserved = dict(used)
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
        max_pages = mib_to_pages(d.max_mem_mib) if d.max_mem_mib is not None else pages
        if reserved[d.host] + max_pages > cap[d.host]:
            free = cap[d.host] - reserved[d.host]
            raise ConfigError(
                file,
                f"domains[{d.name}].max_mem_mib",
                f"{d.max_mem_mib} MiB does not fit on host {d.host} ({h_mib(cfg, d.host)} MiB): {free * 4096 >> 20} MiB left after the maxima of Domain-0 and the domains before it",
            )
        reserved[d.host] += max_pages


def h_mib(cfg: ClusterConfig, host: str) -> int:
    return next(h.mem_mib for h in cfg.hosts if h.name == host)


def _unique(names: list[str], where: str, file: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ConfigError(file, f"{where}[{n}].name", f"duplicate name {n!r}")
        seen.add(n)


def _no_repeats(cpus: list[int], where: str, file: str) -> None:
    if len(set(cpus)) != len(cpus):
        dup = next(c for i, c in enumerate(cpus) if c in cpus[:i])
        raise ConfigError(file, where, f"pCPU {dup} is listed twice; list each pCPU once")


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
