"""Xen trace records: the event numbers and payload layouts the engine emits when tracing is on.

Every constant here is copied as a number from Xen's public ABI, ``xen/include/public/trace.h``
(classes, the generic and scheduler events, ``TRC_SCHED_CLASS_EVT``), or from the file that
defines a scheduler's own events (``xen/common/sched/credit.c``, ``credit2.c``, ``rt.c``); the
payloads follow the ``TRACE_*`` / ``__trace_var`` calls there word for word (32-bit words,
bitfields packed little-endian, 64-bit values as two words, low first).

While tracing is on (``HostSpec.xentrace``), each pCPU keeps its records in an in-memory
``array('q')``: one record is ``[time_ns, event | n << 28, arg_1 .. arg_n]`` (``n`` <= 7, the
``extra_u32`` count of Xen's ``struct t_rec``; arguments are the record's 32-bit words, kept as
Python ints and cut to 32 bits when written). The buffer travels back in the pCPU's report as
bytes; ``cluster.xentrace`` writes Xen's binary format (TSC timestamps, ``TRC_TRACE_CPU_CHANGE``
windows) from it. Nothing here does I/O, and nothing is recorded while tracing is off.
"""

from __future__ import annotations

from array import array
from typing import Final, Iterator

# --- xen/include/public/trace.h ------------------------------------------------------------------
TRACE_EXTRA_MAX: Final = 7
TRACE_EXTRA_SHIFT: Final = 28
TRC_HD_CYCLE_FLAG: Final = 1 << 31

TRC_GEN: Final = 0x0001F000
TRC_SCHED: Final = 0x0002F000
TRC_HVM: Final = 0x0008F000
TRC_PV: Final = 0x0020F000

TRC_SUBCLS_SHIFT: Final = 12
TRC_SCHED_MIN: Final = 0x00021000  # just runstate changes
TRC_SCHED_CLASS: Final = 0x00022000  # scheduler-specific
TRC_SCHED_VERBOSE: Final = 0x00028000  # more inclusive scheduling
TRC_HVM_ENTRYEXIT: Final = 0x00081000
TRC_HVM_HANDLER: Final = 0x00082000
TRC_PV_ENTRY: Final = 0x00201000
TRC_64_FLAG: Final = 0x100

TRC_SCHED_ID_BITS: Final = 3
TRC_SCHED_ID_SHIFT: Final = TRC_SUBCLS_SHIFT - TRC_SCHED_ID_BITS
TRC_SCHED_ID_MASK: Final = ((1 << TRC_SCHED_ID_BITS) - 1) << TRC_SCHED_ID_SHIFT
TRC_SCHED_EVT_MASK: Final = ~TRC_SCHED_ID_MASK
TRC_SCHED_CSCHED: Final = 0
TRC_SCHED_CSCHED2: Final = 1
TRC_SCHED_ARINC653: Final = 3
TRC_SCHED_RTDS: Final = 4


def sched_class_evt(sched_id: int, e: int) -> int:
    """``TRC_SCHED_CLASS_EVT(_c, _e)``."""
    return (TRC_SCHED_CLASS | ((sched_id << TRC_SCHED_ID_SHIFT) & TRC_SCHED_ID_MASK)) + (e & TRC_SCHED_EVT_MASK)


TRC_LOST_RECORDS: Final = TRC_GEN + 1
TRC_TRACE_WRAP_BUFFER: Final = TRC_GEN + 2
TRC_TRACE_CPU_CHANGE: Final = TRC_GEN + 3

TRC_SCHED_RUNSTATE_CHANGE: Final = TRC_SCHED_MIN + 1  # | old << 8 | new << 4; [vcpu:16 | domain:16]
TRC_SCHED_CONTINUE_RUNNING: Final = TRC_SCHED_MIN + 2  # [vcpu:16 | domain:16]
TRC_SCHED_DOM_ADD: Final = TRC_SCHED_VERBOSE + 1  # [domid]
TRC_SCHED_DOM_REM: Final = TRC_SCHED_VERBOSE + 2  # [domid]
TRC_SCHED_SLEEP: Final = TRC_SCHED_VERBOSE + 3  # [domid, vcpu]
TRC_SCHED_WAKE: Final = TRC_SCHED_VERBOSE + 4  # [domid, vcpu]
TRC_SCHED_YIELD: Final = TRC_SCHED_VERBOSE + 5  # [domid, vcpu]
TRC_SCHED_BLOCK: Final = TRC_SCHED_VERBOSE + 6  # [domid, vcpu]
TRC_SCHED_SHUTDOWN: Final = TRC_SCHED_VERBOSE + 7  # [domid, vcpu, reason]
TRC_SCHED_CTL: Final = TRC_SCHED_VERBOSE + 8
TRC_SCHED_ADJDOM: Final = TRC_SCHED_VERBOSE + 9
TRC_SCHED_SWITCH: Final = TRC_SCHED_VERBOSE + 10  # [prev dom, prev unit, next dom, next unit]
TRC_SCHED_S_TIMER_FN: Final = TRC_SCHED_VERBOSE + 11
TRC_SCHED_T_TIMER_FN: Final = TRC_SCHED_VERBOSE + 12
TRC_SCHED_DOM_TIMER_FN: Final = TRC_SCHED_VERBOSE + 13
TRC_SCHED_SWITCH_INFPREV: Final = TRC_SCHED_VERBOSE + 14  # [dom, unit, runtime ns]
TRC_SCHED_SWITCH_INFNEXT: Final = TRC_SCHED_VERBOSE + 15  # [dom, unit, waited ns (0 unless runnable), r_time ns]
TRC_SCHED_SHUTDOWN_CODE: Final = TRC_SCHED_VERBOSE + 16
TRC_SCHED_SWITCH_INFCONT: Final = TRC_SCHED_VERBOSE + 17  # [dom, unit, runtime ns, r_time ns]

