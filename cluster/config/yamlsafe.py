"""Bounded YAML: what a config document may be before the schema looks at it.

YAML is loaded safely (no tags that build objects), and also *boundedly*: a document nested
deeper than :data:`MAX_DEPTH`, one whose aliases expand to more than :data:`MAX_NODES` values
(the "billion laughs"), an alias inside the node it names (a cycle) or a file over
:data:`MAX_FILE_BYTES` is refused while it is composed, before anything recursive (the YAML
constructor, pydantic, ``copy.deepcopy``, msgpack) walks it. :func:`check_plain` applies the
same limits, and the rule that every number is finite, to a document however it was built
(a file, ``--set`` values, a sweep's trials, a batch job), so ``validate``, ``run`` and ``batch``
refuse the same inputs. Errors name the place: a YAML line and column while loading, the
document path (``domains[web].workload.think_ms``) after.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import yaml

#: Deepest nesting of lists and maps. A config needs about 8 (hosts[].pools[].scheduler
#: .schedule[] is the deepest the schema has; an hcall ``struct`` adds a few), and every
#: recursive walker downstream must stay far inside Python's recursion limit (1000 frames).
MAX_DEPTH = 32
#: Most values (scalars, lists and maps) in one document once aliases are expanded. The
#: largest shipped config has a few hundred; a cluster of 64 hosts with 50 domains each has
#: about 30 000; loading, validating and copying 200 000 takes well under a second.
MAX_NODES = 200_000
#: Largest config or sweep file read (a config of MAX_NODES short values is about 2 MiB).
MAX_FILE_BYTES = 16 << 20
#: Most digits of an integer in YAML (2^64 has 20; Python refuses to read more than 4300).
MAX_INT_DIGITS = 40
#: Integers in a document are below this in magnitude: a 64-bit register is the largest value
#: a config may give (seeds are below 2^63).
MAX_INT = 1 << 64
#: Largest magnitude of a number written with a fraction or exponent (a float). No config
#: field needs more (times are at most 1e15 ns, sizes 1.7e10 MiB, rates 1e7 Mbit/s), and a
#: larger one overflows to infinity when converted to ns. Integers are not limited here
#: (registers and seeds are 64-bit); the schema bounds each.
MAX_FLOAT = 1e18


class YamlLimitError(yaml.MarkedYAMLError):
    """A YAML document over one of the limits; ``where`` is its path in the document."""

    def __init__(self, problem: str, mark: Any, where: str):
        super().__init__(problem=problem, problem_mark=mark)
        self.where = where
        self.line = mark.line + 1 if mark is not None else 0
        self.column = mark.column + 1 if mark is not None else 0


def _step(index: Any) -> str | None:
    if isinstance(index, int):
        return f"[{index}]"
    if isinstance(index, yaml.ScalarNode):
        return f".{index.value}"
    return None  # composing a mapping's key


def _path(steps: list[str | None]) -> str:
    parts = [s for s in steps if s is not None]
    if len(parts) > 12:
        parts = parts[:8] + [f"...({len(parts) - 10} more)..."] + parts[-2:]
    return "".join(parts).lstrip(".") or "<top>"


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep, self-referencing or alias-exploding documents."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0
        self._steps: list[str | None] = []
        self._open: set[str] = set()
        # id(node) -> (values it expands to, nesting depth it expands to)
        self._size: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        step = _step(index)
        if self.check_event(yaml.AliasEvent):
            ev = self.peek_event()  # type: ignore[no-untyped-call]
            if ev.anchor in self._open:
                raise YamlLimitError(
                    f"alias *{ev.anchor} refers to a node that contains it (a cycle); an alias may only repeat a finished node",
                    ev.start_mark,
                    _path(self._steps + [step]),
                )
            return super().compose_node(parent, index)
        ev = self.peek_event()  # type: ignore[no-untyped-call]
        collection = isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        self._steps.append(step)
        if collection:
            if self._depth >= MAX_DEPTH:
                raise YamlLimitError(
                    f"lists and maps are nested more than {MAX_DEPTH} deep here (the limit; a config needs about 8)",
                    ev.start_mark,
                    _path(self._steps),
                )
            self._depth += 1
            if ev.anchor is not None:
                self._open.add(ev.anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            if collection:
                self._depth -= 1
                if ev.anchor is not None:
                    self._open.discard(ev.anchor)
        try:
            self._measure(node)
        finally:
            self._steps.pop()
        return node

    def _measure(self, node: Any) -> None:
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [x for kv in node.value for x in kv]
        else:
            self._size[id(node)] = (1, 0)
            return
        sizes = [self._size.get(id(c), (1, 0)) for c in children]
        n = 1 + sum(s for s, _ in sizes)
        depth = 1 + max((d for _, d in sizes), default=0)
        if n > MAX_NODES:
            raise YamlLimitError(
                f"expands to more than {MAX_NODES} values (the limit), counting every repetition an alias makes",
                node.start_mark,
                _path(self._steps),
            )
        if depth > MAX_DEPTH:
            raise YamlLimitError(
                f"lists and maps are nested {depth} deep once aliases are expanded (the limit is {MAX_DEPTH})",
                node.start_mark,
                _path(self._steps),
            )
        self._size[id(node)] = (n, depth)


    def construct_bounded_int(self, node: Any) -> Any:
        digits = sum(ch.isalnum() for ch in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise YamlLimitError(f"an integer of {digits} digits; at most {MAX_INT_DIGITS}", node.start_mark, "number")
        return self.construct_yaml_int(node)


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_bounded_int)


def load_yaml(text: str) -> Any:
    """Parse one YAML document within the limits (YamlLimitError, or yaml.YAMLError)."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


