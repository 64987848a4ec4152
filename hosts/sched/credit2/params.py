"""Credit2's parameters and constants: Xen's ``credit2.c`` #defines and boot options.

What it does. ``Credit2Params`` is the scheduler's config model (``hosts.*.scheduler`` with
``name: credit2``); the constants are Xen's, in ns, and the unit flags are Xen's ``CSFLAG_*``
plus hvsim's two for parking. Both halves import from here only.

Ordering and determinism. Nothing here depends on time or order.
"""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


CREDIT_INIT: Final = 10_000_000  # 10 ms; CSCHED2_CREDIT_INIT = CSCHED2_MAX_TIMER
MIN_TIMER: Final = 500_000  # 500 us; CSCHED2_MIN_TIMER = CSCHED2_CARRYOVER_MAX
CREDIT_MIN: Final = -CREDIT_INIT
IDLE_CREDIT: Final = CREDIT_MIN - 1
CARRYOVER_MAX: Final = MIN_TIMER
MAX_TIMER: Final = CREDIT_INIT
MIGRATE_COMPENSATION: Final = 50_000  # 50 us
RATELIMIT_TICKLE_TOLERANCE: Final = 50_000  # 50 us
CREDIT_RESET: Final = 0
LOADAVG_GRANULARITY_SHIFT: Final = 10
DEFAULT_WEIGHT: Final = 256

F_SCHEDULED: Final = 1 << 1
F_DELAYED: Final = 1 << 2  # delayed_runq_add
F_MIGRATE_REQ: Final = 1 << 3  # runq_migrate_request
F_YIELD: Final = 1 << 4
F_PINNED: Final = 1 << 5
F_PARKED: Final = 1 << 6  # VPF_parked: we paused it for lack of budget
F_PARK_PENDING: Final = 1 << 7  # found without budget while running: parked at context_saved

RING: Final = 0  # request_steal kinds: just run the pool half
PULL: Final = 1  # ... and give me the best vCPU waiting elsewhere in my runqueue

GEN_HISTORY: Final = 32  # credit resets a pCPU remembers (to catch up vCPUs that were away)


class Credit2Params(BaseModel):
    """Parameters of Credit2 (Xen's boot options ``sched_credit2_*``/``credit2_*`` and
    ``xl sched-credit2 -s``), plus the topology hvsim hosts do not otherwise have."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["credit2"] = Field("credit2", description="Scheduler name.")
    ratelimit_us: int = Field(1000, ge=0, le=500_000, description="Minimum run time before a running vCPU can be preempted, in us (sched_ratelimit_us); 0 disables, otherwise 100..500000.")
    runqueue: Literal["cpu", "core", "socket", "node", "all"] = Field("socket", description="What pCPUs share a runqueue (credit2_runqueue).")
    max_cpus_runqueue: int = Field(16, ge=1, le=1024, description="At most this many pCPUs per runqueue (sched_credit2_max_cpus_runqueue).")
    migrate_resist_us: int = Field(500, ge=0, le=100_000, description="A vCPU waiting on another pCPU is taken only if its credit is higher by this much, in us (sched_credit2_migrate_resist).")
    cap_period_ms: int = Field(10, ge=1, le=10_000, description="Period of the cap budget refill, in ms (credit2_cap_period_ms).")
    load_window_shift: int = Field(30, ge=11, le=40, description="The load average's window is 2^this ns (credit2_load_window_shift; 30 = ~1 s).")
    load_precision_shift: int = Field(18, ge=4, le=24, description="Fractional bits of load averages (credit2_load_precision_shift).")
    balance_under: int = Field(0, ge=-8, le=8, description="Balance a runqueue pair below full load when the load difference is >= 2^this (credit2_balance_under).")
    balance_over: int = Field(-3, ge=-8, le=8, description="Balance an overloaded pair when the load difference is >= 2^this (credit2_balance_over; -3 = 1/8).")
    threads_per_core: int = Field(1, ge=1, le=8, description="Host topology for runqueue arrangement: SMT threads per core (pCPU ids are numbered thread-first).")
    cores_per_socket: int = Field(0, ge=0, le=1024, description="Host topology: cores per socket (0 = every pCPU in one socket).")
    sockets_per_node: int = Field(1, ge=1, le=64, description="Host topology: sockets per NUMA node.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.ratelimit_us and self.ratelimit_us < 100:
            raise ValueError("ratelimit_us must be 0 (off) or between 100 and 500000")
        return self
