"""Loading a config: YAML to document, ``--set`` overrides, validation, readable errors.

``load_config`` turns a file (plus overrides) into a validated :class:`ClusterConfig` or raises
:class:`cluster.errors.ConfigError` naming the file, the field and what is allowed; the
cross-field rules are in ``checks``. Files a config names are read here, relative to it (xl
domain files, trace files: ``cluster/traces.py``), and domains with ``host: auto`` are placed
by the placement policy in ``validate_doc``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

import hosts.sched as sched_registry
from hosts.clock import MS, US
from hosts.workload import MAX_SPAN_NS, MIN_STEP_NS, WORKLOADS

from cluster.config.checks import check_config
from cluster.config.schema import ClusterConfig
from cluster.config.yamlsafe import MAX_FILE_BYTES, DocError, YamlLimitError, check_plain, load_yaml
from cluster.errors import ConfigError
from cluster.paths import PathError, parse_assignment, set_path
from cluster.policies import place_auto
from cluster.traces import resolve_trace_files
from cluster.xlcfg import resolve_domains as resolve_xl_domains


def _loc_str(loc: tuple[Any, ...], doc: Any) -> str:
    """A pydantic location as a readable path, using element names where they exist."""
    parts: list[str] = []
    node = doc
    for step in loc:
        if isinstance(step, int):
            name = None
            if isinstance(node, list) and 0 <= step < len(node) and isinstance(node[step], dict):
                name = node[step].get("name")
            parts.append(f"[{name}]" if name else f"[{step}]")
            node = node[step] if isinstance(node, list) and 0 <= step < len(node) else None
        else:
            if isinstance(node, dict):
                node = node.get(step)
            else:
                node = None
            parts.append(f".{step}" if parts else str(step))
    return "".join(parts)


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds union/discriminator tags ("credit", "function-after[...]") into locations
    out = []
    for step in loc:
        if isinstance(step, str) and (step.startswith("function-") or step in _TAGS or "[" in step):
            continue
        out.append(step)
    return tuple(out)


_TAGS = set(sched_registry.REGISTRY) | set(WORKLOADS) | {"list[int]", "list[list[int]]"}


def format_validation_error(exc: ValidationError, doc: Any) -> tuple[str, str]:
    errs = exc.errors()
    e = errs[0]
    loc = _clean_loc(tuple(e["loc"]))
    field_name = _loc_str(loc, doc) or "<top>"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r}" + _allowed_keys_hint(loc, doc)
    elif e["type"] == "missing":
        msg = "required field is missing"
    elif e["type"] == "union_tag_invalid":
        ctx = e.get("ctx", {})
        what = {"name": "scheduler", "kind": "workload kind"}.get(str(ctx.get("discriminator", "")).strip("'"), "value")
        msg = f"unknown {what} {ctx.get('tag')!r}; known: {ctx.get('expected_tags')}"
        if ctx.get("tag") == "None":
            msg += ' (YAML reads a bare null as "no value": write "null" in quotes)'
    elif e["type"] in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        msg += _bound_hint(loc, e.get("ctx", {}))
    elif e["type"] == "finite_number":
        msg = "must be a finite number (inf and nan are not allowed)"
    elif e["type"] == "union_tag_not_found":
        key = str(e.get("ctx", {}).get("discriminator", "")).strip("'")
        known = sorted(sched_registry.REGISTRY) if key == "name" else sorted(WORKLOADS) if key == "kind" else []
        what = {"name": "scheduler", "kind": "workload"}.get(key, "entry")
        msg = f"a {what} needs {key!r}" + (f": one of {', '.join(known)}" if known else "")
    elif e["type"] in ("model_type", "model_attributes_type", "dict_type"):
        msg = f"must be a mapping (key: value, ...), found {_kind(e.get('input'))}"
    elif e["type"] == "list_type":
        msg = f"must be a list, found {_kind(e.get('input'))}"
    elif e["type"] == "value_error" and msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if len(errs) > 1:
        msg += f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})"
    return field_name, msg


def _kind(x: Any) -> str:
    if x is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return names.get(type(x), type(x).__name__)


_UNITS = {"_ms": MS, "_us": US, "_ns": 1}


def _bound_hint(loc: tuple[Any, ...], ctx: dict[str, Any]) -> str:
    """Why a time bound is what it is: 1 ns is the simulation's step, MAX_SPAN_NS the longest run."""
    name = str(loc[-1]) if loc else ""
    unit = next((u for suf, u in _UNITS.items() if name.endswith(suf)), None)
    bound = next((ctx[k] for k in ("ge", "le", "gt", "lt") if k in ctx), None)
    if unit is None or not isinstance(bound, (int, float)):
        return ""
    if math.isclose(bound * unit, MIN_STEP_NS):
        return " (1 ns: simulated time counts whole nanoseconds, and a shorter step would make no progress)"
    if math.isclose(bound * unit, MAX_SPAN_NS):
        return f" (the longest run, {MAX_SPAN_NS / MS:g} ms)"
    return ""


