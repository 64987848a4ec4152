"""Beyond one machine: hosts on separate Ray nodes, an existing cluster via --address, and node
failure. Each case builds its own multi-node cluster with ray.cluster_utils in a subprocess
(tests/multinode.py), so the session's Ray is untouched."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def scenario(name: str, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "multinode.py"), name, str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(line[len("RESULT ") :])


def test_hosts_on_different_nodes_give_the_inline_digest(tmp_path):
    r = scenario("spread", tmp_path)
    # placed by custom resource: host0 on the zone_a node, host1 on the zone_b node
    assert r["placement"] == {"host0": r["node_a"], "host1": r["node_b"]}
    assert r["ray_digest"] == r["inline_digest"]
    # spread: two hosts, two different nodes
    assert r["spread_placement"]["host0"] != r["spread_placement"]["host1"]
    # by label: rack r2 is node b, rack r1 node a
    assert r["label_placement"] == {"host0": r["node_b"], "host1": r["node_a"]}


def test_cross_node_migration_same_figures_as_same_node(tmp_path):
    r = scenario("migrate", tmp_path)
    assert r["cross_placement"]["host0"] != r["cross_placement"]["host1"]
    assert r["same_placement"]["host0"] == r["same_placement"]["host1"]
    cross, same = r["cross"], r["same"]
    assert cross["status"] == same["status"] == "completed"
    for k in ("total_ms", "downtime_ms", "rounds", "pages_sent", "bytes_sent"):
        assert cross[k] == same[k], k
    assert cross["memory_match"] and cross["vcpu_match"]  # destination memory == source memory at pause
    assert r["cross_digest"] == r["same_digest"] == r["inline_digest"]


def test_killing_a_node_mid_run(tmp_path):
    r = scenario("kill", tmp_path)
    assert r["exit_code"] == 3, r["output"]
    assert "Ray node lost" in r["output"] and "host1" in r["output"] and "simulated time" in r["output"]
    s = r["summary"]
    assert s is not None and s["incomplete"] is True
    assert s["lost_hosts"] == {"host1": s["lost_hosts"]["host1"]} and "host1" in s["lost_hosts"]
    reached = s["sim_time_reached_ns"]
    assert s["sim_time_ns"] == reached > 0
    mig = s["migrations"][0]
    assert mig["status"] == "aborted" and "host1" in mig["reason"]
    guest = next(d for d in s["domains"] if d["name"] == "guest")
    assert guest["host"] == "host0" and "lost_ns" not in guest
    assert guest["cpu_pct"] > 50  # it kept running on its source up to the stop
    for p in s["pcpus"]:
        assert p["host"] == "host0"  # the lost host has no report
        assert p["busy_ns"] + p["idle_ns"] == reached
    assert r["leftovers"] == {"actor_processes": [], "shm": []}


def test_unsatisfiable_placement_fails_within_seconds(tmp_path):
    r = scenario("unsatisfiable", tmp_path)
    assert r["exit_code"] == 2
    assert "host host1" in r["output"] and "gpu_zone" in r["output"]
    assert r["elapsed_s"] < 10
    assert not r["run_exists"]
    assert r["leftovers"] == {"actor_processes": [], "shm": []}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_joins_a_cluster_started_with_the_ray_cli_and_leaves_it_up(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    tmpdir = Path(tempfile.mkdtemp(prefix="hvsim-t-"))
    # a clean environment: a Ray started earlier in this process (the session fixture) leaves
    # RAY_* settings behind, e.g. token auth whose token lives in the real HOME
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    for _attempt in range(2):  # a port taken between free_port() and `ray start`: try another
        port = free_port()
        st = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={tmpdir}"], env=env, capture_output=True, text=True, timeout=120)
        if st.returncode == 0:
            break
        _stop_cluster(tmpdir)
    assert st.returncode == 0, "ray start failed:\n" + "\n".join((st.stdout + st.stderr).splitlines()[-30:])
    try:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({
            "run": {"seed": 3, "duration_ms": 300},
            "hosts": [{"name": "h0", "pcpus": 2, "mem_mib": 512}],
            "domains": [{"name": "a", "host": "h0", "workload": {"kind": "cpu"}}],
        }))
        out = tmp_path / "run"
        res = subprocess.run([sys.executable, "-m", "cluster.cli", "run", str(cfg), "--address", f"127.0.0.1:{port}", "--out", str(out), "-q"],
                             env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads((out / "summary.json").read_text())["backend"] == "ray"
        # the cluster hvsim joined is still up afterwards (its GCS lives), and a second run can use it
        assert any("gcs_server" in " ".join(p.info["cmdline"] or []) and str(tmpdir) in " ".join(p.info["cmdline"] or [])
                   for p in psutil.process_iter(["cmdline"]))
        res2 = subprocess.run([sys.executable, "-m", "cluster.cli", "run", str(cfg), "--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "run2"), "-q"],
                              env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert res2.returncode == 0, res2.stdout + res2.stderr
    finally:
        _stop_cluster(tmpdir)
        shutil.rmtree(tmpdir, ignore_errors=True)


def _stop_cluster(tmpdir: Path) -> None:
    """Stop only the cluster a test started (`ray stop` would stop every Ray on the machine):
    its processes carry the temp dir in their command line, their agents are their children."""
    procs = set()
    for p in psutil.process_iter(["cmdline"]):
        if str(tmpdir) in " ".join(p.info["cmdline"] or []):
            procs.add(p)
            try:
                procs.update(p.children(recursive=True))
            except psutil.Error:
                pass
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(procs), timeout=15)
    time.sleep(0.5)
