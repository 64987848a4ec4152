"""Credit2's hooks, one at a time, against a fake engine (``test_hooks_fake.FakeCtx``).

Every expected number is Xen's (``xen/common/sched/credit2.c``): t2c_update's burn
``credit -= delta * max_weight / weight`` with a residual, reset_credit's +CREDIT_INIT (10 ms)
clipped at CREDIT_INIT + CARRYOVER_MAX (10.5 ms), csched2_runtime's bounds (500 us, the 1 ms
rate limit, 10 ms), tickle_score's 500 us migrate resistance and 10 ms soft-affinity bonus,
runq_candidate's resistance and the 50 us migrate compensation, and the budget quota
max(period * cap / 100 / nr_vcpus, 500 us).
"""

from __future__ import annotations

import pytest

from hosts.sched.base import SchedulerError
from hosts.sched.credit2 import Credit2Params, Credit2Pool, Credit2Scheduler
from hosts.sched.credit2.records import unit
from hosts.sched.messages import (
    Credit2BudgetSet,
    Credit2BudgetWant,
    Credit2CapOn,
    Credit2CpuView,
    Credit2Curr,
    Credit2Load,
    Credit2Queued,
    Credit2Reserve,
    Credit2Reset,
    Credit2RqView,
    Credit2Summary,
    Credit2Untickle,
    Credit2View,
    Give,
    NullAssign,
)
from hosts.vcpu import VPF_BLOCKED, make_vid

from test_hooks_fake import MS, US, FakeCtx, dom, vcpu

INIT = 10 * MS  # CSCHED2_CREDIT_INIT


def setup(*doms, cpus=(0,), pcpu=0, **params):
    ctx = FakeCtx(pcpu=pcpu, cpus=cpus, domains=doms)
    s = Credit2Scheduler(ctx, Credit2Params(**params))
    ctx.bind(s)
    return ctx, s


def held(ctx, v, credit=None):
    """v placed here without waking it (blocked), optionally with a given credit."""
    v.pause_flags |= VPF_BLOCKED
    ctx.add(v)
    if credit is not None:
        unit(v).credit = credit
    return v


def view(rq_max_weight=256, cpu=None, seq=1):
    return Credit2View(seq, {0: Credit2RqView(0, rq_max_weight, 0, 0, INIT)}, cpu or {}, {})


# --- burning credit ----------------------------------------------------------------------------


def test_running_burns_credit_at_max_weight_over_weight():
    ctx, s = setup(dom(1, weight=256), dom(2, weight=128))
    light = ctx.add(vcpu(2))
    heavy = ctx.add(vcpu(1))
    assert ctx.switch(0).vcpu is light  # equal credit: the first queued runs
    assert ctx.switch(1 * MS).vcpu is heavy  # past the rate limit, heavy has more credit
    assert unit(light).credit == INIT - 2 * MS  # 1 ms x 256 / 128
    ctx.switch(2 * MS)
    assert unit(heavy).credit == INIT - 1 * MS  # the heaviest burns 1 credit per ns


def test_burn_keeps_the_division_residual():
    ctx, s = setup(dom(1, weight=256), dom(2, weight=100))
    v = ctx.add(vcpu(2))
    held(ctx, vcpu(1))  # sets max_weight to 256
    ctx.switch(0)
    ctx.switch(1)  # 1 ns: 256 / 100 = 2, residual 56
    assert unit(v).credit == INIT - 2
    ctx.switch(2)  # 1 ns + 56: 312 / 100 = 3, residual 12
    assert unit(v).credit == INIT - 5


# --- credit reset ------------------------------------------------------------------------------


def test_reset_when_chosen_and_head_have_no_credit_adds_init_clipped_at_carryover():
    ctx, s = setup(dom(1), dom(2), dom(3))
    a = ctx.add(vcpu(1))
    b = ctx.add(vcpu(2))
    c = held(ctx, vcpu(3), credit=INIT - 100 * US)  # blocked vCPUs of the runqueue get it too
    assert ctx.switch(0).vcpu is a
    unit(a).credit = 2 * MS - 100 * US  # will be -100 us after running 2 ms
    unit(b).credit = -200 * US
    dec = ctx.switch(2 * MS)
    assert dec.vcpu is a  # b has less credit
    assert unit(a).credit == -100 * US + INIT
    assert unit(b).credit == -200 * US + INIT
    assert unit(c).credit == INIT + 500 * US  # 19.9 ms clipped to CREDIT_INIT + CARRYOVER_MAX
    assert Credit2Reset(0, 1, INIT) in ctx.pool_msgs  # the pool half relays it to the runqueue


def test_no_reset_while_the_head_of_the_runqueue_has_credit():
    ctx, s = setup(dom(1), dom(2))
    a = ctx.add(vcpu(1))
    b = ctx.add(vcpu(2))
    ctx.switch(0)
    unit(a).credit = 2 * MS - 100 * US
    unit(b).credit = 1
    assert ctx.switch(2 * MS).vcpu is b
    assert unit(a).credit == -100 * US and unit(b).credit == 1
    assert not ctx.pool_msgs


