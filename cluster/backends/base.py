"""What every backend offers the runner, so that a run reads the same on either.

A backend builds the cluster (``start`` returns the domain manager, as an object in this
process or as a handle to its actor), completes the pCPU reports the manager gathered (under
Ray the follower pCPUs report through their own actors, except on hosts that were lost),
says where each host ran and which process stepped which pCPUs, and tears everything down.
"""

from __future__ import annotations

from typing import Any, Protocol

from hosts.messages import PcpuReport


class ManagerClient(Protocol):
    """The domain manager as the runner drives it (``cluster.manager.DomainManager``)."""

    def setup(self) -> None: ...
    def run_until(self, t_end: int) -> None: ...
    def finish(self) -> dict[str, list[PcpuReport]]: ...
    def state(self) -> dict[str, Any]: ...


class Backend(Protocol):
    name: str

    def start(self) -> ManagerClient: ...
    def reports(self, gathered: dict[str, list[PcpuReport]], lost: set[str]) -> dict[str, list[PcpuReport]]: ...
    def placement(self) -> dict[str, str]: ...
    def processes(self) -> dict[str, list[list[int]]]: ...
    def shutdown(self) -> None: ...
