"""Driver for the multi-node tests (run in a subprocess by tests/test_multinode.py).

Builds a Ray cluster of several nodes on this machine with ``ray.cluster_utils.Cluster``
(nodes told apart by custom resources and labels), runs hvsim against it, and prints one JSON
line of facts for the test to check. ``python tests/multinode.py SCENARIO WORKDIR``.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402


def two_host_doc(place0: dict, place1: dict, duration_ms: float = 1500, extra_domains=(), events=()) -> dict:
    return {
        "run": {"seed": 9, "duration_ms": duration_ms},
        "hosts": [
            {"name": "host0", "pcpus": 2, "mem_mib": 1024, "placement": place0},
            {"name": "host1", "pcpus": 2, "mem_mib": 1024, "placement": place1},
        ],
        "links": [{"a": "host0", "b": "host1", "bandwidth_mbit_s": 1000, "latency_us": 100}],
        "domains": [
            {"name": "web", "host": "host0", "vcpus": 2, "workload": {"kind": "io_client", "think_us": 700, "service_us": 60}},
            {"name": "hog", "host": "host0", "workload": {"kind": "cpu"}},
            {"name": "per", "host": "host1", "vcpus": 2, "workload": {"kind": "periodic", "run_ms": 2, "period_ms": 7}},
            *extra_domains,
        ],
        "events": list(events),
    }


def run(doc: dict, backend: str, address: str | None = None, progress=None):
    from cluster.config import resolved_doc, validate_doc
    from cluster.runner import run_loaded

    cfg = validate_doc(doc, "<multinode>")
    return run_loaded(cfg, resolved_doc(cfg), backend=backend, address=address, write=False, progress=progress)


def leftovers(tag_hint: str = "") -> dict:
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        cl = " ".join(p.info["cmdline"] or [])
        if "PcpuActor" in cl or "ManagerActor" in cl:
            procs.append(cl[:60])
    return {"actor_processes": procs, "shm": glob.glob("/dev/shm/hvsim-*")}


def main() -> None:
    scenario, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"scenario": scenario}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}})
    node_a = c.add_node(num_cpus=1, resources={"zone_a": 1}, labels={"rack": "r1"})
    node_b = c.add_node(num_cpus=1, resources={"zone_b": 1}, labels={"rack": "r2"})
    c.wait_for_nodes()
    out["node_a"], out["node_b"], out["head"] = node_a.node_id, node_b.node_id, c.head_node.node_id
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address=c.address, logging_level="ERROR")
    try:
        if scenario == "spread":
            doc = two_host_doc({"resources": {"zone_a": 1}}, {"resources": {"zone_b": 1}})
            r = run(doc, "ray")
            out["ray_digest"] = r.summary["trace_digest"]
            out["placement"] = r.summary["placement"]
            out["inline_digest"] = run(doc, "inline").summary["trace_digest"]
            s = run(two_host_doc({"node": "spread"}, {"node": "spread"}), "ray")
            out["spread_placement"] = s.summary["placement"]
            lab = run(two_host_doc({"labels": {"rack": "r2"}}, {"labels": {"rack": "r1"}}), "ray")
            out["label_placement"] = lab.summary["placement"]
        elif scenario == "migrate":
            guest = {"name": "guest", "host": "host0", "mem_mib": 128, "workload": {"kind": "memwrite", "dirty_mb_s": 40, "working_set_mib": 32}}
            ev = [{"at_ms": 200, "migrate": {"domain": "guest", "to": "host1", "policy": "xen"}}]
            cross = two_host_doc({"labels": {"rack": "r1"}}, {"labels": {"rack": "r2"}}, 4000, [guest], ev)
            same = two_host_doc({"labels": {"rack": "r1"}}, {"labels": {"rack": "r1"}}, 4000, [guest], ev)
            rc, rs = run(cross, "ray"), run(same, "ray")
            out["cross_placement"], out["same_placement"] = rc.summary["placement"], rs.summary["placement"]
            out["cross"] = rc.summary["migrations"][0]
            out["same"] = rs.summary["migrations"][0]
            out["cross_digest"], out["same_digest"] = rc.summary["trace_digest"], rs.summary["trace_digest"]
            out["inline_digest"] = run(cross, "inline").summary["trace_digest"]
        elif scenario == "kill":
            from typer.testing import CliRunner

            import yaml

            from cluster.cli import app

            guest = {"name": "guest", "host": "host0", "mem_mib": 192, "workload": {"kind": "memwrite", "dirty_mb_s": 20}}
            doc = two_host_doc({"resources": {"zone_a": 1}}, {"resources": {"zone_b": 1}}, 600_000, [guest],
                               [{"at_ms": 100, "migrate": {"domain": "guest", "to": "host1", "policy": "xen"}}])
            doc["links"][0]["bandwidth_mbit_s"] = 20  # the migration takes minutes: under way when the node dies
            cfg = work / "kill.yaml"
            cfg.write_text(yaml.safe_dump(doc))

            def killer():
                # once the run's actors are up (and the migration under way), the node holding host1 dies
                t0 = time.time()
                while time.time() - t0 < 120:
                    n = sum("PcpuActor" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
                    if n >= 4:
                        break
                    time.sleep(0.2)
                time.sleep(4.0)
                out["killed_after_s"] = round(time.time() - t0, 2)
                c.remove_node(node_b, allow_graceful=False)

            th = threading.Thread(target=killer, daemon=True)
            th.start()
            res = CliRunner().invoke(app, ["run", str(cfg), "--address", c.address, "--out", str(work / "run"), "-q"])
            th.join(timeout=5)
            out["exit_code"] = res.exit_code
            out["output"] = res.output
            summ = work / "run" / "summary.json"
            out["summary"] = json.loads(summ.read_text()) if summ.exists() else None
            time.sleep(3.0)
            out["leftovers"] = leftovers()
        elif scenario == "unsatisfiable":
            from typer.testing import CliRunner

            import yaml

            from cluster.cli import app

            doc = two_host_doc({"resources": {"zone_a": 1}}, {"resources": {"gpu_zone": 1}})
            cfg = work / "bad.yaml"
            cfg.write_text(yaml.safe_dump(doc))
            t0 = time.time()
            res = CliRunner().invoke(app, ["run", str(cfg), "--address", c.address, "--out", str(work / "run"), "-q"])
            out["elapsed_s"] = round(time.time() - t0, 2)
            out["exit_code"] = res.exit_code
            out["output"] = res.output
            out["run_exists"] = (work / "run").exists()
            out["leftovers"] = leftovers()
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    finally:
        ray.shutdown()
        c.shutdown()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
