"""From per-pCPU reports to the run's figures: ``summary.json`` and tidy tables.

Each pCPU reports its busy/idle time, the digest of its switches, its run intervals, the
wake-to-run latencies it observed (per vCPU) and the runstate totals of the vCPUs it holds
at the end. A vCPU is held by exactly one pCPU at the end (in-flight moves are delivered
before the books close), so per-vCPU figures are sums over reports without double counting.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from hosts.messages import PcpuReport
from hosts.vcpu import make_vid

from cluster.config import Plan


def percentiles_us(samples_ns: list[int]) -> dict[str, float | int | None]:
    if not samples_ns:
        return {"p50": None, "p99": None, "max": None, "count": 0}
    a = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "max": round(float(a.max()), 3),
        "count": int(a.size),
    }


def trace_digest(reports: dict[str, list[PcpuReport]], host_order: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for host in host_order:
        for r in sorted(reports.get(host, []), key=lambda r: r.pcpu):
            h.update(f"{host}:{r.pcpu}:{r.digest};".encode())
    return h.hexdigest()


def build_summary(
    plan: Plan,
    reports: dict[str, list[PcpuReport]],
    *,
    where: dict[int, str],
    destroyed: set[int],
    backend: str,
    sim_ns: int,
    extra: dict[str, Any] | None = None,
    frames: dict[int, int] | None = None,
    lost: dict[int, int] | None = None,
) -> dict[str, Any]:
    frames_of = frames or {}
    host_order = list(plan.hosts)
    pcpus = []
    runstate: dict[int, list[int]] = {}
    lat: dict[int, list[int]] = {}
    hv_stays: dict[str, list[int]] = {}
    samples: dict[str, dict[int, list[int]]] = {}
    hcalls: dict[str, list[int]] = {}
    counters: dict[str, int] = {}
    events = switches = 0
    for host in host_order:
        for r in sorted(reports.get(host, []), key=lambda r: r.pcpu):
            pcpus.append({"host": host, "id": r.pcpu, "busy_ns": r.busy_ns, "idle_ns": r.idle_ns, "switches": r.switches, "events": r.events})
            events += r.events
            switches += r.switches
            for vid, info in r.vcpus.items():
                runstate[int(vid)] = list(info.runstate_ns)
            for vid, rs in r.departed.items():
                runstate.setdefault(int(vid), list(rs))
            for vid, vals in r.wake_lat.items():
                lat.setdefault(int(vid), []).extend(vals)
            for name, stays in r.hv_stays.items():
                hv_stays.setdefault(name, []).extend(stays)
            for name, per_vid in r.samples.items():
                dst = samples.setdefault(name, {})
                for vid, vals in per_vid.items():
                    dst.setdefault(int(vid), []).extend(vals)
            for name, (n, pre) in r.hv_by_kind.items():
                c = hcalls.setdefault(name, [0, 0])
                c[0] += n
                c[1] += pre
            for k, v in r.metrics.items():
                counters[k] = counters.get(k, 0) + v
    domains = []
    for d in plan.domains:
        vcpus = []
        run_total = 0
        for i in range(d.nr_vcpus):
            vid = make_vid(d.uid, i)
            rs = runstate.get(vid, [0, 0, 0, 0])
            run_total += rs[0]
            vcpus.append(
                {
                    "id": i,
                    "running_ns": rs[0],
                    "runnable_ns": rs[1],
                    "blocked_ns": rs[2],
                    "offline_ns": rs[3],
                    "wake_latency_us": percentiles_us(lat.get(vid, [])),
                }
            )
        uid = d.uid
        io = [x for i in range(d.nr_vcpus) for x in samples.get("io_lat", {}).get(make_vid(uid, i), [])]
        work = counters.get(f"work.{uid}", 0)
        paging = {k.split(".")[-1]: v for k, v in counters.items() if k.startswith(f"paging.{uid}.")}
        entry = {
            "name": d.name,
            "host": where.get(d.uid, plan.dom_host[d.uid]),
            "uid": d.uid,
            "dom0": d.is_dom0,
            "weight": d.weight,
            "cap": d.cap,
            "cpu_pct": round(100.0 * run_total / sim_ns, 4) if sim_ns else 0.0,
            "paging_mode": d.paging,
            "work": work,
            "work_per_cpu_s": round(work / (run_total / 1e9), 3) if run_total else None,
            "pages_written": counters.get(f"pages_written.{uid}", 0),
            "paging_ns": paging,
            "vcpus": vcpus,
        }
        if io:
            entry["io_latency_us"] = percentiles_us(io)
        nframes = frames_of.get(uid)
        if nframes is not None:
            entry["frames"] = nframes
        if d.uid in destroyed:
            entry["destroyed"] = True
        if lost and d.uid in lost:
            entry["lost_ns"] = lost[d.uid]
        sla = sla_entry(counters, uid, d.workloads)
        if sla is not None:
            entry["sla"] = sla
        domains.append(entry)
    all_stays = [x for v in hv_stays.values() for x in v]
    hv = percentiles_us(all_stays)
    summary: dict[str, Any] = {
        "seed": plan.seed,
        "backend": backend,
        "sim_time_ns": sim_ns,
        "trace_digest": trace_digest(reports, host_order),
        "pcpus": pcpus,
        "domains": domains,
        "hypercalls": {
            "by_kind": {
                k: {"count": v[0], "preempted": v[1], "stay_us": percentiles_us(hv_stays.get(k, []))} for k, v in sorted(hcalls.items())
            },
            "hypervisor_stay_us": hv,
            "preempt_response_us": percentiles_us([x for v in samples.get("hv_preempt_response", {}).values() for x in v]),
        },
        "counters": counters,
        "scheduler_events": events,
        "context_switches": switches,
    }
    if extra:
        summary.update(extra)
    if "hosts_active" in summary or any("sla" in d for d in domains):
        summary["cluster"] = cluster_metrics(summary)
    return summary


def sla_entry(counters: dict[str, int], uid: int, workloads: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A trace-driven domain's SLA figures (hosts/tracewl.py): slots resolved, late ones, the
    violation time (late slots x slot length) and its share, CPU work demanded and unmet."""
    slots = counters.get(f"sla.{uid}.slots")
    if slots is None:
        return None
    late = counters.get(f"sla.{uid}.late", 0)
    slot_ns = [int(round(float(w.get("slot_ms", 10.0)) * 1e6)) for w in workloads if w.get("kind") == "trace"]
    per_slot = slot_ns[0] if slot_ns and len(set(slot_ns)) == 1 else None
    demand = counters.get(f"sla.{uid}.demand_ns", 0)
    unmet = counters.get(f"sla.{uid}.unmet_ns", 0)
    return {
        "slots": slots,
        "late_slots": late,
        "violation_ns": late * per_slot if per_slot is not None else None,
        "violation_share": round(late / slots, 6) if slots else 0.0,
        "demand_ns": demand,
        "unmet_ns": unmet,
        "unmet_share": round(unmet / demand, 6) if demand else 0.0,
    }


