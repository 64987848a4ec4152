"""Affinity helpers every scheduler shares (Xen's cpumask helpers and affinity balancing).

What it does. A vCPU has a hard affinity (where it may run) and a soft one (where it prefers
to run). ``affinity_masks`` cuts both to a cpupool the way every hvsim scheduler needs them;
``has_soft_affinity`` and ``balance_mask`` are Xen's two-step affinity balancing (soft step
first, then hard); ``cycle`` is ``cpumask_cycle``, the round-robin walk Xen's placement and
tickling use.

When to use it. Any scheduler half that picks a pCPU for a vCPU: the per-pCPU half through
``PcpuScheduler.affinity`` (from the vCPU record), the pool half through ``dom_affinity``
(from the domain table).

Ordering and determinism. Pure functions of their arguments; ``cycle`` visits pCPU ids in
increasing order from ``n``, wrapping, whatever the iteration order of the mask.
"""

from __future__ import annotations

from typing import Final, Iterable, Sequence, TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from hosts.domain import DomainInfo

NO_CPUS: Final[frozenset[int]] = frozenset()

Masks = tuple[frozenset[int], frozenset[int]]  # (hard, soft)


def cycle(n: int, mask: Iterable[int]) -> int:
    """Xen's cpumask_cycle: the next CPU after ``n`` in ``mask``, wrapping; -1 if empty."""
    best = -1
    lowest = -1
    for c in mask:
        if c > n and (best < 0 or c < best):
            best = c
        if lowest < 0 or c < lowest:
            lowest = c
    return best if best >= 0 else lowest


def has_soft_affinity(hard: frozenset[int], soft: frozenset[int], pool: frozenset[int]) -> bool:
    """Xen's has_soft_affinity: soft affinity restricts something worth preferring."""
    if not soft or pool <= soft:
        return False
    inter = soft & hard
    return bool(inter) and inter != hard


def balance_mask(step: int, hard: frozenset[int], soft: frozenset[int]) -> frozenset[int]:
    """affinity_balance_cpumask: step 0 (soft) is soft & hard, or hard if that is empty."""
    if step == 0:
        m = soft & hard
        return m if m else hard
    return hard


def affinity_masks(hard: Sequence[int], soft: Sequence[int], pool: frozenset[int]) -> Masks:
    """(hard, soft) as schedulers use them: hard is cut to the pool, and is the whole pool if
    they do not meet (or none is set); soft is kept as given (empty: none)."""
    h = frozenset(hard) & pool if hard else pool
    return (h or pool, frozenset(soft) if soft else NO_CPUS)


def dom_affinity(dom: "DomainInfo", idx: int, pool: frozenset[int]) -> Masks:
    """The masks of vCPU ``idx`` of ``dom`` from the domain table (the pool half's view)."""
    hard = dom.hard_affinity[idx] if idx < len(dom.hard_affinity) else ()
    soft = dom.soft_affinity[idx] if idx < len(dom.soft_affinity) else ()
    return affinity_masks(hard, soft, pool)
