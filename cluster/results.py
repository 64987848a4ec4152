"""The run directory: written whole or not at all.

A run is built in a hidden sibling directory and renamed into place at the end, so a reader
never sees half a run, and an existing directory is never overwritten unless asked (then the
old one is swapped out only after the new one is complete). Single files are written to a
temporary name and renamed (``atomic_write``).

Layout: ``config.yaml`` (the resolved config, seed included), ``summary.json``, ``vcpus.csv``,
``pcpus.csv``, ``trace.json`` (Chrome/Perfetto trace events, one track per pCPU), and
``toolstack.csv`` (what the domain manager did and when).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from hosts.messages import PcpuReport
from hosts.vcpu import vid_dom, vid_idx


class OutputError(ValueError):
    pass


def atomic_write(path: Path, data: bytes | str) -> None:
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def csv_text(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    buf = io.StringIO()
    if not rows and not columns:
        return ""
    cols = columns or list(rows[0])
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()


class RunDir:
    """A run directory under construction: ``commit()`` makes it appear, ``abort()`` removes it."""

    def __init__(self, final: Path, force: bool = False):
        self.final = Path(final)
        if self.final.exists() and not force:
            if self.final.is_dir() and not any(self.final.iterdir()):
                self.final.rmdir()
            else:
                raise OutputError(f"{self.final}: already exists; choose another --out or pass --force to replace it")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}.partial-"))
        self.force = force
        self.committed = False

    def path(self, name: str) -> Path:
        return self.tmp / name

    def write(self, name: str, data: bytes | str) -> None:
        atomic_write(self.tmp / name, data)

    def commit(self) -> Path:
        if self.final.exists():
            old = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}.old-"))
            os.rmdir(old)
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)
        self.committed = True
        return self.final

    def abort(self) -> None:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)


def perfetto_events(reports: dict[str, list[PcpuReport]], names: dict[int, str]) -> Iterable[dict[str, Any]]:
    """Chrome trace events: a process per host, a thread (track) per pCPU, a slice per run."""
    for pid, host in enumerate(reports):
        yield {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": host}}
        for r in sorted(reports[host], key=lambda r: r.pcpu):
            tid = r.pcpu
            yield {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": f"pCPU {tid}"}}
            yield {"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}}
            tr = np.frombuffer(r.trace, dtype=np.int64).reshape(-1, 3)
            for start, end, vid in tr.tolist():
                dname = names.get(vid_dom(vid), str(vid_dom(vid)))
                yield {
                    "name": f"{dname}.v{vid_idx(vid)}",
                    "cat": dname,
                    "ph": "X",
                    "ts": start / 1000.0,
                    "dur": (end - start) / 1000.0,
                    "pid": pid,
                    "tid": tid,
                }


def write_trace(path: Path, reports: dict[str, list[PcpuReport]], names: dict[int, str]) -> int:
    n = 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write('{"displayTimeUnit":"ns","traceEvents":[\n')
            first = True
            for ev in perfetto_events(reports, names):
                if not first:
                    f.write(",\n")
                f.write(json.dumps(ev, separators=(",", ":")))
                first = False
                n += 1
            f.write("\n]}\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return n


def write_run(rd: RunDir, *, resolved: dict[str, Any], summary: dict[str, Any], vcpu_rows: list[dict[str, Any]], reports: dict[str, list[PcpuReport]], names: dict[int, str], toolstack: list[dict[str, Any]], extra_files: dict[str, Any] | None = None) -> None:
    rd.write("config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    rd.write("summary.json", json.dumps(summary, indent=2) + "\n")
    rd.write("vcpus.csv", csv_text(vcpu_rows))
    rd.write("pcpus.csv", csv_text(summary["pcpus"]))
    rd.write("toolstack.csv", csv_text(toolstack, ["at_ns", "event", "domain", "host", "detail", "skipped"]))
    write_trace(rd.path("trace.json"), reports, names)
    for name, data in (extra_files or {}).items():
        rd.write(name, data)
