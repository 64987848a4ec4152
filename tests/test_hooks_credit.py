"""Credit's hooks against a fake engine (``test_hooks_fake.FakeCtx``), and its pool half.

Expected numbers are Xen's (``xen/common/sched/credit.c``): burn_credits' 10 credits per ms
with a ns residual (start_time advances only by the time credited), the 1 ms rate limit with
its 100 us floor applied to the run time, the 30 ms time slice and 10 ms tick, BOOST on wake
for UNDER vCPUs only, runqueue order BOOST > UNDER > OVER (FIFO within), and csched_acct's
arithmetic (300 credits per pCPU per 30 ms by weight, caps, clamps at -300 and > 300).
"""

from __future__ import annotations

import pytest

from hosts.sched.base import SchedulerError
from hosts.sched.credit import PRI_BOOST, PRI_OVER, PRI_UNDER, CreditParams, CreditPool, CreditScheduler
from hosts.sched.credit.params import PRI_IDLE
from hosts.sched.credit.records import unit
from hosts.sched.messages import CreditAcct, CreditAcctCredit, CreditAcctStart, CreditAcctStop, CreditQueued, CreditSummary, Give, RtdsResched, StealRequest
from hosts.vcpu import VPF_BLOCKED, make_vid

from test_hooks_fake import MS, US, FakeCtx, dom, vcpu


def setup(*doms, cpus=(0,), **params):
    ctx = FakeCtx(cpus=cpus, domains=doms)
    s = CreditScheduler(ctx, CreditParams(**params))
    ctx.bind(s)
    return ctx, s


def queued_blocked(ctx, v, pri=None):
    """v placed here blocked; it is queued when it wakes (with ``pri`` set first)."""
    v.pause_flags |= VPF_BLOCKED
    ctx.add(v)
    if pri is not None:
        unit(v).pri = pri
    return v


def test_init_arms_the_10ms_tick():
    ctx, s = setup(dom(1))
    assert ctx.timers == {"tick": 10 * MS}  # tslice 30 ms / 3 ticks


def test_running_burns_10_credits_per_ms():
    ctx, s = setup(dom(1))
    v = ctx.add(vcpu(1))
    ctx.switch(0)
    ctx.switch(3 * MS)
    assert unit(v).credit == -30


def test_burn_keeps_a_residual_and_advances_start_time_by_what_it_credited():
    ctx, s = setup(dom(1))
    v = ctx.add(vcpu(1))
    ctx.switch(0)
    ctx.switch(150 * US)  # 1.5 credits: 1, residual 0.5, start_time +100 us
    assert unit(v).credit == -1
    ctx.switch(300 * US)  # 200 us since start_time + 0.5: 2
    ctx.switch(450 * US)  # 150 us + 0.5: 2 (5 in all for 450 us: Xen counts the remainder twice)
    assert unit(v).credit == -5


@pytest.mark.parametrize("ran, expect", [(50 * US, 100 * US), (400 * US, 600 * US), (950 * US, 50 * US)])
def test_ratelimit_keeps_the_running_vcpu_until_1ms(ran, expect):
    ctx, s = setup(dom(1), dom(2))
    a = ctx.add(vcpu(1))
    ctx.add(vcpu(2))
    assert ctx.switch(0).vcpu is a
    dec = ctx.switch(ran)
    # the rest of the 1 ms; a run time under 100 us (not the rest) gets the 100 us floor
    assert dec.vcpu is a and dec.next_time_ns == expect


def test_past_the_ratelimit_the_next_vcpu_gets_a_30ms_slice():
    ctx, s = setup(dom(1), dom(2))
    ctx.add(vcpu(1))
    b = ctx.add(vcpu(2))
    ctx.switch(0)
    dec = ctx.switch(1 * MS)
    assert dec.vcpu is b and dec.next_time_ns == 30 * MS


def test_an_under_vcpu_is_boosted_on_wake_and_loses_it_at_the_next_tick_that_finds_it_running():
    ctx, s = setup(dom(1))
    v = ctx.add(vcpu(1))
    assert unit(v).pri == PRI_BOOST
    ctx.switch(0)
    ctx.now = 10 * MS
    s.timer("tick", 10 * MS)
    assert unit(v).pri == PRI_UNDER
    assert ctx.pool_msgs == [CreditAcctStart(v.vid)]  # seen running at a tick: it joins accounting
    assert ctx.timers["tick"] == 20 * MS


@pytest.mark.parametrize("pri, migrating, expect", [(PRI_OVER, False, PRI_OVER), (PRI_UNDER, True, PRI_UNDER), (PRI_UNDER, False, PRI_BOOST)])
def test_only_under_vcpus_not_migrating_are_boosted(pri, migrating, expect):
    ctx, s = setup(dom(1))
    v = queued_blocked(ctx, vcpu(1), pri)
    v.pause_flags &= ~VPF_BLOCKED
    s.wake(v, migrating=migrating)
    assert unit(v).pri == expect


