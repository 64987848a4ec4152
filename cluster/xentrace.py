"""Xen's binary trace format: the files ``xentrace`` writes, built from the pCPUs' record buffers.

A trace file is what ``xentrace`` (tools/xentrace/xentrace.c) leaves on disk: a sequence of
windows, each a ``TRC_TRACE_CPU_CHANGE`` record (header ``TRC_TRACE_CPU_CHANGE | 2 << 28``, then
the pCPU number and the window's size in bytes) followed by that pCPU's records. A record is
``struct t_rec`` of xen/include/public/trace.h: a 32-bit header (event in bits 0-27, the number
of extra words in bits 28-30, bit 31 set when a TSC follows), the TSC as two 32-bit words (low
first), then the extra words; all little-endian, as on x86. Windows hold at most 32 pages (the
default per-pCPU buffer of xentrace) and are written in timestamp order, so every pCPU's
records appear in time order, as ``xenalyze`` expects.

Timestamps: the trace claims a TSC running at :data:`TSC_HZ` (4 GHz) that read
:data:`TSC_BASE` at simulated time 0 (the trace starts one second after boot, as a real one
never starts at TSC 0); simulated nanoseconds become TSC ticks exactly (``tsc = TSC_BASE +
4 * ns``), so ``xenalyze --cpu-hz=4G`` gives back hvsim's times. The four ticks of one ns order
the records that hvsim makes at one instant on different pCPUs (a vCPU leaving one pCPU and
starting on another within one boundary instant, which Xen spreads over microseconds): see
:func:`tie_levels`; ``(tsc - TSC_BASE) // 4`` is always the exact ns. One file holds one host (a hypervisor's pCPUs and its Domain-0, domain 0):
a cluster of several hosts gets one file per host (:func:`trace_files`).

The engine records into per-pCPU buffers (``hosts.tracelog``); this module only encodes them.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from hosts.messages import PcpuReport
from hosts.tracelog import (
    DOMID_IDLE,
    RUNSTATE_MASK,
    TRACE_EXTRA_MAX,
    TRACE_EXTRA_SHIFT,
    TRC_HD_CYCLE_FLAG,
    TRC_SCHED_RUNSTATE_CHANGE,
    TRC_SCHED_SWITCH,
    TRC_SCHED_SWITCH_INFNEXT,
    TRC_SCHED_SWITCH_INFPREV,
    TRC_TRACE_CPU_CHANGE,
    U32,
    records,
)

log = logging.getLogger("hvsim.xentrace")

TSC_HZ = 4_000_000_000  #: the CPU frequency (TSC rate) the trace claims
NS_PER_S = 1_000_000_000
if TSC_HZ % NS_PER_S:  # pragma: no cover - a rate that is not a whole number of GHz would round
    raise ValueError("TSC_HZ must be a whole number of GHz for an exact ns -> TSC conversion")
TSC_PER_NS = TSC_HZ // NS_PER_S
TSC_BASE = TSC_HZ  #: the TSC at simulated time 0: the trace starts one second after boot

#: xentrace.c ``CPU_CHANGE_HEADER``: the record is 3 words, 2 of them extra, no TSC
CPU_CHANGE_HEADER = TRC_TRACE_CPU_CHANGE | (2 << TRACE_EXTRA_SHIFT)
WINDOW_MAX_BYTES = 32 * 4096  # xentrace.c DEFAULT_TBUF_SIZE pages

_CPU_CHANGE = struct.Struct("<IiI")
_HEAD = struct.Struct("<III")
_ARGS = [struct.Struct(f"<{n}I") for n in range(TRACE_EXTRA_MAX + 1)]


def ns_to_tsc(ns: int) -> int:
    """The TSC of simulated time ``ns`` (the trace starts one second after boot)."""
    return TSC_BASE + ns * TSC_PER_NS


def tsc_to_ns(tsc: int) -> int:
    return (tsc - TSC_BASE) // TSC_PER_NS


Rec = tuple[int, int, tuple[int, ...]]  # (time ns, event, words)

#: records that start a context switch on a pCPU (core.c sched_switch_units), kept together
_SWITCH_BLOCK = frozenset((TRC_SCHED_SWITCH_INFPREV, TRC_SCHED_SWITCH_INFNEXT, TRC_SCHED_SWITCH))


def _is_rs(event: int) -> bool:
    return event & RUNSTATE_MASK == TRC_SCHED_RUNSTATE_CHANGE


def tie_levels(recs: Mapping[int, Sequence[Rec]]) -> tuple[dict[int, list[int]], int]:
    """Sub-nanosecond order of a host's records: ({pCPU: level of each record}, unresolved).

    A vCPU can leave one pCPU and start on another at the same simulated nanosecond (a move
    delivered within one boundary instant); in Xen the second always follows the first. A reader
    such as xenalyze merges pCPUs by TSC, so the later record must have the larger TSC. There are
    ``TSC_PER_NS`` ticks per ns: the record that must come later is given a higher level (tick
    within its ns), with what follows it on its pCPU in that ns and the switch records that lead
    to it. Levels never change the ns (``tsc_to_ns`` is exact); ``unresolved`` counts orders that
    did not fit in the ticks of one ns."""
    levels = {cpu: [0] * len(rs) for cpu, rs in recs.items()}
    per_vcpu: dict[int, list[tuple[int, int, int, int, int]]] = {}  # vcpu id -> [(ns, cpu, idx, old, new)]
    for cpu, rs in recs.items():
        for i, (t, ev, args) in enumerate(rs):
            if _is_rs(ev) and args[0] >> 16 != DOMID_IDLE:
                per_vcpu.setdefault(args[0], []).append((t, cpu, i, (ev >> 8) & 3, (ev >> 4) & 3))
    constraints: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for changes in per_vcpu.values():
        changes.sort()
        state: int | None = None
        j = 0
        while j < len(changes):
            k = j
            while k < len(changes) and changes[k][0] == changes[j][0]:
                k += 1
            group = [(c, i, o, n) for _t, c, i, o, n in changes[j:k]]
            order = _chain(group, state) if len({g[0] for g in group}) > 1 else group
            for a, b in zip(order, order[1:]):
                if a[0] != b[0]:
                    constraints.append(((a[0], a[1]), (b[0], b[1])))
            state = order[-1][3]
            j = k
    unresolved = 0
    changed = True
    while changed:
        changed = False
        for (ca, ia), (cb, ib) in constraints:
            need = levels[ca][ia] + 1
            lv = levels[cb]
            if lv[ib] >= need:
                continue
            if need >= TSC_PER_NS:
                unresolved += 1
                continue
            rs = recs[cb]
            t = rs[ib][0]
            k = ib
            while k > 0 and rs[k - 1][0] == t and (rs[k - 1][1] in _SWITCH_BLOCK or _is_rs(rs[k - 1][1])):
                k -= 1
            while k < len(rs) and rs[k][0] == t:
                if lv[k] < need:
                    lv[k] = need
                k += 1
            changed = True
    return levels, unresolved


def _chain(group: list[tuple[int, int, int, int]], state: int | None) -> list[tuple[int, int, int, int]]:
    """The changes (cpu, idx, old, new) of one vCPU at one ns in an order where the first starts
    from ``state`` (the state it was left in before; None: unknown) and each from the state the
    one before left, each pCPU's own changes keeping their order."""
    per: dict[int, list[tuple[int, int, int, int]]] = {}
    for g in sorted(group, key=lambda g: (g[0], g[1])):
        per.setdefault(g[0], []).append(g)
    cpus = sorted(per)
    pos = {c: 0 for c in cpus}
    out: list[tuple[int, int, int, int]] = []

    def search(st: int | None) -> bool:  # depth-first: the groups are a handful of changes
        if len(out) == len(group):
            return True
        for c in cpus:
            if pos[c] < len(per[c]):
                g = per[c][pos[c]]
                if st is None or g[2] == st:
                    pos[c] += 1
                    out.append(g)
                    if search(g[3]):
                        return True
                    out.pop()
                    pos[c] -= 1
        return False

    if search(state):
        return out
    return sorted(group, key=lambda g: (g[0], g[1]))  # no consistent order: leave them as they are


