"""Plots and a summary table from a batch directory's results table.

:func:`make_report` reads ``BATCH/results.csv`` and ``BATCH/sweep.yaml`` (for the swept
parameters and their labels) and writes one PNG per plot under ``BATCH/plots/``: a metric (y)
against a swept parameter (x), one line per value of a second parameter (hue), one panel per
combination of any further varying parameters. Each point is the mean over the finished
repetitions with a min-max bar; failed and pending trials are left out. The plotted numbers are
also written next to each PNG as CSV and embedded in the PNG itself (text chunk ``hvsim-data``,
JSON), so a plot can always be checked against the table it came from.

Defaults without flags: x is the first swept numeric parameter that varies (else the first that
varies, else the repetition), hue the next varying one, and there is one plot per headline
metric that varies (CPU share, wake latency percentiles, migration time, downtime, data sent;
for a cluster experiment its own figures instead: migrations, downtime, SLA violations,
energy, hosts switched on).

Figures are drawn with matplotlib's Agg canvas on ``Figure`` objects (no pyplot, no global
backend state) and written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypedDict, Union

from rich.table import Table

from cluster.config import ConfigError
from cluster.config import load_doc
from cluster.results import atomic_write, csv_text
from cluster.sweep import SweepSpec, param_labels, parse_spec

DEFAULT_METRIC_PREFIXES = ("cpu_pct.", "wake_p50_us.", "wake_p99_us.")
DEFAULT_METRICS = ("mig_total_ms", "mig_downtime_ms", "mig_bytes_sent")
#: a cluster experiment's figures (batch_table.CLUSTER_COLUMNS): its default plots where present
CLUSTER_METRICS = ("migrations", "migrations_completed", "migrations_aborted", "mig_downtime_total_ms", "sla_violation_pct", "energy_kwh", "hosts_active_mean")
OTHER_NUMERIC = ("mig_rounds", "wall_s", "trial_wall_s", "rep", "seed")
TEXT_COLUMNS = ("trial", "status", "error", "trace_digest", "config_digest", "mig_status")
PNG_DATA_KEY = "hvsim-data"
MAX_PANELS = 16

Cell = Union[int, float, str, None]  # a cell of results.csv, read back with its type
Row = dict[str, Cell]


class Series(TypedDict):
    """One line of a plot: y over the repetitions at each x, for one facet and hue value."""

    facet: dict[str, Cell]
    hue: Cell
    x: list[Cell]
    n: list[int]
    mean: list[float]
    min: list[float]
    max: list[float]
    std: list[float]


class PlotData(TypedDict):
    """What a plot shows (also embedded in its PNG and written beside it as CSV)."""

    x: str
    y: str
    hue: str | None
    facets: list[str]
    series: list[Series]


@dataclass
class Results:
    """A batch's table with typed cells, and what was swept."""

    batch_dir: Path
    rows: list[Row]
    columns: list[str]
    params: list[str]
    labels: dict[str, str]
    name: str

    @property
    def ok(self) -> list[Row]:
        return [r for r in self.rows if r.get("status") == "ok"]

    def label(self, col: str) -> str:
        return self.labels.get(col, col)


@dataclass
class Report:
    plots: list[Path]
    table: Table
    series: dict[str, PlotData] = field(default_factory=dict)  # plot file name -> plotted data


def _typed(v: str) -> Cell:
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def load_results(batch_dir: str | Path) -> Results:
    bd = Path(batch_dir)
    table = bd / "results.csv"
    if not table.is_file():
        raise ConfigError(str(batch_dir), None, "not a batch directory: no results.csv (hvsim batch writes one)")
    spec_file = bd / "sweep.yaml"
    spec: SweepSpec = parse_spec(load_doc(spec_file), str(spec_file)) if spec_file.is_file() else SweepSpec(base="base.yaml")
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        raw = list(reader)
    rows: list[Row] = [{k: (v if k in TEXT_COLUMNS else _typed(v)) for k, v in r.items()} for r in raw]
    params = [p for p in spec.param_paths() if p in columns]
    return Results(bd, rows, columns, params, param_labels(spec, str(spec_file)), spec.name or bd.name)


def _float(v: Cell) -> float:
    """A cell known to be numeric (checked with ``_numeric``) as a float."""
    if isinstance(v, (int, float)):
        return float(v)
    raise TypeError(f"not a number: {v!r}")


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _varies(rows: list[Row], col: str) -> bool:
    vals = {json.dumps(r.get(col)) for r in rows if r.get(col) is not None}
    return len(vals) > 1


def metric_columns(res: Results) -> list[str]:
    """Numeric columns that are results (not parameters)."""
    out: list[str] = []
    for c in res.columns:
        if c in res.params or c in TEXT_COLUMNS or c in ("rep", "seed"):
            continue
        vals = [r.get(c) for r in res.rows if r.get(c) is not None]
        if vals and all(_numeric(v) for v in vals):
            out.append(c)
    return out