TRC_HVM_VMENTRY: Final = TRC_HVM_ENTRYEXIT + 0x01  # []
TRC_HVM_VMEXIT64: Final = TRC_HVM_ENTRYEXIT + TRC_64_FLAG + 0x02  # [exit reason, rip lo, rip hi]
TRC_HVM_VMMCALL: Final = TRC_HVM_HANDLER + 0x12  # [eax]
TRC_PV_HYPERCALL_V2: Final = TRC_PV_ENTRY + 13  # [op | arg-presence bits, recorded args...]


def hypercall_v2_arg_32(i: int) -> int:
    """``TRC_PV_HYPERCALL_V2_ARG_32(i)``."""
    return 0x1 << (20 + 2 * i)


#: the arguments ``__trace_hypercall`` (xen/common/trace.c) records, by hypercall number
HYPERCALL_V2_ARGS: dict[int, tuple[int, ...]] = {
    1: (1,),  # mmu_update: count
    13: (1,),  # multicall: count
    20: (0, 2),  # grant_table_op: cmd, count
    24: (0, 1),  # vcpu_op: cmd, vcpuid
    26: (1,),  # mmuext_op: count
    29: (0,),  # sched_op: cmd
}

#: VMX exit reason of VMCALL (xen/arch/x86/include/asm/hvm/vmx/vmx.h, EXIT_REASON_VMCALL)
EXIT_REASON_VMCALL: Final = 18

DOMID_IDLE: Final = 0x7FFF  # xen/include/public/xen.h

# --- Credit (xen/common/sched/credit.c) -------------------------------------------------------------
TRC_CSCHED_SCHED_TASKLET: Final = sched_class_evt(TRC_SCHED_CSCHED, 1)
TRC_CSCHED_ACCOUNT_START: Final = sched_class_evt(TRC_SCHED_CSCHED, 2)
TRC_CSCHED_ACCOUNT_STOP: Final = sched_class_evt(TRC_SCHED_CSCHED, 3)
TRC_CSCHED_STOLEN_UNIT: Final = sched_class_evt(TRC_SCHED_CSCHED, 4)
TRC_CSCHED_PICKED_CPU: Final = sched_class_evt(TRC_SCHED_CSCHED, 5)  # [dom, unit, cpu]
TRC_CSCHED_TICKLE: Final = sched_class_evt(TRC_SCHED_CSCHED, 6)  # [cpu]
TRC_CSCHED_BOOST_START: Final = sched_class_evt(TRC_SCHED_CSCHED, 7)  # [dom, unit]
TRC_CSCHED_BOOST_END: Final = sched_class_evt(TRC_SCHED_CSCHED, 8)  # [dom, unit]
TRC_CSCHED_SCHEDULE: Final = sched_class_evt(TRC_SCHED_CSCHED, 9)  # [cpu:16 | tasklet:8 | idle:8]
TRC_CSCHED_RATELIMIT: Final = sched_class_evt(TRC_SCHED_CSCHED, 10)  # [unit:16 | dom:16, runtime]
TRC_CSCHED_STEAL_CHECK: Final = sched_class_evt(TRC_SCHED_CSCHED, 11)

