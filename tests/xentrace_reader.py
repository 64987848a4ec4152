"""A reader of Xen trace files (what ``xentrace`` writes), built from Xen's headers alone.

It does not import hvsim's own tables: every event number below is copied as a number from
``xen/include/public/trace.h`` (the generic, scheduler, HVM and PV events and
``TRC_SCHED_CLASS_EVT``) or from the scheduler that defines it (``xen/common/sched/credit.c``,
``credit2.c``, ``rt.c``), with the number of 32-bit words its ``TRACE_*`` call or
``__trace_var`` struct carries. The tests decode hvsim's traces with it and check them against
``summary.json``: a record of a number not listed here, or of another length, is an error.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

# --- xen/include/public/trace.h --------------------------------------------------------------------
TRACE_EXTRA_SHIFT = 28
TRACE_EXTRA_MAX = 7
TRC_HD_CYCLE_FLAG = 1 << 31
TRC_TRACE_CPU_CHANGE = 0x0001F003  # TRC_GEN + 3
TRC_SCHED_RUNSTATE_CHANGE = 0x00021001  # TRC_SCHED_MIN + 1; old state << 8 | new state << 4
RUNSTATE_BITS = 0x330
DOMID_IDLE = 0x7FFF  # xen/include/public/xen.h
RUNNING, RUNNABLE, BLOCKED, OFFLINE = 0, 1, 2, 3  # xen/include/public/vcpu.h RUNSTATE_*

#: event -> (name, number of extra words; None: variable, checked by its own rule)
LAYOUT: dict[int, tuple[str, int | None]] = {
    0x00021002: ("TRC_SCHED_CONTINUE_RUNNING", 1),  # TRC_SCHED_MIN + 2
    0x00028001: ("TRC_SCHED_DOM_ADD", 1),  # TRC_SCHED_VERBOSE + 1
    0x00028002: ("TRC_SCHED_DOM_REM", 1),
    0x00028003: ("TRC_SCHED_SLEEP", 2),
    0x00028004: ("TRC_SCHED_WAKE", 2),
    0x00028005: ("TRC_SCHED_YIELD", 2),
    0x00028006: ("TRC_SCHED_BLOCK", 2),
    0x00028007: ("TRC_SCHED_SHUTDOWN", 3),
    0x0002800A: ("TRC_SCHED_SWITCH", 4),  # + 10
    0x0002800E: ("TRC_SCHED_SWITCH_INFPREV", 3),  # + 14
    0x0002800F: ("TRC_SCHED_SWITCH_INFNEXT", 4),  # + 15
    0x00028011: ("TRC_SCHED_SWITCH_INFCONT", 4),  # + 17
    0x00081001: ("TRC_HVM_VMENTRY", 0),  # TRC_HVM_ENTRYEXIT + 0x01
    0x00081102: ("TRC_HVM_VMEXIT64", 3),  # TRC_HVM_ENTRYEXIT + TRC_64_FLAG + 0x02
    0x00082012: ("TRC_HVM_VMMCALL", 1),  # TRC_HVM_HANDLER + 0x12
    0x0020100D: ("TRC_PV_HYPERCALL_V2", None),  # TRC_PV_ENTRY + 13: 1 + the arguments flagged
    # TRC_SCHED_CLASS_EVT(CSCHED, e) = 0x00022000 + e (credit.c)
    0x00022005: ("TRC_CSCHED_PICKED_CPU", 3),
    0x00022006: ("TRC_CSCHED_TICKLE", 1),
    0x00022007: ("TRC_CSCHED_BOOST_START", 2),
    0x00022008: ("TRC_CSCHED_BOOST_END", 2),
    0x00022009: ("TRC_CSCHED_SCHEDULE", 1),
    0x0002200A: ("TRC_CSCHED_RATELIMIT", 2),
    # TRC_SCHED_CLASS_EVT(CSCHED2, e) = 0x00022000 + (1 << 9) + e (credit2.c)
    0x00022202: ("TRC_CSCHED2_RUNQ_POS", 2),
    0x00022203: ("TRC_CSCHED2_CREDIT_BURN", 4),
    0x00022206: ("TRC_CSCHED2_TICKLE", 1),
    0x00022207: ("TRC_CSCHED2_CREDIT_RESET", 3),
    0x0002220A: ("TRC_CSCHED2_RUNQ_ASSIGN", 2),
    0x0002220D: ("TRC_CSCHED2_TICKLE_NEW", 3),
    0x00022213: ("TRC_CSCHED2_PICKED_CPU", 4),
    0x00022214: ("TRC_CSCHED2_RUNQ_CANDIDATE", 3),
    0x00022215: ("TRC_CSCHED2_SCHEDULE", 2),
    0x00022216: ("TRC_CSCHED2_RATELIMIT", 2),
    # TRC_SCHED_CLASS_EVT(RTDS, e) = 0x00022000 + (4 << 9) + e (rt.c)
    0x00022801: ("TRC_RTDS_TICKLE", 1),
    0x00022802: ("TRC_RTDS_RUNQ_PICK", 5),
    0x00022803: ("TRC_RTDS_BUDGET_BURN", 6),
    0x00022804: ("TRC_RTDS_BUDGET_REPLENISH", 6),
    0x00022806: ("TRC_RTDS_SCHEDULE", 1),
}
TRC_SCHED_DOM_ADD, TRC_SCHED_DOM_REM, TRC_SCHED_SWITCH = 0x00028001, 0x00028002, 0x0002800A
PER_VCPU = (0x00028003, 0x00028004, 0x00028005, 0x00028006)  # SLEEP, WAKE, YIELD, BLOCK: [domid, vcpu]


class TraceError(ValueError):
    pass


@dataclass(frozen=True)
class Rec:
    cpu: int
    tsc: int
    event: int
    words: tuple[int, ...]

    @property
    def name(self) -> str:
        if self.event & ~RUNSTATE_BITS == TRC_SCHED_RUNSTATE_CHANGE:
            return "TRC_SCHED_RUNSTATE_CHANGE"
        return LAYOUT[self.event][0]


@dataclass
class Trace:
    """One file: its records in file order, and what the reader noticed."""

    records: list[Rec] = field(default_factory=list)
    unknown: list[Rec] = field(default_factory=list)
    windows: int = 0


def read(data: bytes) -> Trace:
    """Decode a trace file; raises on a malformed stream, collects unknown records."""
    out = Trace()
    u32 = struct.Struct("<I")
    pos = 0
    n = len(data)
    last: dict[int, int] = {}
    while pos < n:
        (hdr,) = u32.unpack_from(data, pos)
        if hdr != TRC_TRACE_CPU_CHANGE | 2 << TRACE_EXTRA_SHIFT:
            raise TraceError(f"offset {pos}: expected a TRC_TRACE_CPU_CHANGE record, found header {hdr:#010x}")
        cpu, size = struct.unpack_from("<iI", data, pos + 4)
        pos += 12
        end = pos + size
        if end > n:
            raise TraceError(f"window of cpu {cpu} runs past the end of the file")
        out.windows += 1
        while pos < end:
            (hdr,) = u32.unpack_from(data, pos)
            pos += 4
            extra = (hdr >> TRACE_EXTRA_SHIFT) & TRACE_EXTRA_MAX
            if not hdr & TRC_HD_CYCLE_FLAG:
                raise TraceError(f"cpu {cpu}: record {hdr:#010x} without a TSC")
            lo, hi = struct.unpack_from("<II", data, pos)
            pos += 8
            words = struct.unpack_from(f"<{extra}I", data, pos)
            pos += 4 * extra
            rec = Rec(cpu, lo | hi << 32, hdr & 0x0FFFFFFF, words)
            if rec.tsc < last.get(cpu, 0):
                raise TraceError(f"cpu {cpu}: TSC goes backwards ({rec.tsc} after {last[cpu]})")
            last[cpu] = rec.tsc
            if not _known(rec):
                out.unknown.append(rec)
            out.records.append(rec)
        if pos != end:
            raise TraceError(f"cpu {cpu}: a record crosses its window's end")
    return out


def _known(r: Rec) -> bool:
    if r.event & ~RUNSTATE_BITS == TRC_SCHED_RUNSTATE_CHANGE:
        return len(r.words) == 1
    lay = LAYOUT.get(r.event)
    if lay is None:
        return False
    if lay[1] is None:  # TRC_PV_HYPERCALL_V2: bits 20-31 of word 0 flag the arguments present
        flags = r.words[0] >> 20 if r.words else 0
        nargs = sum(((flags >> (2 * i)) & 3) for i in range(6))  # 01b: one word, 10b: two
        return len(r.words) == 1 + nargs
    return len(r.words) == lay[1]


# --- analyses --------------------------------------------------------------------------------------


def read_run(files: dict[str, Path]) -> dict[str, Trace]:
    return {host: read(p.read_bytes()) for host, p in files.items()}


def per_vcpu_runstates(traces: dict[str, Trace], dom0_uid: dict[str, int], tsc_per_ns: int, end_ns: int, tsc_base: int = 0) -> dict[tuple[int, int], list[int]]:
    """Per-vCPU (uid, index) ns in running/runnable/blocked/offline from the runstate changes.

    A vCPU exists from the first TRC_SCHED_DOM_ADD of its domain (created offline, as in Xen)
    and is followed across hosts; it stops at a TRC_SCHED_DOM_REM on the host it was last
    seen on, or at ``end_ns``."""
    ev: list[tuple[int, int, int, str, tuple[int, ...]]] = []  # (ns, order, kind, host, data)
    for host, tr in traces.items():
        for i, r in enumerate(tr.records):
            t = (r.tsc - tsc_base) // tsc_per_ns
            if r.event & ~RUNSTATE_BITS == TRC_SCHED_RUNSTATE_CHANGE:
                dom, idx = r.words[0] >> 16, r.words[0] & 0xFFFF
                if dom == DOMID_IDLE:
                    continue
                uid = dom0_uid[host] if dom == 0 else dom
                ev.append((t, 1, 0, host, (uid, idx, (r.event >> 8) & 3, (r.event >> 4) & 3)))
            elif r.event == TRC_SCHED_DOM_ADD:
                ev.append((t, 0, 1, host, (dom0_uid[host] if r.words[0] == 0 else r.words[0],)))
            elif r.event == TRC_SCHED_DOM_REM:
                ev.append((t, 2, 2, host, (dom0_uid[host] if r.words[0] == 0 else r.words[0],)))
            elif r.event in PER_VCPU and r.words[0] != DOMID_IDLE:  # where the vCPU is now
                ev.append((t, 1, 3, host, (dom0_uid[host] if r.words[0] == 0 else r.words[0], r.words[1])))
    ev.sort(key=lambda e: (e[0], e[1]))
    ev = _chain_order(ev)
    state: dict[tuple[int, int], list[int]] = {}  # key -> [state, since, ns x4]
    added: dict[int, tuple[int, str]] = {}  # uid -> (time, host) of its domain's last DOM_ADD
    seen: dict[tuple[int, int], tuple[int, str]] = {}  # key -> (time, host) of its last change
    born: dict[int, int] = {}
    closed: set[tuple[int, int]] = set()
    for t, _o, kind, host, data in ev:
        if kind == 1:
            born.setdefault(data[0], t)
            added[data[0]] = (t, host)
        elif kind == 3:
            seen[(data[0], data[1])] = (t, host)
        elif kind == 2:
            uid = data[0]
            for key, st in state.items():
                if key[0] != uid or key in closed:
                    continue
                last = max(seen.get(key, (-1, "")), added.get(uid, (-1, "")), key=lambda x: x[0])
                if last[1] == host:
                    st[2 + st[0]] += t - st[1]
                    st[1] = t
                    closed.add(key)
        else:
            uid, idx, old, new = data
            key = (uid, idx)
            st = state.get(key)
            if st is None:
                st = state[key] = [OFFLINE, born.get(uid, 0), 0, 0, 0, 0]
            if key in closed:
                raise TraceError(f"d{uid}v{idx}: a runstate change after its domain was removed")
            if st[0] != old:
                raise TraceError(f"d{uid}v{idx} at {t} ns: change from state {old}, but it was in state {st[0]}")
            st[2 + old] += t - st[1]
            st[0], st[1] = new, t
            seen[key] = (t, host)
    out = {}
    for key, st in state.items():
        if key not in closed:
            st[2 + st[0]] += end_ns - st[1]
        out[key] = st[2:]
    return out


def _chain_order(ev: list[tuple[int, int, int, str, tuple[int, ...]]]) -> list[tuple[int, int, int, str, tuple[int, ...]]]:
    """Order the runstate changes of one vCPU at one instant so that each starts from the
    state the previous left (records of two pCPUs at one instant have no order in the file)."""
    out: list[tuple[int, int, int, str, tuple[int, ...]]] = []
    cur: dict[tuple[int, int], int] = {}
    i = 0
    while i < len(ev):
        j = i
        while j < len(ev) and ev[j][:2] == ev[i][:2]:
            j += 1
        out.extend(e for e in ev[i:j] if e[2] != 0)
        group = [e for e in ev[i:j] if e[2] == 0]
        if group:
            while group:
                for k, e in enumerate(group):
                    key = (e[4][0], e[4][1])
                    if cur.get(key, e[4][2]) == e[4][2]:
                        break
                else:
                    k, e = 0, group[0]  # no chain: let the caller report the mismatch
                out.append(group.pop(k))
                cur[(e[4][0], e[4][1])] = e[4][3]
        i = j
    return out


def idle_ns(tr: Trace, tsc_per_ns: int, end_ns: int, tsc_base: int = 0) -> dict[int, int]:
    """Per pCPU, the time its idle vCPU ran (the pCPU was idle), from the idle vCPU's runstate
    changes; a pCPU starts idle at 0."""
    since: dict[int, int | None] = {}
    total: dict[int, int] = {}
    for r in tr.records:
        if r.event & ~RUNSTATE_BITS != TRC_SCHED_RUNSTATE_CHANGE or r.words[0] >> 16 != DOMID_IDLE:
            continue
        cpu = r.words[0] & 0xFFFF
        t = (r.tsc - tsc_base) // tsc_per_ns
        total.setdefault(cpu, 0)
        s = since.get(cpu, 0)
        old, new = (r.event >> 8) & 3, (r.event >> 4) & 3
        if old == RUNNING and s is not None:
            total[cpu] += t - s
        since[cpu] = t if new == RUNNING else None
    for cpu, s in since.items():
        if s is not None:
            total[cpu] += end_ns - s
    return total


def switch_digest(tr: Trace, dom0: int, tsc_per_ns: int, tsc_base: int = 0) -> dict[int, str]:
    """Per pCPU, hvsim's digest of its context switches recomputed from TRC_SCHED_SWITCH:
    blake2b-128 over the int64 triples (time ns, prev vid, next vid), -1 for idle."""
    trip: dict[int, list[int]] = {}
    for r in tr.records:
        if r.event != TRC_SCHED_SWITCH:
            continue
        pd, pu, nd, nu = r.words
        trip.setdefault(r.cpu, []).extend(((r.tsc - tsc_base) // tsc_per_ns, _vid(pd, pu, dom0), _vid(nd, nu, dom0)))
    out = {}
    for cpu, vals in trip.items():
        h = hashlib.blake2b(digest_size=16)
        h.update(struct.pack(f"<{len(vals)}q", *vals))
        out[cpu] = h.hexdigest()
    return out


def _vid(dom: int, unit: int, dom0: int) -> int:
    if dom == DOMID_IDLE:
        return -1
    return (dom0 if dom == 0 else dom) << 12 | unit


def counts(tr: Trace) -> dict[str, int]:
    c: dict[str, int] = {}
    for r in tr.records:
        n = r.name if _known(r) else f"unknown {r.event:#x}"
        c[n] = c.get(n, 0) + 1
    return c
