"""VcpuState: the whole of a vCPU, because the hypervisor is stackless.

Xen keeps no hypervisor stack per vCPU: a vCPU descheduled in the middle of a long hypercall
has already returned to guest context with a *continuation* in its saved registers (the
hypercall number and updated arguments, and ``hcall_preempted`` set so the instruction is
re-executed). So everything a vCPU is fits in this small record: registers, runstate with
per-state nanoseconds, pause state, timers, pending events, the guest workload's state and
random stream, and the scheduler's per-unit data. It is what moves between pCPUs (inside a
host) and between hosts (live migration), always as a msgpack record (see ``hosts.codec``).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from hosts.clock import NEVER

# Runstates, numbered as Xen's public vcpu.h.
RUNSTATE_RUNNING: Final = 0
RUNSTATE_RUNNABLE: Final = 1
RUNSTATE_BLOCKED: Final = 2
RUNSTATE_OFFLINE: Final = 3
RUNSTATE_NAMES: Final = ("running", "runnable", "blocked", "offline")

# Pause flags, bit numbers as Xen's sched.h (VPF_*).
VPF_BLOCKED: Final = 1 << 0
VPF_DOWN: Final = 1 << 1
VPF_BLOCKED_IN_XEN: Final = 1 << 2
VPF_MIGRATING: Final = 1 << 3
VPF_PARKED: Final = 1 << 8

#: Guest-visible registers hvsim models (64-bit hypercall ABI: rax = number, then rdi, rsi,
#: rdx, r10, r8 are arguments 1-5; rip is advanced past the hypercall instruction unless the
#: call was preempted).
REG_NAMES: Final = ("rax", "rdi", "rsi", "rdx", "r10", "r8", "rip")

VID_SHIFT: Final = 12  # vid = dom_uid << 12 | vcpu index (at most 4096 vCPUs per domain)


def make_vid(dom_uid: int, idx: int) -> int:
    return (dom_uid << VID_SHIFT) | idx


def vid_dom(vid: int) -> int:
    return vid >> VID_SHIFT


def vid_idx(vid: int) -> int:
    return vid & ((1 << VID_SHIFT) - 1)


class VcpuState:
    """The stackless context of one vCPU. Plain data; the pCPU engine mutates it."""

    __slots__ = (
        "vid",
        "dom",
        "idx",
        "regs",
        "hcall_preempted",
        "hcall_args",
        "runstate",
        "state_entry_ns",
        "runstate_ns",
        "pause_flags",
        "pause_count",
        "singleshot_ns",
        "poll_ports",
        "poll_timeout_ns",
        "pending_ports",
        "pending_payloads",
        "upcall_pending",
        "wl",
        "_rng",
        "_rng_words",
        "sched",
        "wake_ns",
        "last_pcpu",
        "hard_affinity",
        "soft_affinity",
        # engine bookkeeping, not part of the record: a vCPU never moves while inside Xen
        "hv_entry_ns",
    )

    def __init__(self, vid: int, *, hard_affinity: tuple[int, ...] = (), soft_affinity: tuple[int, ...] = ()):
        self.vid = vid
        self.dom = vid_dom(vid)
        self.idx = vid_idx(vid)
        self.regs = {r: 0 for r in REG_NAMES}
        self.hcall_preempted = False
        self.hcall_args: dict[str, Any] = {}
        self.runstate = RUNSTATE_OFFLINE
        self.state_entry_ns = 0
        self.runstate_ns = [0, 0, 0, 0]
        self.pause_flags = 0
        self.pause_count = 0
        self.singleshot_ns = NEVER
        self.poll_ports: tuple[int, ...] = ()
        self.poll_timeout_ns = NEVER
        self.pending_ports: list[int] = []
        self.pending_payloads: list[tuple[int, Any]] = []
        self.upcall_pending = False
        self.wl: dict[str, Any] = {}
        self._rng: np.random.Generator | None = None  # numpy Generator of the workload (see the ``rng`` property)
        self._rng_words: tuple[int, ...] | None = None  # its state while it was not needed since the last move
        #: the scheduler's per-unit record while the vCPU is on a pCPU (a plain dict on the wire)
        self.sched: Any = {}
        self.wake_ns = -1
        self.last_pcpu = -1
        self.hard_affinity = tuple(hard_affinity)
        self.soft_affinity = tuple(soft_affinity)
        self.hv_entry_ns = -1

    # --- the workload's random stream --------------------------------------------------------
    @property
    def rng(self) -> np.random.Generator:
        """The vCPU's own generator, rebuilt from its record only when first used (moving a
        vCPU between pCPUs must not pay for a generator it does not draw from)."""
        if self._rng is None and self._rng_words is not None:
            from hosts.rng import rng_from_state

            self._rng = rng_from_state(self._rng_words)
            self._rng_words = None
        assert self._rng is not None, "this vCPU has no random stream yet"
        return self._rng

    @rng.setter
    def rng(self, gen: np.random.Generator | None) -> None:
        self._rng = gen
        self._rng_words = None

    def rng_words(self) -> tuple[int, ...] | None:
        """The generator's state as words, without building a generator."""
        if self._rng is not None:
            from hosts.rng import rng_state

            return rng_state(self._rng)
        return self._rng_words

    def has_rng(self) -> bool:
        return self._rng is not None or self._rng_words is not None

    # --- runnability, as Xen's vcpu_runnable() ---------------------------------------------
    def runnable(self) -> bool:
        return self.pause_flags == 0 and self.pause_count == 0

    def set_runstate(self, new: int, now_ns: int) -> None:
        """Account the time spent in the old runstate and enter ``new`` at ``now_ns``."""
        delta = now_ns - self.state_entry_ns
        if delta > 0:
            self.runstate_ns[self.runstate] += delta
        self.runstate = new
        self.state_entry_ns = now_ns

    def runstate_totals(self, now_ns: int) -> list[int]:
        """Per-state ns including the current, still open, interval."""
        out = list(self.runstate_ns)
        if now_ns > self.state_entry_ns:
            out[self.runstate] += now_ns - self.state_entry_ns
        return out

    def __repr__(self) -> str:
        return f"<vCPU d{self.dom}v{self.idx} {RUNSTATE_NAMES[self.runstate]} flags={self.pause_flags:#x}>"