# --- documents however they were built ------------------------------------------------------

_SCALARS = (str, bool, int, bytes, type(None))


class DocError(ValueError):
    """A document that is not plain, bounded, finite data: ``where`` (a path) and ``msg``."""

    def __init__(self, where: str, msg: str):
        where = where.lstrip(".") or "<top>"
        super().__init__(f"{where}: {msg}")
        self.where = where
        self.msg = msg


def _child_step(container: Any, key: Any) -> str:
    if isinstance(container, dict):
        return f".{key}"
    el = container[key]
    name = el.get("name") if isinstance(el, dict) else None
    return f"[{name}]" if isinstance(name, str) else f"[{key}]"


def check_plain(doc: Any) -> None:
    """Refuse (DocError) a document with a non-finite or huge float, a value YAML decoded into
    something that is not plain data (a date, a set), nesting over MAX_DEPTH or more than
    MAX_NODES values (a value shared twice counts twice; a cycle never ends, so it is refused).
    Iterative: it never recurses, whatever the document."""
    count = 0
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise DocError(where, f"the document has more than {MAX_NODES} values (the limit)")
        if isinstance(node, float):
            if not math.isfinite(node):
                raise DocError(where, f"{node} is not allowed: every number must be finite")
            if abs(node) > MAX_FLOAT:
                raise DocError(where, f"{node:g} is too large: a number with a fraction or exponent is at most {MAX_FLOAT:g} in magnitude")
            continue
        if type(node) is int and not -MAX_INT < node < MAX_INT:
            raise DocError(where, f"{node:.3g} is too large: an integer is at most 64 bits" if abs(node) < 10**300 else "an integer of more than 300 digits; at most 64 bits")
        if isinstance(node, _SCALARS):
            continue
        if isinstance(node, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                raise DocError(where, f"lists and maps are nested more than {MAX_DEPTH} deep (the limit; a config needs about 8)")
            keys = list(node) if isinstance(node, dict) else range(len(node))
            for k in reversed(list(keys)):
                if isinstance(node, dict) and not isinstance(k, (str, int, bool, type(None))):
                    raise DocError(f"{where}.{k!r}".lstrip("."), "a key must be a plain string or number")
                stack.append((node[k], f"{where}{_child_step(node, k)}", depth + 1))
            continue
        if isinstance(node, (datetime.date, datetime.time)):
            raise DocError(where, f"YAML read {node} as a date or time; quote it to give a string")
        raise DocError(where, f"a {type(node).__name__} is not a config value (use numbers, strings, lists and maps)")
