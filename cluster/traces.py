"""Utilisation traces: streaming readers for the public formats, and their resolution at load.

Three formats, each read line by line (a ``.gz`` suffix is read through gzip), so a large
file is never held whole; what is kept is the compact series a trace-driven guest needs
(``hosts/tracewl.py``): CPU % per sample, the step between samples and, where the format has
it, memory usage.

* ``planetlab`` (CloudSim's ``planetlab`` data, from the CoMon project): one file per VM, one
  CPU utilisation % per line (an integer 0..100 in the published files; a decimal number is
  accepted), samples 5 minutes apart (288 lines = one day).
* ``bitbrains`` (GWA-T-12 ``fastStorage`` / ``Rnd``, one file per VM): semicolon-separated
  values with a header line ``Timestamp [ms]; CPU cores; CPU capacity provisioned [MHZ];
  CPU usage [MHZ]; CPU usage [%]; Memory capacity provisioned [KB]; Memory usage [KB]; Disk
  read throughput [KB/s]; Disk write throughput [KB/s]; Network received throughput [KB/s];
  Network transmitted throughput [KB/s]`` (whitespace around the separators is ignored). The
  published timestamps are Unix seconds, whatever the header says; they must increase, and
  the step is their mean spacing (samples are taken as equally spaced). CPU is column
  ``usage_pct`` (CPU usage [%], capped at 100) or ``usage_mhz`` (usage / provisioned MHz);
  memory usage [KB] becomes the guest's working set.
* ``azure`` (Azure Public Dataset v1/v2 ``vm_cpu_readings-file-*-of-*.csv``): comma-separated,
  no header: ``timestamp, vm id, min cpu, max cpu, avg cpu`` for all VMs, readings 5 minutes
  apart; the rows of one ``vm`` are taken (``avg``, ``max`` or ``min``), timestamps in seconds
  increasing for that VM.

Errors are :class:`~cluster.errors.ConfigError` naming the trace file, the line and what is
allowed (the CLI exits 2). ``resolve_trace_files`` is the loading step: every ``kind: trace``
workload with a ``path`` (relative to the YAML file) is read once and the path replaced by the
series (``samples``, ``step_min``, ``mem_samples``) and ``source``, so the run directory's
``config.yaml`` reruns without the file and no host ever opens one.
"""

from __future__ import annotations

import copy
import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from hosts.tracewl import FORMAT_COLUMNS, MAX_TRACE_SAMPLES, TRACE_FORMATS, encode_series

from cluster.errors import ConfigError

#: Longest line read from a trace file, in characters (a Bitbrains line is about 150).
MAX_LINE_CHARS = 4096

BITBRAINS_HEADER = (
    "Timestamp [ms]",
    "CPU cores",
    "CPU capacity provisioned [MHZ]",
    "CPU usage [MHZ]",
    "CPU usage [%]",
    "Memory capacity provisioned [KB]",
    "Memory usage [KB]",
    "Disk read throughput [KB/s]",
    "Disk write throughput [KB/s]",
    "Network received throughput [KB/s]",
    "Network transmitted throughput [KB/s]",
)
PLANETLAB_STEP_MIN = 5.0


@dataclass(frozen=True)
class Series:
    """A trace as a guest uses it: CPU % per sample, minutes between samples, memory MiB."""

    cpu_pct: np.ndarray
    step_min: float
    mem_mib: np.ndarray | None = None


class _Lines:
    """Numbered lines of a text file (gzip by suffix), each error naming the file and line."""

    def __init__(self, path: Path, shown: str):
        self.path = path
        self.shown = shown
        self.lineno = 0

    def fail(self, msg: str, line: int | None = None) -> ConfigError:
        n = self.lineno if line is None else line
        return ConfigError(self.shown, f"line {n}" if n else None, msg)

    def __iter__(self) -> Iterator[str]:
        opener: Callable[..., Any] = gzip.open if self.path.suffix == ".gz" else open
        try:
            with opener(self.path, "rt", encoding="utf-8", newline="") as f:
                while True:
                    line = f.readline(MAX_LINE_CHARS + 1)
                    if not line:
                        return
                    self.lineno += 1
                    if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
                        raise self.fail(f"a line of more than {MAX_LINE_CHARS} characters; is this a trace file?")
                    yield line.rstrip("\r\n")
        except UnicodeDecodeError:
            raise self.fail("not UTF-8 text; is this a trace file?", self.lineno + 1) from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise self.fail(f"not a readable gzip file ({exc.__class__.__name__}: {exc})") from None
        except OSError as exc:
            raise self.fail(f"cannot read ({exc.__class__.__name__}: {exc})") from None


