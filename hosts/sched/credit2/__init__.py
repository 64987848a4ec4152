"""Credit2: Xen's default scheduler since 4.12, as in ``xen/common/sched/credit2.c``.

What it does. Credit is measured in ns. Every vCPU starts with 10 ms of credit and burns it
while it runs, scaled by weight: ``credit -= runtime * max_weight / weight`` (with a residual),
where ``max_weight`` is the largest weight of the vCPUs assigned to the runqueue, so the
heaviest burns 1 credit per ns and lighter ones faster; credit never goes below -10 ms. Each
runqueue is ordered by credit, highest first (FIFO among equals). When the vCPU chosen to run
and the head of the runqueue both have credit <= 0, every vCPU assigned to the runqueue
(running, queued or blocked) gets +10 ms (+20 ms if the chosen one sat at -10 ms), clipped at
10.5 ms, and the balancer runs. There is no tick and no boost: a vCPU that slept keeps its
credit and, on waking, is queued by it and tickles the pCPU where it scores best. A running
vCPU keeps its pCPU for the 1 ms rate limit; otherwise it runs until its credit would drop to
that of the best waiting vCPU, at least 500 us and at most 10 ms. A waiting vCPU is taken by
another pCPU of its runqueue only if its credit beats that pCPU's choice by the migrate
resistance (500 us); it then gets 50 us of compensation. Runqueues group pCPUs by topology
(``runqueue``: cpu, core, socket (default), node, all; at most 16 pCPUs each, spread evenly);
their load is an exponentially weighted average over a ~1 s window, and after a reset the
balancer pushes, pulls or swaps single vCPUs with the most different runqueue when that
reduces the load difference. A cap gives a domain a budget of ``cap`` % of ``cap_period_ms``
(10 ms), refilled every period; a vCPU takes a quota of it before it runs and returns what it
did not use, and a vCPU that finds none is parked (paused) until the refill.

When to use it. Xen's default: general-purpose, mixed workloads, low wake-up latency without
boost (credit ordering alone favours vCPUs that sleep), good scalability. Per-domain ``weight``
(1..65535) and ``cap`` as for Credit.

Where each step is. ``params`` (Credit2Params, Xen's constants); ``records`` (the unit,
pCPU, domain and runqueue records, and what both halves compute alike: load averages,
``res_pick`` for csched2_res_pick, ``runqueue_map`` for cpu_add_to_runqueue, ``may_take`` and
``is_preemptable``); the per-pCPU half in three layers: ``runq.Credit2Slice`` (``_burn``
burn_credits/t2c_update, ``_runq_insert`` runq_insert, ``_reset``/``_apply_reset``
reset_credit, ``_svc_load`` update_svc_load), ``caps.Credit2PcpuBudget`` (``_grab``/
``_return_budget``/``_unpark_dom`` unit_grab_budget, unit_return_budget, park_unit,
unpark_parked_units) and ``pcpu.Credit2Scheduler`` (``_candidate`` runq_candidate,
``do_schedule`` csched2_schedule, ``_runtime`` csched2_runtime, ``wake``/``sleep``/
``context_saved`` with the deferred requeue, ``_tickle``/``_score`` runq_tickle/tickle_score,
``pick_pcpu``); the pool half ``pool.Credit2Pool`` (``place``; the boundary's ``_moves`` for
the shared runqueue, below) with ``balance`` (``_update_loads`` update_runq_load,
``_balance`` balance_load/consider/migrate) and ``caps`` (``_caps`` replenish_domain_budget).
The messages between the halves are in ``hosts.sched.messages`` (``Credit2Summary``,
``Credit2View``, ``Credit2Reset``, ...).

Emulation of the shared runqueue. In Xen the pCPUs of a runqueue share one queue under one
lock. Here each pCPU holds the vCPUs assigned to it: its slice of the runqueue, in credit
order. A pCPU decides over its slice exactly as ``runq_candidate`` does, knowing the others'
queued vCPUs and current vCPUs as of the last epoch boundary (``Credit2View``). What needs the
shared structure is done by the pool half at a boundary, from every pCPU's summary:
(1) a vCPU a pCPU tickled on another pCPU (``runq_tickle`` chose it from the view) is moved
there (``Give``) if the tickle still holds against what that pCPU runs now, so it picks it;
(2) an idle pCPU gets the best vCPU waiting elsewhere in its runqueue (what the true idle
mask would have made ``runq_tickle`` do);
(3) a pCPU whose decision found a better vCPU queued on another pCPU (a higher credit beating
its own choice by the migrate resistance) asked for it (``request_steal``) and gets it if it
is still waiting, then takes it at once, its stand-in choice notwithstanding the rate limit;
(4) a credit reset decided on one pCPU is applied there at once and sent to the others of the
runqueue as a numbered instruction (``Credit2Reset``; every vCPU carries the number of the
last reset it got, so none gets one twice, including vCPUs in flight); (5) runqueue loads are tracked from each
pCPU's time-integrated load, and the balancer runs after each reset; (6) a capped domain's
budget pool is split among the pCPUs that hold its vCPUs (by demand) at each refill, and
rebalanced when a pCPU runs out while another has some left. A pCPU rings the pool half with
``request_steal`` whenever it needs one of these at the next round.

Ordering and determinism. Everything a pCPU does between boundaries depends only on its own
state and the last view. At a boundary the pool half works in this order: loads, caps (first
round only), resets (in (time, pCPU) order of the messages, each followed by the balancer),
budget requests, moves of tickled vCPUs, idle pCPUs (by id), pull requests (in request order);
vCPUs are scanned in credit order, ties by vCPU id, and runqueue members (Xen's per-runqueue
``svc`` list) in vCPU id order. Deviations from Xen, to be listed in the README: a vCPU queued
on one pCPU runs on another of its runqueue from the next epoch boundary on (Xen: at once);
a reset reaches the vCPUs held by other pCPUs at the next boundary; a pCPU sees the other
pCPUs' credits as of the last boundary (it extrapolates their burn); caps are enforced from
per-pCPU shares of the domain's budget (refills are exact, moving budget between pCPUs waits
for a boundary); hosts have no topology, so the one runqueue arrangement needs comes from this
scheduler's ``threads_per_core``/``cores_per_socket``/``sockets_per_node`` (default: one
socket, no SMT, hence one runqueue of up to 16 pCPUs) and the spreading uses the pool's pCPU
count (Xen: the host's); runqueue loads are sampled at boundaries from exact load integrals.
"""

from __future__ import annotations

from hosts.sched.base import SchedulerEntry, register
from hosts.sched.credit2.params import Credit2Params
from hosts.sched.credit2.pcpu import Credit2Scheduler
from hosts.sched.credit2.pool import Credit2Pool
from hosts.sched.credit2.records import Credit2Unit, runqueue_map

ENTRY = register(
    SchedulerEntry(
        name="credit2",
        sched_id=6,
        params=Credit2Params,
        pcpu=Credit2Scheduler,
        pool=Credit2Pool,
        summary="credit in ns burnt by weight, runqueues ordered by credit, load balancing, caps by budget (Xen's default)",
    )
)

__all__ = ["ENTRY", "Credit2Params", "Credit2Pool", "Credit2Scheduler", "Credit2Unit", "runqueue_map"]
