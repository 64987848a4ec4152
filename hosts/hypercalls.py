"""The hypercall table, with Xen's numbers, costs, and stackless continuations.

A guest issues a hypercall by putting its number in ``rax`` and its arguments in rdi, rsi,
rdx, r10, r8 (the 64-bit ABI). Arguments that are pointers to guest structures (a
``xen_memory_reservation``, a ``sched_poll``, an ``mmu_update`` batch) are modelled by
``VcpuState.hcall_args``: the structure the pointer designates. Short hypercalls take a fixed
cost and apply their effect when they return. Long ones return a :class:`hosts.pcpu.LongOp`
that the engine runs one extent at a time, checking for preemption before every extent but
the first; on preemption the progress is written back where Xen writes it:

* ``memory_op`` (increase/decrease_reservation, populate_physmap): the start extent in the
  high bits of ``cmd`` (``cmd >> MEMOP_EXTENT_SHIFT``), so the call restarts there;
* ``mmu_update`` / ``mmuext_op``: the remaining count with ``MMU_UPDATE_PREEMPTED`` set, the
  request handle advanced past the processed requests, done accumulated through ``pdone``.

Errors are returned as Xen does, as negative errno values in ``rax`` (HVM guests calling a
PV-only hypercall get ``-ENOSYS``, a bad port ``-EINVAL``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Final, Protocol, Union

from hosts.clock import MS, NEVER
from hosts.domain import DomainInfo, EvtchnBinding
from hosts.paging import PagingModel
from hosts.vcpu import VcpuState, make_vid

ACT_COMPUTE: Final = 0
ACT_HCALL: Final = 1

# Hypercall numbers (xen/include/public/xen.h).
HYPERVISOR_mmu_update: Final = 1
HYPERVISOR_memory_op: Final = 12
HYPERVISOR_set_timer_op: Final = 15
HYPERVISOR_xen_version: Final = 17
HYPERVISOR_vcpu_op: Final = 24
HYPERVISOR_mmuext_op: Final = 26
HYPERVISOR_sched_op: Final = 29
HYPERVISOR_event_channel_op: Final = 32

NAMES: Final = {
    HYPERVISOR_mmu_update: "mmu_update",
    HYPERVISOR_memory_op: "memory_op",
    HYPERVISOR_set_timer_op: "set_timer_op",
    HYPERVISOR_xen_version: "xen_version",
    HYPERVISOR_vcpu_op: "vcpu_op",
    HYPERVISOR_mmuext_op: "mmuext_op",
    HYPERVISOR_sched_op: "sched_op",
    HYPERVISOR_event_channel_op: "event_channel_op",
}

SCHEDOP_yield: Final = 0
SCHEDOP_block: Final = 1
SCHEDOP_shutdown: Final = 2
SCHEDOP_poll: Final = 3
SCHEDOP_POLL_MAX_PORTS: Final = 128

SHUTDOWN_poweroff: Final = 0
SHUTDOWN_suspend: Final = 2

EVTCHNOP_bind_interdomain: Final = 0
EVTCHNOP_send: Final = 4
EVTCHNOP_alloc_unbound: Final = 6

XENMEM_increase_reservation: Final = 0
XENMEM_decrease_reservation: Final = 1
XENMEM_populate_physmap: Final = 6
MEMOP_EXTENT_SHIFT: Final = 6
MEMOP_CMD_MASK: Final = (1 << MEMOP_EXTENT_SHIFT) - 1

MMU_UPDATE_PREEMPTED: Final = 1 << 31  # ~(~0U >> 1) on a 32-bit count
MMUEXT_NEW_BASEPTR: Final = 5
MMUEXT_TLB_FLUSH_LOCAL: Final = 6

ENOSYS: Final = 38
EINVAL: Final = 22
ENOMEM: Final = 12
EFAULT: Final = 14

#: Port numbers below zero are virtual IRQs delivered to one vCPU.
VIRQ_TIMER: Final = -1
PORTS_PER_VCPU: Final = 64


@dataclass
class HypercallCosts:
    """Time spent in the hypervisor, in ns (defaults are orders of magnitude from the
    literature on modern x86; every one is a config field)."""

    entry_ns: int = 150  # SYSCALL/VMCALL into Xen and back, argument checks
    evtchn_send_ns: int = 300
    sched_op_ns: int = 200
    set_timer_ns: int = 200
    memop_extent_ns: int = 250  # free or allocate one 4 KiB extent, p2m update included
    mmu_update_ns: int = 180  # validate and install one PTE (PV)
    mmuext_ns: int = 400


class LongOp:
    """A hypercall in progress that runs in chunks of one extent each (run by the engine)."""

    __slots__ = ("nr", "total", "done", "cost", "seg_start", "apply", "encode", "finish", "cond_ns")

    def __init__(
        self,
        nr: int,
        total: int,
        done: int,
        cost: int,
        apply: Callable[[int, int], int | None],
        encode: Callable[[int], None],
        finish: Callable[[int], int],
    ):
        self.nr = nr
        self.total = total
        self.done = done
        self.cost = cost
        self.seg_start = 0
        self.apply = apply  # apply(lo, hi): do extents [lo, hi); returns fewer if it ran dry
        self.encode = encode  # encode(done): write the continuation into the vCPU's registers
        self.finish = finish  # finish(done) -> return value
        self.cond_ns = -1  # when a preemption condition first arose in this entry


#: what a short hypercall does when it returns: its effect, giving the return value
Effect = Callable[[], int]
#: a handler's answer: (cost in ns, effect) for a short call, or a LongOp
Outcome = Union[tuple[int, Effect], LongOp]


class HypercallHost(Protocol):
    """What hypercall handlers may use of the pCPU engine (``hosts.pcpu.PcpuCore``)."""

    now: int
    costs: HypercallCosts
    domains: dict[int, DomainInfo]
    has_memory: bool

    def block(self, v: VcpuState) -> bool: ...
    def yield_(self, v: VcpuState) -> None: ...
    def park(self, v: VcpuState) -> None: ...
    def arm_vcpu_timer(self, v: VcpuState, when_ns: int) -> None: ...
    def arm_poll_timeout(self, v: VcpuState, when_ns: int) -> None: ...
    def deliver_event(self, vid: int, port: int, payload: Any) -> None: ...
    def shutdown(self, v: VcpuState, reason: int) -> None: ...
    def port_bound(self, dom: DomainInfo, b: EvtchnBinding) -> None: ...
    def count(self, key: str, n: int) -> None: ...
    def paging(self, dom: DomainInfo) -> PagingModel: ...
    def decrease_reservation(self, dom: DomainInfo, lo: int, hi: int) -> None: ...
    def populate(self, dom: DomainInfo, lo: int, hi: int) -> int: ...
    def pt_update(self, dom: DomainInfo, reqs: list[list[int]]) -> None: ...


def signed(x: int) -> int:
    """A 64-bit register value as a signed integer (errors are negative)."""
    return x - (1 << 64) if x >= 1 << 63 else x




def _arg(a: Any) -> int:
    """An argument as its register value (an int; anything else, a structure, is 0)."""
    return a if type(a) is int else (int(a) if isinstance(a, int) else 0)


def load_args(v: VcpuState, nr: int, args: tuple[Any, ...]) -> None:
    regs = v.regs
    regs["rax"] = nr
    n = len(args)
    regs["rdi"] = _arg(args[0]) if n > 0 else 0
    regs["rsi"] = _arg(args[1]) if n > 1 else 0
    regs["rdx"] = _arg(args[2]) if n > 2 else 0
    regs["r10"] = _arg(args[3]) if n > 3 else 0
    regs["r8"] = _arg(args[4]) if n > 4 else 0
    # a trailing dict is the guest structure the pointer argument designates
    v.hcall_args = dict(args[-1]) if args and isinstance(args[-1], dict) else {}


def dispatch(core: HypercallHost, v: VcpuState, nr: int) -> Outcome:
    """Run hypercall ``nr`` from the vCPU's registers: (cost_ns, effect) or a LongOp."""
    handler = _TABLE.get(nr)
    dom = core.domains[v.dom]
    if handler is None:
        return core.costs.entry_ns, (lambda: -ENOSYS)
    if nr in (HYPERVISOR_mmu_update, HYPERVISOR_mmuext_op) and dom.paging != "pv":
        return core.costs.entry_ns, (lambda: -ENOSYS)
    return handler(core, v, dom)


