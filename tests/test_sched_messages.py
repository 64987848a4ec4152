"""The records between a scheduler's halves (``hosts.sched.messages``): every one is a
registered NamedTuple that keeps its type through the wire, and every half refuses a kind it
does not know instead of ignoring it."""

from __future__ import annotations

import ast
import types
import typing
from pathlib import Path
from typing import NamedTuple, get_args, get_origin

import pytest

import hosts.sched.messages as M
from hosts import wire
from hosts.sched import REGISTRY, SchedulerError
from hosts.sched.credit2 import Credit2Params, Credit2Pool

from test_hooks_fake import MS, FakeCtx, dom

MESSAGES = sorted((c for c in vars(M).values() if isinstance(c, type) and issubclass(c, tuple) and hasattr(c, "_fields")), key=lambda c: c.__name__)


def sample(tp: object) -> object:
    """A value of an annotated type: ints, bools, tuples, dicts, optional records."""
    origin = get_origin(tp)
    if tp is int:
        return 7
    if tp is bool:
        return True
    if origin is tuple:
        args = get_args(tp)
        return (sample(args[0]),) if args and args[-1] is Ellipsis else tuple(sample(a) for a in args)
    if origin is dict:
        k, v = get_args(tp)
        return {sample(k): sample(v)}
    if origin in (typing.Union, types.UnionType):
        return sample(next(a for a in get_args(tp) if a is not type(None)))
    if isinstance(tp, type) and issubclass(tp, tuple):
        return make(tp)
    raise AssertionError(f"no sample for {tp!r}")


def _source_hints() -> dict[str, dict[str, object]]:
    """Each class's field annotations as written in the source (a compiled module keeps only
    the runtime classes, e.g. ``tuple`` for ``tuple[int, ...]``)."""
    import hosts.sched

    src = Path(hosts.sched.__file__).with_name("messages.py")  # a compiled module's __file__ may not say
    out: dict[str, dict[str, object]] = {}
    for node in ast.parse(src.read_text()).body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {
                st.target.id: eval(ast.unparse(st.annotation), vars(M))  # noqa: S307 - our own source
                for st in node.body
                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)
            }
    return out


SOURCE_HINTS = _source_hints()


def make(cls: type) -> NamedTuple:
    hints = SOURCE_HINTS[cls.__name__]
    return cls(*(sample(hints[f]) for f in cls._fields))  # type: ignore[attr-defined, no-any-return]


def test_every_message_is_a_registered_namedtuple():
    assert len(MESSAGES) >= 30
    known = set(wire.known())
    assert [c.__name__ for c in MESSAGES if c.__name__ not in known] == []


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_every_message_keeps_its_type_and_fields_through_the_wire(cls):
    m = make(cls)
    back = wire.unpackb(wire.packb({"m": [m]}))["m"][0]
    assert type(back) is cls and back == m
    for f in cls._fields:  # nested records keep their type too
        assert type(getattr(back, f)) is type(getattr(m, f))


def test_a_summary_may_be_none_before_a_pcpu_first_reported():
    for name, e in sorted(REGISTRY.items()):
        p = e.pool(e.params(), (0, 1), 0)
        d = dom(1, nr_vcpus=1)
        p.add_domain(d)
        p.locate = lambda vid: 0
        assert p.place(d.uid << 12, 0, {0: None, 1: None}, d) in (0, 1), name
        p.boundary(MS, {0: None, 1: None}, [], True)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_pcpu_half_refuses_an_instruction_it_does_not_know(name):
    e = REGISTRY[name]
    ctx = FakeCtx(cpus=(0, 1), domains=(dom(1),))
    s = ctx.bind(e.pcpu(ctx, e.params()))
    foreign = M.RtdsResched() if name != "rtds" else M.NullAssign(1)
    with pytest.raises(SchedulerError, match=type(foreign).__name__):
        s.apply_pool(foreign)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_pool_half_refuses_a_message_it_does_not_know(name):
    e = REGISTRY[name]
    p = e.pool(e.params(), (0, 1), 0)
    foreign = M.Credit2BudgetWant(1) if name != "credit2" else M.CreditAcctCredit(3)
    with pytest.raises(SchedulerError, match=type(foreign).__name__):
        p.on_msg(0, foreign)


def test_a_failed_give_clears_what_the_pool_had_in_flight():
    p = Credit2Pool(Credit2Params(), (0, 1))
    p.inflight[4096] = 1
    p.on_msg(0, M.GiveFailed(4096, 1))
    assert p.inflight == {}


def test_an_untyped_failed_give_is_refused():
    p = Credit2Pool(Credit2Params(), (0, 1))
    with pytest.raises(SchedulerError):
        p.on_msg(0, ("give_failed", 4096, 1))
