"""The inline backend: every host's pCPUs as objects in this process.

For tests and debugging: the same ``HostEngine`` and ``PcpuCore`` code as under Ray, reached
through ``InlinePorts`` instead of shared-memory mailboxes, with host memory in a bytearray.
"""

from __future__ import annotations

from dataclasses import dataclass

from hosts.host import HostEngine, InlinePorts, make_core
from hosts.memory import HostMemory
from hosts.messages import PcpuReport
from hosts.pcpu import PcpuCore

from cluster.backends.base import ManagerClient
from cluster.config import Plan
from cluster.hostclient import HostClient, InlineTransport
from cluster.manager import DomainManager


@dataclass
class InlineHost:
    """One host's parts, open to inspection (tests, debugging)."""

    engine: HostEngine
    cores: dict[int, PcpuCore]
    memory: HostMemory


class InlineBackend:
    name = "inline"

    def __init__(self, plan: Plan):
        self.plan = plan
        self.hosts: dict[str, InlineHost] = {}

    def start(self) -> ManagerClient:
        clients = {}
        for name, spec in self.plan.hosts.items():
            mem = HostMemory.inline(spec.mem_pages, spec.full_memory)
            cores = {c: make_core(spec, c, {}, mem, self.plan.seed, 0) for c in range(spec.nr_pcpus)}
            engine = HostEngine(spec, InlinePorts(cores), mem, self.plan.seed)
            self.hosts[name] = InlineHost(engine, cores, mem)
            clients[name] = HostClient(name, InlineTransport(engine))
        return DomainManager(self.plan, clients)

    def reports(self, gathered: dict[str, list[PcpuReport]], lost: set[str]) -> dict[str, list[PcpuReport]]:
        return {h: list(rs) for h, rs in gathered.items()}

    def placement(self) -> dict[str, str]:
        return {}

    def processes(self) -> dict[str, list[list[int]]]:
        return {}  # no pCPU processes: everything runs in the caller's

    def engine_processes(self) -> dict[str, str]:
        return {}

    def shutdown(self) -> None:
        for h in self.hosts.values():
            h.memory.close()
        self.hosts = {}
