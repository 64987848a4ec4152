"""RTDS's records (Xen's ``rt_unit``, a pCPU's slice of ``rt_private``'s queues) and the
priority order.

What it does. ``RtdsUnit`` travels with its vCPU (reached through :func:`unit`, the one typed
accessor); ``RtdsPcpu`` holds this pCPU's slice of the pool's runqueue, depleted queue and
replenishment queue; ``higher`` is compare_unit_priority.

Ordering and determinism. Lower (priority level, deadline) first; equal priorities keep their
queue order (FIFO).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hosts.clock import NEVER, US
from hosts.sched.base import UnitRecord
from hosts.sched.rtds.params import DEFAULT_BUDGET_US, DEFAULT_PERIOD_US, F_EXTRA, Q_NONE

if TYPE_CHECKING:  # pragma: no cover
    from hosts.vcpu import VcpuState


class RtdsUnit(UnitRecord):
    """Per-unit data (``struct rt_unit``); travels with the vCPU between pCPUs."""

    FIELDS = ("period", "budget", "cur_budget", "last_start", "cur_deadline", "level", "flags", "on_q", "on_replq")
    __slots__ = FIELDS

    def __init__(self, period: int = DEFAULT_PERIOD_US * US, budget: int = DEFAULT_BUDGET_US * US, extratime: bool = True) -> None:
        self.period = period
        self.budget = budget
        self.cur_budget = 0
        self.last_start = 0
        self.cur_deadline = 0
        self.level = 0
        self.flags = F_EXTRA if extratime else 0
        self.on_q = Q_NONE
        self.on_replq = False

    def restored(self) -> None:
        self.on_replq = bool(self.on_replq)


def unit(v: "VcpuState") -> RtdsUnit:
    """The RTDS record of a vCPU held by an RTDS pCPU."""
    u: RtdsUnit = v.sched  # typed without a call to cast (hot path)
    return u


def higher(a: RtdsUnit, b: RtdsUnit) -> bool:
    """compare_unit_priority(a, b) > 0: a strictly before b."""
    if a.level != b.level:
        return a.level < b.level
    return a.cur_deadline < b.cur_deadline


class RtdsPcpu:
    """Per-pCPU data: this pCPU's slice of the pool's queues."""

    __slots__ = ("runq", "depletedq", "replq", "tickled", "repl_armed", "rang_seq")

    def __init__(self) -> None:
        self.runq: list[VcpuState] = []  # vCPUs with budget (or extratime), by priority
        self.depletedq: list[VcpuState] = []  # vCPUs without budget, unordered (newest first)
        self.replq: list[VcpuState] = []  # vCPUs with a pending replenishment, by priority as in Xen
        self.tickled: set[int] = set()  # pCPUs this pCPU tickled since the last view
        self.repl_armed = NEVER
        self.rang_seq = -1
