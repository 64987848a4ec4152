"""Domains: containers of vCPUs and memory, never scheduled themselves.

A domain is to its vCPUs what a Linux mm is to threads. The host keeps one ``DomainInfo`` per
domain in its domain table; every pCPU of the host holds a copy (it is small and changes only
through toolstack commands delivered at epoch boundaries), so a pCPU can run any vCPU of any
domain it is handed. ``uid`` is stable across hosts (the cluster assigns it); Xen's per-host
domid is not modelled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

PAGING_MODES: Final = ("pv", "hvm-shadow", "hvm-hap")
PAGE_SIZE: Final = 4096
PAGE_SHIFT: Final = 12


def mib_to_pages(mem_mib: int) -> int:
    return mem_mib * (1 << 20) // PAGE_SIZE


@dataclass
class EvtchnBinding:
    """One event-channel port of a domain: where a send on it lands."""

    port: int
    remote_uid: int  # the domain notified by a send on this port (-1: unbound)
    remote_port: int
    notify_vcpu: int  # vCPU index of *this* domain notified when this port is raised

    def to_list(self) -> list[int]:
        return [self.port, self.remote_uid, self.remote_port, self.notify_vcpu]

    def to_tuple(self) -> tuple[int, int, int, int]:
        return (self.port, self.remote_uid, self.remote_port, self.notify_vcpu)

    @classmethod
    def from_list(cls, x: "list[int] | tuple[int, ...]") -> "EvtchnBinding":
        return cls(int(x[0]), int(x[1]), int(x[2]), int(x[3]))


@dataclass
class DomainInfo:
    uid: int
    name: str
    nr_vcpus: int
    mem_pages: int
    max_pages: int
    paging: str = "hvm-hap"
    weight: int = 256
    cap: int = 0
    pool: int = 0
    is_dom0: bool = False
    #: stable name path for derived random streams ("web", "host0/Domain-0")
    key: str = ""
    #: one workload spec (a plain dict with "kind") per vCPU
    workloads: list[dict[str, Any]] = field(default_factory=list)
    hard_affinity: list[list[int]] = field(default_factory=list)
    soft_affinity: list[list[int]] = field(default_factory=list)
    #: per-vCPU scheduler parameters that are not per domain (e.g. RTDS period/budget)
    vcpu_sched: list[dict[str, Any]] = field(default_factory=list)
    evtchn: dict[int, EvtchnBinding] = field(default_factory=dict)
    #: memory layout inside the host (set by the host allocator)
    p2m_off: int = -1
    dirty_off: int = -1
    log_dirty: bool = False
    dirty_round: int = 0
    paused: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["evtchn"] = [b.to_list() for b in self.evtchn.values()]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DomainInfo":
        d = dict(d)
        ev = d.pop("evtchn", [])
        info = cls(**d)
        info.evtchn = {int(b[0]): EvtchnBinding.from_list(b) for b in ev}
        info.workloads = [dict(w) for w in info.workloads]
        info.hard_affinity = [list(a) for a in info.hard_affinity]
        info.soft_affinity = [list(a) for a in info.soft_affinity]
        info.vcpu_sched = [dict(x) for x in info.vcpu_sched]
        return info

    def next_port(self) -> int:
        """The lowest port above every port in use (the toolstack's allocation)."""
        return max(self.evtchn, default=0) + 1


def bind_pair(a: DomainInfo, a_vcpu: int, b: DomainInfo, b_vcpu: int) -> tuple[int, int]:
    """An interdomain channel between vCPU ``a_vcpu`` of ``a`` and ``b_vcpu`` of ``b`` (which
    may be the same domain): a new port at each end, each naming the other. Returns them."""
    pa = a.next_port()
    a.evtchn[pa] = EvtchnBinding(pa, b.uid, -1, a_vcpu)
    pb = b.next_port()
    b.evtchn[pb] = EvtchnBinding(pb, a.uid, pa, b_vcpu)
    a.evtchn[pa].remote_port = pb
    return pa, pb