# --- sched_op ------------------------------------------------------------------------------


def _sched_op(core: HypercallHost, v: VcpuState, dom: DomainInfo) -> Outcome:
    cmd = v.regs["rdi"]
    cost = core.costs.entry_ns + core.costs.sched_op_ns
    if cmd == SCHEDOP_yield:

        def eff() -> int:
            core.yield_(v)
            return 0

        return cost, eff
    if cmd == SCHEDOP_block:

        def eff() -> int:
            core.block(v)
            return 0

        return cost, eff
    if cmd == SCHEDOP_poll:
        ports = list(v.hcall_args.get("ports", ()))
        timeout = int(v.hcall_args.get("timeout", 0))

        def eff() -> int:
            if len(ports) > SCHEDOP_POLL_MAX_PORTS:
                return -EINVAL
            for p in ports:
                if p >= 0 and p not in dom.evtchn:
                    return -EINVAL
            if any(p in v.pending_ports for p in ports):
                return 0
            v.poll_ports = tuple(ports)
            if core.block(v):
                if timeout:
                    core.arm_poll_timeout(v, timeout)
            else:
                v.poll_ports = ()
            return 0

        return cost, eff
    if cmd == SCHEDOP_shutdown:
        reason = v.regs["rsi"]

        def eff() -> int:
            core.shutdown(v, reason)
            return 0

        return cost, eff
    return cost, (lambda: -EINVAL)