# --- Credit2 (xen/common/sched/credit2.c) -----------------------------------------------------------
TRC_CSCHED2_TICK: Final = sched_class_evt(TRC_SCHED_CSCHED2, 1)
TRC_CSCHED2_RUNQ_POS: Final = sched_class_evt(TRC_SCHED_CSCHED2, 2)  # [unit:16 | dom:16, pos]
TRC_CSCHED2_CREDIT_BURN: Final = sched_class_evt(TRC_SCHED_CSCHED2, 3)  # [unit:16 | dom:16, credit, budget, delta]
TRC_CSCHED2_CREDIT_ADD: Final = sched_class_evt(TRC_SCHED_CSCHED2, 4)
TRC_CSCHED2_TICKLE_CHECK: Final = sched_class_evt(TRC_SCHED_CSCHED2, 5)
TRC_CSCHED2_TICKLE: Final = sched_class_evt(TRC_SCHED_CSCHED2, 6)  # [cpu:16 | pad:16]
TRC_CSCHED2_CREDIT_RESET: Final = sched_class_evt(TRC_SCHED_CSCHED2, 7)  # [unit:16 | dom:16, start, end]
TRC_CSCHED2_SCHED_TASKLET: Final = sched_class_evt(TRC_SCHED_CSCHED2, 8)
TRC_CSCHED2_UPDATE_LOAD: Final = sched_class_evt(TRC_SCHED_CSCHED2, 9)
TRC_CSCHED2_RUNQ_ASSIGN: Final = sched_class_evt(TRC_SCHED_CSCHED2, 10)  # [unit:16 | dom:16, rqi:16]
TRC_CSCHED2_UPDATE_UNIT_LOAD: Final = sched_class_evt(TRC_SCHED_CSCHED2, 11)  # [avgload lo, hi, unit:16 | dom:16, shift]
TRC_CSCHED2_UPDATE_RUNQ_LOAD: Final = sched_class_evt(TRC_SCHED_CSCHED2, 12)
TRC_CSCHED2_TICKLE_NEW: Final = sched_class_evt(TRC_SCHED_CSCHED2, 13)  # [unit:16 | dom:16, processor, credit]
TRC_CSCHED2_RUNQ_MAX_WEIGHT: Final = sched_class_evt(TRC_SCHED_CSCHED2, 14)
TRC_CSCHED2_MIGRATE: Final = sched_class_evt(TRC_SCHED_CSCHED2, 15)
TRC_CSCHED2_LOAD_CHECK: Final = sched_class_evt(TRC_SCHED_CSCHED2, 16)
TRC_CSCHED2_LOAD_BALANCE: Final = sched_class_evt(TRC_SCHED_CSCHED2, 17)
TRC_CSCHED2_PICKED_CPU: Final = sched_class_evt(TRC_SCHED_CSCHED2, 19)  # [b_avgload lo, hi, unit:16 | dom:16, rq_id:16 | new_cpu:16]
TRC_CSCHED2_RUNQ_CANDIDATE: Final = sched_class_evt(TRC_SCHED_CSCHED2, 20)  # [unit:16 | dom:16, tickled_cpu, credit]
TRC_CSCHED2_SCHEDULE: Final = sched_class_evt(TRC_SCHED_CSCHED2, 21)  # [cpu:16 | rq_id:16, tasklet:8 | idle:8 | smt_idle:8 | tickled:8]
TRC_CSCHED2_RATELIMIT: Final = sched_class_evt(TRC_SCHED_CSCHED2, 22)  # [unit:16 | dom:16, runtime]
TRC_CSCHED2_RUNQ_CAND_CHECK: Final = sched_class_evt(TRC_SCHED_CSCHED2, 23)

# --- RTDS (xen/common/sched/rt.c) ----------------------------------------------------------------
TRC_RTDS_TICKLE: Final = sched_class_evt(TRC_SCHED_RTDS, 1)  # [cpu:16 | pad:16]
TRC_RTDS_RUNQ_PICK: Final = sched_class_evt(TRC_SCHED_RTDS, 2)  # [unit:16 | dom:16, deadline lo, hi, budget lo, hi]
TRC_RTDS_BUDGET_BURN: Final = sched_class_evt(TRC_SCHED_RTDS, 3)  # [unit:16 | dom:16, budget lo, hi, delta, priority_level, has_extratime]
TRC_RTDS_BUDGET_REPLENISH: Final = sched_class_evt(TRC_SCHED_RTDS, 4)  # [unit:16 | dom:16, priority_level, deadline lo, hi, budget lo, hi]
TRC_RTDS_SCHED_TASKLET: Final = sched_class_evt(TRC_SCHED_RTDS, 5)
TRC_RTDS_SCHEDULE: Final = sched_class_evt(TRC_SCHED_RTDS, 6)  # [cpu:16 | tasklet:8 | tickled:4 | idle:4]

