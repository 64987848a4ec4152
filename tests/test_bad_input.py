"""The 28 malformed configs that used to end badly (a traceback with exit 1, a RecursionError or
a hang past 60 s) are refused with exit 2 and one message naming the file and the field, by
``validate`` and by ``run`` alike (they must accept exactly the same inputs).

Each case is built from a small valid config by one change, as the bug report found them; the
field a case must name is the one the change touched.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app

runner = CliRunner()

ONE_HOST: dict[str, Any] = {
    "run": {"seed": 1, "duration_ms": 50},
    "hosts": [{"name": "h0", "pcpus": 2, "mem_mib": 1024}],
    "domains": [{"name": "g", "host": "h0", "mem_mib": 64, "workload": {"kind": "cpu"}}],
}
TWO_HOSTS: dict[str, Any] = {
    "run": {"seed": 1, "duration_ms": 50},
    "hosts": [{"name": "h0", "pcpus": 2, "mem_mib": 1024}, {"name": "h1", "pcpus": 2, "mem_mib": 1024}],
    "links": [{"a": "h0", "b": "h1", "bandwidth_mbit_s": 1000, "latency_us": 100}],
    "domains": [{"name": "g", "host": "h0", "mem_mib": 64, "workload": {"kind": "idle"}}],
    "events": [{"at_ms": 10, "migrate": {"domain": "g", "to": "h1"}}],
}
INF = float("inf")


def workload(**w: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["domains"][0]["workload"] = w

    return edit


def at(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a dotted path (list indices as numbers) to ``value``."""

    def edit(doc: dict[str, Any]) -> None:
        node: Any = doc
        *head, last = path.split(".")
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(last) if isinstance(node, list) else last] = value

    return edit


def nested(depth: int, leaf: Any = 1, as_map: bool = False) -> Any:
    v = leaf
    for _ in range(depth):
        v = {"k": v} if as_map else [v]
    return v


# (id, base, edit, a word the message must contain: the field or the place)
DOC_CASES: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], None], str]] = [
    # 16 that passed validate and crashed run (OverflowError, numpy, ValueError, MemoryError_, StopIteration)
    ("io.think_ms=inf", ONE_HOST, workload(kind="io", think_ms=INF), "think_ms"),
    ("periodic.period_ms=inf", ONE_HOST, workload(kind="periodic", run_ms=1, period_ms=INF), "period_ms"),
    ("yield.run_ms=inf", ONE_HOST, workload(kind="yield", run_ms=INF), "run_ms"),
    ("memwrite.dirty_mb_s=inf", ONE_HOST, workload(kind="memwrite", dirty_mb_s=INF), "dirty_mb_s"),
    ("tlbrandom.working_set_mib=inf", ONE_HOST, workload(kind="tlbrandom", working_set_mib=INF), "working_set_mib"),
    ("io_client.service_us=inf", ONE_HOST, workload(kind="io_client", service_us=INF), "service_us"),
    ("balloon.at_ms=inf", ONE_HOST, workload(kind="balloon", op="decrease", pages=16, at_ms=INF), "at_ms"),
    ("migrate.max_downtime_ms=inf", TWO_HOSTS, at("events.0.migrate.max_downtime_ms", INF), "max_downtime_ms"),
    ("migrate.resume_us=inf", TWO_HOSTS, at("events.0.migrate.resume_us", INF), "resume_us"),
    ("links.latency_us=inf", TWO_HOSTS, at("links.0.latency_us", INF), "latency_us"),
    ("run.control_period_ms=inf", ONE_HOST, at("run.control_period_ms", INF), "control_period_ms"),
    ("run.ray_processes_per_host=0", ONE_HOST, at("run.ray_processes_per_host", 0), "ray_processes_per_host: must be auto or a whole number of processes from 1 to 4096"),
    ("run.ray_processes_per_host=some", ONE_HOST, at("run.ray_processes_per_host", "some"), "ray_processes_per_host: must be auto"),
    ("hcall.at_ms=inf", ONE_HOST, workload(kind="hcall", nr=29, args=[0], at_ms=INF), "at_ms"),
    ("memwrite.dirty_mb_s=1e300", ONE_HOST, workload(kind="memwrite", dirty_mb_s=1e300), "dirty_mb_s"),
    ("periodic 1e-300", ONE_HOST, workload(kind="periodic", run_ms=1e-300, period_ms=1e-300), "run_ms"),
    ("max_mem_mib=1e9", ONE_HOST, at("domains.0.max_mem_mib", 1e9), "max_mem_mib"),
    ("pcpu in no pool", ONE_HOST, at("hosts.0.pools", [{"name": "Pool-0", "cpus": [0]}]), "pools"),
    # 6 that hit Python's recursion limit: data nested 1000 to 100000 deep
    ("unknown key, lists 1000 deep", ONE_HOST, at("junk", nested(1000)), "junk"),
    ("unknown key, maps 10000 deep", ONE_HOST, at("junk", nested(10000, as_map=True)), "junk"),
    ("unknown key, lists 100000 deep", ONE_HOST, at("junk", nested(100000)), "junk"),
    ("hcall struct, lists 1000 deep", ONE_HOST, workload(kind="hcall", nr=32, args=[4, 0], struct={"port": nested(1000)}), "struct"),
    ("hcall struct, maps 10000 deep", ONE_HOST, workload(kind="hcall", nr=32, args=[4, 0], struct=nested(10000, as_map=True)), "struct"),
    ("hcall struct, lists 100000 deep", ONE_HOST, workload(kind="hcall", nr=32, args=[4, 0], struct={"port": nested(100000)}), "struct"),
    # 4 of the 6 that hung past 60 s (the alias bomb, validated and run, is below)
    ("run.control_period_ms=1e-9", ONE_HOST, at("run.control_period_ms", 1e-9), "control_period_ms"),
    ("memwrite.quantum_us=1e-300", ONE_HOST, workload(kind="memwrite", dirty_mb_s=10, quantum_us=1e-300), "quantum_us"),
    ("ptchurn, every count 0", ONE_HOST, workload(kind="ptchurn", compute_us=0, pt_updates=0, page_faults=0, cr3_switches=0, pages_touched=0), "ptchurn"),
    ("ptchurn.pages_touched=1e9", ONE_HOST, workload(kind="ptchurn", pages_touched=1_000_000_000), "pages_touched"),
]

