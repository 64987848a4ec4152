"""Messages between a scheduler's two halves (per-pCPU and per-pool), through the host.

The pool half runs at epoch boundaries on the host master and reads per-pCPU summaries; it
answers with instructions per pCPU. ``Give`` is the one instruction the engine itself enacts
(take a queued vCPU off this pCPU and send it to another); every other instruction is handed
to the pCPU half's ``apply_pool``. ``PoolView`` is what a pCPU knows of its pool between
boundaries. Every class here is registered with ``hosts.wire`` so that it keeps its type
between processes.
"""

from __future__ import annotations

from typing import NamedTuple

from hosts.wire import message


@message
class Give(NamedTuple):
    """Move queued vCPU ``vid`` from the pCPU this is sent to, to ``to_pcpu``."""

    vid: int
    to_pcpu: int


class PoolView:
    """What a pCPU knows of its pool, refreshed at every epoch boundary.

    ``idlers`` is Xen's pool idle mask as of the last boundary, plus the pCPU's own changes
    since (tickling an idler removes it at once, as Xen's ``__runq_tickle`` does).
    """

    __slots__ = ("cpus", "idlers", "epoch", "extra")

    def __init__(self, cpus: tuple[int, ...]):
        self.cpus = cpus
        self.idlers: set[int] = set(cpus)
        self.epoch = 0  # Credit's runq_sort epoch
        self.extra: dict = {}
