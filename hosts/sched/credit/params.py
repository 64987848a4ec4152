"""Credit's parameters and constants: Xen's ``credit.c`` #defines and boot options.

What it does. ``CreditParams`` is the scheduler's config model (``hosts.*.scheduler`` with
``name: credit``); the constants are Xen's priorities, unit flags and credit rates. Both
halves import from here only.

Ordering and determinism. Nothing here depends on time or order.
"""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


PRI_BOOST: Final = 0
PRI_UNDER: Final = -1
PRI_OVER: Final = -2
PRI_IDLE: Final = -64
PRI_NAMES: Final = {PRI_BOOST: "BOOST", PRI_UNDER: "UNDER", PRI_OVER: "OVER", PRI_IDLE: "IDLE"}

FLAG_PARKED: Final = 1 << 0
FLAG_YIELD: Final = 1 << 1
FLAG_MIGRATING: Final = 1 << 2
FLAG_PINNED: Final = 1 << 3

CREDITS_PER_MSEC: Final = 10
MIN_TIMER_NS: Final = 100_000  # 100 us; CSCHED_MIN_TIMER = XEN_SYSCTL_SCHED_RATELIMIT_MIN


class CreditParams(BaseModel):
    """Parameters of the Credit scheduler (Xen's boot options and ``xl sched-credit -s``)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["credit"] = Field("credit", description="Scheduler name.")
    tslice_ms: int = Field(30, ge=1, le=1000, description="Timeslice and accounting period in ms (sched_credit_tslice_ms).")
    ratelimit_us: int = Field(
        1000,
        ge=0,
        le=500_000,
        description="Minimum run time before a running vCPU can be preempted, in us (sched_ratelimit_us); 0 disables, otherwise 100..500000.",
    )
    ticks_per_tslice: int = Field(3, ge=1, le=100, description="Ticks per timeslice (CSCHED_TICKS_PER_TSLICE); the tick is tslice/ticks (10 ms).")
    accounting: Literal["timestamp", "tick"] = Field(
        "timestamp",
        description="'timestamp': burn 10 credits/ms of run time with a ns residual (Xen >= 4.2). 'tick': charge a tick's worth to whoever runs at each tick (older Xen).",
    )
    boost: bool = Field(True, description="Boost UNDER vCPUs on wake (Xen always does; off is for experiments).")
    load_balance_ratelimit_us: int = Field(1000, ge=0, le=1_000_000, description="Minimum interval between work-stealing attempts of one pCPU, in us.")
    vcpu_migration_delay_us: int = Field(0, ge=0, le=100_000, description="A vCPU that ran more recently than this is cache-hot and not stolen, in us.")
    tickle_one_idle: bool = Field(True, description="Wake only one idle pCPU per wake-up (tickle_one_idle_cpu).")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.ratelimit_us and self.ratelimit_us < 100:
            raise ValueError("ratelimit_us must be 0 (off) or between 100 and 500000")
        if self.ratelimit_us > self.tslice_ms * 1000:
            raise ValueError(f"ratelimit_us ({self.ratelimit_us}) must not exceed tslice_ms ({self.tslice_ms}) in us")
        return self
