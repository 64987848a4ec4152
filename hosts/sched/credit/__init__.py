"""Credit (credit1): Xen's proportional-share scheduler, as in ``xen/common/sched/credit.c``.

What it does. Every pCPU has its own runqueue ordered by priority (BOOST 0 > UNDER -1 >
OVER -2 > IDLE -64), FIFO within a priority. A running vCPU burns 10 credits per ms of run
time, computed from timestamps with a nanosecond residual (``burn_credits``). Every 30 ms
(``tslice_ms``) the pool's master hands out 300 credits per pCPU among the *active* vCPUs in
proportion to their domain's weight (weight counts per active vCPU) and recomputes priorities
(``CreditPool.account``, Xen's ``csched_acct``): credit >= 0 is UNDER, < 0 is OVER; a capped
domain whose vCPUs fall below the per-vCPU cap threshold is parked (paused) until its credit is
non-negative again; credit is clamped at -300 and a vCPU whose credit exceeds 300 leaves the
active list with its credit halved (it re-enters at a tick that finds it running). A vCPU
waking while UNDER is boosted to BOOST and so preempts CPU hogs; it loses BOOST at the next
10 ms tick that finds it running (``CreditScheduler.timer``). A pCPU whose best local vCPU is
OVER or idle steals a strictly higher-priority queued vCPU from a peer (``csched_load_balance``),
at most once per ``load_balance_ratelimit_us``. A running vCPU keeps its pCPU for at least
``ratelimit_us`` (1 ms) unless it yields or blocks.

When to use it. Credit was Xen's default until 4.12; it remains the scheduler most papers
measure. ``accounting: tick`` reproduces pre-4.2 Xen, which charged 100 credits to whoever was
running at each tick instead of burning from timestamps (the classic tick-dodging experiment).

Which function does each step: ``pcpu.CreditScheduler`` (``do_schedule``: csched_schedule;
``wake`` and ``_tickle``: csched_unit_wake, __runq_tickle; ``timer('tick')``: csched_tick ->
csched_unit_acct, csched_runq_sort; ``apply_pool``: the per-vCPU tail of csched_acct, from a
``CreditAcct``), ``records.cpu_pick`` (_csched_cpu_pick, flat topology: one socket, no SMT),
``pool.CreditPool`` (``account``: csched_acct; ``steal``: csched_load_balance and
csched_runq_steal over the pCPUs' ``CreditSummary``), ``params`` (CreditParams, Xen's
constants). The messages between the halves are in ``hosts.sched.messages``.

Ordering and determinism. Accounting runs at the first epoch boundary at or after each
multiple of ``tslice_ms`` (the master ticker's period), on the host, from the pool's own state
(weights, active lists, the last credit balance); per-vCPU increments are applied by each pCPU
to the vCPUs it holds, after the messages of the epoch are delivered and before any reschedule
at the boundary. A steal is requested when ``do_schedule`` finds an OVER or idle candidate and
is resolved at the next boundary against the runqueues as they stand there (Xen steals at once
under a trylock), in (request time, pCPU) order; until then the pCPU runs its local choice.
Deviations from Xen, all documented in the README: the steal delay above; the pool's idle mask
is seen by a pCPU as of the last boundary plus its own changes; ``_csched_cpu_pick`` assumes a
flat topology; the 100 us floor quirk of the rate limit and the start_time/residual double
count of ``burn_credits`` are kept as Xen has them.
"""


from __future__ import annotations

from hosts.sched.base import SchedulerEntry, register
from hosts.sched.credit.params import PRI_BOOST, PRI_IDLE, PRI_OVER, PRI_UNDER, CreditParams
from hosts.sched.credit.pcpu import CreditScheduler
from hosts.sched.credit.pool import CreditPool

ENTRY = register(
    SchedulerEntry(
        name="credit",
        sched_id=5,
        params=CreditParams,
        pcpu=CreditScheduler,
        pool=CreditPool,
        summary="proportional share with caps, boost and work stealing (Xen default before 4.12)",
    )
)

__all__ = ["ENTRY", "CreditParams", "CreditScheduler", "CreditPool", "PRI_BOOST", "PRI_UNDER", "PRI_OVER", "PRI_IDLE"]
