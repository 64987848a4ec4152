"""The per-pCPU event queue, ordered by (time, priority, sequence).

As in SimPy's ``Environment.schedule``, the heap key carries a monotonically increasing
sequence number so that events at the same time and priority fire in the order they were
scheduled; nothing ever compares payloads. Cancellation is lazy: an event carries a token
and the owner ignores it when the token is stale (cheaper than removing from a heap).

Entries are :class:`Event` objects and the heap is sifted here rather than by ``heapq``: the
key compares then compile to native integer compares instead of tuple rich comparisons. Keys
are unique (the sequence), so any valid heap pops in the same order.
"""

from __future__ import annotations

from typing import Any, Final, final

from hosts.clock import NEVER

# Priorities at equal timestamps (lower fires first). Timer interrupts are handled before
# guest activity ends, matching Xen where TIMER_SOFTIRQ handlers run before SCHEDULE_SOFTIRQ.
PRIO_TIMER: Final = 0
PRIO_GUEST: Final = 1


@final
class Event:
    """One heap entry. Indexable as the tuple ``(time_ns, prio, seq, kind, arg)`` it stands for
    and ordered by its key, so tests and tools may treat it as that tuple."""

    __slots__ = ("t", "prio", "seq", "kind", "arg")

    def __init__(self, t: int, prio: int, seq: int, kind: int, arg: Any) -> None:
        self.t = t
        self.prio = prio
        self.seq = seq
        self.kind = kind
        self.arg = arg

    def as_tuple(self) -> tuple[int, int, int, int, Any]:
        return (self.t, self.prio, self.seq, self.kind, self.arg)

    def __getitem__(self, i: int) -> Any:
        return self.as_tuple()[i]

    def __lt__(self, other: Event) -> bool:
        return before(self, other)

    def __hash__(self) -> int:  # by identity (a compiled class with __lt__ gets no default)
        return id(self)

    def __repr__(self) -> str:
        return f"Event{self.as_tuple()!r}"


def before(a: Event, b: Event) -> bool:
    """Whether ``a`` fires before ``b``: (time, priority, sequence) order."""
    if a.t != b.t:
        return a.t < b.t
    if a.prio != b.prio:
        return a.prio < b.prio
    return a.seq < b.seq


def heap_push(heap: list[Event], e: Event) -> None:
    heap.append(e)
    pos = len(heap) - 1
    while pos > 0:
        up = (pos - 1) >> 1
        parent = heap[up]
        if not before(e, parent):
            break
        heap[pos] = parent
        pos = up
    heap[pos] = e


def _sift_down(heap: list[Event], pos: int, e: Event) -> None:
    """Place ``e`` at ``pos`` or below, moving smaller children up."""
    n = len(heap)
    child = 2 * pos + 1
    while child < n:
        c = heap[child]
        right = child + 1
        if right < n:
            r = heap[right]
            if before(r, c):
                child = right
                c = r
        if not before(c, e):
            break
        heap[pos] = c
        pos = child
        child = 2 * pos + 1
    heap[pos] = e


def heap_pop(heap: list[Event]) -> Event:
    last = heap.pop()
    if not heap:
        return last
    top = heap[0]
    _sift_down(heap, 0, last)
    return top


def heapify(heap: list[Event]) -> None:
    for i in range(len(heap) // 2 - 1, -1, -1):
        _sift_down(heap, i, heap[i])


class EventQueue:
    """A binary heap of :class:`Event` entries."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[Event] = []
        self._seq = 0

    def push(self, time_ns: int, prio: int, kind: int, arg: Any = None) -> None:
        self._seq += 1
        heap_push(self._heap, Event(time_ns, prio, self._seq, kind, arg))

    def pop(self) -> tuple[int, int, int, int, Any]:
        return heap_pop(self._heap).as_tuple()

    def peek_time(self) -> int:
        return self._heap[0].t if self._heap else NEVER

    def __len__(self) -> int:
        return len(self._heap)

    def items(self) -> list[tuple[int, int, int, int, Any]]:
        """The pending events in firing order (for checkpoints and tests)."""
        return sorted(e.as_tuple() for e in self._heap)

    def restore(self, items: list[tuple[int, int, int, int, Any]], seq: int) -> None:
        self._heap[:] = [Event(*i) for i in items]  # in place: the pCPU's loop shares the list
        heapify(self._heap)
        self._seq = seq

    @property
    def seq(self) -> int:
        return self._seq
