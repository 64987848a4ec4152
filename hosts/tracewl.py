"""Trace-driven guests: a vCPU whose CPU demand follows a utilisation trace.

What it does: the trace (PlanetLab, Bitbrains or Azure CPU %; read from its file by the
toolstack when the config is loaded, ``cluster/traces.py``) gives the demand over time; the
guest turns it into work in fixed **slots**. Slot k is released at ``phase + k * slot_ms`` and
asks for ``demand% x slot_ms`` of CPU time, the demand being the trace's value at the release
instant. The guest computes that work, then sets a timer for the next release and blocks.
So an unloaded vCPU uses exactly the trace's share of a pCPU, and a vCPU that does not get
its share finishes late.

When to use it: consolidation, placement and power experiments driven by public traces, where
the question is how much of each guest's demand Xen's schedulers met.

Which function does each step:

* ``demand_pct`` maps a simulated instant to trace time (``start_min + t_s * time_scale``
  trace minutes; ``time_scale`` is trace minutes per simulated second, default 60: a day of
  5-minute samples in 24 simulated seconds) and **interpolates linearly** between the two
  samples around it (``interpolation: step`` holds each sample until the next); past the last
  sample the trace **repeats** from the first (the last sample interpolates towards the first);
* ``next_action`` releases slots, resolves the slot whose work just finished, and skips slots
  whose release came while the vCPU was still busy with an earlier one;
* ``on_compute`` dirties guest pages at ``dirty_mb_s`` per second of CPU work, drawn uniformly
  over the working set: the trace's memory usage at that instant where the format has it
  (Bitbrains), else the whole guest memory.

SLA accounting (counters ``sla.<uid>.*``, summed per domain in ``summary.json``): a slot is
**late** when its work finishes more than ``late_tolerance_ms`` after its end (the next
release); a slot released while the vCPU was still working on an earlier one is **skipped**:
its work is never done (unmet demand, as CloudSim counts requested but unallocated MIPS) and
the slot counts as late, except the newest such release, which starts at once (late). SLA
violation time is the late slots times the slot length.

Ordering and determinism: releases are timer wake-ups at exact ns; the demand is computed
from the release instant alone, so it does not depend on when the vCPU gets to run. The only
random draw is the phase (``random_phase``) and the pages written, both from the vCPU's own
stream. Slots still in progress when the run ends are not counted.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Literal, Optional, Self

import numpy as np
from pydantic import Field, model_validator

from hosts import hypercalls as hc
from hosts.clock import MS, S
from hosts.domain import DomainInfo
from hosts.paging import PAGE_4K
from hosts.vcpu import VcpuState
from hosts.workload import (
    A,
    H,
    MAX_DIRTY_MB_S,
    MAX_MIB,
    WORKLOADS,
    Action,
    GuestHost,
    StepMs,
    TimeMs,
    Workload,
    _P,
    _tags,
)

#: Most samples one trace may hold (347 days of 5-minute samples).
MAX_TRACE_SAMPLES = 100_000
#: Length of the compact form of MAX_TRACE_SAMPLES samples (base64 of 4-byte floats).
MAX_SERIES_CHARS = 4 * ((4 * MAX_TRACE_SAMPLES + 2) // 3)
#: a series as the loader writes it: base64 of 4-byte little-endian floats
EncodedSeries = Annotated[str, Field(min_length=8, max_length=MAX_SERIES_CHARS, pattern=r"^[A-Za-z0-9+/]*={0,2}$")]
#: Largest trace step and start, in trace minutes (about 1900 years).
MAX_TRACE_MIN = 1e9
#: Most trace minutes per simulated second (and at least 1e-6).
MAX_TIME_SCALE = 1e9
#: Shortest slot: work is released in slots of at least 10 us (a guest's timer tick is 1-10 ms).
MIN_SLOT_MS = 0.01
TRACE_FORMATS = ("planetlab", "bitbrains", "azure")
#: The CPU column each format may take (the first is the default).
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "planetlab": ("cpu",),
    "bitbrains": ("usage_pct", "usage_mhz"),
    "azure": ("avg", "max", "min"),
}


def encode_series(values: np.ndarray) -> str:
    """The compact form of a series: base64 of little-endian 4-byte floats."""
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def decode_series(text: str) -> np.ndarray:
    """A series from its compact form (ValueError if it is not one)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not a compact series (base64 of 4-byte little-endian floats)") from None
    if len(raw) % 4:
        raise ValueError(f"a compact series holds 4-byte floats; {len(raw)} bytes is not a multiple of 4")
    return np.frombuffer(raw, dtype="<f4").astype(np.float64)


