"""Nothing left behind: a run killed mid-way leaves no Ray process, no shared-memory segment,
no temporary directory and no run directory (half-written or otherwise)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import CONFIGS

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def shm_names() -> set[str]:
    return {os.path.basename(p) for p in glob.glob("/dev/shm/hvsim-*")}


def tmp_dirs() -> set[str]:
    import tempfile

    return set(glob.glob(os.path.join(tempfile.gettempdir(), "hvsim-ray-*"))) | set(glob.glob(os.path.join(tempfile.gettempdir(), "hvsim-fifo-*")))


def start_run(tmp_path, backend="ray"):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cluster.cli", "run", str(CONFIGS / "quickstart.yaml"), "--backend", backend, "--out", str(out), "-q",
           "--set", "run.duration_ms=3600000"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, out


def wait_for_actors(proc, timeout=90) -> list[psutil.Process]:
    """Wait until the run has its pCPU actors up; return every descendant seen."""
    seen: dict[int, psutil.Process] = {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for k in kids:
            seen[k.pid] = k
        names = []
        for k in kids:
            try:
                names.append(" ".join(k.cmdline()))
            except psutil.Error:
                pass
        if sum("PcpuActor" in n for n in names) >= 4:
            time.sleep(2.0)  # let it simulate a little
            for k in psutil.Process(proc.pid).children(recursive=True):
                seen[k.pid] = k
            return list(seen.values())
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    out = proc.stdout.read().decode() if proc.poll() is not None else ""
    raise AssertionError(f"run did not reach its actors: {out}")


def alive(procs: list[psutil.Process]) -> list[str]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_killed_run_leaves_nothing(tmp_path, sig):
    shm_before, tmp_before = shm_names(), tmp_dirs()
    proc, out = start_run(tmp_path)
    try:
        procs = wait_for_actors(proc)
        assert any("PcpuActor" in " ".join(p.cmdline()) for p in procs if p.is_running())
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=60)
        output = proc.stdout.read().decode()
        if sig != signal.SIGKILL:
            assert code == 130, output
            assert "interrupted" in output
        deadline = time.time() + 30
        while time.time() < deadline and (alive(procs) or shm_names() - shm_before or tmp_dirs() - tmp_before):
            time.sleep(0.5)
        assert alive(procs) == []
        assert shm_names() - shm_before == set()
        assert tmp_dirs() - tmp_before == set()
        assert not out.exists()
        assert [p.name for p in tmp_path.iterdir()] == []
    finally:
        if proc.poll() is None:
            proc.kill()