#: every event hvsim emits, by number (for readers and tests); runstate changes are listed
#: by their base number (the old/new states sit in bits 8-9 and 4-5 of the event)
EMITTED: dict[int, str] = {
    TRC_SCHED_RUNSTATE_CHANGE: "TRC_SCHED_RUNSTATE_CHANGE",
    TRC_SCHED_CONTINUE_RUNNING: "TRC_SCHED_CONTINUE_RUNNING",
    TRC_SCHED_DOM_ADD: "TRC_SCHED_DOM_ADD",
    TRC_SCHED_DOM_REM: "TRC_SCHED_DOM_REM",
    TRC_SCHED_SLEEP: "TRC_SCHED_SLEEP",
    TRC_SCHED_WAKE: "TRC_SCHED_WAKE",
    TRC_SCHED_YIELD: "TRC_SCHED_YIELD",
    TRC_SCHED_BLOCK: "TRC_SCHED_BLOCK",
    TRC_SCHED_SHUTDOWN: "TRC_SCHED_SHUTDOWN",
    TRC_SCHED_SWITCH: "TRC_SCHED_SWITCH",
    TRC_SCHED_SWITCH_INFPREV: "TRC_SCHED_SWITCH_INFPREV",
    TRC_SCHED_SWITCH_INFNEXT: "TRC_SCHED_SWITCH_INFNEXT",
    TRC_SCHED_SWITCH_INFCONT: "TRC_SCHED_SWITCH_INFCONT",
    TRC_HVM_VMENTRY: "TRC_HVM_VMENTRY",
    TRC_HVM_VMEXIT64: "TRC_HVM_VMEXIT64",
    TRC_HVM_VMMCALL: "TRC_HVM_VMMCALL",
    TRC_PV_HYPERCALL_V2: "TRC_PV_HYPERCALL_V2",
    TRC_CSCHED_PICKED_CPU: "TRC_CSCHED_PICKED_CPU",
    TRC_CSCHED_TICKLE: "TRC_CSCHED_TICKLE",
    TRC_CSCHED_BOOST_START: "TRC_CSCHED_BOOST_START",
    TRC_CSCHED_BOOST_END: "TRC_CSCHED_BOOST_END",
    TRC_CSCHED_SCHEDULE: "TRC_CSCHED_SCHEDULE",
    TRC_CSCHED_RATELIMIT: "TRC_CSCHED_RATELIMIT",
    TRC_CSCHED2_RUNQ_POS: "TRC_CSCHED2_RUNQ_POS",
    TRC_CSCHED2_CREDIT_BURN: "TRC_CSCHED2_CREDIT_BURN",
    TRC_CSCHED2_TICKLE: "TRC_CSCHED2_TICKLE",
    TRC_CSCHED2_CREDIT_RESET: "TRC_CSCHED2_CREDIT_RESET",
    TRC_CSCHED2_RUNQ_ASSIGN: "TRC_CSCHED2_RUNQ_ASSIGN",
    TRC_CSCHED2_TICKLE_NEW: "TRC_CSCHED2_TICKLE_NEW",
    TRC_CSCHED2_PICKED_CPU: "TRC_CSCHED2_PICKED_CPU",
    TRC_CSCHED2_RUNQ_CANDIDATE: "TRC_CSCHED2_RUNQ_CANDIDATE",
    TRC_CSCHED2_SCHEDULE: "TRC_CSCHED2_SCHEDULE",
    TRC_CSCHED2_RATELIMIT: "TRC_CSCHED2_RATELIMIT",
    TRC_RTDS_TICKLE: "TRC_RTDS_TICKLE",
    TRC_RTDS_RUNQ_PICK: "TRC_RTDS_RUNQ_PICK",
    TRC_RTDS_BUDGET_BURN: "TRC_RTDS_BUDGET_BURN",
    TRC_RTDS_BUDGET_REPLENISH: "TRC_RTDS_BUDGET_REPLENISH",
    TRC_RTDS_SCHEDULE: "TRC_RTDS_SCHEDULE",
}

RUNSTATE_MASK: Final = 0x0FFFF00F  # an event with its runstate bits cleared
U32: Final = 0xFFFFFFFF


def runstate_event(old: int, new: int) -> int:
    """The event number of a runstate change (core.c ``trace_runstate_change``)."""
    return TRC_SCHED_RUNSTATE_CHANGE | (old & 0x3) << 8 | (new & 0x3) << 4


def lo_hi(x: int) -> tuple[int, int]:
    """A 64-bit value as two trace words, low first."""
    return x & U32, (x >> 32) & U32


def new_buffer() -> array[int]:
    return array("q")


def records(buf: bytes | array[int]) -> Iterator[tuple[int, int, tuple[int, ...]]]:
    """(time_ns, event, args) of every record in a pCPU's buffer (or its bytes)."""
    a = buf if isinstance(buf, array) else array("q", buf)
    i = 0
    n = len(a)
    while i < n:
        t = a[i]
        hdr = a[i + 1]
        k = (hdr >> TRACE_EXTRA_SHIFT) & TRACE_EXTRA_MAX
        yield t, hdr & 0x0FFFFFFF, tuple(a[i + 2 : i + 2 + k])
        i += 2 + k
