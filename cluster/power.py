"""Host power and the cluster's energy: the ``power:`` section of a config.

What it does: each host draws power according to its CPU utilisation ``u`` (busy time of all
its pCPUs over a control period, divided by the period times the pCPU count, Domain-0
included), by one of two models:

* ``linear``: ``idle_w + (max_w - idle_w) * u`` (CloudSim's ``PowerModelLinear``); the defaults
  are CloudSim's HP ProLiant ML110 G4 (Xeon 3040): 86 W idle, 117 W at full load;
* ``table``: SPECpower-style, 11 measured points at 0, 10, ..., 100 % utilisation, linearly
  interpolated in between (CloudSim's ``PowerModelSpecPower``); the default table is the
  ML110 G4's (86, 89.4, 92.6, 96, 99.5, 102, 106, 108, 112, 114, 117 W).

With ``switch_off_empty`` a host that held no guest domain during a whole control period (none
resident at its start or end, no migration to or from it under way) is off and draws 0 W,
as CloudSim's power-aware allocation switches idle hosts off. A failed host draws nothing.

Which function does each step: ``PowerCfg.model_for`` picks a host's model (``hosts`` may give
some hosts their own), ``PowerModelCfg.watts`` evaluates it, ``EnergyMeter.account`` integrates
one period for every host (the control loop, ``cluster/control.py``, calls it at every control
period with the utilisation it read from the hosts' usage probe) and keeps the rows of
``power.csv`` and ``hosts_active.csv``; ``EnergyMeter.energy`` and ``hosts_active`` are what ``summary.json`` holds.

Ordering and determinism: energy is a sum over control periods in time order, of floats
computed from integer ns, so the same run gives the same joules on every backend. With the
linear model the sum is exact whatever the period: energy = idle_w x time on + (max_w -
idle_w) x busy time / pCPUs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.results import csv_text

#: CloudSim's HP ProLiant ML110 G4 (Intel Xeon 3040, 2 cores x 1860 MHz): SPECpower points.
ML110_G4_W = (86.0, 89.4, 92.6, 96.0, 99.5, 102.0, 106.0, 108.0, 112.0, 114.0, 117.0)
#: Most power one host may draw, in W.
MAX_WATTS = 1e6
J_PER_KWH = 3.6e6

Watts = float
PowerW = Annotated[float, Field(ge=0, le=MAX_WATTS, allow_inf_nan=False)]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PowerModelCfg(_M):
    model: Literal["linear", "table"] = Field("linear", description="linear: idle_w to max_w in proportion to utilisation; table: 11 SPECpower points (0, 10, ..., 100 %), interpolated.")
    idle_w: float = Field(86.0, ge=0, le=MAX_WATTS, description="linear: power of a switched-on host doing nothing, in W (default: HP ProLiant ML110 G4, as in CloudSim).")
    max_w: float = Field(117.0, ge=0, le=MAX_WATTS, description="linear: power at 100 % utilisation, in W (default: HP ProLiant ML110 G4).")
    table_w: list[PowerW] = Field(
        default_factory=lambda: list(ML110_G4_W),
        min_length=11,
        max_length=11,
        description="table: power at 0, 10, ..., 100 % utilisation, in W (default: HP ProLiant ML110 G4's SPECpower figures).",
    )

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.model == "linear" and self.max_w < self.idle_w:
            raise ValueError(f"max_w ({self.max_w:g} W) is below idle_w ({self.idle_w:g} W)")
        return self

    def watts(self, u: float) -> Watts:
        """Power at utilisation ``u`` (clamped to 0..1)."""
        u = min(1.0, max(0.0, u))
        if self.model == "linear":
            return self.idle_w + (self.max_w - self.idle_w) * u
        x = u * 10.0
        i = min(int(x), 9)
        frac = x - i
        return self.table_w[i] + (self.table_w[i + 1] - self.table_w[i]) * frac


class PowerCfg(PowerModelCfg):
    switch_off_empty: bool = Field(False, description="A host with no guest domain (and no migration to or from it) for a whole control period is off: 0 W.")
    hosts: dict[str, PowerModelCfg] = Field(default_factory=dict, description="Hosts with a power model of their own (by host name); the others use the model above.")

    def model_for(self, host: str) -> PowerModelCfg:
        return self.hosts.get(host, self)


class EnergyMeter:
    """Energy per host, integrated over control periods; the rows of power.csv and
    hosts_active.csv. A host is **active** in a period when it holds a guest or takes part in a
    migration (what CloudSim counts as an active host), and **on** when it draws power: alive,
    and active unless empty hosts are switched off."""

    def __init__(self, cfg: PowerCfg | None, hosts: list[str]):
        self.cfg = cfg
        self.hosts = hosts
        self.energy_j: dict[str, float] = {h: 0.0 for h in hosts}
        self.on_ns: dict[str, int] = {h: 0 for h in hosts}
        self.active_ns = 0  # host-ns active, summed over hosts
        self.rows: list[dict[str, Any]] = []
        self.active_rows: list[dict[str, Any]] = []
        self.span_ns = 0

    def account(self, t0: int, t1: int, util: dict[str, float], on: dict[str, bool], active: dict[str, bool]) -> None:
        """The period (t0, t1]: host ``h`` ran at ``util[h]``, drew power if ``on[h]`` and held
        guests (or migrations) if ``active[h]``."""
        dt = t1 - t0
        if dt <= 0:
            return
        self.span_ns += dt
        total_w = 0.0
        n_on = n_active = 0
        for h in self.hosts:
            is_on, is_active = on.get(h, False), active.get(h, False)
            u = util.get(h, 0.0)
            w = 0.0
            n_active += is_active
            if is_on:
                n_on += 1
                self.on_ns[h] += dt
                if self.cfg is not None:
                    w = self.cfg.model_for(h).watts(u)
                    self.energy_j[h] += w * dt / 1e9
            total_w += w
            row: dict[str, Any] = {"t_ms": t1 / 1e6, "host": h, "utilisation": round(u, 6), "on": int(is_on), "active": int(is_active)}
            if self.cfg is not None:
                row["watts"] = round(w, 6)
            self.rows.append(row)
        self.active_ns += n_active * dt
        arow: dict[str, Any] = {"t_ms": t1 / 1e6, "hosts_active": n_active, "hosts_on": n_on}
        if self.cfg is not None:
            arow["watts"] = round(total_w, 6)
        self.active_rows.append(arow)

    def hosts_active(self) -> dict[str, Any]:
        """Active hosts over time: time-weighted mean, min, max and at the end; and the
        time-weighted mean of hosts switched on."""
        if not self.active_rows or self.span_ns <= 0:
            return {"mean": None, "min": None, "max": None, "final": None, "on_mean": None}
        counts = [r["hosts_active"] for r in self.active_rows]
        return {
            "mean": round(self.active_ns / self.span_ns, 6),
            "min": min(counts),
            "max": max(counts),
            "final": counts[-1],
            "on_mean": round(sum(self.on_ns.values()) / self.span_ns, 6),
        }

    def energy(self) -> dict[str, Any] | None:
        """summary.json's ``power``: energy per host and in all (None without a power model)."""
        if self.cfg is None:
            return None
        total = sum(self.energy_j.values())
        return {
            "model": self.cfg.model,
            "switch_off_empty": self.cfg.switch_off_empty,
            "energy_j": round(total, 6),
            "energy_kwh": round(total / J_PER_KWH, 9),
            "hosts": {
                h: {"energy_j": round(self.energy_j[h], 6), "energy_kwh": round(self.energy_j[h] / J_PER_KWH, 9), "on_s": self.on_ns[h] / 1e9}
                for h in self.hosts
            },
        }

    def files(self) -> dict[str, str]:
        out = {"hosts_active.csv": csv_text(self.active_rows, ["t_ms", "hosts_active", "hosts_on"] + (["watts"] if self.cfg is not None else []))}
        if self.cfg is not None:
            out["power.csv"] = csv_text(self.rows, ["t_ms", "host", "utilisation", "watts", "on", "active"])
        else:
            out["utilisation.csv"] = csv_text(self.rows, ["t_ms", "host", "utilisation", "on", "active"])
        return out


__all__ = ["EnergyMeter", "ML110_G4_W", "PowerCfg", "PowerModelCfg"]
