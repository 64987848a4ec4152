"""Nothing left behind: a run killed mid-way leaves no Ray process, no shared-memory segment,
no temporary directory and no run directory (half-written or otherwise)."""

from __future__ import annotations

import glob
import json
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


def start_run(tmp_path, progress, backend="ray"):
    """A run long enough (10 simulated minutes, 50 progress steps) to be stopped mid-way."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cluster.cli", "run", str(CONFIGS / "quickstart.yaml"), "--backend", backend, "--out", str(out), "-q",
           "--set", "run.duration_ms=600000", "--progress-file", str(progress)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, out


def sim_ns(progress) -> tuple[int, int]:
    """(simulated time reached, end) from the run's progress file; (0, 1) before the first step."""
    try:
        doc = json.loads(progress.read_text())
    except FileNotFoundError:
        return 0, 1
    return doc["sim_ns"], doc["end_ns"]


def wait_until_simulating(proc, progress, timeout=180) -> list[psutil.Process]:
    """Wait until the run has simulated its first step; return every descendant seen."""
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for k in psutil.Process(proc.pid).children(recursive=True):
                seen[k.pid] = k
        except psutil.NoSuchProcess:
            break
        if sim_ns(progress)[0] > 0:
            for k in psutil.Process(proc.pid).children(recursive=True):
                seen[k.pid] = k
            return list(seen.values())
        time.sleep(0.1)
    out = proc.stdout.read().decode() if proc.poll() is not None else ""
    raise AssertionError(f"run did not start simulating: {out}")


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


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
def test_killed_run_leaves_nothing(tmp_path, tmp_path_factory, sig):
    shm_before, tmp_before = shm_names(), tmp_dirs()
    progress = tmp_path_factory.mktemp("progress") / "progress.json"
    proc, out = start_run(tmp_path, progress)
    try:
        procs = wait_until_simulating(proc, progress)
        assert sum("PcpuActor" in cmdline(p) for p in procs) >= 4  # 2 hosts x 2 pCPUs
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=120)
        output = proc.stdout.read().decode()
        reached, end = sim_ns(progress)
        assert 0 < reached < end, "the signal must land mid-run"
        if sig != signal.SIGKILL:
            assert code == 130, output
            assert "interrupted" in output
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (alive(procs) or shm_names() - shm_before or tmp_dirs() - tmp_before):
            time.sleep(0.5)
        assert alive(procs) == []
        assert shm_names() - shm_before == set()
        assert tmp_dirs() - tmp_before == set()
        assert not out.exists()
        assert [p.name for p in tmp_path.iterdir()] == []
    finally:
        if proc.poll() is None:
            proc.kill()
