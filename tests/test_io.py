"""Event channels and Domain-0 split-driver I/O: the frontend posts and notifies, the backend
vCPU in Domain-0 wakes, serves, notifies back; the client's request-to-completion latency."""

from __future__ import annotations

import pytest

from conftest import simulate

SERVICE_US = 100
EPOCH_US = 1000
RATELIMIT_US = 1000


def io_doc(boost: bool) -> dict:
    return {
        "run": {"seed": 1, "duration_ms": 4000},
        "hosts": [{"name": "h0", "pcpus": 2, "mem_mib": 4096, "scheduler": {"name": "credit", "boost": boost}}],
        "domains": [
            {"name": "client", "host": "h0", "workload": {"kind": "io_client", "think_us": 500, "service_us": SERVICE_US}},
            {"name": "hog1", "host": "h0", "workload": {"kind": "cpu"}},
            {"name": "hog2", "host": "h0", "workload": {"kind": "cpu"}},
            {"name": "hog3", "host": "h0", "workload": {"kind": "cpu"}},
        ],
    }


@pytest.fixture(scope="module")
def runs():
    return {b: simulate(io_doc(b)).summary for b in (True, False)}


def client(summary):
    return next(d for d in summary["domains"] if d["name"] == "client")


def test_requests_complete_through_dom0(runs):
    s = runs[True]
    c = client(s)
    dom0 = next(d for d in s["domains"] if d["dom0"])
    assert c["io_latency_us"]["count"] > 1000
    assert c["io_latency_us"]["p50"] >= SERVICE_US  # every request costs dom0 its service time
    # dom0's CPU time is at least the service time of every completed request
    assert dom0["cpu_pct"] / 100 * 4.0 >= c["io_latency_us"]["count"] * SERVICE_US * 1e-6
    sends = s["hypercalls"]["by_kind"]["event_channel_op"]["count"]
    assert sends >= 2 * c["io_latency_us"]["count"]  # a notify each way per request


def test_boost_keeps_io_latency_low(runs):
    # request delivered at the next boundary (<= 1 epoch), dom0 runs within the rate limit,
    # serves, the response crosses another boundary, the client runs within the rate limit
    bound_us = 2 * EPOCH_US + 2 * RATELIMIT_US + SERVICE_US + 20
    assert client(runs[True])["io_latency_us"]["p99"] <= bound_us


def test_without_boost_latency_grows_toward_the_timeslice(runs):
    assert client(runs[False])["io_latency_us"]["p99"] >= 30_000  # one 30 ms Credit timeslice


def test_event_channel_wakes_cross_pcpus_only_at_boundaries():
    """Client pinned to pCPU 0, dom0 to pCPU 1: every request crosses pCPUs twice, so its
    latency is at least the service time and at most two epochs more (nothing else runs)."""
    doc = {
        "run": {"seed": 1, "duration_ms": 500},
        "hosts": [{"name": "h0", "pcpus": 2, "mem_mib": 2048, "dom0": {"pin": True}}],
        "domains": [{"name": "client", "host": "h0", "hard_affinity": [0], "workload": {"kind": "io_client", "think_us": 300, "service_us": SERVICE_US}}],
    }
    doc["hosts"][0]["dom0"]["vcpus"] = 2  # dom0 vCPU 0 on pCPU 0, vCPU 1 on pCPU 1
    s = simulate(doc).summary
    lat = client(s)["io_latency_us"]
    assert lat["count"] > 100
    assert lat["p50"] >= SERVICE_US
    assert lat["max"] <= SERVICE_US + 2 * EPOCH_US + 20
