"""The engine's exception classes, in one module that imports nothing.

They live apart from the modules that raise them so those modules can be compiled (mypyc makes
native classes, which cannot derive from built-in exceptions); each is re-exported where it was
first defined, so ``hosts.codec.RecordError`` and the others keep working.
"""

from __future__ import annotations


class HostError(RuntimeError):
    """A host operation that cannot be done (unknown pool or domain, a finished host, ...)."""


class InvariantError(AssertionError):
    """A broken scheduler contract (only raised with checks on)."""


class UnknownMessage(TypeError):
    """An inbox item or outbox message of a kind the receiver does not handle."""


class SchedulerError(ValueError):
    """A scheduler that cannot be used: unknown name, incomplete ops table, bad parameters,
    or a message between its halves of a kind it does not know."""


class RecordError(ValueError):
    """A record or stream that hvsim refuses, with a message naming what and why."""


class MemoryError_(ValueError):
    """A domain that does not fit, or another memory request the host refuses."""


class WireError(ValueError):
    """Bytes that are not a message this hvsim knows."""
