"""EventLoop: one pCPU's clock, event heap and softirq flags; the bottom layer of PcpuCore.

A pCPU advances alone between epoch boundaries: ``advance(until)`` fires every event before
``until`` in (time, priority, sequence) order and runs the SCHEDULE softirq after each instant
at which it was raised (unless the current vCPU is inside Xen: stackless, the softirq waits
for the hypercall to return to the guest). What an event does is the upper layers' business
(``_dispatch``, ``_softirqs``).

Xen's ``s_timer`` (the scheduler's decision timer) is kept here with a lazy re-arm: the heap
holds at most one live entry, at ``s_armed`` <= ``s_deadline``; an entry that fires early
re-arms for the deadline, so moving the deadline later (the common case) costs no heap work.
Timers a scheduler arms by name (Credit's tick) are tokens in ``timers``; a stale heap entry
is ignored when it fires.
"""

from __future__ import annotations

from hosts.errors import InvariantError as InvariantError  # re-exported: defined apart so this module can be compiled

from typing import Any, Final

from hosts.books import PcpuBooks
from hosts.clock import NEVER
from hosts.events import PRIO_TIMER, Event, EventQueue, heap_pop, heap_push, heapify
from hosts.tracelog import new_buffer

# Event kinds.
EV_S_TIMER: Final = 0  # the scheduler's decision timer (Xen's s_timer)
EV_SCHED_TIMER: Final = 1  # a timer the scheduler armed by name (Credit's tick)
EV_VCPU_TIMER: Final = 2  # a vCPU's singleshot timer (set_timer_op)
EV_BURST: Final = 3  # the running vCPU's compute burst or hypercall ends
EV_POLL_TIMEOUT: Final = 4

COMPACT_MIN: Final = 64  # heap size from which dead entries are dropped (then twice the live ones)
HORIZON_LOOKS: Final = 16  # heap entries ``horizon`` tests at most beyond the first

MODE_GUEST: Final = 0
MODE_XEN: Final = 1


class EventLoop:
    """Clock, heap and flags of one pCPU. Subclasses give events and softirqs their meaning."""

    def __init__(self, host: str, pcpu: int, start_ns: int, trace_max: int):
        self.host = host
        self.pcpu = pcpu
        self.now = start_ns
        self.q = EventQueue()
        self._heap = self.q._heap
        self.books = PcpuBooks(start_ns, trace_max)
        self.softirq = False  # SCHEDULE_SOFTIRQ pending
        self.timer_softirq = False  # TIMER_SOFTIRQ pending (preempts a long hypercall)
        self.mode = MODE_GUEST  # where the current vCPU executes
        self.s_deadline = NEVER
        self.s_armed = NEVER
        self.timers: dict[str, int] = {}  # scheduler timer name -> live token
        self._timer_tok = 0
        self.gen = 0  # token of the current vCPU's burst event; bumped on every switch / replan
        self.busy_ev = False  # a burst event of the current vCPU is in the heap
        self._compact_at = COMPACT_MIN
        # Xen trace records (hosts.tracelog), kept only while tracing: every site that records
        # tests this bool first, so tracing off costs one attribute test per site
        self.tracing = False
        self.tbuf = new_buffer()

    # --- the heap ------------------------------------------------------------------------------
    def _push(self, t: int, prio: int, kind: int, arg: Any) -> None:
        self.q._seq += 1
        heap_push(self._heap, Event(t, prio, self.q._seq, kind, arg))

    def next_event_ns(self) -> int:
        return self._heap[0].t if self._heap else NEVER

    def horizon(self) -> int:
        """When this pCPU next has anything to do: the time of its first event that is not a
        no-op in the current state (``_live_at``). The state changes only while the pCPU
        advances or handles a command, so the master may leave it out until then; the no-op
        entries are popped, in their order, when it next advances (the same pops, later)."""
        heap = self._heap
        if not heap:
            return NEVER
        top = heap[0]
        best = self._live_at(top.t, top.kind, top.arg)
        if best == top.t:
            return best
        # below a no-op entry an earlier live one may hide; below a live one nothing earlier.
        # A few entries are looked at; past that, the earliest unseen one bounds the answer
        n = len(heap)
        todo = [1, 2]
        budget = HORIZON_LOOKS
        while todo:
            i = todo.pop()
            if i >= n:
                continue
            e = heap[i]
            t = e.t
            if t >= best:
                continue
            budget -= 1
            if budget < 0:
                for j in todo:
                    if j < n and heap[j].t < t:
                        t = heap[j].t
                return t
            live = self._live_at(t, e.kind, e.arg)
            if live < best:
                best = live
            if live != t:
                todo.append(2 * i + 1)
                todo.append(2 * i + 2)
        return best

    def advance(self, until: int) -> None:
        """Process every event with time < ``until``; then stand at ``until``."""
        heap = self._heap
        n = 0
        if self.softirq and self.mode == MODE_GUEST:
            self._softirqs()
        while heap:
            t = heap[0].t
            if t >= until:
                break
            self.now = t
            while True:  # every event at this instant, then the softirq
                e = heap_pop(heap)
                n += 1
                kind = e.kind
                if kind == EV_BURST:  # the most frequent kind, handled without a dispatch call
                    g: int = e.arg  # a burst's token (compared natively)
                    if g == self.gen:
                        self.busy_ev = False
                        self._burst_end()
                else:
                    self._dispatch(kind, e.arg)
                if not heap or heap[0].t != t:
                    break
            if self.softirq and self.mode == MODE_GUEST:
                self._softirqs()
        self.books.events += n
        if until > self.now:
            self.now = until
        if len(heap) > self._compact_at:
            self._compact()

    def _compact(self) -> None:
        """Drop the heap's entries that can never do anything: bursts of an older ``gen`` and
        timers of a stale token (a CPU hog's burst ends 2**50 ns away, and a new one is pushed at
        every switch-in). The others keep their (time, priority, sequence) keys, so they fire
        in the same order."""
        gen = self.gen
        timers = self.timers
        keep = []
        for e in self._heap:
            kind = e.kind
            if kind == EV_BURST:
                if e.arg != gen:
                    continue
            elif kind == EV_SCHED_TIMER:
                name, tok = e.arg
                if timers.get(name) != tok:
                    continue
            keep.append(e)
        heapify(keep)
        self._heap[:] = keep  # in place: EventQueue shares the list
        self._compact_at = max(COMPACT_MIN, 2 * len(keep))

    def _dispatch(self, kind: int, arg: Any) -> None:
        """Every kind but EV_BURST."""
        raise NotImplementedError

    def _live_at(self, t: int, kind: int, arg: Any) -> int:
        """When the event (t, kind, arg) would do something if it fired in the current state:
        ``t``, a later time (it fires early and re-arms), or NEVER (a no-op)."""
        raise NotImplementedError

    def _burst_end(self) -> None:
        raise NotImplementedError

    def _softirqs(self) -> None:
        raise NotImplementedError

    # --- timers --------------------------------------------------------------------------------
    def set_timer(self, name: str, when_ns: int) -> None:
        self._timer_tok += 1
        self.timers[name] = self._timer_tok
        self.q._seq += 1
        heap_push(self._heap, Event(when_ns, PRIO_TIMER, self.q._seq, EV_SCHED_TIMER, (name, self._timer_tok)))

    def stop_timer(self, name: str) -> None:
        self.timers.pop(name, None)
