"""Sweep specs and their expansion: deciding what a batch runs, never running it.

A sweep spec (YAML, validated like every config) names a base config file and the parameters
to vary, as dotted paths into the config (the paths of ``--set``: ``domains.web.weight``,
``hosts.*.scheduler.ratelimit_us``, ``events.0.migrate.policy``):

* ``set``: fixed overrides applied to the base first (for example a shorter ``run.duration_ms``);
* ``grid``: the cartesian product of the listed values; the first path varies slowest;
* ``zip``: groups of lists of equal length advanced in lock step; each group is one more axis
  of the product, after the grid's;
* ``repetitions``: runs per parameter point, each with its own seed.

:func:`expand_sweep` is a pure function of the spec and the base document: it returns the
ordered list of :class:`Trial` (parameter points in product order, repetitions innermost), each
with a stable, readable id that is a valid directory name (``weight=512_ratelimit_us=0_r1``)
and depends only on the parameter values and the repetition index, never on the position in
the list, so extending a grid keeps the ids (and the finished runs) of the points already there.
:func:`validate_trials` validates every trial's config before anything runs and stops at bad
input naming the trial and the field.

Seeds (common random numbers): repetition ``k`` runs with ``derive_seed(root, "rep/k")`` at every
parameter point, so two points differ only by their parameters, not by their random draws. The
root is the spec's ``seed``, else the base config's ``run.seed``, else 0. ``run.seed`` itself cannot
be swept.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Optional

import yaml  # type: ignore[import-untyped, unused-ignore]  # no stubs installed (types-PyYAML)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cluster.config import NAME_PATTERN, ConfigError, load_doc, resolved_doc, config_digest, validate_doc
from cluster.paths import PathError, expand, set_path
from cluster.traces import resolve_trace_files
from hosts.rng import derive_seed

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
LABEL_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$"
MAX_ID_CHARS = 200  # well under the 255 bytes of a file name, room for hidden-sibling prefixes
SEED_MASK = (1 << 63) - 1  # run.seed must be below 2**63

Values = Annotated[list[Any], Field(min_length=1)]


class SweepSpec(BaseModel):
    """A sweep: a base config and the parameters to vary over it."""

    model_config = ConfigDict(extra="forbid")

    name: Optional[str] = Field(default=None, pattern=NAME_PATTERN, description="Name of the sweep (default: the file's stem); the default batch directory is runs/sweeps/NAME.")
    base: str = Field(description="The base config file, relative to this sweep file.")
    set: dict[str, Any] = Field(default_factory=dict, description="Fixed overrides applied to the base before any parameter, as PATH: VALUE (like --set).")
    grid: dict[str, Values] = Field(default_factory=dict, description="Cartesian product: PATH: [values]; the first path varies slowest.")
    zip: list[dict[str, Values]] = Field(
        default_factory=list,
        description="Lock-step groups (one mapping PATH: [values], or a list of them): the lists of a group have equal lengths and advance together; each group is one axis of the product, after the grid's.",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Short names of parameters in trial ids, PATH: LABEL (default: the path's last named step).")
    repetitions: int = Field(default=1, ge=1, le=100_000, description="Runs per parameter point, each with its own derived seed.")
    seed: Optional[int] = Field(default=None, ge=0, lt=1 << 63, description="Root seed of the sweep (default: the base config's run.seed, else 0); repetition k uses derive_seed(seed, 'rep/k') at every point.")

    @field_validator("zip", mode="before")
    @classmethod
    def _one_group(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    def param_paths(self) -> list[str]:
        """Swept paths in axis order: the grid's, then each zip group's."""
        return list(self.grid) + [p for g in self.zip for p in g]


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: a parameter point and a repetition, with its config document."""

    id: str
    index: int
    params: dict[str, Any]  # swept path -> value, in axis order
    rep: int
    seed: int
    doc: dict[str, Any] = field(repr=False)
    resolved: Optional[dict[str, Any]] = field(default=None, repr=False)  # set by validate_trials
    digest: Optional[str] = None  # config_digest of the resolved config: the resume key


@dataclass(frozen=True)
class Sweep:
    """A loaded sweep: the spec, where it came from, and the base document."""

    spec: SweepSpec
    file: str
    base_path: Path
    base_doc: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name or Path(self.file).stem

    def labels(self) -> dict[str, str]:
        return param_labels(self.spec, self.file)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


