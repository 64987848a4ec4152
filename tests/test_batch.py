"""Batch runs end to end: the batch directory and its table, Ray against serial, failed trials,
bad input, resume after an interruption (in process and a real SIGINT), and the report."""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import msgpack

from cluster.batch import BatchInterrupted, RayLauncher, SerialLauncher, run_batch
from cluster.batch_table import headline_metrics, table_columns
from cluster.batch_wire import TrialJob, TrialOutcome, pack_message, unpack_message
from cluster.cli import app
from cluster.sweep import plan_sweep
from hosts.wire import WireError

from conftest import CONFIGS

runner = CliRunner()

# One pCPU, two CPU hogs (a at weight 256, b swept) and a light I/O guest.
TINY = {
    "run": {"seed": 1, "duration_ms": 4000},
    "hosts": [{"name": "h0", "pcpus": 1, "mem_mib": 512, "scheduler": {"name": "credit", "ratelimit_us": 1000}}],
    "domains": [
        {"name": "a", "host": "h0", "mem_mib": 64, "weight": 256, "workload": {"kind": "cpu"}},
        {"name": "b", "host": "h0", "mem_mib": 64, "weight": 256, "workload": {"kind": "cpu"}},
        {"name": "web", "host": "h0", "mem_mib": 64, "workload": {"kind": "io", "think_ms": 10, "burst_us": 200}},
    ],
}
GRID = {"domains.b.weight": [128, 512], "hosts.*.scheduler.ratelimit_us": [0, 1000]}
WALL = ("wall_s", "trial_wall_s")


def make_sweep(dirpath: Path, spec: dict, base: dict = TINY, name: str = "tiny") -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / f"{name}-base.yaml").write_text(yaml.safe_dump(base))
    p = dirpath / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "base": f"{name}-base.yaml", **spec}, sort_keys=False))
    return p


def read_table(batch: Path) -> list[dict]:
    with (batch / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def no_wall(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL} for r in rows]


def leftovers(batch: Path) -> list[str]:
    """Hidden, half-built things in a batch directory (there must be none)."""
    return [str(p) for p in batch.rglob(".*")]


def stamps(batch: Path, status: str = "ok") -> dict[str, tuple]:
    """(inode, mtime) of each finished trial's summary.json and trial.json: changes if it re-ran."""
    out = {}
    for r in read_table(batch):
        if r["status"] == status:
            d = batch / "runs" / r["trial"]
            out[r["trial"]] = tuple((s.st_ino, s.st_mtime_ns) for s in (os.stat(d / "summary.json"), os.stat(d / "trial.json")))
    return out


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("sweep"), {"grid": GRID, "repetitions": 2, "seed": 5})


@pytest.fixture(scope="module")
def serial_batch(tiny_sweep, tmp_path_factory) -> Path:
    """The tiny sweep (8 trials) run with the serial launcher through the CLI."""
    out = tmp_path_factory.mktemp("serial") / "batch"
    r = runner.invoke(app, ["batch", str(tiny_sweep), "--out", str(out), "--launcher", "serial"])
    assert r.exit_code == 0, r.output
    return out


