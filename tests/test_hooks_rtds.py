"""RTDS's hooks against a fake engine (``test_hooks_fake.FakeCtx``), and its pool half.

Expected behaviour is Xen's (``xen/common/sched/rt.c``): a vCPU runs at most its remaining
budget (rt_schedule's next_time), exhausting it makes it depleted until its next period
(extratime off) or refills it one priority level lower (extratime on, burn_budget);
replenishment at each deadline moves the deadline by whole periods past now and refills the
budget (rt_update_deadline, repl_timer_handler); a vCPU that blocks keeps its unused budget
within the period and is replenished at once if it wakes past its deadline (rt_unit_wake);
priority is (level, deadline), EDF.
"""

from __future__ import annotations

import pytest

from hosts.sched.base import SchedulerError
from hosts.sched.messages import CreditAcct, Give, RtdsPrio, RtdsReplenish, RtdsResched, RtdsSummary
from hosts.sched.rtds import RtdsParams, RtdsPool, RtdsScheduler
from hosts.sched.rtds.records import unit
from hosts.vcpu import make_vid

from test_hooks_fake import MS, FakeCtx, dom, vcpu


def rt(uid, period_ms=10, budget_ms=4, extratime=True):
    return dom(uid, vcpu_sched=[{"period_us": period_ms * 1000, "budget_us": budget_ms * 1000, "extratime": extratime}])


def setup(*doms, cpus=(0,)):
    ctx = FakeCtx(cpus=cpus, domains=doms)
    s = RtdsScheduler(ctx, RtdsParams())
    ctx.bind(s)
    return ctx, s


def test_a_vcpu_runs_at_most_its_budget_and_waits_depleted_for_its_next_period():
    ctx, s = setup(rt(1, extratime=False))
    v = ctx.add(vcpu(1))
    assert (unit(v).cur_deadline, unit(v).cur_budget) == (10 * MS, 4 * MS)  # first period from now
    assert ctx.timers["repl"] == 10 * MS
    dec = ctx.switch(0)
    assert dec.vcpu is v and dec.next_time_ns == 4 * MS
    dec = ctx.switch(4 * MS)  # budget exhausted, no extratime: depleted
    assert dec.vcpu is None and v in s.pc.depletedq
    assert s.summary() == RtdsSummary(None, (), 10 * MS)
    ctx.now = 10 * MS
    s.timer("repl", 10 * MS)  # replenishment: full budget, next deadline, back on the runqueue
    assert (unit(v).cur_deadline, unit(v).cur_budget, unit(v).level) == (20 * MS, 4 * MS, 0)
    assert ctx.timers["repl"] == 20 * MS
    dec = ctx.switch(10 * MS)
    assert dec.vcpu is v and dec.next_time_ns == 4 * MS


def test_with_extratime_an_exhausted_vcpu_refills_one_level_down_and_loses_to_level_0():
    ctx, s = setup(rt(1, 10, 4), rt(2, 20, 4), cpus=(0,))
    a = ctx.add(vcpu(1))
    b = ctx.add(vcpu(2))
    assert ctx.switch(0).vcpu is a  # earlier deadline (10 ms < 20 ms)
    dec = ctx.switch(4 * MS)
    assert (unit(a).level, unit(a).cur_budget) == (1, 4 * MS)
    assert dec.vcpu is b  # level 0 beats level 1 whatever the deadlines


def test_alone_with_extratime_a_vcpu_goes_on_running_past_its_budget():
    ctx, s = setup(rt(1, 10, 4))
    v = ctx.add(vcpu(1))
    ctx.switch(0)
    dec = ctx.switch(4 * MS)
    assert dec.vcpu is v and unit(v).level == 1 and dec.next_time_ns == 4 * MS


@pytest.mark.parametrize("wake_ms, deadline_ms, budget_ms", [(5, 10, 3), (25, 30, 4)])
def test_a_blocked_vcpu_keeps_its_budget_within_the_period_and_is_replenished_past_it(wake_ms, deadline_ms, budget_ms):
    ctx, s = setup(rt(1, 10, 4))
    v = ctx.add(vcpu(1))
    ctx.switch(0)
    ctx.now = 1 * MS
    ctx.block(v)
    ctx.switch(1 * MS)  # ran 1 ms of its 4
    ctx.now = wake_ms * MS
    ctx.unblock(v)
    assert (unit(v).cur_deadline, unit(v).cur_budget) == (deadline_ms * MS, budget_ms * MS)


def test_deadlines_order_the_runqueue():
    ctx, s = setup(rt(1, 30, 4), rt(2, 10, 4), rt(3, 20, 4))
    vs = [ctx.add(vcpu(i)) for i in (1, 2, 3)]
    assert [q.vid for q in s.summary().queued] == [vs[1].vid, vs[2].vid, vs[0].vid]


def test_instructions_and_unknown_ones():
    ctx, s = setup(rt(1))
    s.apply_pool(RtdsResched())
    assert ctx.softirqs == 1
    with pytest.raises(SchedulerError, match="CreditAcct"):
        s.apply_pool(CreditAcct(1, 1, False, 0))


def test_the_pool_runs_the_m_highest_priorities_moving_a_waiting_vcpu_to_an_idle_pcpu():
    p = RtdsPool(RtdsParams(), (0, 1))
    for i in (1, 2, 3):
        p.add_domain(dom(i))
    a, b, c = (make_vid(i, 0) for i in (1, 2, 3))
    s0 = RtdsSummary(RtdsPrio(a, 0, 10 * MS), (RtdsPrio(b, 0, 20 * MS), RtdsPrio(c, 0, 30 * MS)), 10 * MS)
    s1 = RtdsSummary(None, (), 10 * MS)
    out = p.boundary(1 * MS, {0: s0, 1: s1}, [], True)
    assert out == {0: [Give(b, 1)]}  # b is second by deadline: it goes to the idle pCPU
    # replenishments due at the boundary come first
    out = p.boundary(10 * MS, {0: s0, 1: s1}, [], True)
    assert out == {0: [RtdsReplenish()], 1: [RtdsReplenish()]}
