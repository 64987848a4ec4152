"""Xen's binary trace format: the files ``xentrace`` writes, built from the pCPUs' record buffers.

A trace file is what ``xentrace`` (tools/xentrace/xentrace.c) leaves on disk: a sequence of
windows, each a ``TRC_TRACE_CPU_CHANGE`` record (header ``TRC_TRACE_CPU_CHANGE | 2 << 28``, then
the pCPU number and the window's size in bytes) followed by that pCPU's records. A record is
``struct t_rec`` of xen/include/public/trace.h: a 32-bit header (event in bits 0-27, the number
of extra words in bits 28-30, bit 31 set when a TSC follows), the TSC as two 32-bit words (low
first), then the extra words; all little-endian, as on x86. Windows hold at most 32 pages (the
default per-pCPU buffer of xentrace) and are written in timestamp order, so every pCPU's
records appear in time order, as ``xenalyze`` expects.

Timestamps: the trace claims a TSC running at :data:`TSC_HZ` (2 GHz); simulated nanoseconds
become TSC ticks exactly (``tsc = ns * 2``), so ``xenalyze --cpu-hz=2G`` gives back hvsim's
times to the ns. One file holds one host (a hypervisor's pCPUs and its Domain-0, domain 0):
a cluster of several hosts gets one file per host (:func:`trace_files`).

The engine records into per-pCPU buffers (``hosts.tracelog``); this module only encodes them.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from hosts.messages import PcpuReport
from hosts.tracelog import TRACE_EXTRA_MAX, TRACE_EXTRA_SHIFT, TRC_HD_CYCLE_FLAG, TRC_TRACE_CPU_CHANGE, U32, records

TSC_HZ = 2_000_000_000  #: the CPU frequency (TSC rate) the trace claims
NS_PER_S = 1_000_000_000
if TSC_HZ % NS_PER_S:  # pragma: no cover - a rate that is not a whole number of GHz would round
    raise ValueError("TSC_HZ must be a whole number of GHz for an exact ns -> TSC conversion")
TSC_PER_NS = TSC_HZ // NS_PER_S

#: xentrace.c ``CPU_CHANGE_HEADER``: the record is 3 words, 2 of them extra, no TSC
CPU_CHANGE_HEADER = TRC_TRACE_CPU_CHANGE | (2 << TRACE_EXTRA_SHIFT)
WINDOW_MAX_BYTES = 32 * 4096  # xentrace.c DEFAULT_TBUF_SIZE pages

_CPU_CHANGE = struct.Struct("<IiI")
_HEAD = struct.Struct("<III")
_ARGS = [struct.Struct(f"<{n}I") for n in range(TRACE_EXTRA_MAX + 1)]


def ns_to_tsc(ns: int) -> int:
    return ns * TSC_PER_NS


def tsc_to_ns(tsc: int) -> int:
    return tsc // TSC_PER_NS


def pcpu_windows(buf: bytes, window_max: int = WINDOW_MAX_BYTES) -> list[tuple[int, bytes]]:
    """One pCPU's buffer as Xen records, cut into windows of at most ``window_max`` bytes at
    record boundaries: [(TSC of the window's first record, its bytes)]."""
    out: list[tuple[int, bytes]] = []
    cur = bytearray()
    first = -1
    for t_ns, event, args in records(buf):
        n = len(args)
        tsc = ns_to_tsc(t_ns)
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
    windows: list[tuple[int, int, int, bytes]] = []
    for r in reports:
        for i, (tsc, data) in enumerate(pcpu_windows(r.xentrace, window_max)):
            windows.append((tsc, r.pcpu, i, data))
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
