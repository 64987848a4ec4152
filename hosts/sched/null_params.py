"""The null scheduler's parameters (a pydantic model, kept apart so the scheduler compiles)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class NullParams(BaseModel):
    """Parameters of the null scheduler (it has none beyond its name, as in Xen)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["null"] = Field("null", description="Scheduler name.")
