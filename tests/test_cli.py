"""The CLI, in process: run, validate, schema, and bad input (exit 2, one clear message)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app

from conftest import CONFIGS

runner = CliRunner()

GOOD = {
    "run": {"seed": 1, "duration_ms": 200},
    "hosts": [{"name": "h0", "pcpus": 2, "mem_mib": 512, "scheduler": {"name": "credit"}}],
    "domains": [{"name": "a", "host": "h0", "weight": 256, "workload": {"kind": "cpu"}}],
}


def write(tmp_path: Path, doc, name="c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def test_run_inline_writes_a_complete_run_directory(tmp_path):
    cfg = write(tmp_path, GOOD)
    out = tmp_path / "run1"
    r = runner.invoke(app, ["run", str(cfg), "--backend", "inline", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert {"config.yaml", "summary.json", "vcpus.csv", "pcpus.csv", "trace.json", "toolstack.csv"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    s = json.loads((out / "summary.json").read_text())
    for key in ("seed", "backend", "sim_time_ns", "trace_digest", "pcpus", "domains"):
        assert key in s
    assert s["sim_time_ns"] == 200_000_000 and s["seed"] == 1 and s["backend"] == "inline"
    p = s["pcpus"][0]
    assert set(p) >= {"host", "id", "busy_ns", "idle_ns"}
    d = next(d for d in s["domains"] if d["name"] == "a")
    assert set(d) >= {"name", "host", "cpu_pct", "vcpus"}
    assert set(d["vcpus"][0]) >= {"id", "running_ns", "runnable_ns", "blocked_ns", "offline_ns", "wake_latency_us"}
    assert set(d["vcpus"][0]["wake_latency_us"]) >= {"p50", "p99", "max"}
    assert abs(d["cpu_pct"] - 100.0) < 1e-6  # one hog, two pCPUs: it gets a whole one
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["run"]["seed"] == 1 and resolved["hosts"][0]["scheduler"]["tslice_ms"] == 30
    trace = json.loads((out / "trace.json").read_text())
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert slices and {e["tid"] for e in slices} <= {0, 1}
    assert abs(sum(e["dur"] for e in slices if e["name"] == "a.v0") * 1000 - d["vcpus"][0]["running_ns"]) < 1


def test_run_refuses_to_overwrite_and_force_replaces(tmp_path):
    cfg = write(tmp_path, GOOD)
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(cfg), "--backend", "inline", "--out", str(out), "-q"]).exit_code == 0
    before = (out / "summary.json").read_text()
    r = runner.invoke(app, ["run", str(cfg), "--backend", "inline", "--out", str(out), "--seed", "5"])
    assert r.exit_code == 2 and "already exists" in r.output
    assert (out / "summary.json").read_text() == before
    r = runner.invoke(app, ["run", str(cfg), "--backend", "inline", "--out", str(out), "--seed", "5", "--force", "-q"])
    assert r.exit_code == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 5


def test_set_and_seed_overrides(tmp_path):
    cfg = write(tmp_path, GOOD)
    out = tmp_path / "r"
    r = runner.invoke(app, ["run", str(cfg), "--backend", "inline", "--out", str(out), "--set", "domains.a.vcpus=2", "--seed", "9", "-q"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["seed"] == 9
    assert len(next(d for d in s["domains"] if d["name"] == "a")["vcpus"]) == 2


def test_validate_and_schema(tmp_path):
    r = runner.invoke(app, ["validate", str(CONFIGS / "quickstart.yaml")])
    assert r.exit_code == 0 and "ok" in r.output
    r = runner.invoke(app, ["schema"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    assert "hosts" in schema["properties"] and "domains" in schema["properties"]


BAD = [
    ("missing file", None, "does-not-exist.yaml", "file not found"),
    ("bad yaml", "hosts: [\n  - name: h0\n   pcpus: 2\n", "line", "not valid YAML"),
    ("unknown key", {**GOOD, "domains": [{**GOOD["domains"][0], "wieght": 3}]}, "domains[a].wieght", "unknown key 'wieght'; allowed keys:"),
    ("negative weight", {**GOOD, "domains": [{**GOOD["domains"][0], "weight": -5}]}, "domains[a].weight", "greater than or equal to 1"),
    ("cap above 100 x vcpus", {**GOOD, "domains": [{**GOOD["domains"][0], "cap": 150}]}, "domains[a].cap", "exceeds 100 x vCPUs (100)"),
    ("unknown scheduler", {**GOOD, "hosts": [{**GOOD["hosts"][0], "scheduler": {"name": "bvt"}}]}, "hosts[h0].scheduler", "'credit'"),
    ("bare null scheduler", "hosts: [{name: h0, pcpus: 2, mem_mib: 1024, scheduler: {name: null}}]\ndomains: [{name: a, host: h0, workload: {kind: cpu}}]\n",
     "hosts[h0].scheduler", 'write "null" in quotes'),
    ("unknown host", {**GOOD, "domains": [{**GOOD["domains"][0], "host": "h9"}]}, "domains[a].host", "unknown host 'h9'; hosts: h0"),
    ("unknown workload", {**GOOD, "domains": [{**GOOD["domains"][0], "workload": {"kind": "bitcoin"}}]}, "domains[a].workload", "'cpu'"),
    ("domain too big", {**GOOD, "domains": [{**GOOD["domains"][0], "mem_mib": 4096}]}, "domains[a].mem_mib", "does not fit on host h0"),
    ("bad ratelimit", {**GOOD, "hosts": [{**GOOD["hosts"][0], "scheduler": {"name": "credit", "ratelimit_us": 50}}]}, "hosts[h0].scheduler", "ratelimit_us must be 0"),
    ("not a mapping", "- 1\n- 2\n", None, "top level must be a mapping"),
]


@pytest.mark.parametrize("label,doc,field,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_clear_message(tmp_path, label, doc, field, msg):
    path = tmp_path / "does-not-exist.yaml" if doc is None else write(tmp_path, doc)
    for cmd in (["validate", str(path)], ["run", str(path), "--backend", "inline", "--out", str(tmp_path / "o")]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2, (label, r.output)
        text = " ".join(r.output.split())
        assert str(path) in text
        if field:
            assert field in text
        assert msg in text
        assert "Traceback" not in r.output
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) <= 3
        assert not (tmp_path / "o").exists()


def test_bad_flags_exit_2(tmp_path):
    cfg = write(tmp_path, GOOD)
    r = runner.invoke(app, ["run", str(cfg), "--backend", "vmware"])
    assert r.exit_code == 2 and "vmware" in r.output
    r = runner.invoke(app, ["run", str(cfg), "--set", "domains.zzz.weight=1"])
    assert r.exit_code == 2 and "--set domains.zzz.weight" in r.output and "no element named 'zzz'" in r.output
    r = runner.invoke(app, ["run", str(cfg), "--seed", "-3"])
    assert r.exit_code == 2 and "--seed" in r.output


@pytest.mark.ray
def test_run_on_ray_via_cli(tmp_path, ray_session):
    cfg = write(tmp_path, GOOD)
    out = tmp_path / "rr"
    r = runner.invoke(app, ["run", str(cfg), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["backend"] == "ray"
    r2 = runner.invoke(app, ["run", str(cfg), "--backend", "inline", "--out", str(tmp_path / "ri"), "-q"])
    assert r2.exit_code == 0
    assert json.loads((tmp_path / "ri" / "summary.json").read_text())["trace_digest"] == s["trace_digest"]


def test_run_keeps_its_progress_file_and_takes_sigint_even_if_it_was_ignored(tmp_path):
    import signal

    cfg = write(tmp_path, GOOD)
    prog = tmp_path / "watch" / "progress.json"
    r = runner.invoke(app, ["run", str(cfg), "--backend", "inline", "--out", str(tmp_path / "r"), "-q", "--progress-file", str(prog)])
    assert r.exit_code == 2 and "--progress-file" in r.output and "no such directory" in r.output
    prog.parent.mkdir()
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job of a script starts
    try:
        r = runner.invoke(app, ["run", str(cfg), "--backend", "inline", "--out", str(tmp_path / "r"), "-q", "--progress-file", str(prog)])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C must interrupt a run"
    finally:
        signal.signal(signal.SIGINT, before)
    assert r.exit_code == 0, r.output
    assert json.loads(prog.read_text()) == {"sim_ns": 200_000_000, "end_ns": 200_000_000}
    assert [p.name for p in prog.parent.iterdir()] == ["progress.json"]
