"""Fuzz: bad config input never crashes, hangs or runs forever.

Each example is a config (or a ``--set`` on one) that ``hvsim validate`` must answer with exit
0 or 2 and one message, never a traceback, within a time limit (an example past it fails). An
accepted example is then run briefly (``--set run.duration_ms`` capped, inline backend): the
run must exit 0, and ``validate`` under the same ``--set`` must have accepted exactly what
``run`` accepts. Examples come from three sources, all derandomised so CI is reproducible:

* mutations of the shipped configs (values set to out-of-range, non-finite, wrongly typed or
  huge ones, keys dropped or invented, list elements removed or repeated), in the file or
  as ``--set`` overrides;
* documents drawn from the config's JSON Schema (``hvsim schema``), half of them repaired so
  that names refer to each other and they get past the cross-field checks into a run;
* YAML text mutations: nesting thousands deep, alias bombs, cycles, broken syntax.

Counts per outcome: ``pytest tests/test_fuzz_config.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cluster.cli import app
from cluster.config import json_schema, load_config

from conftest import CONFIGS

runner = CliRunner()

#: simulated time of the short run of an accepted example, in ms
RUN_MS = 3.0
#: an example that takes longer than this (validate, and run if accepted) fails
EXAMPLE_S = 90.0
#: accepted examples bigger than this are validated but not run (allocating 16 GiB of host
#: RAM or starting a thousand pCPUs is what such a config asks for, not a failure, but it
#: would not fit a CI budget)
RUN_MAX_BUFFER_MIB = 256
RUN_MAX_PCPUS = 16
RUN_MAX_VCPUS = 96

FUZZ = settings(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=False)

BASES = sorted(p for p in CONFIGS.rglob("*.yaml") if "sweeps" not in p.parts)


def _short(doc: dict[str, Any]) -> dict[str, Any]:
    """A shipped config cut to RUN_MS, its events moved inside."""
    doc.setdefault("run", {})["duration_ms"] = RUN_MS
    evs = doc.get("events") or []
    for i, e in enumerate(evs):
        e["at_ms"] = round(RUN_MS * (i + 1) / (len(evs) + 2), 3)
    return doc


def _base(p: Path) -> dict[str, Any]:
    return _short(yaml.safe_load(p.read_text()))


# --- writing documents (deep ones included) as YAML text, without recursion ------------------


class Raw:
    """Text put into the document as it is (deep nesting, aliases)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''})"


def deep(n: int, kind: str = "list") -> Raw:
    return Raw("[" * n + "]" * n if kind == "list" else "{a: " * n + "1" + "}" * n)


def laughs(levels: int, width: int = 10) -> Raw:
    """A billion-laughs value: each level an anchored list of ``width`` aliases of the last."""
    parts = ["&l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        parts.append(f"&l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return Raw("[" + ", ".join(parts) + "]")


def scalar_text(x: Any) -> str:
    if x is None:
        return "null"
    if x is True:
        return "true"
    if x is False:
        return "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return ".nan"
        if math.isinf(x):
            return ".inf" if x > 0 else "-.inf"
        return repr(x)
    out = ['"']
    for ch in str(x):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable() and ord(ch) < 0xD800:
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out) + '"'


def to_yaml(doc: Any) -> str:
    """Flow-style YAML of a document (iterative: any depth)."""
    out: list[str] = []
    stack: list[Any] = [doc]
    while stack:
        x = stack.pop()
        if isinstance(x, Raw):
            out.append(x.text)
        elif isinstance(x, str) and x in ("\x00[", "\x00]", "\x00{", "\x00}", "\x00,", "\x00:"):
            out.append(x[1:] + (" " if x[1] in ",:" else ""))
        elif isinstance(x, dict):
            items: list[Any] = ["\x00{"]
            for i, (k, v) in enumerate(x.items()):
                if i:
                    items.append("\x00,")
                items += [Raw(scalar_text(k)), "\x00:", v]
            items.append("\x00}")
            stack.extend(reversed(items))
        elif isinstance(x, (list, tuple)):
            items = ["\x00["]
            for i, v in enumerate(x):
                if i:
                    items.append("\x00,")
                items.append(v)
            items.append("\x00]")
            stack.extend(reversed(items))
        else:
            out.append(scalar_text(x))
    return "".join(out) + "\n"


