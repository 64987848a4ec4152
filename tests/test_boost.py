"""Credit's wake boost (validation via the rate limit, 1000 us by Xen's default).

With boost, an UNDER vCPU waking next to CPU hogs preempts the running hog as soon as the
hog has run for the rate limit, so its wake-to-run latency is bounded by the rate limit.
Without boost it queues FIFO behind hogs of its own priority and waits for their 30 ms
timeslices: far larger (we require at least ten rate limits).
"""

from __future__ import annotations

from conftest import CONFIGS, simulate_file

RATELIMIT_US = 1000.0


def io_latency(boost: bool) -> dict:
    res = simulate_file(CONFIGS / "validation" / "credit-boost.yaml", overrides=[f"hosts.h0.scheduler.boost={str(boost).lower()}"])
    io = next(d for d in res.summary["domains"] if d["name"] == "io")
    return io["vcpus"][0]["wake_latency_us"]


def test_boost_keeps_p99_within_the_rate_limit():
    lat = io_latency(True)
    assert lat["count"] > 500  # think time 5 ms over 6 s: about a thousand wakes
    assert lat["p99"] <= RATELIMIT_US * 1.05


def test_without_boost_latency_grows_toward_the_timeslice():
    lat = io_latency(False)
    assert lat["count"] > 20
    assert lat["p99"] >= 10 * RATELIMIT_US
    assert lat["p50"] >= 10 * RATELIMIT_US
