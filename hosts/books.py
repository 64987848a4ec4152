"""PcpuBooks: what a pCPU accounts while it runs, and its report at the end.

Busy and idle time, context switches, events handled, the run intervals kept for the trace
(``trace``: int64 triples start, end, vid), the digest of every switch, wake-to-run
latencies, hypercall stays, and named counters and samples that workloads and the memory
code ask the engine to keep. Only the engine writes here.
"""

from __future__ import annotations

from typing import Final

import hashlib
from array import array

DIGEST_CHUNK: Final = 3 * 4096  # switches buffered before they are hashed


class PcpuBooks:
    __slots__ = (
        "busy_ns",
        "idle_ns",
        "last_switch_ns",
        "switches",
        "events",
        "trace",
        "trace_max",
        "trace_dropped",
        "_dig",
        "_dbuf",
        "_tbuf",
        "_tlen",
        "wake_lat",
        "hv",
        "metrics",
        "samples",
    )

    def __init__(self, start_ns: int, trace_max: int):
        self.busy_ns = 0
        self.idle_ns = 0
        self.last_switch_ns = start_ns
        self.switches = 0
        self.events = 0
        self.trace = array("q")
        self.trace_max = trace_max
        self.trace_dropped = 0
        self._dig = hashlib.blake2b(digest_size=16)
        # switches and run intervals gather in lists (a list append is native code, an array
        # method call is not) and go into the hash and the trace array a chunk at a time
        self._dbuf: list[int] = []
        self._tbuf: list[int] = []
        self._tlen = 0  # ints in the trace, buffered ones included
        self.wake_lat: dict[int, array[int]] = {}
        #: hypercall number -> [count, preemptions, stays (ns)]
        self.hv: dict[int, tuple[list[int], array[int]]] = {}
        self.metrics: dict[str, int] = {}
        self.samples: dict[str, dict[int, list[int]]] = {}

    def switch(self, now: int, prev_vid: int, next_vid: int) -> None:
        """Account a context switch at ``now`` (prev_vid -1: the pCPU was idle)."""
        self.switches += 1
        delta = now - self.last_switch_ns
        if prev_vid < 0:
            self.idle_ns += delta
        else:
            self.busy_ns += delta
            if delta > 0:
                if self._tlen < self.trace_max:
                    t = self._tbuf
                    t.append(self.last_switch_ns)
                    t.append(now)
                    t.append(prev_vid)
                    self._tlen += 3
                    if len(t) >= DIGEST_CHUNK:
                        self._flush_trace()
                else:
                    self.trace_dropped += 1
        self.last_switch_ns = now
        d = self._dbuf
        d.append(now)
        d.append(prev_vid)
        d.append(next_vid)
        if len(d) >= DIGEST_CHUNK:
            self._dig.update(array("q", d).tobytes())
            d.clear()

    def _flush_trace(self) -> None:
        self.trace.fromlist(self._tbuf)
        self._tbuf.clear()

    def close(self, now: int, curr_vid: int) -> None:
        """The books at ``now`` with ``curr_vid`` still running (-1: idle)."""
        delta = now - self.last_switch_ns
        if curr_vid < 0:
            self.idle_ns += delta
        else:
            self.busy_ns += delta
            if delta > 0 and self._tlen < self.trace_max:
                self._tbuf.extend((self.last_switch_ns, now, curr_vid))
                self._tlen += 3
        self.last_switch_ns = now
        self._flush_trace()

    def hypercall_left(self, nr: int, preempted: bool, stay_ns: int) -> None:
        st = self.hv.get(nr)
        if st is None:
            st = self.hv[nr] = ([0, 0], array("q"))
        st[0][1 if preempted else 0] += 1
        st[1].append(stay_ns)

    def count(self, key: str, n: int) -> None:
        self.metrics[key] = self.metrics.get(key, 0) + n

    def sample(self, name: str, vid: int, value: int) -> None:
        d = self.samples.get(name)
        if d is None:
            d = self.samples[name] = {}
        lst = d.get(vid)
        if lst is None:
            lst = d[vid] = []
        lst.append(value)

    def digest(self) -> str:
        if self._dbuf:
            self._dig.update(array("q", self._dbuf).tobytes())
            self._dbuf.clear()
        return self._dig.hexdigest()
