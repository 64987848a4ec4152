"""Guest workload models: what a vCPU's guest does when it runs.

A workload is a small state machine. Its parameters live in the domain table (a typed model per
kind, below); its state lives in the vCPU record (``v.wl``, plain data) together with its own
random stream (``v.rng``, derived from the run seed and the vCPU's name), so a vCPU can stop on
one pCPU and continue on another, or on another host, and draw the same numbers.

The engine asks ``next_action`` when the guest has nothing in flight; the answer is either
``(ACT_COMPUTE, ns)`` (run guest code for ``ns`` of CPU time, preemptible) or
``(ACT_HCALL, nr, args)`` (issue a hypercall; the engine guarantees it completes, through a
continuation if it is preempted, before asking again). The result of the last hypercall is in
``v.regs["rax"]``. ``on_compute`` is told how much CPU a burst actually consumed (also when it
was cut short by a preemption) and ``on_events`` runs when the guest's event upcall does.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from hosts import hypercalls as hc
from hosts.clock import MS, US

VIRQ_TIMER = -1
HUGE_NS = 1 << 50

A = hc.ACT_COMPUTE
H = hc.ACT_HCALL


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CpuParams(_P):
    kind: Literal["cpu"] = Field(description="CPU hog: computes forever, never blocks.")


class PeriodicParams(_P):
    kind: Literal["periodic"] = Field(description="Runs run_ms every period_ms, sleeping in between (a periodic task).")
    run_ms: float = Field(gt=0, description="CPU time per activation, in ms.")
    period_ms: float = Field(gt=0, description="Time between releases, in ms.")
    random_phase: bool = Field(True, description="Start at a random point of the first period (else at 0).")


class IoParams(_P):
    kind: Literal["io"] = Field(description="I/O-like: blocks until its timer fires, then computes a little.")
    think_ms: float = Field(10.0, gt=0, description="Mean time blocked between wake-ups, in ms (exponential).")
    burst_us: float = Field(200.0, gt=0, description="Mean CPU time per wake-up, in us (exponential).")


class YieldParams(_P):
    kind: Literal["yield"] = Field(description="Computes run_ms, then calls SCHEDOP_yield, forever.")
    run_ms: float = Field(gt=0, description="CPU time between yields, in ms.")


class IdleParams(_P):
    kind: Literal["idle"] = Field(description="Blocks and stays blocked unless events arrive (does nothing with them).")


class Workload:
    """Parameters of one vCPU's guest program; stateless (state is in the vCPU record)."""

    kind = "base"

    def __init__(self, params, dom, idx: int):
        self.p = params
        self.dom = dom
        self.idx = idx

    def start(self, v, core) -> None:
        v.wl = {"pc": 0, "rem": 0}

    def next_action(self, v, core) -> tuple:
        raise NotImplementedError

    def on_compute(self, v, ns: int, core) -> None:
        pass

    def on_events(self, v, core) -> None:
        v.pending_ports.clear()
        v.pending_payloads.clear()


def _exp_ns(v, mean_ns: float) -> int:
    return int(v.rng.exponential(mean_ns)) + 1


class CpuHog(Workload):
    kind = "cpu"

    def next_action(self, v, core) -> tuple:
        return (A, HUGE_NS)


class Periodic(Workload):
    kind = "periodic"

    def start(self, v, core) -> None:
        period = int(self.p.period_ms * MS)
        phase = int(v.rng.integers(0, period)) if self.p.random_phase else 0
        v.wl = {"pc": 1 if phase else 0, "rem": 0, "rel": core.now + phase, "miss": 0}

    def next_action(self, v, core) -> tuple:
        w = v.wl
        pc = w["pc"]
        if pc == 0:
            w["pc"] = 1
            return (A, int(self.p.run_ms * MS))
        if pc == 1:
            period = int(self.p.period_ms * MS)
            rel = w["rel"]
            if rel <= core.now:
                rel += period
                while rel <= core.now:
                    rel += period
                    w["miss"] += 1
            w["rel"] = rel
            w["pc"] = 2
            return (H, hc.HYPERVISOR_set_timer_op, (rel,))
        # pc == 2: block until the release time (re-block if woken early)
        if w["rel"] <= core.now:
            w["pc"] = 1
            return (A, int(self.p.run_ms * MS))
        return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))



class IoLike(Workload):
    kind = "io"

    def next_action(self, v, core) -> tuple:
        w = v.wl
        pc = w["pc"]
        if pc == 0:
            w["pc"] = 1
            w["due"] = core.now + _exp_ns(v, self.p.think_ms * MS)
            return (H, hc.HYPERVISOR_set_timer_op, (w["due"],))
        if pc == 1:
            if w["due"] <= core.now:
                w["pc"] = 0
                return (A, _exp_ns(v, self.p.burst_us * US))
            return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))
        w["pc"] = 0
        return (A, _exp_ns(v, self.p.burst_us * US))


class YieldLoop(Workload):
    kind = "yield"

    def next_action(self, v, core) -> tuple:
        w = v.wl
        if w["pc"] == 0:
            w["pc"] = 1
            return (A, int(self.p.run_ms * MS))
        w["pc"] = 0
        return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_yield,))


class Idle(Workload):
    kind = "idle"

    def next_action(self, v, core) -> tuple:
        return (H, hc.HYPERVISOR_sched_op, (hc.SCHEDOP_block,))


WORKLOADS: dict[str, tuple[type[_P], type[Workload]]] = {
    "cpu": (CpuParams, CpuHog),
    "periodic": (PeriodicParams, Periodic),
    "io": (IoParams, IoLike),
    "yield": (YieldParams, YieldLoop),
    "idle": (IdleParams, Idle),
}


def register_workload(kind: str, params: type[_P], cls: type[Workload]) -> None:
    WORKLOADS[kind] = (params, cls)


def workload_params_union():
    """The discriminated union of every registered workload's parameters (for the config)."""
    models = tuple(p for p, _ in WORKLOADS.values())
    return Annotated[Union[models], Field(discriminator="kind")]  # type: ignore[valid-type]


def make_workload(dom, idx: int, cache: dict) -> Workload:
    """The workload object of vCPU ``idx`` of ``dom`` (cached per domain-table entry)."""
    key = (id(dom), idx)
    wl = cache.get(key)
    if wl is None or wl.dom is not dom:
        spec = dom.workloads[idx] if idx < len(dom.workloads) else {"kind": "idle"}
        params_cls, cls = WORKLOADS[spec["kind"]]
        wl = cls(params_cls.model_validate(spec), dom, idx)
        cache[key] = wl
    return wl