def default_metrics(res: Results) -> list[str]:
    """The metrics that vary: a cluster experiment's own figures where the table has them
    (not one plot per guest), else CPU shares, wake latencies and migration figures."""
    ok = res.ok
    cols = metric_columns(res)
    if any(c in CLUSTER_METRICS for c in cols):
        return [c for c in CLUSTER_METRICS if c in cols and _varies(ok, c)]
    return [c for c in cols if (c.startswith(DEFAULT_METRIC_PREFIXES) or c in DEFAULT_METRICS) and _varies(ok, c)]


def resolve_param(res: Results, name: str, flag: str) -> str:
    if name in res.params or name == "rep":
        return name
    hits = [p for p in res.params if res.labels.get(p) == name]
    if hits:
        return hits[0]
    known = ", ".join(f"{p} ({res.label(p)})" if res.label(p) != p else p for p in res.params) or "none"
    raise ConfigError(str(res.batch_dir / "results.csv"), flag, f"unknown parameter {name!r}; swept: {known}; or rep")


def choose_axes(res: Results, x: str | None, hue: str | None) -> tuple[str, str | None, list[str]]:
    """x, hue and the facet parameters (the remaining ones that vary)."""
    ok = res.ok
    varying = [p for p in res.params if _varies(ok, p)]
    if x is None:
        numeric = [p for p in varying if all(_numeric(r.get(p)) for r in ok if r.get(p) is not None)]
        x = (numeric or varying or ["rep"])[0]
    if hue is None:
        hue = next((p for p in varying if p != x), None)
    if hue == x:
        raise ConfigError(str(res.batch_dir / "results.csv"), "--hue", f"{res.label(hue)} is already on the x axis")
    facets = [p for p in varying if p not in (x, hue)]
    return x, hue, facets


def _order(values: list[Any]) -> list[Any]:
    uniq: list[Any] = []
    for v in values:
        if v not in uniq:
            uniq.append(v)
    if all(_numeric(v) for v in uniq):
        return sorted(uniq)
    return uniq  # table order, which is the spec's order


def aggregate(rows: list[Row], x: str, y: str, hue: str | None, facets: list[str]) -> list[Series]:
    """Per (facet, hue) series: for each x, n / mean / min / max / std of y over the rows."""
    rows = [r for r in rows if r.get("status") == "ok" and _numeric(r.get(y))]
    groups: dict[tuple[tuple[Cell, ...], Cell], dict[Cell, list[float]]] = {}
    for r in rows:
        key = (tuple(r.get(f) for f in facets), r.get(hue) if hue else None)
        groups.setdefault(key, {}).setdefault(r.get(x), []).append(_float(r[y]))
    facet_order: list[tuple[Cell, ...]] = _order([k[0] for k in groups]) if facets else [()]
    hue_order = _order([k[1] for k in groups])
    series: list[Series] = []
    for fk in facet_order:
        for hk in hue_order:
            pts = groups.get((fk, hk))
            if not pts:
                continue
            xs = _order(list(pts))
            ys = [pts[v] for v in xs]
            series.append(
                {
                    "facet": dict(zip(facets, fk)),
                    "hue": hk,
                    "x": xs,
                    "n": [len(v) for v in ys],
                    "mean": [sum(v) / len(v) for v in ys],
                    "min": [min(v) for v in ys],
                    "max": [max(v) for v in ys],
                    "std": [_std(v) for v in ys],
                }
            )
    return series


def _std(v: list[float]) -> float:
    if len(v) < 2:
        return 0.0
    m = sum(v) / len(v)
    return math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1))


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", s).strip("-") or "x"