def test_a_reset_instruction_is_applied_once():
    ctx, s = setup(dom(1), dom(2))
    low = held(ctx, vcpu(1), credit=-3 * MS)
    high = held(ctx, vcpu(2), credit=2 * MS)
    s.apply_pool(Credit2Reset(0, 1, INIT))
    s.apply_pool(Credit2Reset(0, 1, INIT))  # the same reset number again: nothing
    assert unit(low).credit == 7 * MS
    assert unit(high).credit == INIT + 500 * US


# --- the decision: rate limit, run length, migration resistance ---------------------------------


def test_ratelimit_keeps_the_running_vcpu_for_1ms():
    ctx, s = setup(dom(1), dom(2))
    a = ctx.add(vcpu(1))
    b = held(ctx, vcpu(2))
    ctx.switch(0)
    unit(a).credit = 5 * MS
    ctx.now = 100 * US
    ctx.unblock(b)  # b has more credit, but a is not preemptable yet: no tickle
    assert ctx.softirqs == 1  # only the one of a's own wake-up at 0
    dec = ctx.switch(200 * US)
    assert dec.vcpu is a and dec.next_time_ns == 800 * US  # decide again when the 1 ms is over
    assert ctx.switch(1 * MS).vcpu is b


@pytest.mark.parametrize(
    "params, credits, expect",
    [
        ({}, (INIT + 500 * US,), 10 * MS),  # 10.5 ms of credit: at most CSCHED2_MAX_TIMER
        ({}, (INIT, 4 * MS), 6 * MS),  # until its credit is down to the best waiter's
        ({"ratelimit_us": 0}, (INIT, INIT - 100 * US), 500 * US),  # at least CSCHED2_MIN_TIMER
        ({}, (INIT, INIT - 100 * US), 1 * MS),  # ... and at least the rate limit
    ],
)
def test_runtime_bounds(params, credits, expect):
    ctx, s = setup(dom(1), dom(2), **params)
    vs = [held(ctx, vcpu(i + 1), credit=c) for i, c in enumerate(credits)]
    for v in vs:
        ctx.unblock(v)
    dec = ctx.switch(0)
    assert dec.vcpu is vs[0] and dec.next_time_ns == expect


def test_runtime_converts_credit_to_time_by_weight():
    ctx, s = setup(dom(1, weight=256), dom(2, weight=128))
    held(ctx, vcpu(1))  # max_weight 256
    v = held(ctx, vcpu(2), credit=4 * MS)
    ctx.unblock(v)
    assert ctx.switch(0).next_time_ns == 2 * MS  # c2t: 4 ms x 128 / 256


@pytest.mark.parametrize("waiting_credit, taken", [(INIT, False), (INIT + 200 * US, True)])
def test_a_vcpu_that_ran_elsewhere_is_taken_only_past_the_migrate_resistance(waiting_credit, taken):
    ctx, s = setup(dom(1), dom(2), cpus=(0, 1))
    ctx.view.idlers = set()  # pCPU 1 busy: nothing to tickle
    x = ctx.add(vcpu(1))
    ctx.switch(0)
    v = ctx.add(vcpu(2))
    t = 2 * MS
    unit(x).credit, unit(x).start_time = INIT - 400 * US, t
    unit(v).credit, unit(v).processor = waiting_credit, 1
    dec = ctx.switch(t)
    if taken:  # 10.2 ms >= 9.6 ms + 500 us: it moves here, with 50 us of compensation
        assert dec.vcpu is v and unit(v).credit == waiting_credit + 50 * US and unit(v).processor == 0
    else:  # 10 ms < 9.6 ms + 500 us
        assert dec.vcpu is x and unit(v).credit == waiting_credit


# --- tickling ----------------------------------------------------------------------------------


def test_a_waking_vcpu_tickles_an_idle_pcpu_first():
    ctx, s = setup(dom(1), dom(2), cpus=(0, 1))
    ctx.add(vcpu(1))
    ctx.switch(0)
    ctx.view.idlers = {1}
    w = held(ctx, vcpu(2))
    ctx.unblock(w)
    assert ctx.tickles == [1] and unit(w).tickled_cpu == 1


@pytest.mark.parametrize("cpu1_entry_ns, soft, expect", [(0, (), 1), (5 * MS - 500 * US, (), 2), (0, (2,), 2)])
def test_tickle_chooses_the_busy_pcpu_by_score(cpu1_entry_ns, soft, expect):
    T = 5 * MS
    ctx, s = setup(dom(1), dom(2), dom(3), dom(4), cpus=(0, 1, 2))
    x = ctx.add(vcpu(1))
    ctx.switch(0)
    w = held(ctx, vcpu(2, soft=soft), credit=9 * MS)
    ctx.view.idlers = set()
    ctx.view.extra = view(cpu={
        1: Credit2CpuView(make_vid(3, 0), 2 * MS, 256, cpu1_entry_ns, True, T),
        2: Credit2CpuView(make_vid(4, 0), 6 * MS, 256, 0, True, T),
    })
    unit(x).credit, unit(x).start_time = INIT - 500 * US, T
    ctx.now = T
    ctx.unblock(w)
    # here: 9 - 9.5 < 0; pCPU 1: 9 - 2 - 0.5 (resist) + 10 (bonus) = 16.5 ms; pCPU 2: 12.5 ms;
    # a pCPU whose vCPU ran less than the rate limit (minus 50 us) is not preemptable; the
    # 10 ms bonus goes only to pCPUs of w's soft affinity when it has one (pCPU 1: 6.5 ms)
    assert ctx.tickles == [expect] and unit(w).tickled_cpu == expect