def _allowed_keys_hint(loc: tuple[Any, ...], doc: Any = None) -> str:
    model: Any = ClusterConfig
    node = doc
    for step in loc[:-1]:
        node = node[step] if isinstance(node, (dict, list)) and _has(node, step) else None
        if isinstance(step, int):
            continue
        f = getattr(model, "model_fields", {}).get(step)
        if f is None:
            return ""
        model = _model_of(f.annotation, node)
        if model is None:
            return ""
    fields = getattr(model, "model_fields", None)
    return f"; allowed keys: {', '.join(fields)}" if fields else ""


def _has(node: Any, step: Any) -> bool:
    if isinstance(node, dict):
        return step in node
    return isinstance(step, int) and 0 <= step < len(node)


def _model_of(ann: Any, node: Any = None) -> Any:
    """The model an annotation designates; for a discriminated union, the member the
    document's element selects (by its "name" or "kind")."""
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    members = [m for m in (_model_of(a) for a in typing.get_args(ann)) if m is not None]
    if isinstance(node, list) and node:
        node = node[0]
    if isinstance(node, dict):
        for key in ("name", "kind"):
            tag = node.get(key)
            for m in members:
                f = m.model_fields.get(key)
                if f is not None and typing.get_args(f.annotation) == (tag,):
                    return m
    return members[0] if members else None


def load_doc(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(str(path), None, "file not found")
    if p.is_dir():
        raise ConfigError(str(path), None, "is a directory, expected a YAML config file")
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(str(path), None, f"{size} bytes; a config or sweep file is at most {MAX_FILE_BYTES >> 20} MiB")
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), None, f"cannot read ({exc.__class__.__name__}: {exc})") from None
    try:
        doc = load_yaml(text)
    except YamlLimitError as exc:
        raise ConfigError(str(path), f"{exc.where} (line {exc.line}, column {exc.column})", str(exc.problem)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), where, f"not valid YAML: {problem}") from None
    if doc is None:
        raise ConfigError(str(path), None, "empty file; a config needs at least 'hosts'")
    if not isinstance(doc, dict):
        raise ConfigError(str(path), None, f"the top level must be a mapping, found {type(doc).__name__}")
    return doc


def apply_overrides(doc: dict[str, Any], overrides: list[str], file: str) -> dict[str, Any]:
    for text in overrides:
        try:
            path, value = parse_assignment(text)
            doc = set_path(doc, path, value)
        except PathError as exc:
            raise ConfigError(file, f"--set {exc.path}", exc.msg) from None
    return doc


def validate_doc(doc: dict[str, Any], file: str = "<config>") -> ClusterConfig:
    """The config a document describes, or ConfigError. The one gate of ``validate``, ``run``
    and ``batch``: plain bounded data (``yamlsafe.check_plain``), the schema, then ``checks``."""
    try:
        check_plain(doc)
    except DocError as exc:
        raise ConfigError(file, exc.where, exc.msg) from None
    if not isinstance(doc, dict):
        raise ConfigError(file, None, f"the top level must be a mapping, found {type(doc).__name__}")
    try:
        cfg = ClusterConfig.model_validate(doc)
    except ValidationError as exc:
        fld, msg = format_validation_error(exc, doc)
        raise ConfigError(file, fld, msg) from None
    except ArithmeticError as exc:  # a model's own check computing with an extreme value
        raise ConfigError(file, None, f"a value is out of range ({exc.__class__.__name__}: {exc})") from None
    cfg = place_auto(cfg, file)  # domains with host: auto
    check_config(cfg, file)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, seed: int | None = None) -> tuple[ClusterConfig, dict[str, Any]]:
    """Read, override, validate. Returns the config and the resolved document."""
    doc = load_doc(path)
    doc = resolve_xl_domains(doc, Path(path).parent, str(path))  # domains given by xl.cfg files
    doc = apply_overrides(doc, overrides or [], str(path))
    doc = resolve_trace_files(doc, Path(path).parent, str(path))  # trace workloads' files, read once
    if seed is not None:
        doc = set_path(doc, "run.seed", seed) if "run" in doc else {**doc, "run": {"seed": seed}}
    cfg = validate_doc(doc, str(path))
    return cfg, resolved_doc(cfg)


def resolved_doc(cfg: ClusterConfig) -> dict[str, Any]:
    # a domain read from an xl file is written out whole, without the file's path
    return cfg.model_dump(mode="json", exclude_none=True, exclude={"domains": {"__all__": {"xl"}}})


def config_digest(cfg: ClusterConfig) -> str:
    return hashlib.sha256(json.dumps(resolved_doc(cfg), sort_keys=True).encode()).hexdigest()[:16]


def json_schema() -> dict[str, Any]:
    return ClusterConfig.model_json_schema()
