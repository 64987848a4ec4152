"""HostMemory: a host's RAM as one buffer of frames, shared by all its pCPUs.

Layout of the buffer (one region after another, each 64-byte aligned), for F frames:

* ``content``: per frame an 8-byte content tag (default, so a 4 GiB guest costs 8 MiB) or, in
  full mode, the 4 KiB of the page itself;
* ``owner``: int32 per frame, the uid of the owning domain, -1 free, ``-2 - p`` reserved in
  pCPU ``p``'s allocation cache;
* ``p2m``: int32 pool, carved into one slice per domain (guest pfn -> host frame, -1 none);
* ``dirty``: uint8 pool, carved into one log-dirty bytemap slice per domain (one byte per
  guest page: cheap to set from numpy, packed to bits when sent).

Under the inline backend the buffer is a bytearray; under Ray it is a shared-memory segment
that every pCPU actor of the host maps, so a page written by a vCPU on one pCPU is read by a
vCPU on another. Only the host's master (at boundaries and toolstack commands, when every pCPU
is stopped) allocates frames and slices; a pCPU that needs frames mid-epoch (populate_physmap)
draws on its own cache, refilled at every boundary; frames freed by a pCPU (decrease_reservation)
become free at once and are counted by the master at the next boundary. So allocation is
deterministic whatever the processes' timing.

What is *not* deterministic, by the contract: content written by two vCPUs to one guest page
within one epoch may land in either order. Metrics never depend on it; log-dirty faults are
counted per pCPU (see ``hosts.paging``) for the same reason.
"""

from __future__ import annotations

from hosts.errors import MemoryError_ as MemoryError_  # re-exported: defined apart so this module can be compiled

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from hosts.domain import PAGE_SIZE, DomainInfo

FREE = -1
TAG_BYTES = 8
CACHE_FRAMES = 4096  # per-pCPU allocation cache, refilled at each boundary


class PopulateResult(NamedTuple):
    done: int  # extents of the range now backed (from its start)
    taken: int  # frames taken from the cache
    short: int  # frames still needed (the cache ran dry)


def _align(n: int, a: int = 64) -> int:
    return (n + a - 1) // a * a


def layout(frames: int, full: bool) -> dict[str, tuple[int, int]]:
    """Offsets and sizes (bytes) of each region for ``frames`` frames."""
    regions = {}
    off = 0
    for name, size in (
        ("content", frames * (PAGE_SIZE if full else TAG_BYTES)),
        ("owner", frames * 4),
        ("p2m", frames * 4),
        ("dirty", frames),
    ):
        regions[name] = (off, size)
        off = _align(off + size)
    regions["_total"] = (0, off)
    return regions


def buffer_size(frames: int, full: bool) -> int:
    return layout(frames, full)["_total"][1]


