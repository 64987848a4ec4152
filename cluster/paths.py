"""Dotted paths into a config document, for ``--set`` overrides and sweep parameters.

A path is a dot-separated list of steps. A step into a mapping is a key; a step into a list
is an index (``events.0.migrate.policy``), or the ``name`` of the element
(``domains.web.weight``, ``hosts.host0.pcpus``), or ``*`` for every element
(``hosts.*.scheduler.ratelimit_us``). The last step may create a new key in a mapping;
nothing else is created, so a typo is an error that names the step that did not match.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]  # no stubs installed (types-PyYAML)


class PathError(ValueError):
    """A path that does not lead anywhere in the document."""

    def __init__(self, path: str, msg: str):
        super().__init__(f"{path}: {msg}")
        self.path = path
        self.msg = msg


def _step_into_list(seq: list[Any], step: str, path: str, done: str) -> list[tuple[str, int]]:
    if step == "*":
        return [(str(i), i) for i in range(len(seq))]
    if step.lstrip("-").isdigit():
        i = int(step)
        if not -len(seq) <= i < len(seq):
            raise PathError(path, f"index {i} out of range at '{done}' (it has {len(seq)} elements)")
        return [(step, i)]
    for i, el in enumerate(seq):
        if isinstance(el, dict) and el.get("name") == step:
            return [(step, i)]
    names = [el.get("name") for el in seq if isinstance(el, dict) and "name" in el]
    hint = f"; names there: {', '.join(map(str, names))}" if names else ""
    raise PathError(path, f"no element named {step!r} at '{done or '<top>'}'{hint}")


def expand(doc: Any, path: str) -> list[list[Any]]:
    """All concrete key/index sequences a (possibly wildcarded) path designates."""
    if not path or any(not s for s in path.split(".")):
        raise PathError(path, "empty step in path")
    steps = path.split(".")
    results: list[list[Any]] = []

    def walk(node: Any, i: int, keys: list[Any], done: str) -> None:
        if i == len(steps):
            results.append(keys)
            return
        step = steps[i]
        last = i == len(steps) - 1
        where = f"{done}.{step}" if done else step
        if isinstance(node, list):
            for _, idx in _step_into_list(node, step, path, done):
                walk(node[idx], i + 1, keys + [idx], where)
        elif isinstance(node, dict):
            if step == "*":
                for k in node:
                    walk(node[k], i + 1, keys + [k], f"{done}.{k}" if done else str(k))
            elif step in node:
                walk(node[step], i + 1, keys + [step], where)
            elif last:
                results.append(keys + [step])
            else:
                raise PathError(path, f"no key {step!r} at '{done or '<top>'}' (keys: {', '.join(map(str, node))})")
        else:
            raise PathError(path, f"'{done}' is a value, cannot step into it with {step!r}")

    walk(doc, 0, [], "")
    if not results:
        raise PathError(path, "matches nothing")
    return results


def set_path(doc: Any, path: str, value: Any) -> Any:
    """Return a copy of ``doc`` with every place ``path`` designates set to ``value``."""
    doc = copy.deepcopy(doc)
    for keys in expand(doc, path):
        node = doc
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = copy.deepcopy(value)
    return doc


def get_path(doc: Any, path: str) -> list[Any]:
    out: list[Any] = []
    for keys in expand(doc, path):
        node = doc
        for k in keys:
            if isinstance(node, dict) and k not in node:
                raise PathError(path, f"no key {k!r}")
            node = node[k]
        out.append(node)
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """``path=value`` with the value read as a YAML scalar or flow collection."""
    if "=" not in text:
        raise PathError(text, "expected PATH=VALUE, for example domains.web.weight=512")
    path, raw = text.split("=", 1)
    path = path.strip()
    from cluster.config.yamlsafe import YamlLimitError, load_yaml  # here: cluster.config imports this module

    try:
        value = load_yaml(raw) if raw.strip() else ""
    except YamlLimitError as exc:
        raise PathError(path, f"value: {exc.where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise PathError(path, f"value {raw[:60]!r}{'...' if len(raw) > 60 else ''} is not valid YAML ({exc.__class__.__name__})") from None
    return path, value
