"""Messages between a scheduler's two halves (per-pCPU and per-pool), through the host.

What it does. A pool half runs at epoch boundaries on the host master and reads per-pCPU
summaries (``PcpuScheduler.summary``: one NamedTuple per scheduler, None before a pCPU first
reported); it answers with instructions per pCPU (``PoolScheduler.boundary``). ``Give`` is the
one instruction the engine itself enacts (take a queued vCPU off this pCPU and send it to
another); every other instruction is handed to the pCPU half's ``apply_pool``, which refuses a
kind it does not know. A pCPU half writes to its pool half with ``ctx.pool_msg`` (read by
``PoolScheduler.on_msg``); its ``ctx.request_steal(pri)`` reaches ``boundary`` as a
``StealRequest``. ``PoolView`` is what a pCPU knows of its pool between boundaries, with the
scheduler's own extras (``view_extra``: ``Credit2View``, ``RtdsView``, ``NullView``).

When to use it. Every record that crosses between the halves is a class here: the halves may
live in different processes. Every class is registered with ``hosts.wire`` (its name is its
tag, so names are unique) and keeps its type through msgpack; fields hold only ints, bools,
tuples, dicts of those, or other classes of this module.

Ordering and determinism. Nothing here orders anything: the host delivers pool messages and
steal requests in (time, pCPU, sequence) order, and instructions in the order ``boundary``
returns them.
"""

from __future__ import annotations

from typing import NamedTuple, Union

from hosts.wire import message

# =============================================================================================
# shared by every scheduler
# =============================================================================================


@message
class Give(NamedTuple):
    """Move queued vCPU ``vid`` from the pCPU this is sent to, to ``to_pcpu``."""

    vid: int
    to_pcpu: int


@message
class GiveFailed(NamedTuple):
    """Pool message: a ``Give`` found its vCPU running, blocked or gone (nothing moved)."""

    vid: int
    to_pcpu: int




@message
class StealRequest(NamedTuple):
    """A pCPU's ``ctx.request_steal(pri)`` as the pool half's ``boundary`` receives it."""

    time_ns: int
    pcpu: int
    pri: int


# =============================================================================================
# Credit
# =============================================================================================


@message
class CreditQueued(NamedTuple):
    vid: int
    pri: int
    last_sched_ns: int


@message
class CreditSummary(NamedTuple):
    """A Credit pCPU: what runs (-1 and PRI_IDLE if idle) and its runqueue, head first."""

    curr_vid: int
    curr_pri: int
    runq: tuple[CreditQueued, ...]
    nr_runnable: int


@message
class CreditAcctStart(NamedTuple):
    """Pool message: a vCPU seen running at a tick joins its domain's active list."""

    vid: int


@message
class CreditAcctStop(NamedTuple):
    """Pool message: a vCPU leaves its domain's active list (left the pool, or credit > S)."""

    vid: int


@message
class CreditAcctCredit(NamedTuple):
    """Pool message: a vCPU's credit after an accounting increment (for credit_balance)."""

    credit: int


@message
class CreditAcct(NamedTuple):
    """Instruction: csched_acct's per-unit tail for ``vid`` (``incr`` credits, cap threshold)."""

    vid: int
    incr: int
    capped: bool
    cap_thr: int


# =============================================================================================
# Credit2
# =============================================================================================


@message
class Credit2Curr(NamedTuple):
    """The vCPU a Credit2 pCPU runs, with its credit burnt up to the summary's time."""

    vid: int
    credit: int
    weight: int
    entry_ns: int
    soft_ok: bool


@message
class Credit2Queued(NamedTuple):
    vid: int
    credit: int
    tickled: int
    processor: int


@message
class Credit2Load(NamedTuple):
    """A unit's load average (update_svc_load's inputs) and what the balancer and caps need."""

    vid: int
    avgload: int
    load_last_update: int
    runnable: bool
    parked: bool
    migrating: bool


@message
class Credit2Reserve(NamedTuple):
    """The share of a capped domain's budget a pCPU holds."""

    uid: int
    budget_ns: int


@message
class Credit2Summary(NamedTuple):
    """A Credit2 pCPU at time ``now``: its slice of runqueue ``rq``, its load integral."""

    now: int
    rq: int
    gen: int
    curr: Credit2Curr | None
    queued: tuple[Credit2Queued, ...]
    units: tuple[Credit2Load, ...]
    load_area: int
    load: int
    reserves: tuple[Credit2Reserve, ...]
    max_weight: int
    held: tuple[int, ...]


@message
class Credit2Reset(NamedTuple):
    """reset_credit number ``gen`` of runqueue ``rq`` (+``amount``): a pool message from the
    pCPU that decided it, then an instruction to every pCPU of the runqueue."""

    rq: int
    gen: int
    amount: int


@message
class Credit2BudgetWant(NamedTuple):
    """Pool message: a pCPU ran out of domain ``uid``'s budget."""

    uid: int