class HostMemory:
    """Views over one host's memory buffer, plus the master's allocator state."""

    def __init__(self, buf: bytearray | memoryview, frames: int, full: bool = False, *, master: bool = False):
        self.frames = frames
        self.full = full
        lay = layout(frames, full)
        mv = memoryview(buf)
        self._buf = buf

        def view(name: str, dtype: type[np.generic]) -> npt.NDArray[Any]:
            off, size = lay[name]
            return np.frombuffer(mv[off : off + size], dtype=dtype)

        # in tag mode ``content`` is empty, in full mode ``tags`` is
        self.content: npt.NDArray[np.uint8] = np.empty((0, PAGE_SIZE), dtype=np.uint8)
        self.content64: npt.NDArray[np.uint64] = np.empty((0, PAGE_SIZE // 8), dtype=np.uint64)
        self.tags: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)
        if full:
            self.content = view("content", np.uint8).reshape(frames, PAGE_SIZE)
            self.content64 = self.content.view(np.uint64)
        else:
            self.tags = view("content", np.uint64)
        self.owner = view("owner", np.int32)
        self.p2m = view("p2m", np.int32)
        self.dirty = view("dirty", np.uint8)
        self.master = master
        # master-only allocator state: free extents of the p2m and dirty pools
        self._slices_free: list[tuple[int, int]] = [(0, frames)]
        self._slice_of: dict[int, tuple[int, int]] = {}
        if master:
            self.owner[:] = FREE
            self.p2m[:] = -1
            self.dirty[:] = 0

    @classmethod
    def inline(cls, frames: int, full: bool = False) -> "HostMemory":
        return cls(bytearray(buffer_size(frames, full)), frames, full, master=True)

    def close(self) -> None:
        """Drop the numpy views so the underlying buffer can be released."""
        self.content = np.empty((0, PAGE_SIZE), dtype=np.uint8)
        self.content64 = np.empty((0, PAGE_SIZE // 8), dtype=np.uint64)
        self.tags = self.owner = self.p2m = self.dirty = np.empty(0, dtype=np.int32)
        self._buf = bytearray()

    # --- master: domains -------------------------------------------------------------------
    def free_frames(self) -> int:
        return int(np.count_nonzero(self.owner == FREE))

    def domain_frames(self, uid: int) -> int:
        return int(np.count_nonzero(self.owner == uid))

    def _alloc_slice(self, n: int) -> int:
        for i, (off, ln) in enumerate(self._slices_free):
            if ln >= n:
                if ln == n:
                    del self._slices_free[i]
                else:
                    self._slices_free[i] = (off + n, ln - n)
                return off
        raise MemoryError_(f"no room for a {n}-entry p2m slice")

    def _free_slice(self, off: int, n: int) -> None:
        ext = sorted(self._slices_free + [(off, n)])
        merged: list[tuple[int, int]] = []
        for o, ln in ext:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + ln)
            else:
                merged.append((o, ln))
        self._slices_free = merged

    def compact(self, domains: dict[int, DomainInfo]) -> list[int]:
        """Move every domain's p2m and log-dirty slices to the front, in order, so free space
        is one extent again (master only, pCPUs stopped). Returns the uids whose offsets moved."""
        moved = []
        off = 0
        for uid, (old, n) in sorted(self._slice_of.items(), key=lambda kv: kv[1][0]):
            if old != off:
                self.p2m[off : off + n] = self.p2m[old : old + n].copy()
                self.dirty[off : off + n] = self.dirty[old : old + n].copy()
                self._slice_of[uid] = (off, n)
                if uid in domains:
                    domains[uid].p2m_off = off
                    domains[uid].dirty_off = off
                moved.append(uid)
            off += n
        self.p2m[off:] = -1
        self.dirty[off:] = 0
        self._slices_free = [(off, self.frames - off)] if off < self.frames else []
        return moved

    def check_fits(self, name: str, pages: int, max_pages: int) -> None:
        free = self.free_frames()
        if pages > free:
            raise MemoryError_(
                f"domain {name!r} needs {pages} pages ({pages * PAGE_SIZE >> 20} MiB) but the host has {free} free "
                f"({free * PAGE_SIZE >> 20} MiB)"
            )
        if sum(ln for _, ln in self._slices_free) < max_pages:
            raise MemoryError_(f"domain {name!r}: no room for a p2m of {max_pages} pages on this host")

    def create_domain(self, dom: DomainInfo, populate: bool = True, domains: dict[int, DomainInfo] | None = None) -> list[int]:
        """Reserve a p2m and log-dirty slice and (if ``populate``) back every guest page.
        Returns the uids of other domains whose slices moved (compaction) to re-broadcast."""
        self.check_fits(dom.name, dom.mem_pages if populate else 0, dom.max_pages)
        moved: list[int] = []
        if not any(ln >= dom.max_pages for _, ln in self._slices_free):
            moved = self.compact(domains or {})
        off = self._alloc_slice(dom.max_pages)
        self._slice_of[dom.uid] = (off, dom.max_pages)
        dom.p2m_off = off
        dom.dirty_off = off
        self.p2m[off : off + dom.max_pages] = -1
        self.dirty[off : off + dom.max_pages] = 0
        if populate and dom.mem_pages:
            mfns = np.flatnonzero(self.owner == FREE)[: dom.mem_pages]
            self.owner[mfns] = dom.uid
            self.p2m[off : off + dom.mem_pages] = mfns
            self._zero(mfns)
        return moved

    def destroy_domain(self, dom: DomainInfo) -> int:
        """Free every frame of the domain and its slices; returns the frames freed."""
        mfns = np.flatnonzero(self.owner == dom.uid)
        self.owner[mfns] = FREE
        sl = self._slice_of.pop(dom.uid, None)
        if sl is not None:
            self.p2m[sl[0] : sl[0] + sl[1]] = -1
            self.dirty[sl[0] : sl[0] + sl[1]] = 0
            self._free_slice(*sl)
        return int(mfns.size)

    def _zero(self, mfns: np.ndarray) -> None:
        if self.full:
            self.content[mfns] = 0
        else:
            self.tags[mfns] = 0

    def refill_caches(self, want: dict[int, int]) -> dict[int, list[int]]:
        """Top up pCPU allocation caches (master, at a boundary): pCPU -> new mfns."""
        out: dict[int, list[int]] = {}
        free = np.flatnonzero(self.owner == FREE)
        pos = 0
        for p in sorted(want):
            n = want[p]
            take = free[pos : pos + n]
            pos += take.size
            if take.size:
                self.owner[take] = -2 - p
                out[p] = [int(x) for x in take]
        return out

    # --- guest access (any pCPU) -----------------------------------------------------------
    def gpfn_to_mfn(self, dom: DomainInfo, gpfns: np.ndarray) -> np.ndarray:
        mfns: np.ndarray = self.p2m[dom.p2m_off + gpfns]
        return mfns

    def write_tags(self, dom: DomainInfo, gpfns: np.ndarray, values: np.ndarray | int) -> np.ndarray:
        """Guest writes to ``gpfns``: each page takes its value (in full mode the value fills
        the page's 4 KiB); if log-dirty is on, the pages are marked dirty. Pages with no frame
        (ballooned out) are skipped, as the guest's write would fault. Returns the mfns."""
        gpfns = np.asarray(gpfns, dtype=np.int64)
        values = np.broadcast_to(np.asarray(values, dtype=np.uint64), gpfns.shape)
        mfns: np.ndarray = self.p2m[dom.p2m_off + gpfns]
        ok = mfns >= 0
        if not ok.all():
            gpfns, mfns, values = gpfns[ok], mfns[ok], values[ok]
        if self.full:
            self.content64[mfns, :] = values[:, None]
        else:
            self.tags[mfns] = values
        if dom.log_dirty:
            self.dirty[dom.dirty_off + gpfns] = 1
        return mfns

    def read_tags(self, dom: DomainInfo, gpfns: np.ndarray) -> np.ndarray:
        """What the guest reads at ``gpfns`` (the first 8 bytes in full mode); 0 if no frame."""
        gpfns = np.asarray(gpfns, dtype=np.int64)
        mfns = self.p2m[dom.p2m_off + gpfns]
        out = np.zeros(gpfns.shape, dtype=np.uint64)
        ok = mfns >= 0
        if self.full:
            out[ok] = self.content64[mfns[ok], 0]
        else:
            out[ok] = self.tags[mfns[ok]]
        return out

    def read_pages(self, dom: DomainInfo, gpfns: np.ndarray) -> bytes:
        mfns = self.p2m[dom.p2m_off + gpfns]
        if (mfns < 0).any():
            bad = int(gpfns[mfns < 0][0])
            raise MemoryError_(f"domain {dom.name!r}: guest pfn {bad} has no frame")
        if self.full:
            return bytes(self.content[mfns].tobytes())
        return bytes(self.tags[mfns].tobytes())

    def store_pages(self, dom: DomainInfo, gpfns: np.ndarray, data: bytes, mode: str = "tag") -> None:
        """Restore side: write page contents into the domain's frames (populated already).
        ``mode`` is the sender's ("tag": 8 bytes a page, "full": 4 KiB); a tag-mode host keeps
        the first 8 bytes of full pages and a full-mode host fills pages with the tag."""
        mfns = self.p2m[dom.p2m_off + gpfns]
        if (mfns < 0).any():
            raise MemoryError_(f"domain {dom.name!r}: restore into unpopulated pfns")
        if mode == "full":
            pages = np.frombuffer(data, dtype=np.uint8).reshape(-1, PAGE_SIZE)
            if self.full:
                self.content[mfns] = pages
            else:
                self.tags[mfns] = pages[:, :8].copy().view(np.uint64).reshape(-1)
        else:
            tags = np.frombuffer(data, dtype=np.uint64)
            if self.full:
                self.content64[mfns, :] = tags[:, None]
            else:
                self.tags[mfns] = tags

    def set_backing(self, dom: DomainInfo, gpfns: np.ndarray, present: bool) -> None:
        """Restore side: make ``gpfns`` backed by frames (allocating) or not (freeing)."""
        if not len(gpfns):
            return
        sl = self.p2m[dom.p2m_off + gpfns]
        if present:
            need = gpfns[sl < 0]
            if need.size:
                free = np.flatnonzero(self.owner == FREE)[: need.size]
                if free.size < need.size:
                    raise MemoryError_(f"domain {dom.name!r}: host out of memory while restoring")
                self.owner[free] = dom.uid
                self._zero(free)
                self.p2m[dom.p2m_off + need] = free
        else:
            have = gpfns[sl >= 0]
            if have.size:
                mfns = self.p2m[dom.p2m_off + have]
                self._zero(mfns)
                self.owner[mfns] = FREE
                self.p2m[dom.p2m_off + have] = -1

    def snapshot(self, dom: DomainInfo) -> np.ndarray:
        """The domain's memory content in guest-pfn order (for checks and tests)."""
        n = dom.max_pages
        mfns = self.p2m[dom.p2m_off : dom.p2m_off + n]
        valid = mfns >= 0
        out: np.ndarray
        if self.full:
            out = np.zeros((n, PAGE_SIZE), dtype=np.uint8)
            out[valid] = self.content[mfns[valid]]
        else:
            out = np.zeros(n, dtype=np.uint64)
            out[valid] = self.tags[mfns[valid]]
        return out

    # --- log-dirty (master, with all pCPUs stopped) ----------------------------------------
    def enable_log_dirty(self, dom: DomainInfo) -> None:
        self.dirty[dom.dirty_off : dom.dirty_off + dom.max_pages] = 0
        dom.log_dirty = True

    def disable_log_dirty(self, dom: DomainInfo) -> None:
        dom.log_dirty = False
        self.dirty[dom.dirty_off : dom.dirty_off + dom.max_pages] = 0

    def peek_dirty(self, dom: DomainInfo) -> np.ndarray:
        return np.flatnonzero(self.dirty[dom.dirty_off : dom.dirty_off + dom.max_pages])

    def clean_dirty(self, dom: DomainInfo) -> np.ndarray:
        """XEN_DOMCTL_SHADOW_OP_CLEAN: return the dirty pfns and clear the bitmap."""
        sl = self.dirty[dom.dirty_off : dom.dirty_off + dom.max_pages]
        pfns = np.flatnonzero(sl)
        sl[:] = 0
        return pfns

    # --- hypercall support (a pCPU, mid-epoch) ---------------------------------------------
    def decrease_reservation(self, dom: DomainInfo, lo: int, hi: int) -> int:
        """Free the frames behind pfns [lo, hi); returns how many were freed."""
        sl = self.p2m[dom.p2m_off + lo : dom.p2m_off + hi]
        mfns = sl[sl >= 0]
        if mfns.size:
            self._zero(mfns)
            self.owner[mfns] = FREE
        sl[:] = -1
        if dom.log_dirty:  # a p2m change must reach a migration's destination too
            self.dirty[dom.dirty_off + lo : dom.dirty_off + hi] = 1
        return int(mfns.size)

    def populate(self, dom: DomainInfo, lo: int, hi: int, cache: list[int]) -> PopulateResult:
        """Back pfns [lo, hi) with frames taken from ``cache`` (a pCPU's allocation cache);
        fewer are done when it runs dry (the caller then waits for the host to refill it)."""
        sl = self.p2m[dom.p2m_off + lo : dom.p2m_off + hi]
        need = np.flatnonzero(sl < 0)
        n = min(need.size, len(cache))
        if n:
            take = np.asarray(cache[:n], dtype=np.int32)
            del cache[:n]
            self.owner[take] = dom.uid
            self._zero(take)
            sl[need[:n]] = take
            if dom.log_dirty:
                self.dirty[dom.dirty_off + lo + need[:n]] = 1
        if n < need.size:
            return PopulateResult(int(need[n]), n, int(need.size - n))
        return PopulateResult(hi - lo, n, 0)

    def pt_update(self, dom: DomainInfo, reqs: list[list[int]]) -> None:
        """PV mmu_update: each request (pt_gpfn, value) writes one PTE of a page-table page."""
        if not len(reqs):
            return
        arr = np.asarray(reqs, dtype=np.int64).reshape(-1, 2)
        pfns = arr[:, 0] % dom.mem_pages if dom.mem_pages else arr[:, 0]
        self.write_tags(dom, pfns, arr[:, 1].astype(np.uint64))
