"""Memory virtualisation cost model: what PV, HVM-shadow and HVM-HAP charge the guest.

A guest's memory activity is counted by its workload (page-table updates, guest page faults,
address-space switches, TLB misses, writes under log-dirty) and converted here into guest CPU
time, differently per paging mode (reference, section 7):

* **PV**: the guest runs on its own page tables; every PTE update is a validated
  ``mmu_update`` hypercall; a CR3 switch is ``mmuext_op(NEW_BASEPTR)``; a TLB miss is a native
  4-reference walk. While log-dirty is on (migration), a PV guest is switched to shadow mode
  and pays shadow's log-dirty costs.
* **HVM-shadow**: Xen keeps shadow page tables. A PTE write traps and is emulated; a guest page
  fault first exits to Xen to be told apart from a shadow fault; a CR3 write exits and resyncs
  out-of-sync pages. The hardware walks the shadow: 4 references, as native. Guest superpages
  are shadowed with 4 KiB entries (Xen's "fl1" shadows), so a 2 MiB guest page does not enlarge
  the TLB's reach. Log-dirty write-protects the shadows; every CLEAN discards all shadows, so
  each round starts with a fault storm: the first access to every page rebuilds its entry.
* **HVM-HAP** (EPT/NPT): the guest owns its page tables; PTE writes, faults and CR3 switches
  cost about what they cost natively. A TLB miss walks two dimensions: (g+1)(h+1)-1 memory
  references for g guest and h host levels: 24 for 4-on-4, 19 with 2 MiB host pages (4-on-3),
  15 with 2 MiB pages on both sides (3-on-3). Log-dirty re-types the p2m read-only; the first
  write to each page per round takes an EPT violation.

The default costs are orders of magnitude from the literature [external]: VM exits of ~0.5-1 us
and shadow emulation of 1-2 us (Adams & Agesen, ASPLOS 2006; VMware, "Performance Evaluation of
Intel EPT Hardware Assist", 2009; AMD, "AMD-V Nested Paging", 2008). They are chosen so that the
model lands where validation.md says measured systems land: page-table-heavy microbenchmarks
5-6x faster under HAP, fork/exec-heavy benchmarks up to ~48 % faster; random access over a large
working set with 4 KiB pages up to ~34 % slower under HAP than shadow (Wang et al., VEE 2011);
2 MiB pages removing most of that penalty. Every default is a config field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

PV: Final = "pv"
SHADOW: Final = "hvm-shadow"
HAP: Final = "hvm-hap"

PAGE_4K: Final = 4096
PAGE_2M: Final = 2 << 20


def walk_refs(mode: str, guest_levels: int = 4, host_levels: int = 4) -> int:
    """Memory references of one TLB miss: g for a native or shadow walk, (g+1)(h+1)-1 nested."""
    if mode == HAP:
        return (guest_levels + 1) * (host_levels + 1) - 1
    return guest_levels


@dataclass
class PagingCosts:
    """Per-event costs in ns, by mode (PV, shadow, HAP)."""

    pt_update_ns: dict[str, int] = field(default_factory=lambda: {PV: 450, SHADOW: 1450, HAP: 260})
    page_fault_ns: dict[str, int] = field(default_factory=lambda: {PV: 900, SHADOW: 2700, HAP: 480})
    cr3_switch_ns: dict[str, int] = field(default_factory=lambda: {PV: 650, SHADOW: 2300, HAP: 420})
    #: one page-walk memory reference, averaged over the walk (upper levels mostly cached)
    walk_ref_ns: float = 1.2
    #: a random access that misses the data caches (what every access of tlbrandom costs)
    dram_ns: float = 85.0
    #: STLB entries (second-level TLB reach = entries x page size)
    tlb_entries: int = 1536
    #: first write to a page in a log-dirty round: EPT violation (HAP) or write-protect fault (shadow)
    logdirty_fault_ns: dict[str, int] = field(default_factory=lambda: {HAP: 1700, SHADOW: 2600})
    #: rebuilding the shadow entry of a page after a CLEAN discarded every shadow
    shadow_rebuild_ns: float = 900.0

    @classmethod
    def from_dict(cls, d: "dict[str, Any] | None") -> "PagingCosts":
        c = cls()
        for k, v in (d or {}).items():
            if isinstance(getattr(c, k), dict) and isinstance(v, dict):
                getattr(c, k).update(v)
            else:
                setattr(c, k, v)
        return c


class PagingModel:
    """Converts counted memory activity of one domain into guest CPU time."""

    def __init__(self, mode: str, costs: PagingCosts | None = None):
        self.mode = mode
        self.c = costs or PagingCosts()

    def logdirty_mode(self) -> str:
        """The mode log-dirty runs in: PV guests are put in shadow mode while it is on."""
        return SHADOW if self.mode in (PV, SHADOW) else HAP

    def pt_updates(self, n: int) -> int:
        return int(n * self.c.pt_update_ns[self.mode])

    def page_faults(self, n: int) -> int:
        return int(n * self.c.page_fault_ns[self.mode])

    def cr3_switches(self, n: int) -> int:
        return int(n * self.c.cr3_switch_ns[self.mode])

    def walk(self, guest_page: int, host_page: int) -> int:
        g = 3 if guest_page == PAGE_2M and self.mode != SHADOW else 4
        h = 3 if host_page == PAGE_2M else 4
        return walk_refs(self.mode, g, h)

    def tlb_miss_rate(self, working_set_bytes: int, guest_page: int) -> float:
        """Uniform random access over the working set: the share that misses the STLB."""
        page = guest_page if self.mode != SHADOW else PAGE_4K
        reach = self.c.tlb_entries * page
        if working_set_bytes <= reach:
            return 0.0
        return 1.0 - reach / working_set_bytes

    def tlb_misses(self, n: float, guest_page: int, host_page: int) -> int:
        return int(n * self.walk(guest_page, host_page) * self.c.walk_ref_ns)

    def logdirty_faults(self, n: int) -> int:
        return int(n * self.c.logdirty_fault_ns[self.logdirty_mode()])

    def shadow_rebuilds(self, n: int) -> int:
        if self.logdirty_mode() != SHADOW:
            return 0
        return int(n * self.c.shadow_rebuild_ns)