def _number(text: str, lines: _Lines, what: str, allowed: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise lines.fail(f"{text.strip()!r} is not a number; {what}: {allowed}") from None
    if not math.isfinite(x):
        raise lines.fail(f"{text.strip()!r} is not a finite number; {what}: {allowed}")
    return x


def _room(n: int, lines: _Lines) -> None:
    if n >= MAX_TRACE_SAMPLES:
        raise lines.fail(f"more than {MAX_TRACE_SAMPLES} samples; cut the trace (a trace holds at most {MAX_TRACE_SAMPLES})")


def _step_min(ts: list[float], default: float) -> float:
    """Mean spacing of increasing timestamps (in seconds), in minutes."""
    if len(ts) < 2:
        return default
    return (ts[-1] - ts[0]) / (len(ts) - 1) / 60.0


def read_planetlab(lines: _Lines) -> Series:
    allowed = "one CPU % from 0 to 100 per line (PlanetLab)"
    vals: list[float] = []
    blank_at = 0
    for line in lines:
        if not line.strip():
            blank_at = blank_at or lines.lineno
            continue
        if blank_at:
            raise lines.fail(f"a value after the empty line {blank_at}; {allowed}")
        x = _number(line, lines, "expected", allowed)
        if not 0 <= x <= 100:
            raise lines.fail(f"{x:g} is out of range; {allowed}")
        _room(len(vals), lines)
        vals.append(x)
    if not vals:
        raise lines.fail(f"no samples; {allowed}", 0)
    return Series(np.asarray(vals, dtype=np.float64), PLANETLAB_STEP_MIN)


def _norm(h: str) -> str:
    return " ".join(h.split()).lower()


def read_bitbrains(lines: _Lines, column: str) -> Series:
    allowed = f"{len(BITBRAINS_HEADER)} values separated by ';' ({'; '.join(BITBRAINS_HEADER)})"
    it = iter(lines)
    header = next(it, None)
    if header is None:
        raise lines.fail(f"empty file; a Bitbrains trace starts with its header: {'; '.join(BITBRAINS_HEADER)}", 0)
    got = [_norm(h) for h in header.split(";")]
    want = [_norm(h) for h in BITBRAINS_HEADER]
    if got != want:
        raise lines.fail(f"not the GWA-T-12 Bitbrains header; expected: {'; '.join(BITBRAINS_HEADER)}")
    ts: list[float] = []
    cpu: list[float] = []
    mem: list[float] = []
    for line in it:
        if not line.strip():
            continue
        f = line.split(";")
        if len(f) != len(BITBRAINS_HEADER):
            raise lines.fail(f"{len(f)} values; expected {allowed}")
        t = _number(f[0], lines, "Timestamp", "Unix seconds, increasing")
        if ts and t <= ts[-1]:
            raise lines.fail(f"timestamp {t:g} is not after the previous one ({ts[-1]:g}); timestamps must increase")
        vals = [_number(f[i], lines, BITBRAINS_HEADER[i], "a number >= 0") for i in (1, 2, 3, 4, 5, 6)]
        for i, x in zip((1, 2, 3, 4, 5, 6), vals):
            if x < 0:
                raise lines.fail(f"{BITBRAINS_HEADER[i]} is {x:g}; it must be >= 0")
        _cores, cap_mhz, use_mhz, use_pct, _mem_cap, mem_kb = vals
        if column == "usage_mhz":
            pct = 100.0 * use_mhz / cap_mhz if cap_mhz > 0 else 0.0
        else:
            pct = use_pct
        _room(len(cpu), lines)
        ts.append(t)
        cpu.append(min(100.0, pct))
        mem.append(mem_kb / 1024.0)
    if not cpu:
        raise lines.fail(f"no samples after the header; each line: {allowed}", 0)
    return Series(np.asarray(cpu), _step_min(ts, 5.0), np.asarray(mem))


def read_azure(lines: _Lines, vm: str, column: str) -> Series:
    allowed = "timestamp, vm id, min cpu, max cpu, avg cpu (Azure vm_cpu_readings, no header)"
    pick = {"min": 2, "max": 3, "avg": 4}[column]
    ts: list[float] = []
    cpu: list[float] = []
    for line in lines:
        if not line.strip():
            continue
        f = line.split(",")
        if len(f) != 5:
            if lines.lineno == 1 and _norm(f[0]) == "timestamp":
                continue  # a header some copies add
            raise lines.fail(f"{len(f)} values; expected 5: {allowed}")
        if f[1].strip() != vm:
            continue
        t = _number(f[0], lines, "timestamp", "seconds, increasing for each VM")
        if ts and t <= ts[-1]:
            raise lines.fail(f"timestamp {t:g} of vm {vm} is not after its previous one ({ts[-1]:g}); readings must be in time order")
        x = _number(f[pick], lines, f"{column} cpu", "a CPU % from 0 to 100")
        if not 0 <= x <= 100:
            raise lines.fail(f"{column} cpu {x:g} is out of range; a CPU % from 0 to 100")
        _room(len(cpu), lines)
        ts.append(t)
        cpu.append(x)
    if not cpu:
        raise ConfigError(lines.shown, None, f"no readings for vm {vm!r} (lines: {allowed})")
    return Series(np.asarray(cpu), _step_min(ts, 5.0))


def read_trace(path: Path, fmt: str, *, vm: str | None = None, column: str | None = None, shown: str | None = None) -> Series:
    """The series of one trace file. ``shown``: the name used in messages (default ``path``)."""
    if fmt not in TRACE_FORMATS:
        raise ConfigError(shown or str(path), None, f"unknown trace format {fmt!r}; known: {', '.join(TRACE_FORMATS)}")
    col = column or FORMAT_COLUMNS[fmt][0]
    lines = _Lines(path, shown or str(path))
    if fmt == "planetlab":
        return read_planetlab(lines)
    if fmt == "bitbrains":
        return read_bitbrains(lines, col)
    if vm is None:
        raise ConfigError(lines.shown, None, "an azure trace needs 'vm', the vm id whose readings to take")
    return read_azure(lines, vm, col)


# --- the loading step ------------------------------------------------------------------------


def _workload_slots(dom: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    w = dom.get("workload")
    if isinstance(w, dict):
        yield "workload", w
    ws = dom.get("vcpu_workloads")
    if isinstance(ws, list):
        for i, x in enumerate(ws):
            if isinstance(x, dict):
                yield f"vcpu_workloads[{i}]", x


def traces_read(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` holds a trace workload whose file was read (``resolve_trace_files``)."""
    domains = doc.get("domains")
    return isinstance(domains, list) and any(
        w.get("kind") == "trace" and "source" in w for d in domains if isinstance(d, dict) for _where, w in _workload_slots(d)
    )


def resolve_trace_files(doc: dict[str, Any], base_dir: Path, file: str) -> dict[str, Any]:
    """``doc`` with every trace workload's file read (``path`` relative to ``base_dir``):
    ``path`` becomes ``source`` and the series ``samples`` / ``step_min`` / ``mem_samples``.
    A file used by several workloads is read once. Anything malformed is left for the schema
    to refuse, except a trace file that cannot be read, which is refused here."""
    domains = doc.get("domains")
    if not isinstance(domains, list):
        return doc
    todo = [
        (i, where, w)
        for i, d in enumerate(domains)
        if isinstance(d, dict)
        for where, w in _workload_slots(d)
        if w.get("kind") == "trace" and isinstance(w.get("path"), str)
    ]
    if not todo:
        return doc
    out = copy.deepcopy(doc)
    cache: dict[tuple[str, str, str | None, str | None], Series] = {}
    for i, where, _w in todo:
        dom = out["domains"][i]
        name = dom.get("name") if isinstance(dom.get("name"), str) else str(i)
        w = dom["workload"] if where == "workload" else dom["vcpu_workloads"][int(where.split("[")[1][:-1])]
        field = f"domains[{name}].{where}"
        fmt = w.get("format", "planetlab")
        vm, column = w.get("vm"), w.get("column")
        if fmt not in TRACE_FORMATS or not (vm is None or isinstance(vm, str)) or not (column is None or isinstance(column, str)):
            continue  # the schema names what is wrong
        if column is not None and column not in FORMAT_COLUMNS[fmt]:
            continue
        if fmt == "azure" and vm is None:
            raise ConfigError(file, f"{field}.vm", "an azure trace file holds many VMs: give 'vm', the vm id to take")
        given = w["path"]
        p = Path(given)
        full = p if p.is_absolute() else base_dir / p
        if not given.strip() or not full.exists():
            raise ConfigError(file, f"{field}.path", f"{full}: trace file not found (a path is relative to the YAML file)")
        if not full.is_file():
            raise ConfigError(file, f"{field}.path", f"{full}: not a regular file; a trace is a text file (.gz: gzip)")
        key = (str(full.resolve()), fmt, vm, column)
        series = cache.get(key)
        if series is None:
            try:
                series = read_trace(full, fmt, vm=vm, column=column, shown=str(full))
            except ConfigError as exc:
                raise ConfigError(exc.file, exc.field, f"{exc.msg} (the {fmt} trace of {field} in {file})") from None
            cache[key] = series
        del w["path"]
        w["source"] = given
        w["samples"] = encode_series(series.cpu_pct)
        w["step_min"] = float(series.step_min) if series.step_min > 0 else PLANETLAB_STEP_MIN
        w.pop("cpu_pct", None)
        if series.mem_mib is not None:
            w["mem_samples"] = encode_series(series.mem_mib)
        else:
            w.pop("mem_samples", None)
    return out
