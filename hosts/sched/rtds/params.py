"""RTDS's parameters and constants: Xen's ``rt.c`` defaults and per-vCPU parameters.

What it does. ``RtdsParams`` is the pool's config model (nothing beyond the name, as in Xen);
``RtdsVcpuParams`` is what a domain's ``sched``/``vcpu_sched`` gives each vCPU (period,
budget, extratime; Xen's XEN_DOMCTL_SCHEDOP_putvcpuinfo). The flags are Xen's ``RTDS_*``.

Ordering and determinism. Nothing here depends on time or order.
"""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_PERIOD_US: Final = 10_000
DEFAULT_BUDGET_US: Final = 4_000
MIN_PERIOD_US: Final = 10
MIN_BUDGET_US: Final = 10
UPDATE_LIMIT_SHIFT: Final = 10

F_SCHEDULED: Final = 1 << 1
F_DELAYED: Final = 1 << 2
F_DEPLETED: Final = 1 << 3
F_EXTRA: Final = 1 << 4

Q_NONE: Final = 0
Q_RUN: Final = 1
Q_DEPLETED: Final = 2


class RtdsParams(BaseModel):
    """Parameters of the RTDS scheduler (per pool: none in Xen beyond the name)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["rtds"] = Field("rtds", description="Scheduler name.")


class RtdsVcpuParams(BaseModel):
    """Per-vCPU RTDS parameters (Xen's XEN_DOMCTL_SCHEDOP_putvcpuinfo, in us)."""

    model_config = ConfigDict(extra="forbid")

    period_us: int = Field(DEFAULT_PERIOD_US, ge=MIN_PERIOD_US, le=10**12, description="Period in us (the deadline is the end of each period); at least 10.")
    budget_us: int = Field(DEFAULT_BUDGET_US, ge=MIN_BUDGET_US, description="CPU time guaranteed per period, in us; at least 10 and at most the period.")
    extratime: bool = Field(True, description="May run beyond its budget, behind every vCPU still inside its reservation (Xen's default: on).")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.budget_us > self.period_us:
            raise ValueError(f"budget_us ({self.budget_us}) exceeds period_us ({self.period_us})")
        return self
