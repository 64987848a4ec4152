"""What crosses a batch's process boundary: a trial's job in, its outcome out.

Both are msgpack mappings tagged with their ``kind`` and read back field by field; an unknown
kind or field is refused (``WireError``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Final, Literal, Mapping, Sequence, TypeVar, Union

import msgpack  # type: ignore[import-untyped, unused-ignore]  # ships no type information

from hosts.wire import WireError

if TYPE_CHECKING:

    pass

Status = Literal["ok", "failed", "pending"]
Outcome = Literal["ok", "failed"]  # what a trial that ran can end as
OK: Final = "ok"
FAILED: Final = "failed"
PENDING: Final = "pending"

T = TypeVar("T")


def _field(doc: Mapping[str, Any], name: str, kind: type[T]) -> T:
    v = doc.get(name)
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind):
        raise WireError(f"{doc.get('kind')}: field {name!r} is {type(v).__name__}, not {kind.__name__}")
    return v


def _opt_field(doc: Mapping[str, Any], name: str, kind: type[T]) -> T | None:
    return None if doc.get(name) is None else _field(doc, name, kind)


def _check_keys(doc: Mapping[str, Any], names: Sequence[str]) -> None:
    keys = set(doc) - {"kind"}
    if keys != set(names):
        missing, extra = sorted(set(names) - keys), sorted(keys - set(names))
        raise WireError(f"{doc.get('kind')}: missing fields {missing}, unknown fields {extra}")


@dataclass(frozen=True, slots=True)
class TrialJob:
    """A trial to run: its id and its resolved config document."""

    KIND: ClassVar[str] = "trial_job"
    FIELDS: ClassVar[tuple[str, ...]] = ("trial", "config")
    trial: str
    config: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.KIND, "trial": self.trial, "config": self.config}

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> TrialJob:
        _check_keys(doc, cls.FIELDS)
        return cls(_field(doc, "trial", str), _field(doc, "config", dict))


@dataclass(frozen=True, slots=True)
class TrialOutcome:
    """What running a trial gave: its status and the files of its run directory."""

    KIND: ClassVar[str] = "trial_outcome"
    FIELDS: ClassVar[tuple[str, ...]] = ("trial", "status", "error", "traceback", "files", "trial_wall_s", "node", "pid", "started_unix")
    trial: str
    status: Outcome
    error: str | None
    traceback: str | None
    files: dict[str, bytes]  # run directory: relative path -> content
    trial_wall_s: float | None
    node: str | None
    pid: int | None
    started_unix: float | None

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.KIND, **{f: getattr(self, f) for f in self.FIELDS}}

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> TrialOutcome:
        _check_keys(doc, cls.FIELDS)
        raw_status = _field(doc, "status", str)
        status: Outcome
        if raw_status == OK:
            status = OK
        elif raw_status == FAILED:
            status = FAILED
        else:
            raise WireError(f"{cls.KIND}: unknown status {raw_status!r}")
        files = _field(doc, "files", dict)
        if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in files.items()):
            raise WireError(f"{cls.KIND}: files must map names to bytes")
        return cls(
            trial=_field(doc, "trial", str),
            status=status,
            error=_opt_field(doc, "error", str),
            traceback=_opt_field(doc, "traceback", str),
            files=files,
            trial_wall_s=_opt_field(doc, "trial_wall_s", float),
            node=_opt_field(doc, "node", str),
            pid=_opt_field(doc, "pid", int),
            started_unix=_opt_field(doc, "started_unix", float),
        )


Message = Union[TrialJob, TrialOutcome]
_MESSAGES: dict[str, Callable[[Mapping[str, Any]], Message]] = {TrialJob.KIND: TrialJob.from_wire, TrialOutcome.KIND: TrialOutcome.from_wire}


def pack_message(msg: Message) -> bytes:
    data: bytes = msgpack.packb(msg.to_wire(), use_bin_type=True)
    return data


def unpack_message(data: bytes) -> Message:
    """The message in ``data``; an unknown kind or a malformed record raises :class:`WireError`."""
    doc = msgpack.unpackb(data, raw=False)
    if not isinstance(doc, dict):
        raise WireError(f"a batch message is a mapping, not {type(doc).__name__}")
    kind = doc.get("kind")
    decode = _MESSAGES.get(kind) if isinstance(kind, str) else None
    if decode is None:
        raise WireError(f"unknown batch message kind {kind!r}; known: {', '.join(_MESSAGES)}")
    return decode(doc)


def _unpack(data: bytes, cls: type[T]) -> T:
    msg = unpack_message(data)
    if not isinstance(msg, cls):
        raise WireError(f"expected a {cls.__name__}, got a {type(msg).__name__}")
    return msg


# ---------------------------------------------------------------------------------------------
# one trial (runs wherever the launcher puts it)
