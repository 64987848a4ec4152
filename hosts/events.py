"""The per-pCPU event queue, ordered by (time, priority, sequence).

As in SimPy's ``Environment.schedule``, the heap key carries a monotonically increasing
sequence number so that events at the same time and priority fire in the order they were
scheduled; nothing ever compares payloads. Cancellation is lazy: an event carries a token
and the owner ignores it when the token is stale (cheaper than removing from a heap).
"""

from __future__ import annotations

import heapq
from typing import Any, Final

from hosts.clock import NEVER

# Priorities at equal timestamps (lower fires first). Timer interrupts are handled before
# guest activity ends, matching Xen where TIMER_SOFTIRQ handlers run before SCHEDULE_SOFTIRQ.
PRIO_TIMER: Final = 0
PRIO_GUEST: Final = 1


class EventQueue:
    """A binary heap of ``(time_ns, prio, seq, kind, arg)`` tuples."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, int, Any]] = []
        self._seq = 0

    def push(self, time_ns: int, prio: int, kind: int, arg: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time_ns, prio, self._seq, kind, arg))

    def pop(self) -> tuple[int, int, int, int, Any]:
        return heapq.heappop(self._heap)

    def peek_time(self) -> int:
        return self._heap[0][0] if self._heap else NEVER

    def __len__(self) -> int:
        return len(self._heap)

    def items(self) -> list[tuple[int, int, int, int, Any]]:
        """The pending events in firing order (for checkpoints and tests)."""
        return sorted(self._heap)

    def restore(self, items: list[tuple[int, int, int, int, Any]], seq: int) -> None:
        self._heap = [tuple(i) for i in items]
        heapq.heapify(self._heap)
        self._seq = seq

    @property
    def seq(self) -> int:
        return self._seq
