"""ARINC653's decision: minor frames in a repeating major frame, no work conservation.

Expected behaviour is Xen's (``xen/common/sched/arinc653.c``, a653sched_do_schedule): the
entry whose minor frame contains ``now`` (modulo the major frame) runs if its vCPU is
runnable and on this pCPU, else the pCPU idles; the timer is the end of the minor frame; time
left in the major frame after the last entry is idle; the default schedule gives each of
Domain-0's vCPUs 10 ms.
"""

from __future__ import annotations

import pytest

from hosts.sched.arinc653 import Arinc653Params, Arinc653Pool, Arinc653Scheduler
from hosts.sched.base import SchedulerError
from hosts.sched.messages import GiveFailed, NullAssign

from test_hooks_fake import MS, FakeCtx, dom, vcpu


def setup(params, *doms):
    ctx = FakeCtx(domains=doms)
    s = ctx.bind(Arinc653Scheduler(ctx, params))
    return ctx, s


FRAMES = Arinc653Params(major_frame_ms=10, schedule=[{"domain": "a", "runtime_ms": 5}, {"domain": "b", "runtime_ms": 3}])


@pytest.mark.parametrize("t_ms, who, left_ms", [(0, "a", 5), (6, "b", 2), (9, None, 1), (12, "a", 3), (21, "a", 4)])
def test_the_minor_frame_of_now_decides(t_ms, who, left_ms):
    ctx, s = setup(FRAMES, dom(1, "a"), dom(2, "b"))
    vs = {"a": ctx.add(vcpu(1)), "b": ctx.add(vcpu(2))}
    dec = s.do_schedule(t_ms * MS, None)
    assert dec.vcpu is (vs[who] if who else None) and dec.next_time_ns == left_ms * MS


def test_a_blocked_partition_leaves_its_frame_idle():
    ctx, s = setup(FRAMES, dom(1, "a"), dom(2, "b"))
    a = ctx.add(vcpu(1))
    ctx.add(vcpu(2))
    ctx.block(a)
    dec = s.do_schedule(2 * MS, None)
    assert dec.vcpu is None and dec.next_time_ns == 3 * MS  # b never gets a's time


def test_the_default_schedule_gives_each_domain0_vcpu_10ms():
    ctx, s = setup(Arinc653Params(), dom(1, "Domain-0", nr_vcpus=2, is_dom0=True), dom(2, "g"))
    v0 = ctx.add(vcpu(1, 0))
    v1 = ctx.add(vcpu(1, 1))
    ctx.add(vcpu(2))
    assert (s.do_schedule(0, None).vcpu, s.do_schedule(15 * MS, None).vcpu, s.do_schedule(20 * MS, None).vcpu) == (v0, v1, v0)
    assert s.do_schedule(15 * MS, None).next_time_ns == 5 * MS


def test_arinc653_halves_exchange_nothing():
    ctx, s = setup(FRAMES, dom(1, "a"))
    assert s.summary() is None
    with pytest.raises(SchedulerError):
        s.apply_pool(NullAssign(1))
    with pytest.raises(SchedulerError):
        Arinc653Pool(FRAMES, (0,)).on_msg(0, GiveFailed(1, 0))