@message
class Credit2Untickle(NamedTuple):
    """Instruction: the tickle of ``vid`` no longer holds; any pCPU may take it."""

    vid: int


@message
class Credit2Pulled(NamedTuple):
    """Instruction: ``vid`` is on its way here for a pull request (take it at once)."""

    vid: int


@message
class Credit2RqMigrate(NamedTuple):
    """Instruction: the balancer moves ``vid`` to ``to_pcpu`` (another runqueue)."""

    vid: int
    to_pcpu: int


@message
class Credit2BudgetSet(NamedTuple):
    """Instruction: this pCPU's share of domain ``uid``'s budget is ``amount`` ns."""

    uid: int
    amount: int


@message
class Credit2CapOn(NamedTuple):
    uid: int


@message
class Credit2CapOff(NamedTuple):
    uid: int


@message
class Credit2RqView(NamedTuple):
    gen: int
    max_weight: int
    load: int  # b_avgload
    pick_bias: int
    gen_amount: int


@message
class Credit2CpuView(NamedTuple):
    """What another pCPU runs, as of its summary at ``ts``."""

    vid: int
    credit: int
    weight: int
    entry_ns: int
    soft_ok: bool
    ts: int


@message
class Credit2Waiting(NamedTuple):
    """A vCPU queued on ``holder``; ``hard`` is its hard affinity, () for the whole pool."""

    credit: int
    vid: int
    holder: int
    tickled: int
    processor: int
    hard: tuple[int, ...]


@message
class Credit2View(NamedTuple):
    """Credit2's view extras: per runqueue, per running pCPU, per runqueue's waiting vCPUs
    (credit order, ties by vid)."""

    seq: int
    rq: dict[int, Credit2RqView]
    cpu: dict[int, Credit2CpuView]
    q: dict[int, tuple[Credit2Waiting, ...]]


# =============================================================================================
# RTDS
# =============================================================================================


@message
class RtdsPrio(NamedTuple):
    vid: int
    level: int
    deadline_ns: int


@message
class RtdsSummary(NamedTuple):
    """An RTDS pCPU: what runs, its queued vCPUs by priority, its next replenishment."""

    curr: RtdsPrio | None
    queued: tuple[RtdsPrio, ...]
    next_repl_ns: int


@message
class RtdsRunning(NamedTuple):
    """Ordered as priorities compare: lower (level, deadline) first, then vid."""

    level: int
    deadline_ns: int
    vid: int


@message
class RtdsWaiting(NamedTuple):
    level: int
    deadline_ns: int
    vid: int
    holder: int
    hard: tuple[int, ...]  # () for the whole pool


@message
class RtdsView(NamedTuple):
    seq: int
    cur: dict[int, RtdsRunning]
    q: tuple[RtdsWaiting, ...]


@message
class RtdsReplenish(NamedTuple):
    """Instruction: run this pCPU's replenishments due now (before the pool looks)."""


@message
class RtdsResched(NamedTuple):
    """Instruction: reschedule (a vCPU queued here should run here)."""


# =============================================================================================
# null
# =============================================================================================


@message
class NullSummary(NamedTuple):
    assigned: int  # -1: free


@message
class NullAssign(NamedTuple):
    """Instruction: the vCPU this pCPU runs from now on (-1: none)."""

    vid: int


@message
class NullSend(NamedTuple):
    """Instruction: send ``vid``'s record to ``to_pcpu``, where it is assigned."""

    vid: int
    to_pcpu: int


@message
class NullView(NamedTuple):
    free: tuple[int, ...]


# =============================================================================================
# unions, by direction
# =============================================================================================

Summary = Union[CreditSummary, Credit2Summary, RtdsSummary, NullSummary, None]
PoolMsg = Union[GiveFailed, CreditAcctStart, CreditAcctStop, CreditAcctCredit, Credit2Reset, Credit2BudgetWant]
Instruction = Union[
    Give,
    CreditAcct,
    Credit2Reset,
    Credit2Untickle,
    Credit2Pulled,
    Credit2RqMigrate,
    Credit2BudgetSet,
    Credit2CapOn,
    Credit2CapOff,
    RtdsReplenish,
    RtdsResched,
    NullAssign,
    NullSend,
]
ViewExtra = Union[Credit2View, RtdsView, NullView, None]


class PoolView:
    """What a pCPU knows of its pool, refreshed at every epoch boundary.

    ``idlers`` is Xen's pool idle mask as of the last boundary, plus the pCPU's own changes
    since (tickling an idler removes it at once, as Xen's ``__runq_tickle`` does).
    """

    __slots__ = ("cpus", "idlers", "epoch", "extra")

    def __init__(self, cpus: tuple[int, ...]) -> None:
        self.cpus = cpus
        self.idlers: set[int] = set(cpus)
        self.epoch = 0  # Credit's runq_sort epoch
        self.extra: ViewExtra = None