def _set_timer_op(core: HypercallHost, v: VcpuState, dom: DomainInfo) -> Outcome:
    timeout = v.regs["rdi"]

    def eff() -> int:
        t = timeout
        if t == 0:
            v.singleshot_ns = NEVER
            return 0
        if t >= 1 << 63 or t > core.now + (1 << 50):
            t = core.now + 100 * MS  # do_set_timer_op: bogus timeouts become now + 100 ms
        core.arm_vcpu_timer(v, t)
        return 0

    return core.costs.entry_ns + core.costs.set_timer_ns, eff


# --- event channels ------------------------------------------------------------------------


def _event_channel_op(core: HypercallHost, v: VcpuState, dom: DomainInfo) -> Outcome:
    cmd = v.regs["rdi"]
    cost = core.costs.entry_ns + core.costs.evtchn_send_ns
    if cmd == EVTCHNOP_send:
        port = int(v.hcall_args.get("port", v.regs["rsi"]))
        payload = v.hcall_args.get("payload")

        def eff() -> int:
            b = dom.evtchn.get(port)
            if b is None or b.remote_uid < 0:
                core.count("evtchn_bad_port", 1)
                return -EINVAL
            rdom = core.domains.get(b.remote_uid)
            if rdom is None or b.remote_port not in rdom.evtchn:
                return -EINVAL
            target = make_vid(b.remote_uid, rdom.evtchn[b.remote_port].notify_vcpu)
            core.deliver_event(target, b.remote_port, payload)
            return 0

        return cost, eff
    if cmd in (EVTCHNOP_alloc_unbound, EVTCHNOP_bind_interdomain):
        remote_uid = int(v.hcall_args.get("remote_dom", -1))
        remote_port = int(v.hcall_args.get("remote_port", -1))

        def eff() -> int:
            k = int(v.wl.get("_ports", 0))
            port = 1 + v.idx * PORTS_PER_VCPU + k
            if k >= PORTS_PER_VCPU or port in dom.evtchn:
                return -ENOMEM
            v.wl["_ports"] = k + 1
            if cmd == EVTCHNOP_bind_interdomain:
                rdom = core.domains.get(remote_uid)
                if rdom is None or remote_port not in rdom.evtchn:
                    return -EINVAL
            b = EvtchnBinding(port, remote_uid, remote_port if cmd == EVTCHNOP_bind_interdomain else -1, v.idx)
            core.port_bound(dom, b)
            return port

        return cost, eff
    return cost, (lambda: -EINVAL)


# --- memory_op -----------------------------------------------------------------------------


