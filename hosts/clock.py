"""Simulated time: an integer count of nanoseconds, as Xen's ``s_time_t``.

Every quantity in hvsim carries its unit in its name (``tslice_ms``, ``ratelimit_us``,
``start_ns``); these helpers convert to nanoseconds and never return floats.
"""

from __future__ import annotations

from typing import Final

NS: Final = 1
US: Final = 1_000
MS: Final = 1_000_000
S: Final = 1_000_000_000

#: A time later than any simulation will reach (about 146 years), used for "never".
NEVER: Final = 1 << 62


def us(x: float | int) -> int:
    """Microseconds to ns (Xen's MICROSECS)."""
    return int(round(x * US))


def ms(x: float | int) -> int:
    """Milliseconds to ns (Xen's MILLISECS)."""
    return int(round(x * MS))


def s(x: float | int) -> int:
    """Seconds to ns (Xen's SECONDS)."""
    return int(round(x * S))


def fmt_ns(t_ns: int) -> str:
    """Human form of a time, for messages and tables."""
    if t_ns >= NEVER:
        return "never"
    if abs(t_ns) >= S:
        return f"{t_ns / S:.3f} s"
    if abs(t_ns) >= MS:
        return f"{t_ns / MS:.3f} ms"
    if abs(t_ns) >= US:
        return f"{t_ns / US:.3f} us"
    return f"{t_ns} ns"
