"""Links between hosts: bandwidth, latency, and max-min fair sharing between transfers.

Every pair of hosts has a link (configured, or the network's default); a host may also have a
NIC limit. A *flow* (one migration stream) crosses its pair link and both hosts' NICs, and may
carry its own rate cap (legacy Xen's rate limiting). Rates are the max-min fair allocation,
computed by progressive filling: raise every unfrozen flow's rate together until a resource
saturates or a flow reaches its cap, freeze the flows concerned, repeat. Rates change only
when a flow starts, stops, or changes its cap, so the model is a fluid one: ``advance`` drains
each flow's current chunk at its rate, and ``next_completion`` says when the first chunk ends.

Units: bandwidths in bits per second (configs say Mbit/s, decimal: 1 Gbit/s = 1e9 bit/s),
bytes for data, integer ns for time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from hosts.clock import NEVER, S


class NetworkError(RuntimeError):
    pass


@dataclass
class Flow:
    fid: str
    a: str
    b: str
    cap_bps: float | None = None
    rate_bps: float = 0.0
    remaining_bytes: float = 0.0  # of the current chunk
    chunk_bytes: int = 0
    sent_bytes: float = 0.0
    started_ns: int = 0


@dataclass
class Link:
    a: str
    b: str
    bandwidth_bps: float
    latency_ns: int
    up: bool = True


@dataclass
class Network:
    links: dict[frozenset[str], Link]
    default_bps: float
    default_latency_ns: int
    nic_bps: dict[str, float] = field(default_factory=dict)
    flows: dict[str, Flow] = field(default_factory=dict)
    now: int = 0

    @classmethod
    def from_config(cls, hosts: list[str], links: Sequence[Mapping[str, Any]], default_mbit_s: float, default_latency_us: float, nics: dict[str, float]) -> "Network":
        net = cls(links={}, default_bps=default_mbit_s * 1e6, default_latency_ns=int(round(default_latency_us * 1000)), nic_bps={h: m * 1e6 for h, m in nics.items()})
        for ln in links:
            key = frozenset((ln["a"], ln["b"]))
            net.links[key] = Link(ln["a"], ln["b"], ln["bandwidth_mbit_s"] * 1e6, int(round(ln["latency_us"] * 1000)))
        return net

    def link(self, a: str, b: str) -> Link:
        key = frozenset((a, b))
        ln = self.links.get(key)
        if ln is None:
            ln = self.links[key] = Link(a, b, self.default_bps, self.default_latency_ns)
        return ln

    # --- flows -------------------------------------------------------------------------------
    def open(self, fid: str, a: str, b: str, now: int, cap_bps: float | None = None) -> Flow:
        self.advance(now)
        if not self.link(a, b).up:
            raise NetworkError(f"link {a}-{b} is down")
        f = Flow(fid, a, b, cap_bps, started_ns=now)
        self.flows[fid] = f
        self._allocate()
        return f

    def close(self, fid: str, now: int) -> None:
        self.advance(now)
        self.flows.pop(fid, None)
        self._allocate()

    def set_cap(self, fid: str, cap_bps: float | None, now: int) -> None:
        self.advance(now)
        self.flows[fid].cap_bps = cap_bps
        self._allocate()

    def send(self, fid: str, nbytes: int, now: int) -> None:
        """Start the flow's next chunk of ``nbytes`` (the previous one must be done)."""
        self.advance(now)
        f = self.flows[fid]
        f.remaining_bytes = float(nbytes)
        f.chunk_bytes = nbytes

    def set_link(self, a: str, b: str, up: bool, now: int) -> list[str]:
        """Cut or restore a link; returns the flows that were using it (they fail)."""
        self.advance(now)
        ln = self.link(a, b)
        ln.up = up
        broken = [fid for fid, f in self.flows.items() if frozenset((f.a, f.b)) == frozenset((a, b))] if not up else []
        return broken

    def host_down(self, host: str, now: int) -> list[str]:
        self.advance(now)
        return [fid for fid, f in self.flows.items() if host in (f.a, f.b)]

    # --- the fluid model -----------------------------------------------------------------------
    def advance(self, now: int) -> None:
        if now < self.now:
            raise NetworkError(f"time went back: {now} < {self.now}")
        dt = now - self.now
        if dt:
            for f in self.flows.values():
                if f.remaining_bytes > 0 and f.rate_bps > 0:
                    moved = min(f.remaining_bytes, f.rate_bps * dt / 8 / S)
                    f.remaining_bytes -= moved
                    f.sent_bytes += moved
                    if f.remaining_bytes < 1e-6:
                        f.remaining_bytes = 0.0
        self.now = now

    def completion_ns(self, fid: str) -> int:
        """When the flow's current chunk will have been sent, at current rates."""
        f = self.flows[fid]
        if f.remaining_bytes <= 0:
            return self.now
        if f.rate_bps <= 0:
            return NEVER
        return self.now + math.ceil(f.remaining_bytes * 8 * S / f.rate_bps - 1e-6)

    def latency_ns(self, a: str, b: str) -> int:
        return self.link(a, b).latency_ns

    def _resources(self, f: Flow) -> list[tuple[str, float]]:
        ln = self.link(f.a, f.b)
        res = [(f"link:{min(f.a, f.b)}-{max(f.a, f.b)}", ln.bandwidth_bps if ln.up else 0.0)]
        for h, tag in ((f.a, "out"), (f.b, "in")):
            if h in self.nic_bps:
                res.append((f"nic:{h}:{tag}", self.nic_bps[h]))
        return res

    def _allocate(self) -> None:
        """Max-min fair rates by progressive filling (deterministic: flows in id order)."""
        flows = [self.flows[k] for k in sorted(self.flows)]
        for f in flows:
            f.rate_bps = 0.0
        if not flows:
            return
        cap: dict[str, float] = {}
        users: dict[str, list[Flow]] = {}
        for f in flows:
            for r, c in self._resources(f):
                cap[r] = c
                users.setdefault(r, []).append(f)
        unfrozen = set(id(f) for f in flows)
        left = dict(cap)
        while unfrozen:
            inc = math.inf
            for r, fl in users.items():
                n = sum(1 for f in fl if id(f) in unfrozen)
                if n:
                    inc = min(inc, left[r] / n)
            for f in flows:
                if id(f) in unfrozen and f.cap_bps is not None:
                    inc = min(inc, f.cap_bps - f.rate_bps)
            inc = max(inc, 0.0)
            for f in flows:
                if id(f) in unfrozen:
                    f.rate_bps += inc
            for r, fl in users.items():
                left[r] -= inc * sum(1 for f in fl if id(f) in unfrozen)
            frozen_now: set[int] = set()
            for r, fl in users.items():
                if left[r] <= 1e-9 * max(cap[r], 1.0):
                    frozen_now |= {id(f) for f in fl if id(f) in unfrozen}
            for f in flows:
                if id(f) in unfrozen and f.cap_bps is not None and f.rate_bps >= f.cap_bps - 1e-9:
                    frozen_now.add(id(f))
            if not frozen_now:
                break
            unfrozen -= frozen_now