def _memory_op(core: HypercallHost, v: VcpuState, dom: DomainInfo) -> Outcome:
    raw = v.regs["rdi"]
    cmd = raw & MEMOP_CMD_MASK
    start = raw >> MEMOP_EXTENT_SHIFT
    args = v.hcall_args
    if cmd not in (XENMEM_increase_reservation, XENMEM_decrease_reservation, XENMEM_populate_physmap):
        return core.costs.entry_ns, (lambda: -ENOSYS)
    if not core.has_memory:
        return core.costs.entry_ns, (lambda: -ENOSYS)
    nr_extents = int(args.get("nr_extents", 0))
    base = int(args.get("extent_start", 0))
    order = int(args.get("extent_order", 0))
    if order != 0 or nr_extents < 0 or start > nr_extents or base < 0 or base + nr_extents > dom.max_pages:
        return core.costs.entry_ns, (lambda: -EINVAL)
    if start == nr_extents:
        return core.costs.entry_ns, (lambda: nr_extents)

    if cmd == XENMEM_decrease_reservation:

        def apply(lo: int, hi: int) -> int | None:
            core.decrease_reservation(dom, base + start + lo, base + start + hi)
            return None

    else:

        def apply(lo: int, hi: int) -> int | None:
            # fewer than asked: this pCPU's frame cache ran dry (the engine then waits for a
            # refill, or, if the host has no free frame, ends the call with the count done)
            return core.populate(dom, base + start + lo, base + start + hi)

    def encode(done: int) -> None:
        v.regs["rdi"] = cmd | ((start + done) << MEMOP_EXTENT_SHIFT)

    def finish(done: int) -> int:
        return start + done

    op = LongOp(HYPERVISOR_memory_op, nr_extents - start, 0, core.costs.memop_extent_ns, apply, encode, finish)
    return op


# --- PV page-table hypercalls --------------------------------------------------------------


def _mmu_update(core: HypercallHost, v: VcpuState, dom: DomainInfo) -> Outcome:
    count = v.regs["rsi"]
    preempted = bool(count & MMU_UPDATE_PREEMPTED)
    count &= ~MMU_UPDATE_PREEMPTED
    reqs = v.hcall_args.get("reqs", [])
    offset = int(v.hcall_args.get("offset", 0))
    if not preempted:
        v.hcall_args["done"] = 0
        offset = 0
        v.hcall_args["offset"] = 0
    if count > len(reqs) - offset:
        return core.costs.entry_ns, (lambda: -EFAULT)
    cost = core.paging(dom).c.pt_update_ns["pv"]

    def apply(lo: int, hi: int) -> int | None:
        if core.has_memory:
            core.pt_update(dom, reqs[offset + lo : offset + hi])
        v.hcall_args["done"] = v.hcall_args.get("done", 0) + (hi - lo)
        return None

    def encode(done: int) -> None:
        v.hcall_args["offset"] = offset + done
        v.regs["rsi"] = (count - done) | MMU_UPDATE_PREEMPTED

    def finish(done: int) -> int:
        return 0

    return LongOp(HYPERVISOR_mmu_update, count, 0, cost, apply, encode, finish)


def _mmuext_op(core: HypercallHost, v: VcpuState, dom: DomainInfo) -> Outcome:
    count = v.regs["rsi"]
    preempted = bool(count & MMU_UPDATE_PREEMPTED)
    count &= ~MMU_UPDATE_PREEMPTED
    ops = v.hcall_args.get("ops", [])
    offset = int(v.hcall_args.get("offset", 0)) if preempted else 0
    if not preempted:
        v.hcall_args["offset"] = 0
        v.hcall_args["done"] = 0
    if count > len(ops) - offset:
        return core.costs.entry_ns, (lambda: -EFAULT)

    def apply(lo: int, hi: int) -> int | None:
        v.hcall_args["done"] = v.hcall_args.get("done", 0) + (hi - lo)
        return None

    def encode(done: int) -> None:
        v.hcall_args["offset"] = offset + done
        v.regs["rsi"] = (count - done) | MMU_UPDATE_PREEMPTED

    cost = core.paging(dom).c.cr3_switch_ns["pv"]
    return LongOp(HYPERVISOR_mmuext_op, count, 0, cost, apply, encode, lambda done: 0)


def _xen_version(core: HypercallHost, v: VcpuState, dom: DomainInfo) -> Outcome:
    return core.costs.entry_ns, (lambda: (4 << 16) | 23)


_TABLE: dict[int, Callable[[HypercallHost, VcpuState, DomainInfo], Outcome]] = {
    HYPERVISOR_sched_op: _sched_op,
    HYPERVISOR_set_timer_op: _set_timer_op,
    HYPERVISOR_event_channel_op: _event_channel_op,
    HYPERVISOR_memory_op: _memory_op,
    HYPERVISOR_mmu_update: _mmu_update,
    HYPERVISOR_mmuext_op: _mmuext_op,
    HYPERVISOR_xen_version: _xen_version,
}