def test_the_runqueue_is_ordered_under_before_over_fifo_within_a_priority():
    ctx, s = setup(dom(1), dom(2), dom(3), dom(4), boost=False)
    o = queued_blocked(ctx, vcpu(1), PRI_OVER)
    u1 = queued_blocked(ctx, vcpu(2), PRI_UNDER)
    o2 = queued_blocked(ctx, vcpu(3), PRI_OVER)
    u2 = queued_blocked(ctx, vcpu(4), PRI_UNDER)
    for v in (o, u1, o2, u2):
        ctx.unblock(v)
    s_ = s.summary()
    assert [q.vid for q in s_.runq] == [u1.vid, u2.vid, o.vid, o2.vid]
    assert s_ == CreditSummary(-1, PRI_IDLE, tuple(CreditQueued(v.vid, unit(v).pri, 0) for v in (u1, u2, o, o2)), 4)


@pytest.mark.parametrize(
    "incr, capped, cap_thr, credit, pri, active, msgs",
    [
        (400, False, 0, 200, PRI_UNDER, False, "stop"),  # > 300: leaves accounting, halved
        (-400, False, 0, -300, PRI_OVER, True, ""),  # clamped at -300
        (-31, True, 30, -31, PRI_OVER, True, "park"),  # capped and below the threshold
        (100, False, 0, 100, PRI_UNDER, True, ""),
    ],
)
def test_the_accounting_tail(incr, capped, cap_thr, credit, pri, active, msgs):
    ctx, s = setup(dom(1))
    v = ctx.add(vcpu(1))
    unit(v).active = True
    s.apply_pool(CreditAcct(v.vid, incr, capped, cap_thr))
    assert (unit(v).credit, unit(v).pri, unit(v).active) == (credit, pri, active)
    assert ctx.pool_msgs == ([CreditAcctStop(v.vid)] if msgs == "stop" else []) + [CreditAcctCredit(credit)]
    assert ctx.parked == ([v.vid] if msgs == "park" else [])


def test_unknown_instructions_are_refused():
    ctx, s = setup(dom(1))
    with pytest.raises(SchedulerError, match="RtdsResched"):
        s.apply_pool(RtdsResched())


# --- the pool half -------------------------------------------------------------------------------


def pool_with(doms, cpus=(0,)):
    p = CreditPool(CreditParams(), cpus)
    for d in doms:
        p.add_domain(d)
        for i in range(d.nr_vcpus):
            p.on_msg(0, CreditAcctStart(make_vid(d.uid, i)))
    p.locate = lambda vid: 0
    return p


def test_accounting_shares_300_credits_per_pcpu_by_weight():
    p = pool_with([dom(1, weight=256), dom(2, weight=512)])
    out = p.boundary(30 * MS, {0: None}, [], True)
    assert sorted(out[0]) == sorted([CreditAcct(make_vid(1, 0), 100, False, 0), CreditAcct(make_vid(2, 0), 200, False, 0)])
    assert p.view_epoch() == 1  # the runq_sort epoch moves on
    assert p.next_due(30 * MS) == 60 * MS


def test_accounting_caps_a_domain_at_cap_percent_of_a_slice():
    p = pool_with([dom(1, cap=50)])
    out = p.boundary(30 * MS, {0: None}, [], True)
    assert out[0] == [CreditAcct(make_vid(1, 0), 150, True, 150)]  # ceil(50 x 300 / 100)


def test_a_steal_takes_the_first_queued_vcpu_of_strictly_higher_priority_from_a_busy_peer():
    p = pool_with([dom(i) for i in range(1, 6)], cpus=(0, 1))
    a, b, x, o = make_vid(1, 0), make_vid(2, 0), make_vid(3, 0), make_vid(4, 0)
    busy = CreditSummary(x, PRI_UNDER, (CreditQueued(b, PRI_UNDER, 0), CreditQueued(a, PRI_OVER, 0)), 3)
    idle = CreditSummary(-1, PRI_IDLE, (), 0)
    ask = [StealRequest(1 * MS, 1, PRI_IDLE)]
    assert p.boundary(1 * MS, {0: busy, 1: idle}, ask, False) == {0: [Give(b, 1)]}
    # a pCPU whose own best is OVER takes only better than OVER
    over_here = CreditSummary(-1, PRI_IDLE, (CreditQueued(o, PRI_OVER, 0),), 1)
    only_over = CreditSummary(x, PRI_UNDER, (CreditQueued(a, PRI_OVER, 0),), 2)
    assert p.boundary(1 * MS, {0: only_over, 1: over_here}, ask, False) == {}
    assert p.boundary(1 * MS, {0: busy, 1: over_here}, ask, False) == {0: [Give(b, 1)]}
    # a pCPU that found UNDER work of its own since asking steals nothing
    mine = CreditSummary(-1, PRI_IDLE, (CreditQueued(make_vid(5, 0), PRI_UNDER, 0),), 1)
    assert p.boundary(1 * MS, {0: busy, 1: mine}, ask, False) == {}
    # a peer with a single runnable vCPU (the one it runs) is not stolen from
    lone = CreditSummary(x, PRI_UNDER, (CreditQueued(a, PRI_OVER, 0),), 1)
    assert p.boundary(1 * MS, {0: lone, 1: idle}, ask, False) == {}