def test_batch_directory_and_table(serial_batch, tiny_sweep):
    b = serial_batch
    assert {p.name for p in b.iterdir()} >= {"sweep.yaml", "base.yaml", "runs", "results.csv"}
    assert not leftovers(b)
    rows = read_table(b)
    _, trials = plan_sweep(tiny_sweep)
    assert [r["trial"] for r in rows] == [t.id for t in trials] and len(rows) == 8
    cols = list(rows[0])
    assert cols[:7] == ["trial", "domains.b.weight", "hosts.*.scheduler.ratelimit_us", "rep", "seed", "status", "error"]
    assert {"cpu_pct.a", "cpu_pct.b", "cpu_pct.web", "wake_p50_us.web", "wake_p99_us.web", "wall_s", "trace_digest", "config_digest"} <= set(cols)
    assert not any(c.startswith("mig_") for c in cols), "no migration in these runs, so no migration columns"
    for r, t in zip(rows, trials):
        d = b / "runs" / r["trial"]
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        summary = json.loads((d / "summary.json").read_text())
        meta = json.loads((d / "trial.json").read_text())
        assert r["status"] == "ok" and r["error"] == ""
        assert int(r["seed"]) == cfg["run"]["seed"] == summary["seed"] == t.seed
        assert int(r["domains.b.weight"]) == cfg["domains"][1]["weight"]
        assert {h["scheduler"]["ratelimit_us"] for h in cfg["hosts"]} == {int(r["hosts.*.scheduler.ratelimit_us"])}
        assert r["config_digest"] == summary["config_digest"] == t.digest == meta["config_digest"]
        assert meta["launcher"] == "serial" and meta["status"] == "ok"
        # Credit splits what the hogs get by weight: b's part is w / (256 + w)
        a_pct, b_pct, w = float(r["cpu_pct.a"]), float(r["cpu_pct.b"]), int(r["domains.b.weight"])
        assert abs(100 * b_pct / (a_pct + b_pct) - 100 * w / (256 + w)) < 2.0, r
    # repetitions differ only by seed: same seed for rep k at every point, and they are not copies
    assert len({r["seed"] for r in rows}) == 2
    assert len({r["trace_digest"] for r in rows}) == 8
    # Parquet only when pyarrow is installed (optional); then it holds the same table
    if importlib.util.find_spec("pyarrow") is None:
        assert not (b / "results.parquet").exists()
    else:
        import pyarrow.parquet as pq

        assert pq.read_table(b / "results.parquet").column("trial").to_pylist() == [r["trial"] for r in rows]
    # the batch directory is self-contained: its sweep.yaml plans the same trials
    _, again = plan_sweep(b / "sweep.yaml")
    assert [(t.id, t.digest) for t in again] == [(t.id, t.digest) for t in trials]


@pytest.mark.ray
def test_ray_launcher_gives_the_rows_of_the_serial_launcher(serial_batch, tiny_sweep, tmp_path, ray_session):
    out = tmp_path / "ray"
    r = runner.invoke(app, ["batch", str(tiny_sweep), "--out", str(out), "--max-parallel", "2"])
    assert r.exit_code == 0, r.output
    ray_rows, serial_rows = read_table(out), read_table(serial_batch)
    assert no_wall(ray_rows) == no_wall(serial_rows)
    assert all(r["wall_s"] for r in ray_rows)
    metas = [json.loads((out / "runs" / r["trial"] / "trial.json").read_text()) for r in ray_rows]
    assert {m["launcher"] for m in metas} == {"ray"}
    assert os.getpid() not in {m["pid"] for m in metas}, "trials ran in Ray workers, not in the driver"
    assert not leftovers(out)