class TraceParams(_P):
    kind: Literal["trace"] = Field(description="Trace-driven: the vCPU's CPU demand follows a utilisation trace (PlanetLab, Bitbrains, Azure), in slots of work.")
    format: Literal["planetlab", "bitbrains", "azure"] = Field(
        "planetlab",
        description="planetlab: one CPU % integer per line, 5-minute steps (CloudSim's planetlab files); bitbrains: GWA-T-12 fastStorage/Rnd semicolon CSV with its header (CPU usage %, memory usage KB); azure: Azure Public Dataset vm_cpu_readings CSV without header (timestamp, vm id, min, max, avg CPU %).",
    )
    path: Optional[str] = Field(
        None, max_length=4096, description="The trace file, relative to the YAML file (a .gz suffix: gzip); read once when the config is loaded, into 'samples'."
    )
    vm: Optional[str] = Field(None, min_length=1, max_length=256, description="azure: the vm id whose readings to take (rows of other VMs are skipped).")
    column: Optional[str] = Field(
        None,
        max_length=16,
        description="Which CPU figure: planetlab 'cpu'; bitbrains 'usage_pct' (CPU usage [%], default) or 'usage_mhz' (usage MHz / provisioned MHz); azure 'avg' (default), 'max' or 'min'.",
    )
    cpu_pct: Optional[list[float]] = Field(
        None, min_length=1, max_length=10_000, description="The samples given inline, CPU % of the vCPU (0..100), instead of a file."
    )
    samples: Optional[EncodedSeries] = Field(
        None,
        description="The samples read from 'path' (written by the loader): CPU % (0..100) as base64 of 4-byte little-endian floats.",
    )
    mem_samples: Optional[EncodedSeries] = Field(
        None,
        description="Memory usage per sample in MiB, where the format has it (bitbrains; written by the loader, same encoding as 'samples').",
    )
    source: Optional[str] = Field(None, max_length=4096, description="The file 'samples' were read from (written by the loader; never read again).")
    step_min: float = Field(
        5.0, gt=0, le=MAX_TRACE_MIN, allow_inf_nan=False, description="Trace minutes between samples (planetlab: 5; bitbrains and azure: from the timestamps, set by the loader)."
    )
    time_scale: float = Field(
        60.0,
        ge=1e-6,
        le=MAX_TIME_SCALE,
        allow_inf_nan=False,
        description="Trace minutes per simulated second (default 60: one trace hour per simulated second, a day of PlanetLab samples in 24 s).",
    )
    start_min: float = Field(0.0, ge=0, le=MAX_TRACE_MIN, allow_inf_nan=False, description="Trace time at simulated time 0, in trace minutes.")
    interpolation: Literal["linear", "step"] = Field("linear", description="linear: between the two samples around an instant; step: each sample holds until the next.")
    slot_ms: StepMs = Field(10.0, ge=MIN_SLOT_MS, description="Length of a slot of work, in ms: every slot_ms the guest asks for demand% x slot_ms of CPU time.")
    random_phase: bool = Field(True, description="Release the first slot at a random point of the first slot_ms (else at 0).")
    late_tolerance_ms: TimeMs = Field(0.5, description="A slot is late (SLA violation) when its work finishes more than this after the slot's end, in ms.")
    dirty_mb_s: float = Field(
        0.0, ge=0, le=MAX_DIRTY_MB_S, allow_inf_nan=False, description="Pages written per second of CPU work, as MB/s of 4 KiB pages (0: none); over the trace's memory usage where the format has it, else all guest memory."
    )

    @model_validator(mode="after")
    def _series(self) -> Self:
        given = [k for k in ("path", "cpu_pct", "samples") if getattr(self, k) is not None]
        if not given:
            raise ValueError("a trace needs 'path' (a trace file) or 'cpu_pct' (the samples inline)")
        if self.cpu_pct is not None and len(given) > 1:
            raise ValueError("give either 'path' or 'cpu_pct', not both")
        allowed = FORMAT_COLUMNS[self.format]
        if self.column is not None and self.column not in allowed:
            raise ValueError(f"column {self.column!r} is not one of {self.format}'s: {', '.join(allowed)}")
        if self.vm is not None and self.format != "azure":
            raise ValueError("'vm' picks an Azure VM's rows; this trace's format is " + self.format)
        if self.format == "azure" and self.path is not None and self.vm is None:
            raise ValueError("an azure trace file holds many VMs: give 'vm', the vm id to take")
        for name in ("cpu_pct",):
            vals = getattr(self, name)
            if vals is not None and any(not 0 <= x <= 100 for x in vals):
                raise ValueError("cpu_pct samples are CPU % from 0 to 100")
        if self.samples is not None:
            cpu = decode_series(self.samples)
            if not 1 <= cpu.size <= MAX_TRACE_SAMPLES:
                raise ValueError(f"samples hold {cpu.size} values; from 1 to {MAX_TRACE_SAMPLES}")
            if not np.all((cpu >= 0) & (cpu <= 100)):
                raise ValueError("samples are CPU % from 0 to 100")
            if self.mem_samples is not None:
                mem = decode_series(self.mem_samples)
                if mem.size != cpu.size:
                    raise ValueError(f"mem_samples hold {mem.size} values, samples {cpu.size}: one each per sample")
                if not np.all((mem >= 0) & (mem <= MAX_MIB)):
                    raise ValueError(f"mem_samples are MiB from 0 to {MAX_MIB}")
        elif self.mem_samples is not None:
            raise ValueError("mem_samples come with samples (the loader writes both)")
        if self.dirty_mb_s * 1e6 / PAGE_4K * self.slot_ms / 1e3 > 1 << 20:
            raise ValueError("dirty_mb_s x slot_ms writes more than 2^20 pages per slot; lower the rate or the slot")
        return self

    def cpu_series(self) -> np.ndarray:
        """The CPU % samples (inline or decoded)."""
        if self.cpu_pct is not None:
            return np.asarray(self.cpu_pct, dtype=np.float64)
        if self.samples is None:
            raise ValueError("the trace file was not read (no samples)")
        return decode_series(self.samples)

    def mem_series(self) -> np.ndarray | None:
        return decode_series(self.mem_samples) if self.mem_samples is not None else None


