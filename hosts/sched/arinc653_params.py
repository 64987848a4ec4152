"""The ARINC653 scheduler's parameters (pydantic models, kept apart so the scheduler compiles)."""

from __future__ import annotations

from typing import Final, Literal, Optional, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hosts.clock import MS, ms

MAX_ENTRIES: Final = 64  # ARINC653_MAX_DOMAINS_PER_SCHEDULE
DEFAULT_TIMESLICE_NS: Final = 10_000_000  # 10 ms


class Arinc653EntryCfg(BaseModel):
    """One minor frame of the major frame."""

    model_config = ConfigDict(extra="forbid")

    domain: str = Field(description="Name of the domain (partition); Domain-0 is 'Domain-0'.")
    vcpu: int = Field(0, ge=0, description="vCPU index of that domain.")
    runtime_ms: float = Field(gt=0, description="Length of this minor frame, in ms.")


class Arinc653Params(BaseModel):
    """Parameters of the ARINC653 scheduler (Xen's XEN_SYSCTL_ARINC653 schedule)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["arinc653"] = Field("arinc653", description="Scheduler name.")
    major_frame_ms: Optional[float] = Field(None, gt=0, description="Length of the major frame in ms (default: the sum of the schedule's runtimes).")
    schedule: Optional[list[Arinc653EntryCfg]] = Field(
        None,
        min_length=1,
        max_length=MAX_ENTRIES,
        description="Minor frames in order, at most 64 (default: Xen's, each Domain-0 vCPU for 10 ms).",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.schedule is None:
            if self.major_frame_ms is not None:
                raise ValueError("major_frame_ms needs a schedule (the default schedule's major frame is 10 ms per Domain-0 vCPU)")
            return self
        total = sum(ms(e.runtime_ms) for e in self.schedule)
        if self.major_frame_ms is not None and ms(self.major_frame_ms) < total:
            raise ValueError(f"major_frame_ms ({self.major_frame_ms}) is shorter than the sum of the runtimes ({total / MS:g} ms)")
        return self