@pytest.mark.parametrize("launcher", ["serial", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_trial_that_raises_is_a_failed_row(launcher, tmp_path, request):
    if launcher == "ray":
        request.getfixturevalue("ray_session")
    # Every config the planner accepts runs (the fuzz suite holds it to that), so a trial fails only
    # where the worker's world differs from the driver's (another hvsim on a Ray node, a file gone).
    # Here the worker is handed a config the planner never saw: trial b's resolved document gets a
    # 1 TB maximum after planning. The worker re-validates what it runs, so the trial raises there.
    sweep_file = make_sweep(tmp_path, {"grid": {"domains.b.max_mem_mib": [64, 96, 128]}, "set": {"run.duration_ms": 300}})
    sweep, trials = plan_sweep(sweep_file)
    bad_id = "max_mem_mib=96_r0"
    for t in trials:
        if t.id == bad_id:
            t.resolved["domains"][1]["max_mem_mib"] = 1000000
    out = tmp_path / "b"

    def launch() -> object:
        kind = SerialLauncher() if launcher == "serial" else RayLauncher(max_parallel=2)
        return run_batch(sweep, trials, out, kind, resume=out.exists())

    res = launch()
    assert (res.counts.total, res.counts.done, res.counts.failed) == (3, 3, 1)
    assert [tid for tid, _ in res.failed] == [bad_id]
    rows = {x["trial"]: x for x in read_table(out)}
    assert [x["status"] for x in rows.values()] == ["ok", "failed", "ok"]
    bad = rows[bad_id]
    assert "domains[b].max_mem_mib" in bad["error"] and "does not fit on host h0" in bad["error"] and bad["cpu_pct.a"] == ""
    d = out / "runs" / bad_id
    assert {p.name for p in d.iterdir()} == {"config.yaml", "trial.json"}  # its config kept beside the error
    assert yaml.safe_load((d / "config.yaml").read_text())["domains"][1]["max_mem_mib"] == 1000000
    meta = json.loads((d / "trial.json").read_text())
    assert meta["status"] == "failed" and "Traceback" in meta["traceback"]
    assert float(rows["max_mem_mib=64_r0"]["cpu_pct.a"]) > 0
    # resume reruns the failed trial only: the finished ones are not touched
    before = stamps(out)
    res = launch()
    assert (res.counts.skipped, res.counts.done, res.counts.failed) == (2, 1, 1)
    assert stamps(out) == before
    assert json.loads((d / "trial.json").read_text())["started_unix"] != meta["started_unix"]
    assert not leftovers(out)


def test_an_invalid_trial_stops_the_batch_before_any_work(tmp_path):
    sweep = make_sweep(tmp_path, {"grid": {"domains.b.weight": [256, 0]}})
    out = tmp_path / "b"
    r = runner.invoke(app, ["batch", str(sweep), "--out", str(out)])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert str(sweep) in text and "trial weight=0_r0" in text and "domains[b].weight" in text and "greater than or equal to 1" in text
    assert "Traceback" not in r.output and len([ln for ln in r.output.splitlines() if ln.strip()]) <= 3
    assert not out.exists()
    r = runner.invoke(app, ["batch", str(make_sweep(tmp_path, {"grid": {"domains.zzz.weight": [1]}}, name="t2")), "--out", str(out)])
    assert r.exit_code == 2 and "grid.domains.zzz.weight" in r.output and "no element named 'zzz'" in r.output
    assert not out.exists()


def test_existing_batch_needs_resume_and_only_reruns_one_trial(tmp_path):
    sweep = make_sweep(tmp_path, {"grid": {"domains.b.weight": [128, 512]}, "set": {"run.duration_ms": 300}})
    out = tmp_path / "b"
    assert runner.invoke(app, ["batch", str(sweep), "--out", str(out), "--launcher", "serial"]).exit_code == 0
    before = stamps(out)
    r = runner.invoke(app, ["batch", str(sweep), "--out", str(out), "--launcher", "serial"])
    assert r.exit_code == 2 and "already holds a batch" in r.output and "--resume" in r.output
    r = runner.invoke(app, ["batch", str(sweep), "--out", str(out), "--launcher", "serial", "--resume"])
    assert r.exit_code == 0 and "0 trial(s) run, 2 already complete" in r.output
    assert stamps(out) == before
    r = runner.invoke(app, ["batch", str(sweep), "--out", str(out), "--launcher", "serial", "--only", "weight=512_r0"])
    assert r.exit_code == 0, r.output
    after = stamps(out)
    assert after["weight=128_r0"] == before["weight=128_r0"] and after["weight=512_r0"] != before["weight=512_r0"]
    # the resume key is the resolved config's digest: a changed base makes every trial stale
    base = tmp_path / "tiny-base.yaml"
    base.write_text(base.read_text().replace("seed: 1", "seed: 2"))
    r = runner.invoke(app, ["batch", str(sweep), "--out", str(out), "--launcher", "serial", "--resume"])
    assert r.exit_code == 0 and "2 trial(s) run" in r.output and "already complete" not in r.output, r.output
    assert not set(stamps(out).values()) & set(after.values())
    r = runner.invoke(app, ["batch", str(sweep), "--out", str(out), "--only", "weight=9*"])
    assert r.exit_code == 2 and "--only" in r.output and "matches no trial" in r.output
    r = runner.invoke(app, ["batch", str(sweep), "--list"])
    assert r.exit_code == 0 and "weight=128_r0" in r.output and "weight=512_r0" in r.output and "every config valid" in r.output


def _interrupt_after(n: int):
    seen = []

    def hook(row, counts):
        seen.append(row["trial"])
        if len(seen) == n:
            raise KeyboardInterrupt  # what Ctrl-C does, at a known point

    return hook


@pytest.mark.parametrize("launcher", ["serial", pytest.param("ray", marks=pytest.mark.ray)])
def test_resume_after_an_interrupt_keeps_every_finished_trial(launcher, tiny_sweep, tmp_path, request):
    if launcher == "ray":
        request.getfixturevalue("ray_session")
    sweep, trials = plan_sweep(tiny_sweep)
    out = tmp_path / "b"
    tmp_before = _trial_tmp_dirs()
    make = (lambda: RayLauncher(max_parallel=2)) if launcher == "ray" else SerialLauncher
    with pytest.raises(BatchInterrupted) as ei:
        run_batch(sweep, trials, out, make(), on_trial=_interrupt_after(3))
    rows = read_table(out)
    finished = stamps(out)
    assert [r["trial"] for r in rows] == [t.id for t in trials]
    assert 3 <= len(finished) < len(trials) and ei.value.counts.finished == len(finished)
    assert {r["status"] for r in rows if r["trial"] not in finished} == {"pending"}
    assert all((out / "runs" / tid / "summary.json").exists() for tid in finished)
    assert not leftovers(out)
    res = run_batch(sweep, trials, out, make(), resume=True)
    assert res.counts.skipped == len(finished) and res.counts.done == len(trials) - len(finished)
    assert {k: v for k, v in stamps(out).items() if k in finished} == finished, "a finished trial ran again"
    rows = read_table(out)
    assert sorted(r["trial"] for r in rows) == sorted(t.id for t in trials)  # each once
    assert {r["status"] for r in rows} == {"ok"}
    assert not leftovers(out)
    assert not _trial_tmp_dirs() - tmp_before, "a cancelled trial left its scratch directory"


# Heavier trials (~0.4 s each), and enough of them that once two are committed several seconds
# of work remain: a real Ctrl-C then lands in the middle of the batch.
SLOW = {
    "run": {"seed": 2, "duration_ms": 1500},
    "hosts": [{"name": "h0", "pcpus": 2, "mem_mib": 1024, "scheduler": {"name": "credit"}}],
    "domains": [{"name": f"d{i}", "host": "h0", "mem_mib": 64, "workload": {"kind": "io", "think_ms": 1, "burst_us": 300}} for i in range(4)],
}


N_SLOW = 16


def _trial_tmp_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "hvsim-trial-*")))


