"""The parameters of the guest workloads (one pydantic model per kind) and their bounds.

Kept apart from the workload classes (``hosts.workload``, which re-exports every name here) so
those can be compiled: a pydantic model is built at import and cannot be a native class. The
config schema (``cluster/config/schema.py``) uses the bounds for every field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final, Literal, Optional, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hosts.clock import MS, US
from hosts.paging import PAGE_4K

# --- bounds of the parameters (cluster/config/schema.py uses them for every config field) --------

#: Simulated time is a whole number of ns: a period, quantum, interval or think time shorter than
#: 1 ns would be 0 (no progress: a loop at one instant). Every such field is at least this.
MIN_STEP_NS: Final = 1
#: The longest time a config may name (a period, a delay, an event's time): the longest run
#: (``run.duration_ms`` <= 1e9 ms, 11.6 simulated days). Sums of many stay far below NEVER (2^62 ns).
MAX_SPAN_NS: Final = 10**15
#: Most pages one batch of guest writes may touch (a memwrite quantum, a ptchurn iteration, a
#: tlbrandom burst): 4 GiB of 4 KiB pages, 8 MiB of page numbers in one array.
MAX_BATCH_PAGES: Final = 1 << 20
#: Fastest a guest may dirty memory, in MB/s: 100 GB/s, more than the DRAM bandwidth of a socket.
MAX_DIRTY_MB_S: Final = 100_000.0
#: Most page-table updates, page faults or address-space switches per ptchurn iteration.
MAX_PER_ITERATION: Final = 1 << 20
#: Most memory accesses per tlbrandom burst (at 85 ns each, a burst of about 90 s).
MAX_ACCESSES: Final = 1 << 30
#: Largest memory size a workload may name, in MiB: a host's largest (``hosts[].mem_mib``).
MAX_MIB: Final = 1 << 24
#: Largest guest page number or extent count a hypercall argument may name (2^40 pages = 4 PiB).
MAX_PFN: Final = 1 << 40
#: Deepest nesting and most values of an hcall ``struct`` (it travels in the vCPU record).
MAX_STRUCT_DEPTH: Final = 8
MAX_STRUCT_VALUES: Final = 4096
#: Most numbers in one event channel payload (the vCPU record keeps pending payloads).
MAX_PAYLOAD: Final = 64

#: A duration in ms / us of which the simulation makes a step: at least 1 ns, at most MAX_SPAN_NS.
StepMs = Annotated[float, Field(ge=MIN_STEP_NS / MS, le=MAX_SPAN_NS / MS, allow_inf_nan=False)]
StepUs = Annotated[float, Field(ge=MIN_STEP_NS / US, le=MAX_SPAN_NS / US, allow_inf_nan=False)]
#: A point in simulated time, or a delay that may be 0, in ms / us.
TimeMs = Annotated[float, Field(ge=0, le=MAX_SPAN_NS / MS, allow_inf_nan=False)]
TimeUs = Annotated[float, Field(ge=0, le=MAX_SPAN_NS / US, allow_inf_nan=False)]
#: A 64-bit register value (unsigned, as the vCPU record keeps registers).
Reg = Annotated[int, Field(ge=0, le=(1 << 64) - 1)]

_I32: Final = (-(1 << 31), (1 << 31) - 1)
_I64: Final = (-(1 << 63), (1 << 63) - 1)
#: Keys of an hcall ``struct`` that the hypercall handlers read (hosts/hypercalls.py), with what
#: each must be: ("int", lo, hi) or ("ints", lo, hi) for a list of them, or "pairs" for
#: mmu_update's [[pt_gpfn, value], ...]. Other keys are carried but never read.
_STRUCT_KEYS: dict[str, tuple[str, int, int]] = {
    "ports": ("ints", *_I32),  # SCHEDOP_poll
    "timeout": ("int", 0, MAX_SPAN_NS),  # SCHEDOP_poll: absolute time in ns, 0 = none
    "port": ("int", *_I32),  # EVTCHNOP_send
    "payload": ("ints", 0, MAX_SPAN_NS),  # EVTCHNOP_send: what the receiving guest reads (null or numbers)
    "remote_dom": ("int", *_I32),  # EVTCHNOP_bind_interdomain
    "remote_port": ("int", *_I32),
    "nr_extents": ("int", *_I64),  # memory_op
    "extent_start": ("int", *_I64),
    "extent_order": ("int", *_I64),
    "domid": ("int", *_I32),
    "offset": ("int", 0, MAX_PFN),  # mmu_update / mmuext_op continuation
    "done": ("int", 0, MAX_PFN),
    "reqs": ("pairs", *_I64),  # mmu_update
}


def _check_struct_key(key: str, x: Any, where: str) -> None:
    kind, lo, hi = _STRUCT_KEYS[key]
    if kind == "int":
        if type(x) is not int or not lo <= x <= hi:
            raise ValueError(f"{where}.{key} must be an integer from {lo} to {hi}")
        return
    if key == "payload" and x is None:
        return
    items = x if isinstance(x, (list, tuple)) else None
    if items is None:
        raise ValueError(f"{where}.{key} must be a list")
    if key == "payload" and len(items) > MAX_PAYLOAD:
        raise ValueError(f"{where}.payload has {len(items)} numbers; at most {MAX_PAYLOAD}")
    for el in items:
        vals = el if kind == "pairs" else [el]
        if kind == "pairs" and not (isinstance(el, (list, tuple)) and len(el) == 2):
            raise ValueError(f"{where}.{key} must be a list of [page, value] pairs")
        for y in vals:
            if type(y) is not int or not lo <= y <= hi:
                raise ValueError(f"{where}.{key} must hold integers from {lo} to {hi}")


def check_struct(value: Any, where: str = "struct", max_values: int = MAX_STRUCT_VALUES) -> None:
    """An hcall ``struct`` is plain msgpack data: strings, finite numbers that fit 64 bits,
    booleans, null, lists and string-keyed maps, at most MAX_STRUCT_DEPTH deep and
    ``max_values`` values, and the keys the hypercall handlers read have the types they need
    (ValueError naming the place otherwise). Iterative. The vCPU record codec checks a
    vCPU's ``hcall_args`` (the struct of its hypercall in flight) with it too."""
    if isinstance(value, dict):
        for key in sorted(_STRUCT_KEYS.keys() & value.keys()):
            _check_struct_key(key, value[key], where)
    count = 0
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        node, at, depth = stack.pop()
        count += 1
        if count > max_values:
            raise ValueError(f"{where} has more than {max_values} values")
        if isinstance(node, bool) or node is None or isinstance(node, str):
            continue
        if isinstance(node, int):
            if not -(1 << 63) <= node < 1 << 64:
                raise ValueError(f"{at}: {node} does not fit in 64 bits")
            continue
        if isinstance(node, float):
            if not math.isfinite(node):
                raise ValueError(f"{at}: {node} is not a finite number")
            continue
        if isinstance(node, (list, tuple, dict)):
            if depth >= MAX_STRUCT_DEPTH:
                raise ValueError(f"{at}: nested more than {MAX_STRUCT_DEPTH} deep")
            if isinstance(node, dict):
                for k, x in node.items():
                    if not isinstance(k, str):
                        raise ValueError(f"{at}: key {k!r} is not a string")
                    stack.append((x, f"{at}.{k}", depth + 1))
            else:
                stack.extend((x, f"{at}[{i}]", depth + 1) for i, x in enumerate(node))
            continue
        raise ValueError(f"{at}: a {type(node).__name__} cannot be passed to a hypercall (numbers, strings, lists and maps only)")


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CpuParams(_P):
    kind: Literal["cpu"] = Field(description="CPU hog: computes forever, never blocks.")


