"""The batch directory and its results table: one run directory per committed trial, one row
per trial in ``results.csv`` (see :mod:`cluster.batch` for the layout)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypedDict, Union

import yaml  # type: ignore[import-untyped, unused-ignore]  # no stubs installed (types-PyYAML)

from cluster.results import OutputError, RunDir, atomic_write, csv_text
from cluster.batch_wire import FAILED, OK, PENDING, Outcome, Status, TrialOutcome
from cluster.sweep import Sweep, Trial, spec_for_batch_dir
from cluster.traces import traces_read

if TYPE_CHECKING:

    pass

METRIC_FAMILIES = ("cpu_pct.", "wake_p50_us.", "wake_p99_us.")
MIGRATION_COLUMNS = {"mig_total_ms": "total_ms", "mig_downtime_ms": "downtime_ms", "mig_bytes_sent": "bytes_sent", "mig_rounds": "rounds", "mig_status": "status"}
TAIL_COLUMNS = ["wall_s", "trial_wall_s", "trace_digest", "config_digest"]
#: the cluster's figures (summary.json ``cluster``), first among the metrics where a run has them
CLUSTER_COLUMNS = {
    "migrations": "migrations_started",
    "migrations_completed": "migrations_completed",
    "migrations_aborted": "migrations_aborted",
    "mig_downtime_total_ms": "migration_downtime_ms",
    "sla_violation_pct": "sla_violation_share",
    "energy_kwh": "energy_kwh",
    "hosts_active_mean": "hosts_active_mean",
}

Cell = Union[str, int, float, bool, None]  # lists and mappings are JSON text in a cell
Row = dict[str, Cell]  # one trial's line of results.csv; metric columns depend on the config



# ---------------------------------------------------------------------------------------------


def headline_metrics(summary: Mapping[str, Any]) -> dict[str, Cell]:
    """The headline metrics of a run summary, as flat columns (guest domains only)."""
    doms = [d for d in summary.get("domains", []) if not d.get("dom0")]
    m: dict[str, Cell] = {}
    cl = summary.get("cluster")
    if isinstance(cl, Mapping):
        for col, key in CLUSTER_COLUMNS.items():
            v = cl.get(key)
            m[col] = round(100.0 * v, 6) if col == "sla_violation_pct" and isinstance(v, (int, float)) else v
    for d in doms:
        m[f"cpu_pct.{d['name']}"] = d.get("cpu_pct")
    for key in ("p50", "p99"):
        for d in doms:
            vals = [v["wake_latency_us"][key] for v in d.get("vcpus", []) if v.get("wake_latency_us", {}).get(key) is not None]
            m[f"wake_{key}_us.{d['name']}"] = max(vals) if vals else None
    migs = summary.get("migrations") or []
    if migs:
        for col, key in MIGRATION_COLUMNS.items():
            m[col] = migs[0].get(key)
    m["wall_s"] = summary.get("wall_s")
    m["trace_digest"] = summary.get("trace_digest")
    m["config_digest"] = summary.get("config_digest")
    return m


def _cell(v: Any) -> Cell:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else v


def make_row(trial: Trial, status: Status, summary: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None) -> Row:
    """``summary``: a run's summary.json; ``meta``: its trial.json (both as read from disk)."""
    row: Row = {"trial": trial.id}
    row.update({p: _cell(v) for p, v in trial.params.items()})
    row.update({"rep": trial.rep, "seed": trial.seed, "status": status, "error": (meta or {}).get("error") if status == FAILED else None})
    if summary is not None:
        row.update(headline_metrics(summary))
    row["trial_wall_s"] = (meta or {}).get("trial_wall_s")
    row.setdefault("config_digest", trial.digest)
    return row


def table_columns(rows: Sequence[Row], params: list[str]) -> list[str]:
    front = ["trial", *params, "rep", "seed", "status", "error"]
    seen: dict[str, int] = {}
    for r in rows:
        for k in r:
            if k not in seen and k not in front and k not in TAIL_COLUMNS:
                seen[k] = len(seen)

    def rank(k: str) -> tuple[int, int]:
        if k in CLUSTER_COLUMNS:
            return -1, list(CLUSTER_COLUMNS).index(k)
        fam = next((i for i, f in enumerate(METRIC_FAMILIES) if k.startswith(f)), None)
        if fam is None:
            fam = len(METRIC_FAMILIES) + (list(MIGRATION_COLUMNS).index(k) if k in MIGRATION_COLUMNS else len(MIGRATION_COLUMNS))
        return fam, seen[k]

    return front + sorted(seen, key=rank) + TAIL_COLUMNS


# ---------------------------------------------------------------------------------------------
# the batch directory
# ---------------------------------------------------------------------------------------------


class TrialMeta(TypedDict):
    """A trial's ``trial.json``, beside its run directory's files."""

    trial: str
    index: int
    params: dict[str, Any]
    rep: int
    seed: int
    status: Outcome
    error: str | None
    config_digest: str | None
    trial_wall_s: float | None
    launcher: str
    node: str | None
    pid: int | None
    started_unix: float | None
    traceback: str | None