# --- caps ----------------------------------------------------------------------------------------


def test_caps_park_a_vcpu_without_budget_until_budget_comes():
    ctx, s = setup(dom(1, cap=50))
    v = ctx.add(vcpu(1))
    dec = ctx.switch(0)
    assert dec.vcpu is None and ctx.parked == [v.vid] and not v.runnable()
    assert ctx.pool_msgs == [Credit2BudgetWant(1)]
    s.apply_pool(Credit2BudgetSet(1, 5 * MS))  # this pCPU's share of 10 ms x 50 %
    assert ctx.unparked == [v.vid] and v.runnable()
    dec = ctx.switch(0)
    assert dec.vcpu is v and dec.next_time_ns == 5 * MS  # its quota: 5 ms / 1 vCPU
    assert ctx.switch(5 * MS).vcpu is None  # quota used up, nothing left here
    assert ctx.parked == [v.vid, v.vid] and not v.runnable()


def test_unknown_instructions_are_refused():
    ctx, s = setup(dom(1))
    with pytest.raises(SchedulerError, match="NullAssign"):
        s.apply_pool(NullAssign(3))


# --- the pool half -------------------------------------------------------------------------------


def test_place_takes_the_least_loaded_runqueue_and_counts_new_units_at_half_load():
    p = Credit2Pool(Credit2Params(runqueue="cpu"), (0, 1, 2, 3))
    d = dom(1, nr_vcpus=6)
    p.add_domain(d)
    got = [p.place(make_vid(1, i), 0, {}, d) for i in range(5)]
    assert got == [0, 1, 2, 3, 0]  # each new unit adds 50 % load to its runqueue; ties: first
    d2 = dom(2, hard_affinity=[[2, 3]])
    p.add_domain(d2)
    assert p.place(make_vid(2, 0), 0, {}, d2) == 2  # rq 2 and 3 at 50 %: the first of them


def summary(cpu, queued=(), curr=None, units=(), reserves=(), now=0):
    held = tuple(sorted([q.vid for q in queued] + ([curr.vid] if curr is not None else [])))
    return Credit2Summary(now, 0, 0, curr, tuple(queued), tuple(units), 0, len(held), tuple(reserves), 256, held)


def test_the_pool_relays_a_reset_to_every_pcpu_of_the_runqueue_even_before_summaries():
    p = Credit2Pool(Credit2Params(), (0, 1))
    p.on_msg(0, Credit2Reset(0, 1, INIT))
    out = p.boundary(MS, {0: None, 1: None}, [], True)
    assert out == {0: [Credit2Reset(0, 1, INIT)], 1: [Credit2Reset(0, 1, INIT)]}


def test_the_pool_gives_a_tickled_vcpu_to_the_pcpu_tickled_for_it():
    p = Credit2Pool(Credit2Params(), (0, 1))
    p.add_domain(dom(1))
    vid = make_vid(1, 0)
    out = p.boundary(MS, {0: summary(0, [Credit2Queued(vid, 9 * MS, 1, 0)]), 1: summary(1)}, [], True)
    assert out == {0: [Give(vid, 1)]}
    # a tickle that no longer holds (pCPU 1 now runs a vCPU with more credit) is withdrawn
    p = Credit2Pool(Credit2Params(), (0, 1))
    p.add_domain(dom(1))
    busy = summary(1, curr=Credit2Curr(make_vid(2, 0), INIT, 256, 0, True))
    out = p.boundary(MS, {0: summary(0, [Credit2Queued(vid, 9 * MS, 1, 0)]), 1: busy}, [], True)
    assert out == {0: [Credit2Untickle(vid)]}


def test_the_pool_refills_a_capped_budget_every_period_never_above_the_total():
    p = Credit2Pool(Credit2Params(), (0, 1))
    p.add_domain(dom(1, cap=50))
    assert p.next_due(0) == 0
    vid = make_vid(1, 0)
    s0 = summary(0, curr=Credit2Curr(vid, INIT, 256, 0, True), units=[Credit2Load(vid, 0, 0, True, False, False)])
    out = p.boundary(0, {0: s0, 1: summary(1)}, [], True)
    assert out[0] == [Credit2CapOn(1), Credit2BudgetSet(1, 5 * MS)]  # 10 ms x 50 %, all to the demand
    assert out[1] == [Credit2CapOn(1)]
    assert p.next_due(1) == 10 * MS
    s0 = s0._replace(reserves=(Credit2Reserve(1, 1 * MS),))
    out = p.boundary(10 * MS, {0: s0, 1: summary(1)}, [], True)
    assert out[0] == [Credit2BudgetSet(1, 5 * MS)]  # 1 ms left + 5 ms, capped at the 5 ms total