class PeriodicParams(_P):
    kind: Literal["periodic"] = Field(description="Runs run_ms every period_ms, sleeping in between (a periodic task).")
    run_ms: StepMs = Field(description="CPU time per activation, in ms.")
    period_ms: StepMs = Field(description="Time between releases, in ms.")
    random_phase: bool = Field(True, description="Start at a random point of the first period (else at 0).")


class IoParams(_P):
    kind: Literal["io"] = Field(description="I/O-like: blocks until its timer fires, then computes a little.")
    think_ms: StepMs = Field(10.0, description="Mean time blocked between wake-ups, in ms (exponential).")
    burst_us: StepUs = Field(200.0, description="Mean CPU time per wake-up, in us (exponential).")


class YieldParams(_P):
    kind: Literal["yield"] = Field(description="Computes run_ms, then calls SCHEDOP_yield, forever.")
    run_ms: StepMs = Field(description="CPU time between yields, in ms.")


class IdleParams(_P):
    kind: Literal["idle"] = Field(description="Blocks and stays blocked unless events arrive (does nothing with them).")


class MemWriteParams(_P):
    kind: Literal["memwrite"] = Field(description="Dirties guest pages at a steady rate while it runs (the classic live-migration load).")
    dirty_mb_s: float = Field(gt=0, le=MAX_DIRTY_MB_S, description="Page writes per second of CPU time, as MB/s of 4 KiB pages (decimal MB); at most 100000.")
    working_set_mib: Optional[float] = Field(None, gt=0, le=MAX_MIB, description="Pages written are drawn from the first working_set_mib of guest memory (default: all of it).")
    hot_set_pct: float = Field(10.0, gt=0, le=100, description="Size of the hot set, in % of the working set.")
    hot_fraction: float = Field(0.0, ge=0, le=1, description="Share of writes that go to the hot set (the rest: uniform over the working set).")
    quantum_us: StepUs = Field(1000.0, description="CPU time between batches of writes, in us.")

    @model_validator(mode="after")
    def _batch(self) -> Self:
        pages = self.dirty_mb_s * 1e6 / PAGE_4K * self.quantum_us / 1e6
        if pages > MAX_BATCH_PAGES:
            raise ValueError(
                f"dirty_mb_s x quantum_us writes {pages:.3g} pages per batch; at most {MAX_BATCH_PAGES} (lower the rate or the quantum)"
            )
        return self


