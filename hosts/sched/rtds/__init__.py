"""RTDS: Xen's real-time deferrable-server scheduler, as in ``xen/common/sched/rt.c``.

What it does. Preemptive global EDF over the pCPUs of a pool. Every vCPU has a period and a
budget (default 10 ms / 4 ms, each at least 10 us, budget <= period) and an ``extratime``
flag (on by default, as Xen's ``rt_alloc_udata`` sets it). A running vCPU burns its budget in
ns; its deadline is the end of its current period. Priority is ``(priority_level, deadline)``,
lower first: a vCPU that exhausts its budget either refills it and drops one priority level
(extratime on: it may go on running, but behind every vCPU still inside its reservation) or
is *depleted* until its next period (extratime off). At each deadline the budget is refilled,
the level reset to 0 and the deadline moved by whole periods past now; unused budget is kept
while the vCPU blocks within a period and discarded at its end (deferrable server); a vCPU
waking after its deadline is replenished at once. A queued vCPU tickles an idle pCPU of its
affinity (its own first), else the pCPU running the lowest-priority vCPU if it beats it.

When to use it. Reservations: a vCPU with budget B every period P gets B in every P as long
as the pool's total utilisation allows (EDF: any set with sum(B/P) <= 1 on one pCPU). With
extratime off a vCPU never gets more than B/P (the 100 ms / 50 ms burner gets 50 %); with it
on, RTDS is work-conserving. Parameters are per vCPU: a domain's ``sched: {period_us,
budget_us, extratime}`` (all its vCPUs) or ``vcpu_sched: [...]`` (one each).

Which function does each step: ``pcpu.RtdsScheduler`` (``_burn``: burn_budget;
``_update_deadline``: rt_update_deadline; ``_runq_insert``/``_replq_insert``: runq_insert,
replq_insert: runq by priority, FIFO among equals, depleted queue unordered; ``do_schedule``:
rt_schedule; ``wake``/``sleep``/``context_saved``: rt_unit_wake/sleep, rt_context_saved, the
deferred requeue; ``timer('repl')``: repl_timer_handler; ``_tickle``: runq_tickle;
``pick_pcpu``: rt_res_pick), ``pool.RtdsPool`` (``place``: rt_res_pick at insert;
``boundary``: the global part of EDF), ``records`` (RtdsUnit, compare_unit_priority),
``params`` (RtdsParams, RtdsVcpuParams). The messages between the halves (``RtdsSummary``,
``RtdsView``, ``RtdsReplenish``, ``RtdsResched``) are in ``hosts.sched.messages``.

Emulation of the global queue. Xen keeps one runqueue, depleted queue and replenishment queue
for the whole pool under one lock. Here each pCPU holds the runnable vCPUs assigned to it (its
slice of those queues) and keeps their replenishments with its own timer, exactly on time. A
pCPU decides over its slice; the pool half makes the result global: whenever a pCPU rings it
(``ctx.request_steal``: a vCPU queued that cannot run here, a tickle of another pCPU, a pCPU
about to run less than a vCPU queued elsewhere or to idle while one waits), it takes every
pCPU's slice from the summaries and computes what global EDF runs (the m highest-priority
runnable vCPUs, each on a pCPU of its hard affinity: on the pCPU already running it, else an
idle one, its holder's first, else the one running the lowest priority), then moves each of
those vCPUs that waits on another pCPU to its pCPU (``Give``) and makes a holder that should
run its own queued vCPU reschedule. A pCPU sees the others' current vCPUs and queued vCPUs as
of the last boundary (``RtdsView``) for its tickles. Replenishments falling on a boundary
are done at the boundary before the pool looks (``next_due``).

Ordering and determinism. Priority ties are broken FIFO within a pCPU (as in Xen's list) and by
vCPU id across pCPUs. The pool's assignment scans vCPUs in priority order and pCPUs in id
order. Deviations from Xen: a vCPU queued on one pCPU starts on another at the next epoch
boundary after it could (Xen: at once, by IPI); the replenishment queue is per pCPU, so Xen's
ordering of it by priority (not only deadline: an extratime vCPU at level >= 1 may be
replenished late when a level-0 vCPU with a later deadline sits before it) only applies among
the vCPUs of one pCPU; admission control (newer Xen) is not modelled.
"""


from __future__ import annotations

from hosts.sched.base import SchedulerEntry, register
from hosts.sched.rtds.params import RtdsParams, RtdsVcpuParams
from hosts.sched.rtds.pcpu import RtdsScheduler
from hosts.sched.rtds.pool import RtdsPool

ENTRY = register(
    SchedulerEntry(
        name="rtds",
        sched_id=8,
        params=RtdsParams,
        pcpu=RtdsScheduler,
        pool=RtdsPool,
        summary="global EDF with per-vCPU period/budget reservations and extratime (real time)",
        domain_params=RtdsVcpuParams,
    )
)

__all__ = ["ENTRY", "RtdsParams", "RtdsVcpuParams", "RtdsScheduler", "RtdsPool"]