def cluster_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The cluster's headline figures: migrations by outcome and their total downtime, the SLA
    violation share over all trace-driven domains, energy, hosts switched on."""
    migs = summary.get("migrations") or []
    by = {k: sum(1 for m in migs if m.get("status") == k) for k in ("completed", "aborted", "refused", "running")}
    slas = [d["sla"] for d in summary["domains"] if "sla" in d]
    slots = sum(s["slots"] for s in slas)
    late = sum(s["late_slots"] for s in slas)
    power = summary.get("power") or {}
    active = summary.get("hosts_active") or {}
    return {
        "migrations_started": len(migs) - by["refused"],
        "migrations_completed": by["completed"],
        "migrations_aborted": by["aborted"],
        "migrations_refused": by["refused"],
        "migrations_running": by["running"],
        "migration_downtime_ms": round(sum(m.get("downtime_ms") or 0.0 for m in migs), 6),
        "sla_violation_share": round(late / slots, 6) if slots else None,
        "sla_domains_violating": sum(1 for s in slas if s["late_slots"]),
        "energy_j": power.get("energy_j"),
        "energy_kwh": power.get("energy_kwh"),
        "hosts_active_mean": active.get("mean"),
        "hosts_active_final": active.get("final"),
    }


def vcpu_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for d in summary["domains"]:
        for v in d["vcpus"]:
            w = v["wake_latency_us"]
            rows.append(
                {
                    "domain": d["name"],
                    "host": d["host"],
                    "vcpu": v["id"],
                    "running_ns": v["running_ns"],
                    "runnable_ns": v["runnable_ns"],
                    "blocked_ns": v["blocked_ns"],
                    "offline_ns": v["offline_ns"],
                    "cpu_pct": round(100.0 * v["running_ns"] / summary["sim_time_ns"], 4) if summary["sim_time_ns"] else 0.0,
                    "wake_count": w["count"],
                    "wake_p50_us": w["p50"],
                    "wake_p99_us": w["p99"],
                    "wake_max_us": w["max"],
                }
            )
    return rows
