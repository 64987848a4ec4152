"""Xen's schedulers behind one ops table. Importing this package registers them all."""

from hosts.sched import credit  # noqa: F401  (registers "credit")
from hosts.sched import arinc653, credit2, null, rtds  # noqa: F401  (register the others)
from hosts.sched.base import REGISTRY, Decision, PcpuScheduler, PoolScheduler, SchedContext, SchedulerError, get, register

__all__ = ["REGISTRY", "Decision", "PcpuScheduler", "PoolScheduler", "SchedContext", "SchedulerError", "get", "register"]
