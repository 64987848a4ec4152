"""The compiled engine (mypyc, built by ``pip install -e .`` where a C compiler exists) and the
pure-Python one are the same simulator: every golden fingerprint holds on both.

``test_golden.py`` checks the engine this process runs (compiled where it was built); here a
subprocess runs every golden case again on the pure-Python modules (``HVSIM_PURE=1``), and a
copy of the package with one source edited must fall back to pure Python rather than run the
stale build. Without a compiled build there is only one engine and test_golden covers it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hosts
import hosts.pcpu

import golden

ROOT = Path(__file__).resolve().parent.parent
BUILT = any(p.name.startswith("pcpu.") and p.suffix == ".so" for p in (ROOT / "hosts").iterdir())
needs_build = pytest.mark.skipif(not BUILT, reason="no compiled build here (installed without a C compiler, or HVSIM_COMPILE=0)")


def probe(env_extra: dict[str, str], root: Path = ROOT, code: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra, "PYTHONPATH": os.pathsep.join([str(root), str(ROOT / "tests")])}
    script = "import json, hosts, hosts.pcpu, hosts.sched.credit2.pcpu as c2\n" + code + (
        "\nprint(json.dumps({'compiled': hosts.COMPILED, 'files': [hosts.pcpu.__file__, c2.__file__]}))"
    )
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=1200)


def test_the_flag_says_which_engine_runs():
    suffix = Path(hosts.pcpu.__file__).suffix
    assert hosts.COMPILED == (suffix == ".so"), hosts.pcpu.__file__
    pure = os.environ.get("HVSIM_PURE", "") not in ("", "0")
    assert hosts.COMPILED == (BUILT and not pure and not hosts._stale())


@needs_build
def test_pure_flag_runs_the_sources_beside_the_build():
    r = probe({"HVSIM_PURE": "1"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["compiled"] is False and all(f.endswith(".py") for f in out["files"]), out


@needs_build
@pytest.mark.slow
def test_pure_engine_gives_every_golden_fingerprint():
    code = (
        "import golden\n"
        "got = {n: golden.run_case(p, o) for n, p, o in golden.cases()}\n"
        "print(json.dumps(got))"
    )
    r = probe({"HVSIM_PURE": "1"}, code=code)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-2])
    assert json.loads(r.stdout.splitlines()[-1])["compiled"] is False
    assert got == json.loads(golden.GOLDEN.read_text())


@needs_build
def test_an_edited_source_is_never_shadowed_by_a_stale_build(tmp_path):
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "hosts", copy / "hosts", ignore=shutil.ignore_patterns("__pycache__"))
    r = probe({"HVSIM_PURE": "0"}, root=copy)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["compiled"] is True and all(str(copy) in f and f.endswith(".so") for f in out["files"]), out
    assert "older than its sources" not in r.stderr
    src = copy / "hosts" / "sched" / "credit2" / "pcpu.py"
    src.write_text(src.read_text() + "\n# an edit after the build\n")
    r = probe({"HVSIM_PURE": "0"}, root=copy)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["compiled"] is False and all(f.endswith(".py") for f in out["files"]), out
    assert "older than its sources (hosts/sched/credit2/pcpu.py changed)" in r.stderr and "pip install -e ." in r.stderr


@needs_build
def test_a_module_left_compiled_by_an_older_build_is_not_used(tmp_path):
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "hosts", copy / "hosts", ignore=shutil.ignore_patterns("__pycache__"))
    # hosts/memory.py is not compiled: a memory.*.so beside it can only be left from another build
    shim = next((copy / "hosts").glob("clock.*.so"))
    shutil.copy2(shim, copy / "hosts" / shim.name.replace("clock.", "memory.", 1))
    r = probe({"HVSIM_PURE": "0"}, root=copy)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["compiled"] is False and all(f.endswith(".py") for f in out["files"]), out
    assert "hosts/memory.py" in r.stderr and "older than its sources" in r.stderr
