"""State on the wire: a versioned stream of typed msgpack records ending with END.

Modelled on Xen's migration stream (``xg_sr_stream_format.h``): an image header naming the
format and version, then records ``[type, body]``, then an END record. Bit 31 of a type marks
an optional record that a reader may skip; an unknown mandatory record, a wrong magic or an
unknown version is refused with a :class:`RecordError` that says what was found and what is
allowed. Nothing here uses pickle: a record can carry only msgpack data (ints, strings, bytes,
lists, maps), so no record can execute code.

The same vCPU record is used when a vCPU moves between pCPUs of one host (then it also carries
the scheduler's per-unit data) and between hosts (then it does not: the destination's
scheduler inserts the vCPU afresh, as Xen does).
"""

from __future__ import annotations

from hosts.errors import RecordError as RecordError  # re-exported: defined apart so this module can be compiled

import math
from typing import Any, Final, Iterable, Iterator

import msgpack

from hosts.clock import NEVER
from hosts.vcpu import REG_NAMES, VcpuState
from hosts.workload import MAX_PAYLOAD, check_struct

MAGIC: Final = "HVSIM-STREAM"
VERSION: Final = 1
VCPU_RECORD_VERSION: Final = 1

REC_END: Final = 0x0
REC_PAGE_DATA: Final = 0x1
REC_DOMAIN: Final = 0x2
REC_VCPU: Final = 0x4
REC_SHARED_INFO: Final = 0x7
REC_CHECKPOINT: Final = 0xE
REC_OPTIONAL: Final = 1 << 31

RECORD_NAMES: Final = {
    REC_END: "END",
    REC_PAGE_DATA: "PAGE_DATA",
    REC_DOMAIN: "DOMAIN",
    REC_VCPU: "VCPU",
    REC_SHARED_INFO: "SHARED_INFO",
    REC_CHECKPOINT: "CHECKPOINT",
}

#: Xen's MAX_BATCH_SIZE: at most this many pages per PAGE_DATA record.
MAX_BATCH_PAGES: Final = 1024