# --- nasty values and mutations ----------------------------------------------------------------

EDGE = [
    0, -1, 1, 2, 3, 7, 64, 100, 1023, 1024, 4096, 2**31, 2**32, 2**63, 2**64, -(2**63) - 1, 10**30,
    0.0, -0.0, 1e-300, 1e-12, 1e-9, 1e-6, 0.001, 0.5, 1.5, 1e6, 1e9, 1e12, 1e15, 1e300,
    math.inf, -math.inf, math.nan, "", "x", "null", "1e9", "inf", "credit", "cpu", True, False, None, [], {}, [0], [0, 1], {"a": 1},
]
nasty = st.one_of(
    st.sampled_from(EDGE),
    st.integers(),
    st.floats(),
    st.text(alphabet=st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=12),
    st.lists(st.integers(-5, 5000), max_size=4),
    st.dictionaries(st.sampled_from(["name", "kind", "a", "x", "period_us"]), st.integers(-3, 10**6), max_size=3),
    st.builds(deep, st.integers(20, 3000), st.sampled_from(["list", "map"])),
    st.builds(laughs, st.integers(3, 9)),
)


SWAPS = ["credit", "credit2", "rtds", "null", "arinc653", "cpu", "io", "idle", "periodic", "yield", "memwrite", "ptchurn", "tlbrandom",
         "io_client", "pingpong", "balloon", "hcall", "pv", "hvm-shadow", "hvm-hap", "xen", "xen-legacy", "downtime-target", "host0", "host1", "h0"]


@st.composite
def mild(draw: st.DrawFn, old: Any) -> Any:
    """A plausible neighbour of a value: a number scaled, a flag flipped, a name swapped."""
    if isinstance(old, bool):
        return not old
    if isinstance(old, (int, float)):
        f = draw(st.sampled_from([0, 0.001, 0.1, 0.5, 2, 3, 10, 1000]))
        return type(old)(old * f) if isinstance(old, float) or f == int(f) else int(old * f)
    if isinstance(old, str):
        return draw(st.sampled_from(SWAPS))
    if isinstance(old, list) and old:
        return old[: draw(st.integers(0, len(old)))]
    return old


def leaves(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into the document (maps and lists too, not only scalars)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += leaves(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += leaves(v, prefix + (i,))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


ALL_OPS = ("set", "set", "mild", "mild", "mild", "set-flag", "drop", "add", "repeat")
MILD_OPS = ("mild", "mild", "mild", "set-flag-mild")


@st.composite
def mutated(draw: st.DrawFn, doc: dict[str, Any], ops: tuple[str, ...] = ALL_OPS) -> tuple[dict[str, Any], list[str], str]:
    """(document, --set overrides, what was done)."""
    sets: list[str] = []
    done: list[str] = []
    for _ in range(draw(st.integers(1, 2))):
        op = draw(st.sampled_from(ops))
        paths = leaves(doc)
        if "mild" in op:  # neighbours of scalars (and shorter lists)
            paths = [p for p in paths if not isinstance(_get(doc, p), dict)] or paths
        path = draw(st.sampled_from(paths))
        parent, key = _get(doc, path[:-1]), path[-1]
        if op == "set":
            parent[key] = draw(nasty)
        elif op == "mild":
            parent[key] = draw(mild(parent[key]))
        elif op.startswith("set-flag"):
            value = draw(mild(parent[key]) if op == "set-flag-mild" else st.one_of(nasty, mild(parent[key])))
            sets.append(f"{'.'.join(map(str, path))}={to_yaml(value).strip()}")
        elif op == "drop":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "name", "kind", "pools", "max_mem_mib", "struct", "sched"]))] = draw(nasty)
        elif op == "repeat" and isinstance(parent, list):
            parent.append(parent[key])
        done.append(f"{op} {'.'.join(map(str, path))}")
    return doc, sets, "; ".join(done)