class PtChurnParams(_P):
    kind: Literal["ptchurn"] = Field(description="fork/exec-like: page-table updates, page faults and address-space switches around some compute.")
    compute_us: TimeUs = Field(300.0, description="Plain computation per iteration, in us.")
    pt_updates: int = Field(64, ge=0, le=MAX_PER_ITERATION, description="PTE updates per iteration (PV: mmu_update hypercalls).")
    page_faults: int = Field(16, ge=0, le=MAX_PER_ITERATION, description="Guest page faults per iteration.")
    cr3_switches: int = Field(2, ge=0, le=MAX_PER_ITERATION, description="Address-space switches per iteration (PV: mmuext_op NEW_BASEPTR).")
    pages_touched: int = Field(16, ge=0, le=MAX_BATCH_PAGES, description="Fresh pages written per iteration.")
    mmu_batch: int = Field(32, ge=1, le=4096, description="PTE updates per mmu_update hypercall (PV).")


class TlbRandomParams(_P):
    kind: Literal["tlbrandom"] = Field(description="Random accesses over a large working set: TLB-miss bound.")
    working_set_mib: float = Field(1024.0, gt=0, le=MAX_MIB * 1024, description="Working set in MiB (may exceed guest memory: only its size matters).")
    page_size: Literal["4k", "2m"] = Field("4k", description="Guest page size.")
    host_page_size: Literal["4k", "2m"] = Field("4k", description="Host (p2m) page size under HAP.")
    accesses_per_quantum: int = Field(10_000, ge=1, le=MAX_ACCESSES, description="Accesses per burst of computation.")
    write_fraction: float = Field(0.0, ge=0, le=1, description="Share of accesses that write (and dirty) a page.")

    @model_validator(mode="after")
    def _batch(self) -> Self:
        pages = int(self.accesses_per_quantum * self.write_fraction)
        if pages > MAX_BATCH_PAGES:
            raise ValueError(f"accesses_per_quantum x write_fraction writes {pages} pages per burst; at most {MAX_BATCH_PAGES}")
        return self


class IoClientParams(_P):
    kind: Literal["io_client"] = Field(description="Split-driver I/O: compute, post a request to Domain-0's backend, block until it completes.")
    think_us: StepUs = Field(500.0, description="Mean computation between requests, in us (exponential).")
    service_us: StepUs = Field(50.0, description="Backend CPU time per request in Domain-0, in us.")


class IoBackendParams(_P):
    kind: Literal["io_backend"] = Field(description="Domain-0's backend: serves requests posted by I/O clients (the default for Domain-0).")


class BalloonParams(_P):
    kind: Literal["balloon"] = Field(description="A balloon driver: one memory_op over a range of guest pages, then idle or CPU-bound.")
    op: Literal["decrease", "increase", "populate"] = Field(description="decrease_reservation, increase_reservation or populate_physmap.")
    first_pfn: int = Field(0, ge=0, le=MAX_PFN, description="First guest page of the range.")
    pages: int = Field(ge=1, le=MAX_PFN, description="Number of 4 KiB extents.")
    at_ms: TimeMs = Field(0.0, description="When to issue the hypercall, in ms of simulated time.")
    then: Literal["idle", "cpu"] = Field("idle", description="What the vCPU does afterwards.")


class HcallParams(_P):
    kind: Literal["hcall"] = Field(description="Issues one hypercall (number and arguments as given) at at_ms, records its result, then idles or computes.")
    nr: int = Field(ge=0, le=63, description="Hypercall number (Xen's __HYPERVISOR_*), e.g. 1 mmu_update, 12 memory_op, 29 sched_op, 32 event_channel_op.")
    args: list[Reg] = Field(default_factory=list, max_length=5, description="Register arguments (rdi, rsi, rdx, r10, r8), 64-bit values.")
    struct: dict[str, Any] = Field(
        default_factory=dict,
        description=f"The guest structure a pointer argument designates (e.g. {{port: 9}} for EVTCHNOP_send): plain data, at most {MAX_STRUCT_DEPTH} deep and {MAX_STRUCT_VALUES} values.",
    )
    at_ms: TimeMs = Field(0.0, description="When to issue it, in ms of simulated time.")
    then: Literal["idle", "cpu"] = Field("idle", description="What the vCPU does afterwards.")

    @field_validator("struct")
    @classmethod
    def _plain(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_struct(v)
        return v


class PingPongParams(_P):
    kind: Literal["pingpong"] = Field(description="vCPU 0 writes a page and notifies vCPU 1, which reads it and answers through another page (needs 2 vCPUs).")
    think_us: StepUs = Field(50.0, description="Computation between rounds, in us.")
