"""msgpack with named message types: what crosses a process boundary keeps its type.

Messages between a host's pCPUs and its master, and between a scheduler's pCPU and pool
halves, are NamedTuples (see ``hosts.messages`` and ``hosts.sched.messages``). In one process
they are handed over as objects. Between processes they travel as msgpack, where a NamedTuple
would arrive as a bare positional tuple; so every message class is registered here under a
stable tag and packed as an extension record ``[tag, field...]``, and the reader rebuilds the
class. A tag the reader does not know is refused (:class:`WireError`), never guessed.

Containers come back as what was sent: a list as a list (a msgpack array) and a tuple as a
tuple (an extension record of its items), so a compiled reader, which checks a field's
declared ``list`` or ``tuple`` at run time, gets the type the sender had. No pickle, ever:
only registered classes of plain fields can be rebuilt, so nothing on the wire can run code.
"""

from __future__ import annotations

from hosts.errors import WireError as WireError  # re-exported: defined apart so this module can be compiled

from typing import Any, Callable, Final, TypeVar

import msgpack

EXT_MESSAGE: Final = 7  # msgpack extension type code of a registered message
EXT_TUPLE: Final = 8  # ... and of a plain tuple (lists are plain msgpack arrays)

T = TypeVar("T")

_BY_TAG: dict[str, Callable[..., Any]] = {}
_TAG_OF: dict[type, str] = {}


def message(cls: type[T]) -> type[T]:
    """Register a NamedTuple class for the wire (class decorator). Tags are the class name, so
    two registered classes may not share one."""
    tag = cls.__name__
    if tag in _BY_TAG and _BY_TAG[tag] is not cls:
        raise WireError(f"two message classes named {tag!r}")
    _BY_TAG[tag] = cls
    _TAG_OF[cls] = tag
    return cls


def _default(obj: Any) -> Any:
    tag = _TAG_OF.get(type(obj))
    if tag is not None:
        return msgpack.ExtType(EXT_MESSAGE, packb([tag, *obj]))
    if type(obj) is tuple:
        return msgpack.ExtType(EXT_TUPLE, packb(list(obj)))
    # numpy scalars that slipped into a message
    item = getattr(obj, "item", None)
    if item is not None and getattr(obj, "shape", None) == ():
        return item()
    raise TypeError(f"cannot put a {type(obj).__name__} on the wire (register it with hosts.wire.message)")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_TUPLE:
        items = unpackb(data)
        if type(items) is not list:
            raise WireError("a tuple record must hold an array")
        return tuple(items)
    if code != EXT_MESSAGE:
        raise WireError(f"unknown msgpack extension type {code}")
    fields = unpackb(data)
    if not fields or not isinstance(fields[0], str):
        raise WireError("a message record must start with its tag")
    cls = _BY_TAG.get(fields[0])
    if cls is None:
        raise WireError(f"unknown message kind {fields[0]!r}; known: {', '.join(sorted(_BY_TAG))}")
    try:
        return cls(*fields[1:])
    except TypeError as exc:
        raise WireError(f"message {fields[0]}: {exc}") from None


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=True, default=_default)  # type: ignore[no-any-return]


def unpackb(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False, ext_hook=_ext_hook)


def known() -> list[str]:
    return sorted(_BY_TAG)