def pcpu_windows(recs: Sequence[Rec], levels: Sequence[int] | None = None, window_max: int = WINDOW_MAX_BYTES) -> list[tuple[int, bytes]]:
    """One pCPU's records as Xen's ``struct t_rec``, cut into windows of at most ``window_max``
    bytes at record boundaries: [(TSC of the window's first record, its bytes)]."""
    out: list[tuple[int, bytes]] = []
    cur = bytearray()
    first = -1
    for i, (t_ns, event, args) in enumerate(recs):
        n = len(args)
        tsc = ns_to_tsc(t_ns) + (levels[i] if levels is not None else 0)
        rec = _HEAD.pack(event | n << TRACE_EXTRA_SHIFT | TRC_HD_CYCLE_FLAG, tsc & U32, (tsc >> 32) & U32) + _ARGS[n].pack(*[a & U32 for a in args])
        if cur and len(cur) + len(rec) > window_max:
            out.append((first, bytes(cur)))
            cur = bytearray()
        if not cur:
            first = tsc
        cur += rec
    if cur:
        out.append((first, bytes(cur)))
    return out


def host_trace(reports: Iterable[PcpuReport], window_max: int = WINDOW_MAX_BYTES) -> bytes:
    """The trace file of one host: every pCPU's windows in timestamp order (ties by pCPU)."""
    recs = {r.pcpu: list(records(r.xentrace)) for r in reports}
    levels, unresolved = tie_levels(recs)
    if unresolved:
        log.warning("xentrace: %d same-instant orders across pCPUs did not fit in the %d TSC ticks of one ns; a reader may see TSC skew there", unresolved, TSC_PER_NS)
    windows: list[tuple[int, int, int, bytes]] = []
    for cpu, rs in recs.items():
        for i, (tsc, data) in enumerate(pcpu_windows(rs, levels[cpu], window_max)):
            windows.append((tsc, cpu, i, data))
    windows.sort(key=lambda w: (w[0], w[1], w[2]))
    out = bytearray()
    for _tsc, cpu, _i, data in windows:
        out += _CPU_CHANGE.pack(CPU_CHANGE_HEADER, cpu, len(data))
        out += data
    return bytes(out)


def trace_name(name: str, host: str, several: bool) -> str:
    """``xentrace.bin`` for a single-host cluster, ``xentrace.HOST.bin`` for each of several."""
    if not several:
        return name
    p = Path(name)
    return p.with_name(f"{p.stem}.{host}{p.suffix}").name if p.suffix else f"{name}.{host}"


def trace_files(reports: Mapping[str, Sequence[PcpuReport]], hosts: Sequence[str], name: str = "xentrace.bin") -> dict[str, bytes]:
    """{file name: bytes} of the traces of ``hosts`` (in that order); a host without reports (lost
    with its Ray node) has no file."""
    several = len(hosts) > 1
    return {trace_name(name, h, several): host_trace(sorted(reports[h], key=lambda r: r.pcpu)) for h in hosts if h in reports}