#: a billion laughs inside an hcall struct: 9 levels of 10 aliases of the level before
LAUGHS = "\n".join(
    ["run: {seed: 1, duration_ms: 50}", "hosts: [{name: h0, pcpus: 2, mem_mib: 1024}]", "lol0: &l0 [lol]"]
    + [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    + ["domains:", "  - {name: g, host: h0, mem_mib: 64, workload: {kind: hcall, nr: 32, args: [4, 0], struct: {port: *l9}}}"]
)


class Raw:
    def __init__(self, text: str):
        self.text = text


def dump(doc: dict[str, Any]) -> str:
    """YAML of ``doc`` (PyYAML's emitter recurses, so a deep value is written by hand as flow)."""

    def flow(v: Any) -> str:
        out: list[str] = []
        stack: list[Any] = [v]
        while stack:  # iterative, so 100000 levels do not recurse here either
            x = stack.pop()
            if isinstance(x, Raw):
                out.append(x.text)
            elif isinstance(x, list):
                parts: list[Any] = [Raw("[")]
                for i, item in enumerate(x):
                    parts += [Raw(", ")] * bool(i) + [item]
                stack.extend(reversed(parts + [Raw("]")]))
            elif isinstance(x, dict):
                parts = [Raw("{")]
                for i, (k, item) in enumerate(x.items()):
                    parts += [Raw(", ")] * bool(i) + [Raw(f"{k}: "), item]
                stack.extend(reversed(parts + [Raw("}")]))
            else:
                out.append(yaml.safe_dump(x, default_flow_style=True).strip().removesuffix("...").strip())
        return "".join(out)

    return "\n".join(f"{k}: {flow(v)}" for k, v in doc.items()) + "\n"


def refused(args: list[str], path: Path, word: str) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (args, r.output[-2000:])
    text = " ".join(r.output.split())
    assert "Traceback" not in r.output and "Error:" not in text.split(str(path))[0]
    assert str(path) in text and word in text, text[:600]
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) <= 6, r.output


@pytest.mark.parametrize("case", DOC_CASES, ids=[c[0] for c in DOC_CASES])
def test_reported_config_is_refused_by_validate_and_run(case, tmp_path):
    _id, base, edit, word = case
    doc = copy.deepcopy(base)
    edit(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(dump(doc))
    refused(["validate", str(path)], path, word)
    refused(["run", str(path), "--out", str(tmp_path / "out")], path, word)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_alias_bomb_in_an_hcall_struct_is_refused(command, tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS + "\n")
    args = [command, str(path)] + (["--out", str(tmp_path / "out")] if command == "run" else [])
    refused(args, path, "alias")
    assert not (tmp_path / "out").exists()


def test_the_bases_are_valid(tmp_path):
    """Each case is one change away from a config that runs: the change is what is refused."""
    for i, base in enumerate((ONE_HOST, TWO_HOSTS)):
        path = tmp_path / f"base{i}.yaml"
        path.write_text(dump(base))
        r = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / f"out{i}"), "-q"])
        assert r.exit_code == 0, r.output
