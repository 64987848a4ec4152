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

from typing import Any, Iterable, Iterator

import msgpack

from hosts.vcpu import REG_NAMES, VcpuState

MAGIC = "HVSIM-STREAM"
VERSION = 1
VCPU_RECORD_VERSION = 1

REC_END = 0x0
REC_PAGE_DATA = 0x1
REC_DOMAIN = 0x2
REC_VCPU = 0x4
REC_SHARED_INFO = 0x7
REC_CHECKPOINT = 0xE
REC_OPTIONAL = 1 << 31

RECORD_NAMES = {
    REC_END: "END",
    REC_PAGE_DATA: "PAGE_DATA",
    REC_DOMAIN: "DOMAIN",
    REC_VCPU: "VCPU",
    REC_SHARED_INFO: "SHARED_INFO",
    REC_CHECKPOINT: "CHECKPOINT",
}

#: Xen's MAX_BATCH_SIZE: at most this many pages per PAGE_DATA record.
MAX_BATCH_PAGES = 1024


class RecordError(ValueError):
    """A record or stream that hvsim refuses, with a message naming what and why."""


def _packb(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def _unpackb(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types; all mean "not a record"
        raise RecordError(f"{what}: not a valid msgpack record ({exc.__class__.__name__}: {exc})") from None


# --- vCPU records ----------------------------------------------------------------------------

_VCPU_FIELDS = (
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


def vcpu_from_body(body: Any, what: str = "vCPU record") -> VcpuState:
    if not isinstance(body, dict):
        raise RecordError(f"{what}: expected a map, found {type(body).__name__}")
    version = body.get("version")
    if version != VCPU_RECORD_VERSION:
        raise RecordError(
            f"{what}: field 'version' is {version!r}; this hvsim reads vCPU record version {VCPU_RECORD_VERSION} only"
        )
    missing = [f for f in _VCPU_FIELDS if f not in body]
    if missing:
        raise RecordError(f"{what}: missing field(s) {', '.join(missing)}")
    regs = body["regs"]
    if not isinstance(regs, (list, tuple)) or len(regs) != len(REG_NAMES):
        raise RecordError(f"{what}: field 'regs' must be a list of {len(REG_NAMES)} integers ({', '.join(REG_NAMES)})")
    rs = body["runstate"]
    if rs not in (0, 1, 2, 3):
        raise RecordError(f"{what}: field 'runstate' is {rs!r}; allowed 0 (running) 1 (runnable) 2 (blocked) 3 (offline)")
    v = VcpuState(int(body["vid"]), hard_affinity=tuple(body["hard_affinity"]), soft_affinity=tuple(body["soft_affinity"]))
    v.regs = dict(zip(REG_NAMES, (int(x) for x in regs)))
    v.hcall_preempted = bool(body["hcall_preempted"])
    v.hcall_args = dict(body["hcall_args"])
    v.runstate = rs
    v.state_entry_ns = int(body["state_entry_ns"])
    v.runstate_ns = [int(x) for x in body["runstate_ns"]]
    v.pause_flags = int(body["pause_flags"])
    v.pause_count = int(body["pause_count"])
    v.singleshot_ns = int(body["singleshot_ns"])
    v.poll_ports = tuple(body["poll_ports"])
    v.poll_timeout_ns = int(body["poll_timeout_ns"])
    v.pending_ports = list(body["pending_ports"])
    v.pending_payloads = [tuple(p) if isinstance(p, list) else p for p in body["pending_payloads"]]
    v.upcall_pending = bool(body["upcall_pending"])
    v.wl = dict(body["wl"])
    words = body["rng"]
    if words is not None and (not isinstance(words, (list, tuple)) or len(words) != 6):
        raise RecordError(f"{what}: field 'rng' must be 6 integers (PCG64 state) or null")
    v._rng_words = tuple(int(x) for x in words) if words is not None else None
    v.wake_ns = int(body["wake_ns"])
    v.last_pcpu = int(body["last_pcpu"])
    v.sched = dict(body.get("sched") or {})
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