def committed(batch: Path) -> int:
    """Trials the batch has committed so far (its progress, as the batch directory shows it)."""
    return len([p for p in (batch / "runs").glob("*/trial.json") if not p.parent.name.startswith(".")])


@pytest.mark.ray
@pytest.mark.slow
def test_sigint_midway_then_resume(tmp_path, ray_session):
    sweep = make_sweep(tmp_path, {"grid": {"domains.d0.weight": [64 * (i + 1) for i in range(N_SLOW)]}}, base=SLOW, name="slow")
    out = tmp_path / "b"
    tmp_before = _trial_tmp_dirs()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-c", "from cluster.cli import main; main()", "batch", str(sweep), "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and committed(out) < 2:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()
        assert 2 <= committed(out) <= N_SLOW - 4, "trials must remain when the signal is sent"
        os.kill(proc.pid, signal.SIGINT)
        output = proc.communicate(timeout=180)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, output
    assert "--resume" in output and "interrupted" in output
    rows = read_table(out)
    finished = stamps(out)
    assert 2 <= len(finished) < N_SLOW, output
    assert len(rows) == N_SLOW and {r["status"] for r in rows if r["trial"] not in finished} <= {"pending"}
    assert not leftovers(out)
    r = runner.invoke(app, ["batch", str(sweep), "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert f"{N_SLOW - len(finished)} trial(s) run, {len(finished)} already complete" in r.output
    assert {k: v for k, v in stamps(out).items() if k in finished} == finished, "a finished trial ran again"
    rows = read_table(out)
    assert len({r["trial"] for r in rows}) == N_SLOW and {r["status"] for r in rows} == {"ok"}
    deadline = time.monotonic() + 60  # the interrupted workers' scratch directories go away with them
    while time.monotonic() < deadline and _trial_tmp_dirs() - tmp_before:
        time.sleep(0.1)
    assert not _trial_tmp_dirs() - tmp_before


def _png_data(path: Path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text["hvsim-data"])


def _expected_series(rows: list[dict], x: str, y: str, hue: str) -> dict:
    """Mean, min and max of y per (hue, x) over finished rows, straight from the CSV."""
    groups: dict = {}
    for r in rows:
        if r["status"] == "ok" and r[y] != "":
            groups.setdefault((float(r[hue]), float(r[x])), []).append(float(r[y]))
    return {k: (sum(v) / len(v), min(v), max(v), len(v)) for k, v in groups.items()}


def test_report_plots_match_the_table(serial_batch, tmp_path):
    r = runner.invoke(app, ["report", str(serial_batch)])
    assert r.exit_code == 0, r.output
    assert "8 ok, 0 failed, 0 pending" in r.output
    rows = read_table(serial_batch)
    # default: one plot per headline metric that varies across the table
    varying = [c for c in rows[0] if c.startswith(("cpu_pct.", "wake_p50_us.", "wake_p99_us.")) and len({r[c] for r in rows if r[c] != ""}) > 1]
    pngs = sorted((serial_batch / "plots").glob("*.png"))
    assert {p.name for p in pngs} == {f"{c}_vs_weight_by_ratelimit_us.png" for c in varying}
    assert "cpu_pct.b_vs_weight_by_ratelimit_us.png" in {p.name for p in pngs}
    x, hue = "domains.b.weight", "hosts.*.scheduler.ratelimit_us"
    for p in pngs:
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        data = _png_data(p)
        assert (data["x"], data["hue"]) == (x, hue)
        got = {(float(s["hue"]), float(xv)): (m, lo, hi, n) for s in data["series"] for xv, m, lo, hi, n in zip(s["x"], s["mean"], s["min"], s["max"], s["n"])}
        want = _expected_series(rows, x, data["y"], hue)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-9), (p.name, k)
        with (p.with_suffix(".csv")).open(newline="") as f:
            side = list(csv.DictReader(f))
        assert len(side) == len(want) and {(float(s["ratelimit_us"]), float(s["weight"])) for s in side} == set(want)
    # explicit axes, by label; the other swept parameter becomes the hue
    r = runner.invoke(app, ["report", str(serial_batch), "--x", "ratelimit_us", "--y", "cpu_pct.b", "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    (only,) = list((tmp_path / "p").glob("*.png"))
    assert only.name == "cpu_pct.b_vs_ratelimit_us_by_weight.png"
    data = _png_data(only)
    want = _expected_series(rows, "hosts.*.scheduler.ratelimit_us", "cpu_pct.b", "domains.b.weight")
    got = {(float(s["hue"]), float(xv)): m for s in data["series"] for xv, m in zip(s["x"], s["mean"])}
    assert got == pytest.approx({k: v[0] for k, v in want.items()})
    r = runner.invoke(app, ["report", str(serial_batch), "--y", "cpu_pct.nobody"])
    assert r.exit_code == 2 and "--y" in r.output and "cpu_pct.b" in r.output
    r = runner.invoke(app, ["report", str(serial_batch), "--x", "nothing"])
    assert r.exit_code == 2 and "--x" in r.output and "unknown parameter 'nothing'" in r.output
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "no results.csv" in r.output


def test_credit_weights_example_runs(tmp_path):
    out = tmp_path / "cw"
    r = runner.invoke(
        app,
        ["batch", str(CONFIGS / "sweeps" / "credit-weights.yaml"), "--out", str(out), "--launcher", "serial", "--only", "weight=512_ratelimit_us=1000_r*", "--only", "weight=128_ratelimit_us=0_r0"],
    )
    assert r.exit_code == 0, r.output
    rows = read_table(out)
    done = [x for x in rows if x["status"] == "ok"]
    assert len(rows) == 30 and len(done) == 4 and {x["status"] for x in rows} == {"ok", "pending"}
    for x in done:  # validation.md case A, 1:2 -> 33.3 / 66.7 %, of what the two hogs get
        w = int(x["domains.b.weight"])
        share = 100 * float(x["cpu_pct.b"]) / (float(x["cpu_pct.a"]) + float(x["cpu_pct.b"]))
        assert abs(share - 100 * w / (256 + w)) < 2.0, x


def test_migration_dirty_rate_example_runs(tmp_path):
    # Two trials of the example: a 256 MiB guest over 1 Gbit/s dirtying 10 or 400 MB/s of a
    # 64 MiB working set. Every page goes once at least: 256 MiB at 1e9 bit/s = 2.147 s.
    # At 400 MB/s (over the link's 125 MB/s) the working set is mostly dirty again in every
    # round, so Xen stops after 5 live rounds and sends it paused: at most 64 MiB / 125 MB/s =
    # 537 ms, and not much less (random writes with replacement over ~3 working sets per
    # round leave ~5% clean; log-dirty faults take some of the guest's CPU).
    # At 10 MB/s the rounds shrink below 50 pages and the paused round is nearly empty.
    out = tmp_path / "mdr"
    ids = ["dirty_mb_s=10_policy=xen_mbit_s=1000_lat_us=100_r0", "dirty_mb_s=400_policy=xen_mbit_s=1000_lat_us=100_r0"]
    r = runner.invoke(app, ["batch", str(CONFIGS / "sweeps" / "migration-dirty-rate.yaml"), "--out", str(out), "--launcher", "serial", *[a for i in ids for a in ("--only", i)]])
    assert r.exit_code == 0, r.output
    rows = {x["trial"]: x for x in read_table(out) if x["status"] == "ok"}
    assert set(rows) == set(ids)
    slow, fast = rows[ids[0]], rows[ids[1]]
    guest_bytes = 256 * 2**20
    for x in (slow, fast):
        assert x["mig_status"] == "completed"
        assert float(x["mig_total_ms"]) >= guest_bytes * 8 / 1e9 * 1000
        assert int(x["mig_bytes_sent"]) >= guest_bytes
    assert int(fast["mig_rounds"]) == 5
    ws_ms = 64 * 2**20 * 8 / 1e9 * 1000
    assert 0.8 * ws_ms <= float(fast["mig_downtime_ms"]) <= ws_ms + 5.0  # + records and link latency
    assert float(slow["mig_downtime_ms"]) < 50.0
    assert int(fast["mig_bytes_sent"]) > int(slow["mig_bytes_sent"]) + 4 * 64 * 2**20 * 0.9  # 4 more full rounds of the working set
    r = runner.invoke(app, ["report", str(out), "--x", "dirty_mb_s", "--y", "mig_downtime_ms", "--hue", "policy"])
    assert r.exit_code == 0, r.output
    assert any(p.stat().st_size > 0 for p in out.rglob("*.png"))


def test_headline_metrics_and_migration_columns():
    def vcpu(p50, p99):
        return {"id": 0, "wake_latency_us": {"p50": p50, "p99": p99, "max": p99, "count": 1 if p50 is not None else 0}}

    summary = {
        "wall_s": 0.5,
        "trace_digest": "t",
        "config_digest": "c",
        "domains": [
            {"name": "Domain-0", "dom0": True, "cpu_pct": 0.1, "vcpus": [vcpu(1.0, 2.0)]},
            {"name": "web", "dom0": False, "cpu_pct": 12.5, "vcpus": [vcpu(10.0, 90.0), vcpu(30.0, 40.0), vcpu(None, None)]},
            {"name": "hog", "dom0": False, "cpu_pct": 87.0, "vcpus": [vcpu(None, None)]},
        ],
    }
    m = headline_metrics(summary)
    assert m["cpu_pct.web"] == 12.5 and m["cpu_pct.hog"] == 87.0 and "cpu_pct.Domain-0" not in m
    assert m["wake_p50_us.web"] == 30.0 and m["wake_p99_us.web"] == 90.0  # the worst vCPU
    assert m["wake_p50_us.hog"] is None
    assert not any(k.startswith("mig_") for k in m)
    migs = [{"domain": "web", "src": "h0", "dst": "h1", "policy": "xen", "status": "done", "total_ms": 812.0, "downtime_ms": 31.5, "rounds": 6, "bytes_sent": 123456789}, {"total_ms": 1.0}]
    m2 = headline_metrics({**summary, "migrations": migs})
    assert (m2["mig_total_ms"], m2["mig_downtime_ms"], m2["mig_bytes_sent"], m2["mig_rounds"], m2["mig_status"]) == (812.0, 31.5, 123456789, 6, "done")
    cols = table_columns([{"trial": "t", "x": 1, **m2}], ["x"])
    assert cols.index("cpu_pct.hog") < cols.index("wake_p50_us.web") < cols.index("wake_p99_us.hog") < cols.index("mig_total_ms") < cols.index("mig_status") < cols.index("wall_s")


def test_batch_messages_keep_their_type_and_refuse_unknown_kinds():
    job = TrialJob("weight=128_r0", {"run": {"seed": 1}, "hosts": [{"name": "h0", "pcpus": 1}]})
    assert unpack_message(pack_message(job)) == job
    out = TrialOutcome("weight=128_r0", "ok", None, None, {"summary.json": b"{}"}, 0.25, "node", 42, 1.5)
    assert unpack_message(pack_message(out)) == out
    # by name, not position: a record with a field more, or one less, is refused
    doc = msgpack.unpackb(pack_message(out), raw=False)
    for bad in ({**doc, "kind": "trial_result"}, {k: v for k, v in doc.items() if k != "kind"}, {**doc, "extra": 1}, {k: v for k, v in doc.items() if k != "pid"}, {**doc, "status": "pending"}, {**doc, "files": {"a": "text"}}):
        with pytest.raises(WireError):
            unpack_message(msgpack.packb(bad, use_bin_type=True))
    with pytest.raises(WireError, match="unknown batch message kind"):
        unpack_message(msgpack.packb({"kind": "shutdown"}, use_bin_type=True))
    with pytest.raises(WireError):
        unpack_message(msgpack.packb(["trial_job", "t", {}], use_bin_type=True))  # a positional tuple
