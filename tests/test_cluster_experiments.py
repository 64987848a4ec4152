"""Cluster experiments: trace-driven guests, placement, consolidation by live migration, power.

Traces are read from small files each test writes; the cluster cases are tiny (two or three
hosts, three guests with constant synthetic traces), so every expected figure is computed here
by hand: which domain the policy moves and where, the energy of the linear and table models
from the CPU work the traces ask for plus the hypercalls each slot costs.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cluster.batch_table import headline_metrics
from cluster.cli import app
from cluster.config import ConfigError, load_config, resolved_doc, validate_doc
from cluster.config.schema import HypercallCostsCfg
from cluster.policies import mad_upper
from cluster.sweep import plan_sweep
from cluster.traces import BITBRAINS_HEADER
from hosts.tracewl import decode_series

from conftest import CONFIGS, simulate, simulate_file

runner = CliRunner()
MS = 1_000_000
T_NS = 1000 * MS  # the tiny runs: 1 s, control period 100 ms, slots of 10 ms
SLOT_NS = 10 * MS
COSTS = HypercallCostsCfg()
#: what a slot costs besides its work: set_timer_op, then sched_op(block)
SLOT_HCALL_NS = (COSTS.entry_ns + COSTS.set_timer_ns) + (COSTS.entry_ns + COSTS.sched_op_ns)
#: Domain-0's backend blocks once at the start
DOM0_NS = COSTS.entry_ns + COSTS.sched_op_ns


def guest(name: str, host: str, pct: float | list[float], mem: int = 64, **wl) -> dict:
    samples = pct if isinstance(pct, list) else [pct]
    return {"name": name, "host": host, "mem_mib": mem, "workload": {"kind": "trace", "cpu_pct": samples, "random_phase": False, **wl}}


def cluster(domains: list[dict], nhosts: int = 2, pcpus: int = 2, mem_mib: int = 1024, duration_ms: float = 1000, **top) -> dict:
    return {
        "run": {"seed": 1, "duration_ms": duration_ms, "control_period_ms": 100},
        "network": {"default_bandwidth_mbit_s": 10000, "default_latency_us": 50},
        "hosts": [{"name": f"h{i}", "pcpus": pcpus, "mem_mib": mem_mib} for i in range(nhosts)],
        "domains": domains,
        **top,
    }


def moves(summary: dict) -> list[tuple[str, str, str, int, str]]:
    return [(m["domain"], m["src"], m["dst"], m["start_ns"], m["status"]) for m in summary["migrations"]]


def where(summary: dict) -> dict[str, str]:
    return {d["name"]: d["host"] for d in summary["domains"] if not d["dom0"]}


def write_config(tmp: Path, doc: dict, name: str = "c.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def traced(tmp: Path, fmt: str, text: str | bytes, fname: str, **wl) -> Path:
    f = tmp / fname
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    doc = cluster([{"name": "g", "host": "h0", "workload": {"kind": "trace", "format": fmt, "path": fname, **wl}}], nhosts=1, duration_ms=50)
    return write_config(tmp, doc)


def samples_of(path: Path) -> tuple[list[float], float, list[float] | None]:
    _cfg, resolved = load_config(path)
    w = resolved["domains"][0]["workload"]
    mem = decode_series(w["mem_samples"]).tolist() if "mem_samples" in w else None
    return decode_series(w["samples"]).tolist(), w["step_min"], mem


def validate_cli(path: Path) -> tuple[int, str]:
    r = runner.invoke(app, ["validate", str(path)])
    return r.exit_code, " ".join(r.output.split())


# --- trace files ------------------------------------------------------------------------------------


def test_planetlab_plain_and_gzip(tmp_path):
    text = "12\n0\n100\n37\n"
    assert samples_of(traced(tmp_path, "planetlab", text, "vm.txt")) == ([12.0, 0.0, 100.0, 37.0], 5.0, None)
    assert samples_of(traced(tmp_path, "planetlab", gzip.compress(text.encode()), "vm.txt.gz"))[0] == [12.0, 0.0, 100.0, 37.0]


@pytest.mark.parametrize("text,line,what", [
    ("10\n20\nabc\n", 3, "'abc' is not a number"),
    ("10\n101\n", 2, "101 is out of range"),
    ("10\n\n20\n", 3, "a value after the empty line 2"),
])
def test_planetlab_bad_line_is_exit_2_naming_file_and_line(tmp_path, text, line, what):
    code, msg = validate_cli(traced(tmp_path, "planetlab", text, "vm.txt"))
    assert code == 2
    assert f"{tmp_path / 'vm.txt'}: line {line}: {what}" in msg and "domains[g].workload" in msg


def test_bad_gzip_and_missing_file(tmp_path):
    code, msg = validate_cli(traced(tmp_path, "planetlab", b"not gzip at all", "vm.txt.gz"))
    assert code == 2 and "vm.txt.gz" in msg and "gzip" in msg
    p = write_config(tmp_path, cluster([{"name": "g", "host": "h0", "workload": {"kind": "trace", "path": "nowhere.txt"}}], nhosts=1))
    code, msg = validate_cli(p)
    assert code == 2 and "domains[g].workload.path" in msg and "trace file not found" in msg


def bitbrains(rows: list[str]) -> str:
    return ";\t".join(BITBRAINS_HEADER) + "\n" + "".join(r + "\n" for r in rows)


def test_bitbrains_cpu_and_memory(tmp_path):
    rows = [
        "1376314846;\t4;\t10000;\t1000;\t10.0;\t67108864;\t1048576;\t0;\t2.2;\t0;\t0.0",
        "1376315146;\t4;\t10000;\t2050;\t20.5;\t67108864;\t2097152;\t0;\t0;\t0;\t0",
        "1376315446;\t4;\t10000;\t9000;\t150;\t67108864;\t524288;\t0;\t0;\t0;\t0",
    ]
    cpu, step, mem = samples_of(traced(tmp_path, "bitbrains", bitbrains(rows), "1.csv"))
    assert cpu == pytest.approx([10.0, 20.5, 100.0]) and step == 5.0 and mem == [1024.0, 2048.0, 512.0]
    cpu, _, _ = samples_of(traced(tmp_path, "bitbrains", bitbrains(rows), "1.csv", column="usage_mhz"))
    assert cpu == pytest.approx([10.0, 20.5, 90.0])


@pytest.mark.parametrize("text,line,what", [
    ("Timestamp;CPU\n1;2\n", 1, "not the GWA-T-12 Bitbrains header"),
    (bitbrains(["1;4;1;1;1;1;1;0;0;0;0", "2;4;1;1;1;1"]), 3, "6 values; expected 11"),
    (bitbrains(["5;4;1;1;1;1;1;0;0;0;0", "5;4;1;1;1;1;1;0;0;0;0"]), 3, "is not after the previous one"),
    (bitbrains(["5;4;1;1;-3;1;1;0;0;0;0"]), 2, "CPU usage [%] is -3"),
])
def test_bitbrains_errors(tmp_path, text, line, what):
    code, msg = validate_cli(traced(tmp_path, "bitbrains", text, "b.csv"))
    assert code == 2 and f"b.csv: line {line}: " in msg and what in msg


AZURE = "0,vmA,1.0,5.0,3.0\n0,vmB,10.0,50.0,30.0\n300,vmA,1,5,3\n300,vmB,11,51,31.5\n600,vmB,12,52,32\n"


def test_azure_picks_one_vm(tmp_path):
    assert samples_of(traced(tmp_path, "azure", AZURE, "r.csv", vm="vmB")) == ([30.0, 31.5, 32.0], 5.0, None)
    assert samples_of(traced(tmp_path, "azure", AZURE, "r.csv", vm="vmB", column="max"))[0] == [50.0, 51.0, 52.0]
    code, msg = validate_cli(traced(tmp_path, "azure", AZURE, "r.csv", vm="vmZ"))
    assert code == 2 and "no readings for vm 'vmZ'" in msg
    code, msg = validate_cli(traced(tmp_path, "azure", AZURE + "900,vmB,1,2\n", "r.csv", vm="vmB"))
    assert code == 2 and "r.csv: line 6: 4 values; expected 5" in msg
    code, msg = validate_cli(traced(tmp_path, "azure", AZURE, "r.csv"))
    assert code == 2 and "give 'vm'" in msg


def test_resolved_config_reruns_without_the_file(tmp_path):
    p = traced(tmp_path, "planetlab", "20\n60\n", "vm.txt")
    _cfg, resolved = load_config(p)
    w = resolved["domains"][0]["workload"]
    assert "path" not in w and w["source"] == "vm.txt"
    (tmp_path / "vm.txt").unlink()
    again = write_config(tmp_path / "..", resolved, "rerun.yaml")
    _cfg2, resolved2 = load_config(again)
    assert resolved2 == resolved
    doc = yaml.safe_load(p.read_text())  # a document (not a file) with a path is refused
    with pytest.raises(ConfigError, match="trace file was not read"):
        validate_doc(doc, "<doc>")


# --- the guest ----------------------------------------------------------------------------------------


def expected_work(samples: list[float], step_min: float, time_scale: float, linear: bool, n_slots: int) -> int:
    """Sum of the slots' work: the trace at each release, interpolated by hand."""
    total = 0
    for k in range(n_slots):
        x = (k * SLOT_NS / 1e9 * time_scale) / step_min
        i = int(x // 1) % len(samples)
        f = x - int(x // 1)
        v = samples[i] * (1 - f) + samples[(i + 1) % len(samples)] * f if linear else samples[i]
        total += round(v / 100 * SLOT_NS)
    return total


@pytest.mark.parametrize("interp", ["linear", "step"])
def test_demand_follows_the_trace(interp):
    # two samples 5 trace minutes apart, 10 trace minutes per simulated second: one cycle per second
    doc = cluster([guest("g", "h0", [20, 60], time_scale=10, interpolation=interp)], nhosts=1)
    s = simulate(doc).summary
    d = next(d for d in s["domains"] if d["name"] == "g")
    work = expected_work([20, 60], 5.0, 10.0, interp == "linear", 100)
    assert d["vcpus"][0]["running_ns"] == work + 100 * SLOT_HCALL_NS
    assert d["sla"]["slots"] == 100 and d["sla"]["late_slots"] == 0 and d["sla"]["demand_ns"] == work
    assert work == 40 * T_NS // 100  # both average 40 % over the cycle


def test_starved_guests_violate_their_sla():
    # three guests asking 60 % of one pCPU each (180 %) on a 1-pCPU host
    doc = cluster([guest(n, "h0", 60) for n in "abc"], nhosts=1, pcpus=1)
    s = simulate(doc).summary
    slas = [d["sla"] for d in s["domains"] if "sla" in d]
    assert sum(d["vcpus"][0]["running_ns"] for d in s["domains"]) <= T_NS  # one pCPU
    met = sum(x["demand_ns"] - x["unmet_ns"] for x in slas)
    assert met <= T_NS and all(x["violation_share"] > 0.5 and x["unmet_ns"] > 0 for x in slas)
    assert s["cluster"]["sla_violation_share"] > 0.5 and s["cluster"]["sla_domains_violating"] == 3


# --- consolidation -----------------------------------------------------------------------------------


def test_overloaded_host_sheds_the_guest_of_least_memory():
    # h0: a 90 % + b 80 % on 2 pCPUs = 0.85 > 0.8; MMT takes b (64 MiB < 128 MiB): 0.45 left.
    # h1: c 20 % = 0.10; with b 0.50 <= 0.8. h1 is underloaded (< 0.2) but is b's destination.
    doms = [guest("a", "h0", 90, mem=128), guest("b", "h0", 80, mem=64), guest("c", "h1", 20)]
    s = simulate(cluster(doms, policies={"consolidation": {"upper": 0.8, "lower": 0.2}})).summary
    assert moves(s) == [("b", "h0", "h1", 100 * MS, "completed")]
    assert where(s) == {"a": "h0", "b": "h1", "c": "h1"}
    assert s["cluster"]["migrations_started"] == 1 and s["cluster"]["migrations_completed"] == 1
    # max-cpu takes a instead (0.9): h1 at 0.10 + 0.45
    s = simulate(cluster(doms, policies={"consolidation": {"upper": 0.8, "lower": 0.2, "select": "max-cpu"}})).summary
    assert moves(s) == [("a", "h0", "h1", 100 * MS, "completed")]


def underload_case(**power) -> dict:
    # h0: a 30 % + b 20 % = 0.25; h1: c 10 % = 0.05 < 0.2: c goes to h0 (0.30), h1 is empty
    doms = [guest("a", "h0", 30), guest("b", "h0", 20), guest("c", "h1", 10)]
    return cluster(doms, policies={"consolidation": {"upper": 0.8, "lower": 0.2}}, power={"model": "linear", **power})


def test_underloaded_host_is_drained_and_switched_off():
    s = simulate(underload_case(switch_off_empty=True)).summary
    assert moves(s) == [("c", "h1", "h0", 100 * MS, "completed")]
    end = s["migrations"][0]["end_ns"]
    assert 100 * MS < end <= 200 * MS  # 64 MiB over 10 Gbit/s
    h1 = s["power"]["hosts"]["h1"]
    assert h1["on_s"] == 0.2  # on in the two periods up to the migration's end, off after
    assert 0.2 * 86 <= h1["energy_j"] <= 0.2 * 117
    assert s["hosts_active"]["final"] == 1 and s["hosts_active"]["mean"] == pytest.approx((2 * 0.2 + 0.8) / 1.0)


def test_load_balancing_moves_the_guest_that_narrows_the_gap():
    # h0: a 60 % + b 60 % = 0.60; h1: c 10 % = 0.05; gap 0.55 > 0.25. Moving a (or b, equal:
    # the lower uid) leaves 0.30 against 0.35: gap 0.05, nothing more.
    doms = [guest("a", "h0", 60), guest("b", "h0", 60), guest("c", "h1", 10)]
    s = simulate(cluster(doms, policies={"load_balance": {"imbalance": 0.25}})).summary
    assert moves(s) == [("a", "h0", "h1", 100 * MS, "completed")]


def test_mad_threshold():
    # median 0.6; deviations 0.1, 0, 0.1, 0, 0.1: MAD 0.1; upper = 1 - 2.5 x 0.1
    assert mad_upper([0.5, 0.6, 0.7, 0.6, 0.5], 2.5) == pytest.approx(0.75)
    assert mad_upper([0.1, 0.9, 0.1, 0.9], 2.5) == 0.0


# --- power -----------------------------------------------------------------------------------------------

G4_TABLE = [86.0, 89.4, 92.6, 96.0, 99.5, 102.0, 106.0, 108.0, 112.0, 114.0, 117.0]


def spec_power(u: float) -> float:
    i = min(int(u * 10), 9)
    return G4_TABLE[i] + (G4_TABLE[i + 1] - G4_TABLE[i]) * (u * 10 - i)


def power_case(model: str, switch_off: bool) -> dict:
    doms = [guest("a", "h0", 40), guest("b", "h0", 25)]
    return cluster(doms, power={"model": model, "switch_off_empty": switch_off})


def busy_per_period_ns(first: bool) -> int:
    """h0 over one 100 ms period: 10 slots of a (4 ms) and b (2.5 ms), each with its two
    hypercalls; Domain-0 blocks once in the first period."""
    return 10 * (4 * MS + SLOT_HCALL_NS) + 10 * (2_500_000 + SLOT_HCALL_NS) + (DOM0_NS if first else 0)


@pytest.mark.parametrize("switch_off", [False, True])
def test_linear_energy_is_idle_plus_busy_share(switch_off):
    s = simulate(power_case("linear", switch_off)).summary
    busy = sum(busy_per_period_ns(p == 0) for p in range(10))
    e_h0 = 86 * 1.0 + (117 - 86) * busy / 2 / 1e9
    e_h1 = 0.0 if switch_off else 86 * 1.0 + (117 - 86) * DOM0_NS / 2 / 1e9
    assert s["power"]["hosts"]["h0"]["energy_j"] == pytest.approx(e_h0, abs=1e-5)
    assert s["power"]["hosts"]["h1"]["energy_j"] == pytest.approx(e_h1, abs=1e-5)
    assert s["power"]["energy_j"] == pytest.approx(e_h0 + e_h1, abs=1e-5)
    assert s["power"]["energy_kwh"] == pytest.approx((e_h0 + e_h1) / 3.6e6, abs=1e-9)
    assert s["hosts_active"]["mean"] == 1.0 and s["hosts_active"]["on_mean"] == (1.0 if switch_off else 2.0)


def test_table_energy_interpolates_the_specpower_points(tmp_path):
    s = simulate(power_case("table", True)).summary
    e = sum(spec_power(busy_per_period_ns(p == 0) / (100 * MS * 2)) * 0.1 for p in range(10))
    assert s["power"]["hosts"]["h0"]["energy_j"] == pytest.approx(e, abs=1e-5)
    # power.csv holds the same periods
    out = tmp_path / "run"
    p = write_config(tmp_path, power_case("table", True))
    r = runner.invoke(app, ["run", str(p), "--backend", "inline", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    rows = [ln.split(",") for ln in (out / "power.csv").read_text().splitlines()]
    assert rows[0] == ["t_ms", "host", "utilisation", "watts", "on", "active"] and len(rows) == 1 + 10 * 2
    h0 = [r for r in rows[1:] if r[1] == "h0"]
    assert float(h0[1][3]) == pytest.approx(spec_power(busy_per_period_ns(False) / (200 * MS)), abs=1e-5)
    assert (out / "hosts_active.csv").read_text().splitlines()[:2] == ["t_ms,hosts_active,hosts_on,watts", "100.0,1,1,%s" % h0[0][3]]
    assert json.loads((out / "summary.json").read_text())["cluster"]["energy_j"] == pytest.approx(e, abs=1e-5)


# --- evacuation and concurrency limits ------------------------------------------------------------------


def intervals(summary: dict) -> list[tuple[str, str, str, int, int]]:
    return [(m["domain"], m["src"], m["dst"], m["start_ns"], m["end_ns"]) for m in summary["migrations"]]


def max_overlap(ivs: list[tuple[str, str, str, int, int]], key) -> int:
    best = 0
    for _d, s, t, a, _b in ivs:
        best = max(best, sum(1 for x in ivs if x[3] <= a < x[4] and key(x, (s, t))))
    return best


def test_evacuate_one_migration_at_a_time():
    # h0's three guests go to h1, which already runs x (cheaper than switching on the empty h2)
    doms = [guest(n, "h0", 10) for n in "abc"] + [guest("x", "h1", 10)]
    doc = cluster(doms, nhosts=3, events=[{"at_ms": 50, "evacuate": {"host": "h0"}}], power={"switch_off_empty": True})
    s = simulate(doc).summary
    ivs = intervals(s)
    assert [(d, a, b) for d, a, b, _s, _e in ivs] == [("a", "h0", "h1"), ("b", "h0", "h1"), ("c", "h0", "h1")]
    assert ivs[0][3] == 50 * MS and ivs[1][3] == ivs[0][4] and ivs[2][3] == ivs[1][4]  # each starts as the last ends
    assert all(m["status"] == "completed" for m in s["migrations"])
    assert set(where(s).values()) == {"h1"} and s["policies"]["evacuated"] == ["h0"]
    assert s["power"]["hosts"]["h2"]["energy_j"] == 0.0


def test_concurrency_limits_per_host_and_per_link():
    # h1 has room for one more 64 MiB guest (its Domain-0 takes 256): a goes there, b and c to h2;
    # at most 2 per host lets a and b run together; 1 per link makes c wait for b.
    doms = [guest(n, "h0", 10) for n in "abc"] + [guest("x", "h1", 10)]
    doc = cluster(doms, nhosts=3, events=[{"at_ms": 50, "evacuate": {"host": "h0"}}], policies={"max_concurrent_per_host": 2, "max_concurrent_per_link": 1})
    doc["hosts"][1]["mem_mib"] = 256 + 64 + 64
    s = simulate(doc).summary
    ivs = {d: (a, b, t0, t1) for d, a, b, t0, t1 in intervals(s)}
    assert {d: v[:2] for d, v in ivs.items()} == {"a": ("h0", "h1"), "b": ("h0", "h2"), "c": ("h0", "h2")}
    assert ivs["a"][2] == ivs["b"][2] == 50 * MS and ivs["c"][2] == ivs["b"][3]
    flat = intervals(s)
    assert max_overlap(flat, lambda x, st: st[0] in x[1:3] or st[1] in x[1:3]) <= 2
    assert max_overlap(flat, lambda x, st: {x[1], x[2]} == set(st)) == 1
    assert s["policies"]["max_concurrent_seen"] == {"per_host": 2, "per_link": 1}


# --- placement --------------------------------------------------------------------------------------------


def placed(strategy: str, by: str = "cpu") -> str:
    # h0: 4 pCPUs, 1024 MiB; h1: 2 pCPUs, 4096 MiB; x: one CPU hog of 256 MiB.
    # first-fit: h0; best-fit by CPU: h1 (1 pCPU left, not 3); by memory: h0 (512 MiB left, not 3584)
    doc = {
        "hosts": [{"name": "h0", "pcpus": 4, "mem_mib": 1024}, {"name": "h1", "pcpus": 2, "mem_mib": 4096}],
        "domains": [{"name": "x", "host": "auto", "mem_mib": 256}],
        "policies": {"placement": {"strategy": strategy, "by": by}},
    }
    return validate_doc(doc, "<t>").domains[0].host


def test_place_auto_first_fit_and_best_fit():
    assert placed("first-fit") == "h0"
    assert placed("best-fit", "cpu") == "h1"
    assert placed("best-fit", "memory") == "h0"


def test_place_auto_fills_hosts_in_order_and_refuses_what_fits_nowhere(tmp_path):
    # 2-pCPU hosts; hogs need a pCPU each, a 50 % trace guest half of one
    hosts = [{"name": "h0", "pcpus": 2, "mem_mib": 1024}, {"name": "h1", "pcpus": 2, "mem_mib": 1024}]
    doms = [{"name": "p", "host": "h0", "mem_mib": 64}] + [{"name": n, "host": "auto", "mem_mib": 64} for n in ("q", "r")]
    doms.append({"name": "t", "host": "auto", "mem_mib": 64, "workload": {"kind": "trace", "cpu_pct": [50]}})
    cfg = validate_doc({"hosts": hosts, "domains": doms}, "<t>")
    assert [d.host for d in cfg.domains] == ["h0", "h0", "h1", "h1"]
    doms.append({"name": "big", "host": "auto", "mem_mib": 900})
    p = write_config(tmp_path, {"hosts": hosts, "domains": doms})
    code, msg = validate_cli(p)
    assert code == 2 and "domains[big].host: auto: no host has room for 900 MiB" in msg


@pytest.mark.parametrize("top,field,what", [
    ({"policies": {"consolidation": {"upper": 0.5, "lower": 0.5}}}, "policies.consolidation.lower", "not below upper"),
    ({"policies": {"consolidation": {}, "load_balance": {}}}, "policies.load_balance", "enable one of the two"),
    ({"policies": {"consolidation": {"upper": 1.5}}}, "policies.consolidation.upper", "less than or equal to 1"),
    ({"power": {"hosts": {"h9": {}}}}, "power.hosts.h9", "unknown host 'h9'"),
    ({"power": {"model": "table", "table_w": [1, 2]}}, "power.table_w", "at least 11"),
    ({"power": {"idle_w": 120}}, "power", "max_w (117 W) is below idle_w (120 W)"),
    ({"events": [{"at_ms": 1, "evacuate": {"host": "h7"}}]}, "events[0].evacuate.host", "unknown host 'h7'"),
])
def test_bad_sections_are_exit_2_naming_the_field(tmp_path, top, field, what):
    p = write_config(tmp_path, cluster([guest("a", "h0", 10)], **top))
    code, msg = validate_cli(p)
    assert code == 2 and f"{field}: " in msg and what in msg, msg


# --- backends, outputs, the example ------------------------------------------------------------------------


@pytest.mark.ray
def test_same_decisions_and_energy_inline_and_ray(ray_session):
    doms = [guest("a", "h0", 90, mem=128, random_phase=True), guest("b", "h0", 80, dirty_mb_s=20), guest("c", "h1", [20, 30, 10], time_scale=30)]
    doc = cluster(doms, policies={"consolidation": {"mode": "mad", "min_history": 2}}, power={"model": "table", "switch_off_empty": True})
    a, b = simulate(doc).summary, simulate(doc, backend="ray").summary
    assert a["trace_digest"] == b["trace_digest"]
    assert moves(a) == moves(b) and len(moves(a)) >= 1
    assert a["power"] == b["power"] and a["cluster"] == b["cluster"]
    assert [d.get("sla") for d in a["domains"]] == [d.get("sla") for d in b["domains"]]


def test_headline_columns_and_the_example_sweep():
    s = simulate(underload_case(switch_off_empty=True)).summary
    m = headline_metrics(s)
    assert m["migrations"] == 1 and m["migrations_completed"] == 1 and m["migrations_aborted"] == 0
    assert m["energy_kwh"] == s["power"]["energy_kwh"] and m["hosts_active_mean"] == s["hosts_active"]["mean"]
    assert m["sla_violation_pct"] == pytest.approx(100 * s["cluster"]["sla_violation_share"])
    sweep, trials = plan_sweep(CONFIGS / "sweeps" / "consolidation-policies.yaml")
    assert len(trials) >= 4 and all(t.resolved["domains"][0]["workload"]["source"] == "traces/vm000.txt" for t in trials)


def test_the_16_host_example_is_what_the_issue_asks():
    path = CONFIGS / "cluster" / "consolidation-16.yaml"
    cfg, _ = load_config(path)
    assert len(cfg.hosts) == 16 and len(cfg.domains) >= 100
    assert all(d.workload is not None and d.workload.kind == "trace" for d in cfg.domains)
    assert cfg.policies is not None and cfg.policies.consolidation is not None and cfg.power is not None
    # a short run still samples, accounts energy and writes the cluster figures
    res = simulate_file(path, overrides=["run.duration_ms=600"])
    assert res.summary["power"]["energy_j"] > 16 * 0.6 * 86 * 0.99 and res.summary["hosts_active"]["final"] == 16


def test_configs_without_the_new_sections_resolve_as_before():
    # no policies, power or trace: nothing new in the resolved document, no control loop, no new figures
    cfg = validate_doc({"hosts": [{"name": "h0", "pcpus": 1}], "domains": [{"name": "d", "host": "h0"}]}, "<t>")
    assert cfg.policies is None and cfg.power is None
    assert not {"policies", "power"} & set(resolved_doc(cfg))
    s = simulate({"run": {"duration_ms": 50}, "hosts": [{"name": "h0", "pcpus": 1}]}).summary
    assert not {"cluster", "power", "hosts_active", "policies"} & set(s)
