"""hosts.wire: registered messages keep their type through msgpack; unknown kinds are refused."""

from __future__ import annotations

from typing import NamedTuple

import msgpack
import numpy as np
import pytest

from hosts import wire
from hosts.sched.messages import Give


def test_message_round_trip_keeps_type_and_fields():
    back = wire.unpackb(wire.packb({"out": [Give(5, 2), (1, 2)], "n": np.int64(7)}))
    g = back["out"][0]
    assert type(g) is Give and g.vid == 5 and g.to_pcpu == 2
    assert back["out"][1] == (1, 2) and type(back["out"][1]) is tuple
    assert back["n"] == 7 and type(back["n"]) is int


def test_lists_come_back_lists_and_tuples_tuples_at_every_depth():
    # a compiled reader checks a declared list[...] or tuple[...] at run time: each container
    # must arrive as the type the sender had, also inside maps, lists and messages
    sent = {"a": [1, (2, [3, (4,)])], "b": ((), []), "c": Give(1, 2), "d": [{"k": (5, 6)}], "e": ([7],)}
    back = wire.unpackb(wire.packb(sent))
    assert back == sent

    def shape(x):
        if isinstance(x, dict):
            return {k: shape(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return (type(x).__name__, [shape(v) for v in x])
        return type(x).__name__

    assert shape(back) == shape(sent)
    assert shape(back)["a"] == ("list", ["int", ("tuple", ["int", ("list", ["int", ("tuple", ["int"])])])])


def test_a_tuple_record_that_is_not_an_array_is_refused():
    bad = msgpack.packb(msgpack.ExtType(wire.EXT_TUPLE, msgpack.packb(3)))
    with pytest.raises(wire.WireError, match="tuple record"):
        wire.unpackb(bad)


def test_unknown_kind_is_refused_naming_it():
    forged = msgpack.packb([msgpack.ExtType(wire.EXT_MESSAGE, msgpack.packb(["NoSuchMsg", 1]))])
    with pytest.raises(wire.WireError, match="unknown message kind 'NoSuchMsg'"):
        wire.unpackb(forged)


def test_wrong_arity_is_refused():
    forged = msgpack.packb(msgpack.ExtType(wire.EXT_MESSAGE, msgpack.packb(["Give", 1, 2, 3])))
    with pytest.raises(wire.WireError, match="Give"):
        wire.unpackb(forged)


def test_unregistered_class_cannot_be_sent():
    class Loose(NamedTuple):
        x: int

    with pytest.raises(TypeError, match="register it"):
        wire.packb(Loose(1))