class BatchDir:
    """A batch directory, locked by this process while it runs (one writer at a time)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.runs = self.root / "runs"
        self._lock_fd: int | None = None

    def run_dir(self, trial_id: str) -> Path:
        return self.runs / trial_id

    def is_batch(self) -> bool:
        return (self.root / "sweep.yaml").is_file()

    def open(self, *, keep_existing: bool) -> None:
        """Create (or reopen) the directory and take its lock; refuse to mix with other data."""
        if self.root.exists() and not self.root.is_dir():
            raise OutputError(f"{self.root}: exists and is not a directory")
        if self.root.exists() and any(self.root.iterdir()):
            if not self.is_batch():
                raise OutputError(f"{self.root}: exists and is not a batch directory (no sweep.yaml); choose another --out")
            if not keep_existing:
                raise OutputError(f"{self.root}: already holds a batch; pass --resume to continue it (finished trials are kept), --only ID to rerun some trials, or choose another --out")
        self.runs.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"{self.root}: another batch is running in this directory") from None
        self._lock_fd = fd
        self._sweep_leftovers()

    def close(self) -> None:
        if self._lock_fd is not None:
            self._sweep_leftovers()  # an interrupt can land inside an atomic write
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def _sweep_leftovers(self) -> None:
        """Remove what a killed driver may have left half-made (we hold the lock: nobody else writes)."""
        for p in self.runs.iterdir():
            if p.name.startswith(".") and (".partial-" in p.name or ".old-" in p.name):
                shutil.rmtree(p, ignore_errors=True)
        for p in self.root.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
                p.unlink(missing_ok=True)

    def write_spec(self, sweep: Sweep) -> None:
        text = sweep.base_path.read_text()
        if traces_read(sweep.base_doc):  # trace files were read into the base: keep what was read
            text = yaml.safe_dump(sweep.base_doc, sort_keys=False)
        atomic_write(self.root / "base.yaml", text)
        atomic_write(self.root / "sweep.yaml", spec_for_batch_dir(sweep))

    def state(self, trial: Trial) -> tuple[Status, Row]:
        """What the disk says about a trial: (status, row). ``ok`` only if its digest matches."""
        d = self.run_dir(trial.id)
        meta = _read_json(d / "trial.json")
        summary = _read_json(d / "summary.json")
        if summary is not None and summary.get("config_digest") == trial.digest:
            return OK, make_row(trial, OK, summary, meta)
        if summary is None and meta is not None and meta.get("status") == FAILED and meta.get("config_digest") == trial.digest:
            return FAILED, make_row(trial, FAILED, None, meta)
        return PENDING, make_row(trial, PENDING)

    def commit(self, trial: Trial, outcome: TrialOutcome, launcher: str) -> Row:
        """Write a trial's run directory whole (replacing an older one); return its row."""
        files = dict(outcome.files)
        if outcome.status != OK or "config.yaml" not in files:
            files["config.yaml"] = yaml.safe_dump(trial.resolved, sort_keys=False).encode()
        meta: TrialMeta = {
            "trial": trial.id,
            "index": trial.index,
            "params": trial.params,
            "rep": trial.rep,
            "seed": trial.seed,
            "status": outcome.status,
            "error": outcome.error,
            "config_digest": trial.digest,
            "trial_wall_s": outcome.trial_wall_s,
            "launcher": launcher,
            "node": outcome.node,
            "pid": outcome.pid,
            "started_unix": outcome.started_unix,
            "traceback": outcome.traceback,
        }
        rd = RunDir(self.run_dir(trial.id), force=True)
        try:
            for name, data in files.items():
                rd.path(name).parent.mkdir(parents=True, exist_ok=True)
                rd.write(name, data)
            rd.write("trial.json", json.dumps(meta, indent=2) + "\n")
            rd.commit()
        finally:
            rd.abort()
        summary = json.loads(files["summary.json"]) if outcome.status == OK else None
        return make_row(trial, outcome.status, summary, meta)

    def write_results(self, rows: list[Row], columns: list[str]) -> None:
        atomic_write(self.root / "results.csv", csv_text(rows, columns))
        data = parquet_bytes(rows, columns)
        if data is not None:
            atomic_write(self.root / "results.parquet", data)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from disk, or None if it is missing, unreadable or not an object."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def parquet_bytes(rows: list[Row], columns: list[str]) -> bytes | None:
    """The table as Parquet, or None when pyarrow is not installed (it is optional)."""
    try:
        import pyarrow as pa  # type: ignore[import-not-found, unused-ignore]  # optional, untyped
        import pyarrow.parquet as pq  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    cols: dict[str, Any] = {}
    for c in columns:
        vals = [r.get(c) for r in rows]
        try:
            cols[c] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):  # mixed types: keep them as text
            cols[c] = pa.array([None if v is None else str(v) for v in vals])
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(cols), sink)
    data: bytes = sink.getvalue().to_pybytes()
    return data


# ---------------------------------------------------------------------------------------------
# a batch
# ---------------------------------------------------------------------------------------------