# --- documents from the JSON Schema ------------------------------------------------------------


def from_schema(node: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy for the values a (pydantic-generated) JSON Schema describes. The schema has
    no recursive references, so it is expanded eagerly."""
    if "$ref" in node:
        return from_schema(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    for key in ("anyOf", "oneOf"):
        if key in node:
            return st.one_of([from_schema(s, defs) for s in node[key]])
    if "allOf" in node:
        return from_schema(node["allOf"][0], defs)
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    t = node.get("type")
    if t == "object":
        props = node.get("properties", {})
        if not props:
            extra = node.get("additionalProperties", {})
            sub = from_schema(extra, defs) if isinstance(extra, dict) else st.integers()
            keys = node.get("propertyNames", {}).get("enum")
            return st.dictionaries(st.sampled_from(keys) if keys else st.text(min_size=1, max_size=6), sub, max_size=3)
        req = set(node.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v, defs) for k, v in props.items() if k in req},
            optional={k: from_schema(v, defs) for k, v in props.items() if k not in req},
        )
    if t == "array":
        lo = node.get("minItems", 0)
        return st.lists(from_schema(node.get("items", {}), defs), min_size=lo, max_size=min(node.get("maxItems", lo + 3), lo + 3))
    if t == "integer":
        lo = node.get("minimum", node["exclusiveMinimum"] + 1 if "exclusiveMinimum" in node else None)
        hi = node.get("maximum", node["exclusiveMaximum"] - 1 if "exclusiveMaximum" in node else None)
        return st.integers(lo, hi)
    if t == "number":
        return st.floats(
            node.get("minimum", node.get("exclusiveMinimum")),
            node.get("maximum", node.get("exclusiveMaximum")),
            exclude_min="exclusiveMinimum" in node,
            exclude_max="exclusiveMaximum" in node,
            allow_nan=False,
            allow_infinity=False,
        )
    if t == "string":
        pattern = node.get("pattern")
        return st.from_regex(pattern, fullmatch=True) if pattern else st.text(alphabet="abcxyz019-_.", max_size=8)
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    return st.one_of(st.none(), st.integers(-3, 100), st.text(alphabet="abc", max_size=3), st.lists(st.integers(0, 9), max_size=3))


SCHEMA = json_schema()
schema_docs = from_schema(SCHEMA, SCHEMA.get("$defs", {}))


def repair(doc: dict[str, Any]) -> dict[str, Any]:
    """Make the names of a schema-drawn document refer to each other (hosts, pools, domains,
    events, links), so that it reaches the cross-field checks and often a run."""
    hosts = doc["hosts"] = doc["hosts"][:3]
    for i, h in enumerate(hosts):
        h["name"] = f"h{i}"
        n = h.get("pcpus", 1)
        if h.get("pools"):
            pools = h["pools"][: max(1, min(len(h["pools"]), n))]
            for j, p in enumerate(pools):
                p["name"] = f"p{j}"
                p["cpus"] = [c for c in range(n) if c % len(pools) == j]
            h["pools"] = pools
        h.get("dom0", {}).pop("mem_mib", None)
    doms = doc.get("domains", [])[:6]
    for j, d in enumerate(doms):
        d["name"] = f"d{j}"
        d["host"] = hosts[j % len(hosts)]["name"]
        for k in ("pool", "hard_affinity", "soft_affinity", "sched", "vcpu_sched", "max_mem_mib"):
            d.pop(k, None)
        if d.get("vcpu_workloads") is not None:
            d.pop("workload", None)
            d["vcpus"] = len(d["vcpu_workloads"]) or 1
            if not d["vcpu_workloads"]:
                del d["vcpu_workloads"]
        d["mem_mib"] = min(d.get("mem_mib", 64), 64)
    doc["domains"] = doms
    dur = doc.setdefault("run", {}).get("duration_ms", 1000.0)
    evs = []
    for e in doc.get("events", [])[:4]:
        e["at_ms"] = min(e.get("at_ms", 0.0), dur)
        for act in e.values():
            if isinstance(act, dict):
                for k in ("domain",):
                    if k in act and doms:
                        act[k] = doms[0]["name"]
                for k in ("host", "to", "a", "b"):
                    if k in act:
                        act[k] = hosts[-1]["name"] if k in ("to", "b") else hosts[0]["name"]
        evs.append(e)
    doc["events"] = evs
    doc["links"] = [dict(ln, a="h0", b="h1") for ln in doc.get("links", [])[:1]] if len(hosts) > 1 else []
    return doc


# --- running one example -----------------------------------------------------------------------


class ExampleTimeout(BaseException):
    """An example ran past EXAMPLE_S (a BaseException: the CLI's guard must not eat it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """SIGALRM after ``seconds`` raises ExampleTimeout in the example; the alarm pytest-timeout
    may have armed for the whole test is restored afterwards."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise ExampleTimeout(f"the example took more than {seconds} s")

    prev_handler = signal.signal(signal.SIGALRM, on_alarm)
    prev_left, _ = signal.getitimer(signal.ITIMER_REAL)
    t0 = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, prev_handler)
        if prev_left:
            signal.setitimer(signal.ITIMER_REAL, max(prev_left - (time.monotonic() - t0), 0.01))


def cli(args: list[str]) -> tuple[int, str]:
    r = runner.invoke(app, args)
    out = r.output
    assert "Traceback" not in out, out
    assert r.exit_code in (0, 2), f"exit {r.exit_code}: {out[-2000:]}"
    if r.exit_code == 2:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert lines and lines[0].startswith("hvsim: "), out
        assert len(lines) <= 6, out  # one message (rich may wrap it)
    return r.exit_code, " ".join(out.split())


def _runnable(path: Path, sets: list[str]) -> bool:
    cfg, _ = load_config(path, sets)
    buf_mib = sum(h.mem_mib * (4113 if h.full_memory else 17) / 4096 for h in cfg.hosts)
    return (
        buf_mib <= RUN_MAX_BUFFER_MIB
        and sum(h.pcpus for h in cfg.hosts) <= RUN_MAX_PCPUS
        and sum(d.vcpus for d in cfg.domains) + sum(h.dom0.vcpus for h in cfg.hosts) <= RUN_MAX_VCPUS
    )


def check_example(text: str, sets: list[str], where: Path) -> None:
    """validate (``sets``: PATH=VALUE overrides); if accepted, validate and run under a duration
    cap: the same verdict, exit 0 or 2. The file is written in ``where`` (a copy of configs/,
    so that files a config names, like xl domain files, are found)."""
    cfg = where / "fuzz.yaml"
    cfg.write_text(text)
    set_flags = [a for s in sets for a in ("--set", s)]
    with time_limit(EXAMPLE_S):
        code, msg = cli(["validate", str(cfg), *set_flags])
        if code == 2:
            assert msg.startswith(f"hvsim: {where}"), msg  # the message names the file
            event("validate: exit 2")
            if os.environ.get("HVSIM_FUZZ_LOG"):
                with open(os.environ["HVSIM_FUZZ_LOG"], "a") as f:
                    f.write(msg.replace(str(where), "") + "\n")
            return
        event("validate: exit 0")
        cap = sets + [f"run.duration_ms={RUN_MS}"]
        cap_flags = [a for s in cap for a in ("--set", s)]
        code_v, msg_v = cli(["validate", str(cfg), *cap_flags])
        if code_v == 0 and not _runnable(cfg, cap):
            event("run: skipped (too big for CI)")
            return
        out = where / "fuzz-run"
        code_r, msg_r = cli(["run", str(cfg), "--backend", "inline", "--out", str(out), "-q", *cap_flags])
        shutil.rmtree(out, ignore_errors=True)
        assert code_v == code_r, f"validate says {code_v} ({msg_v}) but run says {code_r} ({msg_r})"
        if code_r == 2:
            assert msg_r.split(" run directory:")[0] == msg_v, (msg_v, msg_r)
        event(f"run: exit {code_r}")


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    """A copy of configs/ to write examples into."""
    d = Path(tempfile.mkdtemp(prefix="hvsim-fuzz-"))
    shutil.copytree(CONFIGS, d / "configs")
    yield d / "configs"
    shutil.rmtree(d, ignore_errors=True)


# --- the suites --------------------------------------------------------------------------------


@settings(FUZZ, max_examples=400)
@given(data=st.data())
def test_mutated_shipped_configs(tmp, data):
    base = data.draw(st.sampled_from(BASES), label="base")
    doc, sets, what = data.draw(mutated(_base(base)), label="mutation")
    check_example(to_yaml(doc), sets, tmp / base.parent.relative_to(CONFIGS))


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_plausible_variants_of_shipped_configs(tmp, data):
    """Values scaled, flags flipped, names swapped: many are accepted, and then they run."""
    base = data.draw(st.sampled_from(BASES), label="base")
    doc, sets, what = data.draw(mutated(_base(base), MILD_OPS), label="mutation")
    check_example(to_yaml(doc), sets, tmp / base.parent.relative_to(CONFIGS))


@settings(FUZZ, max_examples=300)
@given(doc=schema_docs, fix=st.booleans())
def test_schema_documents(tmp, doc, fix):
    if fix:
        doc = repair(doc)
    doc.setdefault("run", {})["duration_ms"] = min(doc.get("run", {}).get("duration_ms", RUN_MS), RUN_MS)
    for e in doc.get("events", []):
        e["at_ms"] = min(e.get("at_ms", 0), RUN_MS)
    check_example(to_yaml(doc), [], tmp)


TEXT_EDITS = [
    "junk: " + "[" * 5000,  # unclosed
    "junk: &a [*a]",  # cycle
    "junk: *nowhere",  # undefined alias
    "junk: !!python/object/apply:os.system [echo hi]",  # never executes: safe loading
    "junk: !!binary aGVsbG8=",
    "junk: 2001-12-14",
    "run: {seed: 1}\nrun: {seed: 2}",
    "\t- x",
    ": :",
    "hosts: {",
    "junk: '\\ud800'",
    "junk: \"\\ud800\"",
    "junk: " + "{a: " * 40 + "1" + "}" * 40,
    "junk: " + laughs(9).text,
    "junk: [&x [1,2], *x, *x]",
    "hosts: []",
    "hosts: null",
    "hosts: [{name: h0, pcpus: 1, pools: [{name: a, cpus: [0]}, {name: b, cpus: [0]}]}]",
    "---\nrun: {}\n---\nrun: {}",
    "",
    "%YAML 1.1\n---\nrun: {}",
    "\x00",
]


@settings(FUZZ, max_examples=100)
@given(base=st.sampled_from(BASES), edit=st.sampled_from(TEXT_EDITS), where=st.sampled_from(["end", "start", "replace", "cut"]), cut=st.floats(0, 1))
def test_yaml_text_edits(tmp, base, edit, where, cut):
    text = to_yaml(_base(base))
    if where == "end":
        text = text[:-2] + ", " + edit + "}\n" if edit.startswith("junk:") else text + edit + "\n"
    elif where == "start":
        text = edit + "\n" + text
    elif where == "replace":
        text = edit + "\n"
    else:
        text = text[: int(len(text) * cut)]
    check_example(text, [], tmp)