def parse_spec(doc: Any, file: str) -> SweepSpec:
    if not isinstance(doc, dict):
        raise ConfigError(file, None, f"the top level must be a mapping, found {type(doc).__name__}")
    try:
        return SweepSpec.model_validate(doc)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(s) for s in e["loc"]) or "<top>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"unknown key {e['loc'][-1]!r}; allowed keys: {', '.join(SweepSpec.model_fields)}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        raise ConfigError(file, loc, msg) from None


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep spec and read (not yet validate) its base config."""
    p = Path(path)
    if p.is_file() and not p.read_text(errors="replace").strip():
        raise ConfigError(str(path), None, "empty file; a sweep needs at least 'base'")
    spec = parse_spec(load_doc(p), str(path))
    base = Path(spec.base)
    base_path = base if base.is_absolute() else p.parent / base
    if not base_path.exists():
        raise ConfigError(str(path), "base", f"{base_path}: file not found (the base is relative to the sweep file)")
    return Sweep(spec, str(path), base_path, resolve_trace_files(load_doc(base_path), base_path.parent, str(base_path)))


# ---------------------------------------------------------------------------------------------
# expansion (pure)
# ---------------------------------------------------------------------------------------------


def _named_steps(path: str) -> list[str]:
    return [s for s in path.split(".") if s != "*" and not s.lstrip("-").isdigit()]


def param_labels(spec: SweepSpec, file: str = "<sweep>") -> dict[str, str]:
    """Short, distinct names of the swept paths: the last named step, lengthened on collision."""
    paths = spec.param_paths()
    for p in spec.labels:
        if p not in paths:
            raise ConfigError(file, f"labels.{p}", f"not a swept path; swept: {', '.join(paths) or 'none'}")
        if not re.match(LABEL_PATTERN, spec.labels[p]):
            raise ConfigError(file, f"labels.{p}", f"{spec.labels[p]!r} is not a label: a letter, then letters, digits, '_', '.', '-' (at most 40)")
    depth = {p: 1 for p in paths}

    def label(p: str) -> str:
        if p in spec.labels:
            return spec.labels[p]
        steps = _named_steps(p) or [f"p{paths.index(p)}"]
        return ".".join(steps[-depth[p]:])

    for _ in range(16):
        seen: dict[str, list[str]] = {}
        for p in paths:
            seen.setdefault(label(p), []).append(p)
        clashes = [ps for ps in seen.values() if len(ps) > 1]
        if not clashes:
            return {p: label(p) for p in paths}
        grown = False
        for ps in clashes:
            for p in ps:
                if p not in spec.labels and depth[p] < len(_named_steps(p)):
                    depth[p] += 1
                    grown = True
        if not grown:
            break
    ps = clashes[0]
    raise ConfigError(file, "labels", f"parameters {', '.join(ps)} would share the label {label(ps[0])!r} in trial ids; give them distinct labels")


def value_slug(value: Any) -> str:
    """A value as a readable piece of a directory name; a hash keeps lossy slugs distinct."""
    if isinstance(value, bool) or value is None:
        raw = json.dumps(value)
    elif isinstance(value, (int, float)):
        raw = repr(value)
    elif isinstance(value, str):
        raw = value
    else:
        raw = json.dumps(value, separators=(",", ":"), sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "-", raw) or "empty"
    if slug != raw:
        slug = f"{slug[:40]}-{_short_hash(value)}"
    return slug


def _short_hash(value: Any, n: int = 6) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:n]


def trial_id(params: dict[str, Any], labels: dict[str, str], rep: int) -> str:
    parts = [f"{labels[p]}={value_slug(v)}" for p, v in params.items()] + [f"r{rep}"]
    tid = "_".join(parts)
    if len(tid) > MAX_ID_CHARS:
        tid = f"{tid[: MAX_ID_CHARS - 12]}-{_short_hash([params, rep], 10)}"
    return tid


def rep_seed(root: int, rep: int) -> int:
    """The seed of repetition ``rep``: the same at every parameter point (common random numbers)."""
    return derive_seed(root, f"rep/{rep}") & SEED_MASK


def _axes(spec: SweepSpec, file: str) -> list[list[dict[str, Any]]]:
    """Each axis as its list of positions; a position assigns one value to each of its paths."""
    axes = [[{p: v} for v in vals] for p, vals in spec.grid.items()]
    for gi, group in enumerate(spec.zip):
        if not group:
            raise ConfigError(file, f"zip[{gi}]", "empty group; give PATH: [values] pairs")
        lens = {p: len(v) for p, v in group.items()}
        if len(set(lens.values())) > 1:
            raise ConfigError(file, f"zip[{gi}]", "lists advance in lock step and must have equal lengths; found " + ", ".join(f"{p}: {n}" for p, n in lens.items()))
        n = next(iter(lens.values()))
        axes.append([{p: group[p][i] for p in group} for i in range(n)])
    return axes


def _check_paths(spec: SweepSpec, doc: dict[str, Any], file: str) -> None:
    """Every swept path resolves in the base, none is run.seed, no two set the same field."""
    where = {p: f"grid.{p}" for p in spec.grid}
    for gi, g in enumerate(spec.zip):
        for p in g:
            if p in where:
                raise ConfigError(file, f"zip[{gi}].{p}", f"already swept by {where[p]}; sweep a path once")
            where[p] = f"zip[{gi}].{p}"
    for p in spec.set:
        if p in where:
            raise ConfigError(file, f"set.{p}", f"also swept by {where[p]}; a path is either fixed or swept")
    targets: dict[tuple[Any, ...], str] = {}
    for p, loc in where.items():
        try:
            keys = [tuple(k) for k in expand(doc, p)]
        except PathError as exc:
            raise ConfigError(file, loc, f"{exc.msg} (in the base config)") from None
        for k in keys:
            if k == ("run", "seed"):
                raise ConfigError(file, loc, "the seed is set per repetition; use the sweep's 'seed' (the root) and 'repetitions'")
            for other, oloc in targets.items():
                if k[: len(other)] == other or other[: len(k)] == k:
                    raise ConfigError(file, loc, f"sets the same field as {oloc} ({'.'.join(map(str, k))})")
        for k in keys:
            targets.setdefault(k, loc)


def expand_sweep(spec: SweepSpec, base_doc: dict[str, Any], file: str = "<sweep>") -> list[Trial]:
    """The ordered trials of a sweep (pure: same spec and base, same list)."""
    doc = base_doc
    for p, v in spec.set.items():
        if tuple(p.split(".")) == ("run", "seed"):
            raise ConfigError(file, f"set.{p}", "the seed is set per repetition; use the sweep's 'seed' (the root)")
        try:
            doc = set_path(doc, p, v)
        except PathError as exc:
            raise ConfigError(file, f"set.{p}", f"{exc.msg} (in the base config)") from None
    _check_paths(spec, doc, file)
    labels = param_labels(spec, file)
    axes = _axes(spec, file)
    for ai, axis in enumerate(axes):
        keys = [tuple(value_slug(v) for v in pos.values()) for pos in axis]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            loc = f"grid.{next(iter(axis[0]))}" if ai < len(spec.grid) else f"zip[{ai - len(spec.grid)}]"
            raise ConfigError(file, loc, f"value {', '.join(dup)} is listed twice; list each point once")
    run = doc.get("run")
    base_seed = run.get("seed", 0) if isinstance(run, dict) else 0
    root = spec.seed if spec.seed is not None else int(base_seed or 0)
    trials: list[Trial] = []
    seen: dict[str, int] = {}
    for point in itertools.product(*axes):
        params: dict[str, Any] = {}
        for pos in point:
            params.update(pos)
        point_doc = doc
        for p, v in params.items():
            try:
                point_doc = set_path(point_doc, p, v)
            except PathError as exc:  # an earlier parameter changed what this path designates
                raise ConfigError(file, p, f"{exc.msg} (at {params})") from None
        for rep in range(spec.repetitions):
            seed = rep_seed(root, rep)
            tdoc = set_path(point_doc, "run.seed", seed) if isinstance(point_doc.get("run"), dict) else {**point_doc, "run": {"seed": seed}}
            tid = trial_id(params, labels, rep)
            if tid in seen:
                raise ConfigError(file, "labels", f"trials {seen[tid]} and {len(trials)} would share the id {tid!r}; give distinct labels or values")
            seen[tid] = len(trials)
            trials.append(Trial(tid, len(trials), dict(params), rep, seed, tdoc))
    return trials


def validate_trials(trials: list[Trial], file: str = "<sweep>") -> list[Trial]:
    """Validate every trial's config; the first bad one stops everything, naming trial and field."""
    out: list[Trial] = []
    bad: list[tuple[Trial, ConfigError]] = []
    for t in trials:
        try:
            cfg = validate_doc(t.doc, file)
        except ConfigError as exc:
            bad.append((t, exc))
            continue
        out.append(replace(t, resolved=resolved_doc(cfg), digest=config_digest(cfg)))
    if bad:
        first, err = bad[0]
        more = f" (and {len(bad) - 1} more invalid trial{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise ConfigError(file, f"trial {first.id}: {err.field}" if err.field else f"trial {first.id}", err.msg + more)
    return out


def plan_sweep(path: str | Path) -> tuple[Sweep, list[Trial]]:
    """Load, expand and validate: the whole decision of what a batch runs."""
    sweep = load_sweep(path)
    trials = expand_sweep(sweep.spec, sweep.base_doc, sweep.file)
    # a trace path the sweep sets is read here, relative to the base (the base's own are read)
    trials = [replace(t, doc=resolve_trace_files(t.doc, sweep.base_path.parent, sweep.file)) for t in trials]
    return sweep, validate_trials(trials, sweep.file)


def spec_for_batch_dir(sweep: Sweep) -> str:
    """The spec as stored in a batch directory, next to a copy of its base (``base.yaml``)."""
    doc = sweep.spec.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    doc["base"] = "base.yaml"
    doc.setdefault("name", sweep.name)
    text: str = yaml.safe_dump(doc, sort_keys=False)
    return text
