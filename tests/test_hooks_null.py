"""null's two halves: one vCPU per pCPU, a FIFO wait queue, no time slices.

Expected behaviour is Xen's (``xen/common/sched/null.c``): pick_res keeps a vCPU on its pCPU
if that one is free, else takes a free pCPU of its affinity; a vCPU that finds none waits on
the pool's wait queue, in arrival order, and the first suitable waiter gets a pCPU that frees
(unit_deassign); a pCPU runs its assigned vCPU or nothing, with no timer (next_time -1).
"""

from __future__ import annotations

import pytest

from hosts.sched.base import SchedulerError
from hosts.sched.messages import GiveFailed, NullAssign, NullSend, RtdsReplenish
from hosts.sched.null import NullParams, NullPool, NullScheduler
from hosts.vcpu import make_vid

from test_hooks_fake import FakeCtx, dom, vcpu


def pool(n_doms, cpus=(0, 1)):
    p = NullPool(NullParams(), cpus)
    held: dict[int, int] = {}
    p.locate = held.__getitem__
    doms = [dom(i) for i in range(1, n_doms + 1)]
    for d in doms:
        p.add_domain(d)
        vid = make_vid(d.uid, 0)
        held[vid] = p.place(vid, 0, {}, d)  # the host puts the record where place says
    return p, doms, held


def test_one_vcpu_per_pcpu_and_the_rest_wait():
    p, doms, held = pool(4)
    v = [make_vid(d.uid, 0) for d in doms]
    assert p.owner == {0: v[0], 1: v[1]}
    assert p.waitq == [v[2], v[3]]
    assert p.boundary(0, {}, [], True) == {0: [NullAssign(v[0])], 1: [NullAssign(v[1])]}
    assert p.view_extra().free == ()


def test_a_freed_pcpu_goes_to_the_first_waiter_and_its_record_is_sent_there():
    p, doms, held = pool(4)
    v = [make_vid(d.uid, 0) for d in doms]
    p.boundary(0, {}, [], True)
    assert held[v[2]] == 0  # waiting, its record on a pCPU of its affinity
    p.remove_domain(doms[1])  # frees pCPU 1
    assert p.owner == {0: v[0], 1: v[2]} and p.waitq == [v[3]]  # FIFO: the first waiter
    assert p.boundary(1, {}, [], True) == {1: [NullAssign(v[2])], 0: [NullSend(v[2], 1)]}
    p.on_msg(0, GiveFailed(v[2], 1))  # the engine's report of a move that did not happen
    assert p.next_due(2) == 2


def test_the_pcpu_half_runs_only_its_assigned_vcpu_without_a_timer():
    ctx = FakeCtx(cpus=(0, 1), domains=(dom(1), dom(2)))
    s = ctx.bind(NullScheduler(ctx, NullParams()))
    a = ctx.add(vcpu(1))
    ctx.add(vcpu(2))
    assert ctx.switch(0).vcpu is None  # nothing assigned yet
    s.apply_pool(NullAssign(a.vid))
    assert ctx.softirqs >= 1
    dec = ctx.switch(0)
    assert dec.vcpu is a and dec.next_time_ns == -1
    ctx.now = 5
    ctx.block(a)
    assert ctx.switch(5).vcpu is None  # it keeps the pCPU while blocked: the pCPU idles


def test_a_send_makes_the_holder_migrate_the_vcpu_and_unknown_instructions_are_refused():
    ctx = FakeCtx(cpus=(0, 1), domains=(dom(1),))
    s = ctx.bind(NullScheduler(ctx, NullParams()))
    a = ctx.add(vcpu(1))
    s.apply_pool(NullSend(a.vid, 1))
    assert ctx.migrating == [a.vid] and s.pick_pcpu(a, commit=True) == 1
    with pytest.raises(SchedulerError, match="RtdsReplenish"):
        s.apply_pool(RtdsReplenish())
