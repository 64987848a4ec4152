"""The inline backend: every host's pCPUs as objects in this process.

For tests and debugging: the same ``HostEngine`` and ``PcpuCore`` code as under Ray, reached
through ``InlinePorts`` instead of shared-memory mailboxes, with host memory in a bytearray.
"""

from __future__ import annotations

from typing import Any

from hosts.host import HostEngine, InlinePorts, make_core
from hosts.memory import HostMemory

from cluster.config import Plan


class InlineHost:
    """A HostHandle whose calls run at once, in this process."""

    def __init__(self, name: str, plan: Plan):
        spec = plan.hosts[name]
        self.name = name
        self.memory = HostMemory.inline(spec.mem_pages, spec.full_memory)
        self.cores = {c: make_core(spec, c, {}, self.memory, plan.seed, 0) for c in range(spec.nr_pcpus)}
        self.engine = HostEngine(spec, InlinePorts(self.cores), self.memory, plan.seed)

    def submit(self, method: str, *args: Any) -> Any:
        return getattr(self.engine, method)(*args)

    def submit_blob(self, method: str, blob: Any, *args: Any) -> Any:
        return getattr(self.engine, method)(*args, blob)

    def result(self, fut: Any) -> Any:
        return fut


class InlineBackend:
    name = "inline"

    def __init__(self, plan: Plan):
        self.plan = plan
        self.hosts: dict[str, InlineHost] = {}

    def start(self) -> dict[str, InlineHost]:
        self.hosts = {name: InlineHost(name, self.plan) for name in self.plan.hosts}
        return self.hosts

    def shutdown(self) -> None:
        for h in self.hosts.values():
            h.memory.close()
        self.hosts = {}
