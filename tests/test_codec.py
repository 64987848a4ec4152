"""The vCPU record codec: any VcpuState round-trips exactly; bad records are refused clearly."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from hosts import codec
from hosts.clock import NEVER
from hosts.codec import RecordError, pack_vcpu, unpack_vcpu
from hosts.rng import generator
from hosts.vcpu import REG_NAMES, VcpuState, make_vid

u64 = st.integers(0, 2**64 - 1)
i63 = st.integers(0, 2**62)
small = st.integers(-(2**31), 2**31)
i32 = st.integers(-(2**31), 2**31 - 1)
scalar = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=8), st.booleans(), st.none(), st.binary(max_size=16))
plain = st.recursive(scalar, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=4)), max_leaves=10)
# a hypercall's struct in flight: what the handlers read has its type; other keys are plain data
hc_scalar = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=8), st.booleans(), st.none())
hc_plain = st.recursive(hc_scalar, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=4)), max_leaves=10)
hc_args = st.fixed_dictionaries(
    {},
    optional={
        "port": i32,
        "ports": st.lists(i32, max_size=4),
        "payload": st.one_of(st.none(), st.lists(st.integers(0, 2**40), max_size=3)),
        "reqs": st.lists(st.lists(st.integers(0, 2**40), min_size=2, max_size=2), max_size=3),
        "offset": st.integers(0, 100),
        "nr_extents": st.integers(0, 2**40),
    },
).flatmap(lambda d: st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("port", "ports", "payload", "reqs", "offset", "nr_extents", "timeout", "remote_dom", "remote_port", "extent_start", "extent_order", "domid", "done")), hc_plain, max_size=3).map(lambda extra: {**extra, **d}))


@st.composite
def vcpus(draw) -> VcpuState:
    v = VcpuState(
        make_vid(draw(st.integers(1, 5000)), draw(st.integers(0, 4095))),
        hard_affinity=tuple(draw(st.lists(st.integers(0, 255), max_size=4))),
        soft_affinity=tuple(draw(st.lists(st.integers(0, 255), max_size=4))),
    )
    v.regs = {r: draw(u64) for r in REG_NAMES}
    v.hcall_preempted = draw(st.booleans())
    v.hcall_args = draw(hc_args)
    v.runstate = draw(st.integers(0, 3))
    v.state_entry_ns = draw(i63)
    v.runstate_ns = [draw(i63) for _ in range(4)]
    v.pause_flags = draw(st.integers(0, 511))
    v.pause_count = draw(st.integers(0, 10))
    v.singleshot_ns = draw(st.one_of(i63, st.just(NEVER)))
    v.poll_ports = tuple(draw(st.lists(st.integers(-8, 4096), max_size=128)))
    v.poll_timeout_ns = draw(st.one_of(i63, st.just(NEVER)))
    v.pending_ports = draw(st.lists(st.integers(-8, 4096), max_size=6))
    v.pending_payloads = draw(st.lists(st.tuples(i32, st.one_of(st.none(), st.lists(st.integers(0, 2**40), max_size=3))), max_size=3))
    v.upcall_pending = draw(st.booleans())
    v.wl = draw(st.dictionaries(st.text(max_size=6), plain, max_size=5))
    v.rng = generator(draw(st.integers(0, 2**32)), draw(st.text(max_size=10))) if draw(st.booleans()) else None
    if v.has_rng():
        v.rng.random(draw(st.integers(0, 5)))
        v.rng.integers(0, 10, draw(st.integers(0, 3)), dtype=np.uint32)
    v.wake_ns = draw(st.one_of(st.just(-1), i63))
    v.last_pcpu = draw(st.integers(-1, 255))
    v.sched = draw(st.dictionaries(st.text(max_size=6), st.integers(-(2**40), 2**40), max_size=6))
    return v


def same(a: VcpuState, b: VcpuState, with_sched: bool = True) -> None:
    for f in ("vid", "dom", "idx", "regs", "hcall_preempted", "hcall_args", "runstate", "state_entry_ns", "runstate_ns", "pause_flags",
              "pause_count", "singleshot_ns", "poll_ports", "poll_timeout_ns", "pending_ports", "pending_payloads", "upcall_pending",
              "wl", "wake_ns", "last_pcpu", "hard_affinity", "soft_affinity"):
        assert _norm(getattr(a, f)) == _norm(getattr(b, f)), f
    if with_sched:
        assert a.sched == b.sched
    if not a.has_rng():
        assert not b.has_rng()
    else:
        assert np.array_equal(a.rng.random(4), b.rng.random(4))
        assert np.array_equal(a.rng.integers(0, 1 << 30, 3, dtype=np.uint32), b.rng.integers(0, 1 << 30, 3, dtype=np.uint32))


def _norm(x):
    if isinstance(x, (list, tuple)):
        return [_norm(i) for i in x]
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in x.items()}
    return x


@settings(max_examples=200, deadline=None)
@given(vcpus())
def test_vcpu_round_trip(v):
    data = pack_vcpu(v, with_sched=True)
    w = unpack_vcpu(data)
    assert pack_vcpu(w, with_sched=True) == data  # before drawing from the streams
    same(v, w)


@settings(max_examples=50, deadline=None)
@given(vcpus())
def test_cross_host_record_drops_scheduler_data(v):
    w = unpack_vcpu(pack_vcpu(v, with_sched=False))
    same(v, w, with_sched=False)
    assert w.sched == {}


def test_unknown_record_version_is_refused():
    v = VcpuState(make_vid(1, 0))
    body = codec.vcpu_to_body(v, with_sched=False)
    body["version"] = 99
    data = msgpack.packb([codec.REC_VCPU, body], use_bin_type=True)
    with pytest.raises(RecordError, match=r"'version' is 99; this hvsim reads vCPU record version 1 only"):
        unpack_vcpu(data)


def test_stream_version_magic_end_and_unknown_types():
    good = codec.write_stream(codec.header("test"), [(codec.REC_VCPU, {"x": 1})])
    hdr, recs = codec.read_stream(good)
    assert hdr["kind"] == "test" and recs == [(codec.REC_VCPU, {"x": 1})]
    bad_version = msgpack.packb({"magic": codec.MAGIC, "version": 7}) + codec.end_record()
    with pytest.raises(RecordError, match="stream version 1 only"):
        codec.read_stream(bad_version)
    with pytest.raises(RecordError, match="not an hvsim record stream"):
        codec.read_stream(msgpack.packb({"magic": "XENF", "version": 1}))
    no_end = msgpack.packb(codec.header("t")) + codec.pack_record(codec.REC_VCPU, {})
    with pytest.raises(RecordError, match="without an END record"):
        codec.read_stream(no_end)
    unknown = codec.write_stream(codec.header("t"), [(0x55, {})])
    with pytest.raises(RecordError, match="unknown mandatory type 0x55"):
        codec.read_stream(unknown)
    optional = codec.write_stream(codec.header("t"), [(0x55 | codec.REC_OPTIONAL, {}), (codec.REC_VCPU, 1)])
    assert codec.read_stream(optional)[1] == [(codec.REC_VCPU, 1)]
    with pytest.raises(RecordError, match="not a valid msgpack record"):
        unpack_vcpu(b"\xc1garbage")


# --- the record fuzzer: a malformed record is refused with RecordError, never anything else ---

JUNK = st.one_of(
    st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.booleans(), st.none(),
    st.binary(max_size=8), st.lists(st.integers(-(2**63), 2**64 - 1), max_size=5), st.dictionaries(st.text(max_size=4), st.integers(-(2**63), 2**64 - 1), max_size=3),
)


def _mutate(body: dict, data: st.DataObject) -> object:
    """One to three edits of a valid record body: a field's value replaced (wrong type, out of
    range, huge, nested), a field dropped, a key invented, a list element changed, or the body
    replaced by something that is not a map."""
    if data.draw(st.integers(0, 19)) == 0:
        return data.draw(JUNK)
    body = dict(body)
    for _ in range(data.draw(st.integers(1, 3))):
        keys = sorted(body)
        op = data.draw(st.sampled_from(["set", "drop", "invent", "element"]))
        k = data.draw(st.sampled_from(keys)) if keys else "x"
        if op == "set":
            body[k] = data.draw(JUNK)
        elif op == "drop" and k in body:
            del body[k]
        elif op == "invent":
            body[data.draw(st.text(max_size=8))] = data.draw(JUNK)
        elif isinstance(body.get(k), list) and body[k]:
            items = list(body[k])
            items[data.draw(st.integers(0, len(items) - 1))] = data.draw(JUNK)
            body[k] = items
        elif isinstance(body.get(k), dict) and body[k]:
            sub = dict(body[k])
            sub[data.draw(st.sampled_from(sorted(sub, key=str)))] = data.draw(JUNK)
            body[k] = sub
    return body


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(vcpus(), st.data())
def test_a_mutated_record_is_decoded_or_refused_with_record_error(v, data):
    rtype, good = msgpack.unpackb(pack_vcpu(v), raw=False, strict_map_key=False)  # [VCPU, body]
    bad = [rtype, _mutate(good, data)] if data.draw(st.integers(0, 9)) else data.draw(st.one_of(JUNK, st.just([rtype + 1, good])))
    raw = msgpack.packb(bad, use_bin_type=True)
    if data.draw(st.booleans()):  # also at the byte level: a cut or a flipped byte
        i = data.draw(st.integers(0, max(0, len(raw) - 1)))
        raw = raw[:i] if data.draw(st.booleans()) else raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    try:
        back = unpack_vcpu(raw)
    except RecordError as exc:
        event("refused (RecordError)")
        assert str(exc)
        return
    event("accepted")
    # what is accepted is a whole, usable record: it packs again and decodes to the same
    same(back, unpack_vcpu(pack_vcpu(back)))