def plot(res: Results, x: str, y: str, hue: str | None, facets: list[str], out_dir: Path) -> tuple[Path, PlotData]:
    """One PNG of y against x (plus its data as CSV beside it); returns the path and the data."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = aggregate(res.rows, x, y, hue, facets)
    panels = _order([json.dumps(s["facet"], sort_keys=True) for s in series])[:MAX_PANELS] or ["{}"]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.6 * ncols, 4.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    xlab = res.label(x)
    categorical = not all(_numeric(v) for s in series for v in s["x"])
    cats = _order([v for s in series for v in s["x"]]) if categorical else []
    for ax, panel in zip(axes, panels):
        for s in series:
            if json.dumps(s["facet"], sort_keys=True) != panel:
                continue
            xs = [cats.index(v) for v in s["x"]] if categorical else s["x"]
            yerr = [[m - lo for m, lo in zip(s["mean"], s["min"])], [hi - m for m, hi in zip(s["mean"], s["max"])]]
            label = f"{res.label(hue)}={s['hue']}" if hue else None
            ax.errorbar(xs, s["mean"], yerr=yerr, marker="o", capsize=3, label=label)
        facet = json.loads(panel)
        if facet:
            ax.set_title(", ".join(f"{res.label(k)}={v}" for k, v in facet.items()), fontsize=9)
        ax.set_xlabel(xlab)
        ax.set_ylabel(y)
        if categorical:
            ax.set_xticks(range(len(cats)), [str(c) for c in cats])
        ax.grid(True, alpha=0.3)
        if hue:
            ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    reps = max((n for s in series for n in s["n"]), default=0)
    fig.suptitle(f"{res.name}: {y} vs {xlab}\nmean and min-max over up to {reps} run(s) per point", fontsize=9)
    data: PlotData = {"x": x, "y": y, "hue": hue, "facets": facets, "series": series}
    stem = f"{_slug(y)}_vs_{_slug(xlab)}" + (f"_by_{_slug(res.label(hue))}" if hue else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": "hvsim report", PNG_DATA_KEY: json.dumps(data)})
    path = out_dir / f"{stem}.png"
    atomic_write(path, buf.getvalue())
    flat = [
        {**{res.label(k): v for k, v in s["facet"].items()}, **({res.label(hue): s["hue"]} if hue else {}), xlab: xv, "n": n, "mean": m, "min": lo, "max": hi, "std": sd}
        for s in series
        for xv, n, m, lo, hi, sd in zip(s["x"], s["n"], s["mean"], s["min"], s["max"], s["std"])
    ]
    atomic_write(out_dir / f"{stem}.csv", csv_text(flat))
    return path, data


TABLE_PRIORITY = (*CLUSTER_METRICS, "mig_total_ms", "mig_downtime_ms", "mig_bytes_sent", "cpu_pct.", "wake_p99_us.", "wake_p50_us.")


def summary_table(res: Results, metrics: list[str], limit: int | None = None) -> Table:
    """Per parameter point: finished / total runs and mean (± std) of a few metrics."""
    limit = limit if limit is not None else max(2, 7 - len(res.params))
    metrics = sorted(metrics, key=lambda m: next((i for i, p in enumerate(TABLE_PRIORITY) if m.startswith(p)), len(TABLE_PRIORITY)))
    ok, failed = len(res.ok), sum(r.get("status") == "failed" for r in res.rows)
    pending = len(res.rows) - ok - failed
    t = Table(title=f"{res.name}: {ok} ok, {failed} failed, {pending} pending")
    for p in res.params:
        t.add_column(res.label(p), justify="right")
    t.add_column("ok/runs", justify="right")
    shown = metrics[:limit]
    for m in shown:
        t.add_column(m, justify="right")
    points: dict[tuple[str, ...], list[Row]] = {}
    for r in res.rows:
        points.setdefault(tuple(json.dumps(r.get(p)) for p in res.params), []).append(r)
    for key, rows in points.items():
        done = [r for r in rows if r.get("status") == "ok"]
        cells = []
        for m in shown:
            vals = [_float(r[m]) for r in done if _numeric(r.get(m))]
            if not vals:
                cells.append("-")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.4g}")
            else:
                cells.append(f"{sum(vals) / len(vals):.4g}±{_std(vals):.2g}")
        t.add_row(*[str(json.loads(k)) for k in key], f"{len(done)}/{len(rows)}", *cells)
    if len(metrics) > limit:
        t.caption = f"{len(metrics) - limit} more metric(s) in results.csv"
    return t


def make_report(batch_dir: str | Path, *, x: str | None = None, y: str | None = None, hue: str | None = None, out: Optional[Path] = None) -> Report:
    res = load_results(batch_dir)
    if not res.ok:
        raise ConfigError(str(res.batch_dir / "results.csv"), None, "no finished trial (status ok) to plot yet")
    where = str(res.batch_dir / "results.csv")
    xp = resolve_param(res, x, "--x") if x else None
    hp = resolve_param(res, hue, "--hue") if hue else None
    xp, hp, facets = choose_axes(res, xp, hp)
    numeric = metric_columns(res)
    if y is not None:
        if y not in numeric:
            raise ConfigError(where, "--y", f"unknown or non-numeric metric {y!r}; metrics: {', '.join(numeric)}")
        ys = [y]
    else:
        # nothing varies: still draw one plot, of a CPU share if there is one
        ys = default_metrics(res) or ([c for c in numeric if c.startswith("cpu_pct.")] or numeric)[:1]
    out_dir = Path(out) if out else res.batch_dir / "plots"
    plots: list[Path] = []
    series: dict[str, PlotData] = {}
    for m in ys:
        path, data = plot(res, xp, m, hp, facets, out_dir)
        plots.append(path)
        series[path.name] = data
    return Report(plots, summary_table(res, ys), series)