def _packb(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def _unpackb(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types; all mean "not a record"
        raise RecordError(f"{what}: not a valid msgpack record ({exc.__class__.__name__}: {exc})") from None


# --- vCPU records ----------------------------------------------------------------------------

_VCPU_FIELDS: Final = (
    "vid",
    "regs",
    "hcall_preempted",
    "hcall_args",
    "runstate",
    "state_entry_ns",
    "runstate_ns",
    "pause_flags",
    "pause_count",
    "singleshot_ns",
    "poll_ports",
    "poll_timeout_ns",
    "pending_ports",
    "pending_payloads",
    "upcall_pending",
    "wl",
    "rng",
    "wake_ns",
    "last_pcpu",
    "hard_affinity",
    "soft_affinity",
)
_VCPU_REQUIRED: Final = frozenset(_VCPU_FIELDS)
_VCPU_KNOWN: Final = _VCPU_REQUIRED | {"version", "sched"}


def vcpu_to_body(v: VcpuState, *, with_sched: bool) -> dict[str, Any]:
    body = {
        "version": VCPU_RECORD_VERSION,
        "vid": v.vid,
        "regs": [v.regs[r] for r in REG_NAMES],
        "hcall_preempted": v.hcall_preempted,
        "hcall_args": v.hcall_args,
        "runstate": v.runstate,
        "state_entry_ns": v.state_entry_ns,
        "runstate_ns": list(v.runstate_ns),
        "pause_flags": v.pause_flags,
        "pause_count": v.pause_count,
        "singleshot_ns": v.singleshot_ns,
        "poll_ports": list(v.poll_ports),
        "poll_timeout_ns": v.poll_timeout_ns,
        "pending_ports": list(v.pending_ports),
        "pending_payloads": list(v.pending_payloads),
        "upcall_pending": v.upcall_pending,
        "wl": v.wl,
        "rng": _opt_list(v.rng_words()),
        "wake_ns": v.wake_ns,
        "last_pcpu": v.last_pcpu,
        "hard_affinity": list(v.hard_affinity),
        "soft_affinity": list(v.soft_affinity),
    }
    if with_sched:
        body["sched"] = v.sched
    return body


def _opt_list(words: tuple[int, ...] | None) -> list[int] | None:
    return list(words) if words is not None else None


#: What a version-1 vCPU record may hold, field by field (checked by ``vcpu_from_body``):
#: times are ns from 0 to NEVER; registers are 64-bit unsigned; ports are 32-bit; pCPU ids
#: are those a host may have (0..1023, -1 for none); vid is dom_uid << 12 | index.
MAX_VID: Final = (1 << 48) - 1
MAX_PCPU: Final = 1023
MAX_PORTS: Final = 4096  # poll and pending ports of one vCPU (Xen's poll takes at most 128)
#: most values in the plain-data fields (workload state, hypercall struct, scheduler data):
#: an mmu_update batch in flight is 4096 [page, value] pairs
MAX_PLAIN_VALUES: Final = 1 << 16
MAX_PLAIN_DEPTH: Final = 8
_U64: Final = (1 << 64) - 1
_I64: Final = (-(1 << 63), (1 << 63) - 1)
_I32: Final = (-(1 << 31), (1 << 31) - 1)


#: (field, lowest, highest) of the integer fields
_INT_FIELDS: Final = (
    ("vid", 0, MAX_VID),
    ("state_entry_ns", 0, NEVER),
    ("pause_flags", 0, (1 << 32) - 1),
    ("pause_count", 0, _I32[1]),
    ("singleshot_ns", 0, NEVER),
    ("poll_timeout_ns", 0, NEVER),
    ("wake_ns", -1, NEVER),
    ("last_pcpu", -1, MAX_PCPU),
)
#: (field, lowest, highest, exact length or None, longest) of the integer-list fields
_LIST_FIELDS: Final = (
    ("regs", 0, _U64, len(REG_NAMES), len(REG_NAMES)),
    ("runstate_ns", 0, NEVER, 4, 4),
    ("poll_ports", *_I32, None, MAX_PORTS),
    ("pending_ports", *_I32, None, MAX_PORTS),
    ("hard_affinity", 0, MAX_PCPU, None, MAX_PCPU + 1),
    ("soft_affinity", 0, MAX_PCPU, None, MAX_PCPU + 1),
)
_RNG_MAX: Final = (_U64, _U64, _U64, _U64, 1, (1 << 32) - 1)
#: values a plain-data field may hold without a closer look (msgpack ints are 64-bit already)
_FLAT: Final = frozenset((int, bool, type(None), str, bytes))
_NUMBERS: Final = frozenset((int, bool, type(None)))


def _show(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _bad(what: str, key: str, found: Any, allowed: str) -> RecordError:
    return RecordError(f"{what}: field {key!r} is {_show(found)}; allowed: {allowed}")


def _int_at(what: str, key: str, x: Any, lo: int, hi: int) -> int:
    if type(x) is not int or not lo <= x <= hi:
        raise _bad(what, key, x, f"an integer from {lo} to {hi}")
    return x


def _int_list(what: str, key: str, xs: Any, lo: int, hi: int, n: int | None, longest: int) -> list[int]:
    if type(xs) is not list or (n is not None and len(xs) != n) or len(xs) > longest:
        size = f"{n}" if n is not None else f"at most {longest}"
        raise _bad(what, key, xs, f"a list of {size} integers from {lo} to {hi}")
    for i, x in enumerate(xs):
        if type(x) is not int or not lo <= x <= hi:
            raise _bad(what, f"{key}[{i}]", x, f"an integer from {lo} to {hi}")
    return xs


def _plain(what: str, key: str, x: Any, *, numbers_only: bool = False) -> None:
    """Plain msgpack data (no ext types, finite floats, string keys), at most MAX_PLAIN_DEPTH
    deep and MAX_PLAIN_VALUES values; with ``numbers_only``, one flat map of integers,
    booleans, nulls and finite floats (a scheduler's per-vCPU data). Iterative."""
    if type(x) is dict and all(type(k) is str for k in x) and all(type(v) in (_NUMBERS if numbers_only else _FLAT) for v in x.values()):
        return  # the common case: a flat map of plain scalars
    count = 0
    stack: list[tuple[Any, str, int]] = [(x, key, 0)]
    while stack:
        node, at, depth = stack.pop()
        count += 1
        if count > MAX_PLAIN_VALUES:
            raise RecordError(f"{what}: field {key!r} has more than {MAX_PLAIN_VALUES} values")
        t = type(node)
        if t in _NUMBERS:
            if t is int and not _I64[0] <= node <= _U64:
                raise _bad(what, at, node, "an integer of at most 64 bits")
            continue
        if t is float:
            if not math.isfinite(node):
                raise _bad(what, at, node, "a finite number")
            continue
        if not numbers_only and t in (str, bytes):
            continue
        if (t is dict and (not numbers_only or depth == 0)) or (not numbers_only and t is list):
            if depth >= MAX_PLAIN_DEPTH:
                raise _bad(what, at, "...", f"data nested at most {MAX_PLAIN_DEPTH} deep")
            if t is dict:
                for k, v in node.items():
                    if type(k) is not str:
                        raise _bad(what, at, k, "string keys")
                    stack.append((v, f"{at}.{k}", depth + 1))
            else:
                stack.extend((v, f"{at}[{i}]", depth + 1) for i, v in enumerate(node))
            continue
        allowed = "integers, finite numbers, booleans or null" if numbers_only else "plain data (numbers, strings, bytes, lists, string-keyed maps)"
        raise _bad(what, at, node, allowed)


def vcpu_from_body(body: Any, what: str = "vCPU record") -> VcpuState:
    """A VcpuState from a record body, or RecordError naming the first field that is missing,
    unknown, of the wrong type or out of its range (the limits above); nothing else is raised."""
    if type(body) is not dict:
        raise RecordError(f"{what}: expected a map, found {type(body).__name__}")
    version = body.get("version")
    if type(version) is not int or version != VCPU_RECORD_VERSION:
        raise RecordError(
            f"{what}: field 'version' is {_show(version)}; this hvsim reads vCPU record version {VCPU_RECORD_VERSION} only"
        )
    if not body.keys() >= _VCPU_REQUIRED:
        missing = [f for f in _VCPU_FIELDS if f not in body]
        raise RecordError(f"{what}: missing field(s) {', '.join(missing)}")
    if len(body) > len(_VCPU_REQUIRED) + 1 and not body.keys() <= _VCPU_KNOWN:
        unknown = [_show(k) for k in body if k not in _VCPU_KNOWN]
        raise RecordError(f"{what}: unknown field(s) {', '.join(unknown)}; a version {VCPU_RECORD_VERSION} record has version, {', '.join(_VCPU_FIELDS)}, sched")
    for key, lo, hi in _INT_FIELDS:
        x = body[key]
        if type(x) is not int or not lo <= x <= hi:
            raise _bad(what, key, x, f"an integer from {lo} to {hi}")
    for key, lo, hi, n, longest in _LIST_FIELDS:
        _int_list(what, key, body[key], lo, hi, n, longest)
    rs = body["runstate"]
    if type(rs) is not int or rs not in (0, 1, 2, 3):
        raise RecordError(f"{what}: field 'runstate' is {_show(rs)}; allowed 0 (running) 1 (runnable) 2 (blocked) 3 (offline)")
    for key in ("hcall_preempted", "upcall_pending"):
        if type(body[key]) is not bool:
            raise _bad(what, key, body[key], "true or false")
    words = body["rng"]
    if words is not None:
        if type(words) is not list or len(words) != 6:
            raise RecordError(f"{what}: field 'rng' must be 6 integers (PCG64 state: state and increment as 64-bit halves, has_uint32, uinteger) or null")
        for i, (x, hi) in enumerate(zip(words, _RNG_MAX)):
            _int_at(what, f"rng[{i}]", x, 0, hi)
    payloads = body["pending_payloads"]
    if type(payloads) is not list or len(payloads) > MAX_PORTS:
        raise _bad(what, "pending_payloads", payloads, f"a list of at most {MAX_PORTS} [port, payload] pairs")
    pending: list[tuple[int, Any]] = []
    for i, p in enumerate(payloads):
        if type(p) is not list or len(p) != 2:
            raise _bad(what, f"pending_payloads[{i}]", p, "a [port, payload] pair")
        port = _int_at(what, f"pending_payloads[{i}][0]", p[0], *_I32)
        data = p[1]
        if data is not None:
            _int_list(what, f"pending_payloads[{i}][1]", data, *_I64, None, MAX_PAYLOAD)
        pending.append((port, data))
    for key in ("hcall_args", "wl"):
        if type(body[key]) is not dict:
            raise _bad(what, key, body[key], "a map")
        _plain(what, key, body[key])
    hcall_args: dict[str, Any] = body["hcall_args"]
    if hcall_args:
        try:
            check_struct(hcall_args, "hcall_args", MAX_PLAIN_VALUES)
        except ValueError as exc:
            raise RecordError(f"{what}: field 'hcall_args': {exc}") from None
    sched = body.get("sched")
    if sched is None:
        sched = {}
    elif type(sched) is not dict:
        raise _bad(what, "sched", sched, "a map of the scheduler's per-vCPU numbers, or absent")
    else:
        _plain(what, "sched", sched, numbers_only=True)
    v = VcpuState(body["vid"], hard_affinity=tuple(body["hard_affinity"]), soft_affinity=tuple(body["soft_affinity"]))
    v.regs = dict(zip(REG_NAMES, body["regs"]))
    v.hcall_preempted = body["hcall_preempted"]
    v.hcall_args = dict(hcall_args)
    v.runstate = rs
    v.state_entry_ns = body["state_entry_ns"]
    v.runstate_ns = list(body["runstate_ns"])
    v.pause_flags = body["pause_flags"]
    v.pause_count = body["pause_count"]
    v.singleshot_ns = body["singleshot_ns"]
    v.poll_ports = tuple(body["poll_ports"])
    v.poll_timeout_ns = body["poll_timeout_ns"]
    v.pending_ports = list(body["pending_ports"])
    v.pending_payloads = pending
    v.upcall_pending = body["upcall_pending"]
    v.wl = dict(body["wl"])
    v._rng_words = tuple(words) if words is not None else None
    v.wake_ns = body["wake_ns"]
    v.last_pcpu = body["last_pcpu"]
    v.sched = dict(sched)
    return v


def pack_vcpu(v: VcpuState, *, with_sched: bool = True) -> bytes:
    """One vCPU as a self-describing record (used for pCPU-to-pCPU moves)."""
    return _packb([REC_VCPU, vcpu_to_body(v, with_sched=with_sched)])


def unpack_vcpu(data: bytes) -> VcpuState:
    obj = _unpackb(data, "vCPU record")
    if not isinstance(obj, (list, tuple)) or len(obj) != 2 or obj[0] != REC_VCPU:
        raise RecordError("vCPU record: expected [VCPU (4), body]")
    return vcpu_from_body(obj[1])


# --- streams ---------------------------------------------------------------------------------


def header(kind: str, **info: Any) -> dict[str, Any]:
    return {"magic": MAGIC, "version": VERSION, "kind": kind, **info}


def write_stream(hdr: dict[str, Any], records: Iterable[tuple[int, Any]]) -> bytes:
    """A whole stream as bytes: header, the records, END."""
    out = [_packb(hdr)]
    for rtype, body in records:
        out.append(_packb([rtype, body]))
    out.append(_packb([REC_END, None]))
    return b"".join(out)


def pack_record(rtype: int, body: Any) -> bytes:
    return _packb([rtype, body])


def unpack_record(data: bytes, what: str) -> tuple[int, Any]:
    """One ``[type, body]`` record; RecordError if it is not one."""
    obj = _unpackb(data, what)
    if not isinstance(obj, (list, tuple)) or len(obj) != 2 or not isinstance(obj[0], int):
        raise RecordError(f"{what}: expected [type, body]")
    return obj[0], obj[1]


def end_record() -> bytes:
    return _packb([REC_END, None])


def read_stream(data: bytes, what: str = "stream") -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    """Parse and check a whole stream; returns the header and the records before END."""
    hdr, it = open_stream(data, what)
    recs = list(it)
    return hdr, recs


def open_stream(data: bytes, what: str = "stream") -> tuple[dict[str, Any], Iterator[tuple[int, Any]]]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1 << 20))
    unpacker.feed(data)
    try:
        hdr = next(unpacker)
    except StopIteration:
        raise RecordError(f"{what}: empty, expected a header") from None
    except Exception as exc:
        raise RecordError(f"{what}: header is not msgpack ({exc})") from None
    check_header(hdr, what)

    def records() -> Iterator[tuple[int, Any]]:
        index = 0
        while True:
            try:
                rec = next(unpacker)
            except StopIteration:
                raise RecordError(f"{what}: ended after {index} records without an END record") from None
            except Exception as exc:
                raise RecordError(f"{what}: record {index} is not msgpack ({exc})") from None
            if not isinstance(rec, (list, tuple)) or len(rec) != 2 or not isinstance(rec[0], int):
                raise RecordError(f"{what}: record {index} must be [type, body]")
            rtype, body = rec
            if rtype == REC_END:
                return
            base = rtype & ~REC_OPTIONAL
            if base not in RECORD_NAMES:
                if rtype & REC_OPTIONAL:
                    index += 1
                    continue
                known = ", ".join(f"{k} ({n})" for k, n in sorted(RECORD_NAMES.items()))
                raise RecordError(f"{what}: record {index} has unknown mandatory type {rtype:#x}; known types: {known}")
            yield base, body
            index += 1

    return hdr, records()


def check_header(hdr: Any, what: str = "stream") -> None:
    if not isinstance(hdr, dict) or hdr.get("magic") != MAGIC:
        raise RecordError(f"{what}: field 'magic' must be {MAGIC!r}; this is not an hvsim record stream")
    if hdr.get("version") != VERSION:
        raise RecordError(
            f"{what}: field 'version' is {hdr.get('version')!r}; this hvsim reads stream version {VERSION} only"
        )
