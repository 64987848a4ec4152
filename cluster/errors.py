"""Every error the runtime raises on purpose, in one place (kept free of heavy imports: the CLI
loads them). Each says what went wrong in words a user can act on; the CLI maps them to exit
codes (2: bad input, 3: hosts lost, 130: interrupted, 1: anything else)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """Bad input: names the file, the field and what is allowed. The CLI exits 2 on it."""

    def __init__(self, file: str | None, field: str | None, msg: str):
        self.file = file
        self.field = field
        self.msg = msg
        where = file or "<config>"
        super().__init__(f"{where}: {field}: {msg}" if field else f"{where}: {msg}")


class PlacementError(RuntimeError):
    """A host that no Ray node can take; the message names the host and what is missing."""


class HostLost(RuntimeError):
    """A host's actors died with their Ray node (or one of its pCPU actors died)."""

    def __init__(self, host: str, why: str):
        super().__init__(f"host {host}: {why}")
        self.host = host
        self.why = why


class ManagerError(RuntimeError):
    """A toolstack request that cannot be carried out (e.g. an unknown domain)."""


class RunIncomplete(RuntimeError):
    """Hosts were lost (their Ray node died): the run stops at ``now``."""

    def __init__(self, hosts: list[str], now: int, why: str):
        super().__init__(f"lost host(s) {', '.join(hosts)} at simulated time {now / 1e9:.6f} s: {why}")
        self.hosts = hosts
        self.now = now
        self.why = why


class RunLost(RuntimeError):
    """Hosts were lost with their Ray node: the run was written incomplete to ``out``."""

    def __init__(self, msg: str, out: Path | None, summary: dict[str, Any]):
        super().__init__(msg)
        self.out = out
        self.summary = summary


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that every ``finally`` runs."""


class TransportError(RuntimeError):
    """A host's shared-memory transport failed (a pCPU actor died or raised)."""