def interpolate(series: np.ndarray, x: float, linear: bool) -> float:
    """The series at sample position ``x`` (>= 0), repeating after its end."""
    n = int(series.size)
    i0 = math.floor(x)
    frac = x - i0
    i = i0 % n
    if not linear or frac == 0.0:
        return float(series[i])
    return float(series[i] * (1.0 - frac) + series[(i + 1) % n] * frac)


class TraceDriven(Workload[TraceParams]):
    """See the module's description. State (``v.wl``): ``pc`` 0 computing a slot's work (or
    its log-dirty overhead), 1 waiting for the next release; ``k`` the slot in progress,
    ``rel`` its release time; ``phase``; ``ovh`` log-dirty time still owed; ``acc`` page
    writes owed in milli-pages; ``seq`` tag sequence."""

    kind = "trace"

    def __init__(self, params: TraceParams, dom: DomainInfo, idx: int):
        super().__init__(params, dom, idx)
        self.cpu = params.cpu_series()
        self.mem = params.mem_series()
        self.slot = max(1, int(round(params.slot_ms * MS)))
        self.tol = int(round(params.late_tolerance_ms * MS))
        self.linear = params.interpolation == "linear"
        self.rate_mpps = int(round(params.dirty_mb_s * 1e6 / PAGE_4K * 1000))  # milli-pages per CPU second
        self.uid = dom.uid

    # --- the trace -------------------------------------------------------------------------
    def position(self, t_ns: int) -> float:
        """Sample position of simulated instant ``t_ns``."""
        p = self.p
        return (p.start_min + t_ns / S * p.time_scale) / p.step_min

    def demand_pct(self, t_ns: int) -> float:
        """CPU demand in % of the vCPU at simulated instant ``t_ns``."""
        return min(100.0, max(0.0, interpolate(self.cpu, self.position(t_ns), self.linear)))

    def work_ns(self, t_ns: int) -> int:
        """CPU work of the slot released at ``t_ns``."""
        return int(round(self.demand_pct(t_ns) / 100.0 * self.slot))

    def work_sum(self, t0_ns: int, count: int) -> int:
        """Total work of ``count`` slots released every slot from ``t0_ns`` (vectorised,
        equal to the sum of ``work_ns`` over them)."""
        total = 0
        p = self.p
        chunk = 1 << 16
        for first in range(0, count, chunk):
            t = t0_ns + (np.arange(first, min(count, first + chunk), dtype=np.int64) * self.slot)
            x = (p.start_min + t / S * p.time_scale) / p.step_min
            i0 = np.floor(x)
            frac = x - i0
            n = self.cpu.size
            i = i0.astype(np.int64) % n
            vals = self.cpu[i]
            if self.linear:
                vals = np.where(frac == 0.0, vals, vals * (1.0 - frac) + self.cpu[(i + 1) % n] * frac)
            vals = np.clip(vals, 0.0, 100.0)
            total += int(np.round(vals / 100.0 * self.slot).sum())
        return total

    def working_set(self, t_ns: int) -> int:
        pages = self.dom.mem_pages
        if self.mem is not None:
            mib = interpolate(self.mem, self.position(t_ns), self.linear)
            pages = min(pages, int(mib * (1 << 20) // PAGE_4K))
        return max(1, pages)

    # --- the guest program ------------------------------------------------------------------
    def start(self, v: VcpuState, core: GuestHost) -> None:
        phase = int(v.rng.integers(0, self.slot)) if self.p.random_phase else 0
        v.wl = {"pc": 1, "rem": 0, "k": 0, "phase": phase, "rel": core.now + phase, "ovh": 0, "acc": 0, "seq": 0}

    def next_action(self, v: VcpuState, core: GuestHost) -> Action:
        w = v.wl
        now = core.now
        if w["pc"] == 0:
            if w["ovh"] > 0:  # log-dirty faults taken while writing: Xen's time, owed first
                ns, w["ovh"] = w["ovh"], 0
                return (A, ns, ())
            self._resolve(v, core, now)
        if w["rel"] <= now:  # released: compute its work
            w["pc"] = 0
            ns = self.work_ns(w["rel"])
            if ns > 0:
                return (A, ns, ())
            return self.next_action(v, core)
        if v.singleshot_ns != w["rel"]:
            return (H, hc.HYPERVISOR_set_timer_op, (w["rel"],))
        return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))

    def _resolve(self, v: VcpuState, core: GuestHost, now: int) -> None:
        """The current slot's work is done at ``now``: count it; if later releases came
        meanwhile, all but the newest are skipped and the newest starts at once, else the
        next release is waited for."""
        w = v.wl
        rel = w["rel"]
        end = rel + self.slot
        late = 1 if now > end + self.tol else 0
        demand = self.work_ns(rel)
        unmet = 0
        missed = 0
        if now >= end:  # releases end, end + slot, ... up to now came while busy
            missed = (now - end) // self.slot  # all but the newest: never started
            if missed:
                unmet = self.work_sum(end, missed)
                demand += unmet
        w["k"] += 1 + missed
        w["rel"] = end + missed * self.slot
        w["pc"] = 1
        uid = self.uid
        core.count(f"sla.{uid}.slots", 1 + missed)
        if late + missed:
            core.count(f"sla.{uid}.late", late + missed)
        core.count(f"sla.{uid}.demand_ns", demand)
        if unmet:
            core.count(f"sla.{uid}.unmet_ns", unmet)

    def on_compute(self, v: VcpuState, ns: int, core: GuestHost) -> None:
        if not self.rate_mpps or v.wl.get("pc") != 0:
            return
        w = v.wl
        w["acc"] += ns * self.rate_mpps
        n, w["acc"] = divmod(w["acc"], 10**12)
        if n <= 0:
            return
        pf = v.rng.integers(0, self.working_set(core.now), n)
        w["ovh"] += core.guest_write(v, self.dom, pf, _tags(v, n))


WORKLOADS["trace"] = (TraceParams, TraceDriven)
