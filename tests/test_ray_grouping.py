"""Which process steps which pCPU under Ray (``run.ray_processes_per_host``): the split, the
automatic choice, the sealing of vCPUs that leave a process, and results that do not depend
on any of it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_ivs, simulate_file
from cluster.backends.ray_backend import pcpu_groups, processes_per_host, steppers
from cluster.backends.shm import seal_cmd, seal_reply
from hosts.codec import unpack_vcpu
from hosts.messages import Run, RunReply, Tickle, Xfer, XferOut
from hosts.vcpu import VcpuState, make_vid
from hosts.wire import packb, unpackb


@pytest.mark.parametrize(
    "nr,procs,groups",
    [
        (4, 1, [(0, 1, 2, 3)]),
        (4, 2, [(0, 1), (2, 3)]),
        (5, 2, [(0, 1, 2), (3, 4)]),  # the larger group first: the master's
        (7, 3, [(0, 1, 2), (3, 4), (5, 6)]),
        (3, 8, [(0,), (1,), (2,)]),  # never more processes than pCPUs
        (4, 0, [(0, 1, 2, 3)]),  # nor fewer than one
        (1, 1, [(0,)]),
    ],
)
def test_groups_are_consecutive_and_balanced(nr, procs, groups):
    assert pcpu_groups(nr, procs) == groups


def test_auto_gives_every_pcpu_a_process_when_the_node_has_cores_to_spare():
    # 2 hosts x 4 pCPUs on a 16-core node: Xen's layout, one process per pCPU
    assert processes_per_host({"a": 4, "b": 4}, {"a": "n", "b": "n"}, {"n": 16.0}, "auto") == {"a": 4, "b": 4}
    assert processes_per_host({"a": 4, "b": 4}, {"a": "n", "b": "n"}, {"n": 9.0}, "auto") == {"a": 4, "b": 4}


def test_auto_gives_a_host_one_process_on_a_node_without_spare_cores():
    # exactly a core per pCPU leaves none for the manager and Ray: one process per host
    assert processes_per_host({"a": 4, "b": 4}, {"a": "n", "b": "n"}, {"n": 8.0}, "auto") == {"a": 1, "b": 1}
    # this machine's case: 2 cores, 2 hosts x 4 pCPUs
    assert processes_per_host({"a": 4, "b": 4}, {"a": "n", "b": "n"}, {"n": 2.0}, "auto") == {"a": 1, "b": 1}
    # one host bigger than its node: not split either (measured: splitting lost every time)
    assert processes_per_host({"a": 4}, {"a": "n"}, {"n": 2.0}, "auto") == {"a": 1}
    # hosts on different nodes count only against their own node's cores
    got = processes_per_host({"a": 4, "b": 4, "c": 4}, {"a": "big", "b": "small", "c": "small"}, {"big": 6.0, "small": 2.0}, "auto")
    assert got == {"a": 4, "b": 1, "c": 1}


def test_a_number_is_capped_at_the_hosts_pcpus():
    assert processes_per_host({"a": 4, "b": 2}, {"a": "n", "b": "n"}, {"n": 2.0}, 3) == {"a": 3, "b": 2}


def test_hosts_get_their_own_process_while_the_node_has_a_core_for_each():
    one = {"a": 1, "b": 1}
    assert steppers({"a": 4, "b": 4}, {"a": "n", "b": "n"}, {"n": 2.0}, one, "auto") == {"a": "a", "b": "b"}
    assert steppers({"a": 4}, {"a": "n"}, {"n": 2.0}, {"a": 1}, "auto") == {"a": "a"}


def test_hosts_share_the_nodes_cores_when_they_outnumber_them():
    # 5 hosts of 4 pCPUs on 2 cores: h0 and h1 lead; h2 -> h0 (a tie goes to the first),
    # h3 -> h1 (h0 now has 8), h4 -> h0 (a tie again, 8 and 8)
    five = {f"h{i}": 4 for i in range(5)}
    got = steppers(five, {h: "n" for h in five}, {"n": 2.0}, {h: 1 for h in five}, "auto")
    assert got == {"h0": "h0", "h1": "h1", "h2": "h0", "h3": "h1", "h4": "h0"}
    # larger hosts lead: b (6) and d (4); a (2) -> d (4 < 6), then c (2) -> b (6 = 6: the first)
    sizes = {"a": 2, "b": 6, "c": 2, "d": 4}
    got = steppers(sizes, {h: "n" for h in sizes}, {"n": 2.0}, {h: 1 for h in sizes}, "auto")
    assert got == {"a": "d", "b": "b", "c": "b", "d": "d"}


def test_hosts_share_only_with_hosts_on_their_own_node():
    hosts = {"a": 4, "b": 4, "c": 4, "d": 4}
    node_of = {"a": "x", "b": "y", "c": "x", "d": "x"}
    got = steppers(hosts, node_of, {"x": 2.0, "y": 2.0}, {h: 1 for h in hosts}, "auto")
    assert got == {"a": "a", "b": "b", "c": "c", "d": "a"}


def test_split_hosts_and_numbers_never_share():
    hosts = {"a": 4, "b": 4, "c": 4}
    node_of = {h: "n" for h in hosts}
    # a split host keeps its processes; the two single ones fit the node's 2 cores
    assert steppers(hosts, node_of, {"n": 2.0}, {"a": 2, "b": 1, "c": 1}, "auto") == {"a": "a", "b": "b", "c": "c"}
    # an explicit number asks for processes per host: no sharing even when cores are short
    assert steppers(hosts, node_of, {"n": 2.0}, {h: 1 for h in hosts}, 1) == {"a": "a", "b": "b", "c": "c"}


def _vcpu() -> VcpuState:
    v = VcpuState(make_vid(3, 1), hard_affinity=(0, 2))
    v.runstate_ns = [5, 6, 7, 8]
    v.wake_ns = 1234
    v.sched = {"credit": -50, "pri": 0}
    return v


def test_a_vcpu_object_leaving_a_process_travels_as_its_record():
    v = _vcpu()
    cmd = Run((Tickle(), Xfer(v, 1, False)), 10, 20)
    sealed = seal_cmd(cmd)
    assert isinstance(sealed.inbox[1].vcpu, bytes)
    assert sealed.inbox[0] == Tickle() and sealed.inbox[1].how == 1 and (sealed.at, sealed.until) == (10, 20)
    back = unpack_vcpu(unpackb(packb(sealed)).inbox[1].vcpu)  # and it does cross the wire
    assert (back.vid, back.hard_affinity, back.runstate_ns, back.wake_ns, back.sched) == (v.vid, (0, 2), [5, 6, 7, 8], 1234, v.sched)
    # a command with nothing to seal is passed on as it is
    plain = Run((Tickle(),), 1, 2)
    assert seal_cmd(plain) is plain

    rep = RunReply([XferOut(7, v.vid, 2, v, 0)], None, 30, -1)
    out = seal_reply(rep).out[0]
    assert isinstance(out.vcpu, bytes) and (out.t, out.vid, out.to_pcpu) == (7, v.vid, 2)
    assert unpack_vcpu(out.vcpu).runstate_ns == [5, 6, 7, 8]


def test_a_vcpu_holding_its_schedulers_record_leaves_a_process_with_the_records_fields():
    """Within a process Credit and Credit2 hand a moving vCPU's unit record over as it is
    (``keeps_record``); sealed for another process, the record travels as its fields."""
    from hosts.sched.credit.records import CreditVcpu

    v = _vcpu()
    u = CreditVcpu()
    u.credit, u.pri, u.residual, u.start_time, u.active = -50, -1, 7, 99, True
    v.sched = u
    rep = RunReply([XferOut(7, v.vid, 2, v, 0)], None, 30, -1)
    back = unpack_vcpu(unpackb(packb(seal_reply(rep))).out[0].vcpu)
    assert back.sched == {"pri": -1, "credit": -50, "residual": 7, "start_time": 99, "flags": 0, "last_sched_time": 0, "active": True}
    assert CreditVcpu.from_wire(back.sched).credit == -50


# one host of 3 pCPUs with more vCPUs than pCPUs, so that Credit moves vCPUs between pCPUs
# (and so between processes when they are split), plus a second host and a live migration
THREE = {
    "run": {"seed": 5, "duration_ms": 1200},
    "hosts": [
        {"name": "h0", "pcpus": 3, "mem_mib": 1024, "scheduler": {"name": "credit"}},
        {"name": "h1", "pcpus": 2, "mem_mib": 1024, "scheduler": {"name": "credit"}},
    ],
    "domains": [
        {"name": "hog", "host": "h0", "vcpus": 3, "mem_mib": 32, "workload": {"kind": "cpu"}},
        {"name": "io", "host": "h0", "vcpus": 3, "mem_mib": 32, "workload": {"kind": "io", "think_ms": 2, "burst_us": 500}},
        {"name": "mover", "host": "h0", "vcpus": 1, "mem_mib": 32, "workload": {"kind": "memwrite", "dirty_mb_s": 50, "working_set_mib": 8}},
    ],
    "events": [{"at_ms": 300, "migrate": {"domain": "mover", "to": "h1"}}],
}


@pytest.fixture(scope="module")
def three_cfg(tmp_path_factory):
    import yaml

    p = tmp_path_factory.mktemp("grouping") / "three.yaml"
    p.write_text(yaml.safe_dump(THREE))
    return p


@pytest.fixture(scope="module")
def three_inline(three_cfg):
    return simulate_file(three_cfg)


def _vcpus_seen_on(res, host: str) -> dict[int, set[int]]:
    return {vid: {pc for _s, _e, pc in ivs} for vid, ivs in run_ivs(res, host).items()}


@pytest.mark.ray
@pytest.mark.parametrize("procs,groups", [(1, [[0, 1, 2]]), (2, [[0, 1], [2]]), (3, [[0], [1], [2]])])
def test_results_do_not_depend_on_the_grouping(ray_session, three_cfg, three_inline, procs, groups):
    res = simulate_file(three_cfg, backend="ray", overrides=[f"run.ray_processes_per_host={procs}"])
    assert res.summary["pcpu_processes"]["h0"] == groups
    assert res.summary["trace_digest"] == three_inline.summary["trace_digest"]
    assert [(p["busy_ns"], p["idle_ns"]) for p in res.summary["pcpus"]] == [(p["busy_ns"], p["idle_ns"]) for p in three_inline.summary["pcpus"]]
    assert [m["downtime_ms"] for m in res.summary["migrations"]] == [m["downtime_ms"] for m in three_inline.summary["migrations"]]
    # every report came back, from whichever process stepped it
    assert [r.pcpu for r in res.reports["h0"]] == [0, 1, 2]
    for a, b in zip(res.reports["h0"], three_inline.reports["h0"]):
        assert a.digest == b.digest and np.array_equal(np.frombuffer(a.trace, np.int64), np.frombuffer(b.trace, np.int64))


def test_the_workload_moves_vcpus_between_groups(three_inline):
    """The grouping test above is only worth something if vCPUs cross from pCPUs 0-1 to 2."""
    seen = _vcpus_seen_on(three_inline, "h0")
    assert any(pcs & {0, 1} and 2 in pcs for pcs in seen.values())
    assert len(three_inline.summary["migrations"]) == 1


# three hosts on the test session's 2-CPU Ray: h2 shares h0's process (2 + 2 pCPUs lead, the
# 1-pCPU host joins the first on a tie); a domain migrates from h2 to h0 (two engines in one
# process) and another from h0 to h1 (across processes)
SHARED = {
    "run": {"seed": 9, "duration_ms": 900},
    "hosts": [
        {"name": "h0", "pcpus": 2, "mem_mib": 512, "scheduler": {"name": "credit"}},
        {"name": "h1", "pcpus": 2, "mem_mib": 512, "scheduler": {"name": "credit2"}},
        {"name": "h2", "pcpus": 1, "mem_mib": 512, "scheduler": {"name": "credit"}},
    ],
    "domains": [
        {"name": "hog", "host": "h0", "vcpus": 2, "mem_mib": 32, "workload": {"kind": "cpu"}},
        {"name": "io", "host": "h1", "vcpus": 2, "mem_mib": 32, "workload": {"kind": "io", "think_ms": 2, "burst_us": 500}},
        {"name": "w2", "host": "h2", "vcpus": 1, "mem_mib": 32, "workload": {"kind": "memwrite", "dirty_mb_s": 40, "working_set_mib": 8}},
        {"name": "w0", "host": "h0", "vcpus": 1, "mem_mib": 32, "workload": {"kind": "memwrite", "dirty_mb_s": 40, "working_set_mib": 8}},
    ],
    "events": [
        {"at_ms": 200, "migrate": {"domain": "w2", "to": "h0"}},
        {"at_ms": 250, "migrate": {"domain": "w0", "to": "h1"}},
    ],
}


@pytest.mark.ray
def test_hosts_sharing_a_process_give_inlines_results(ray_session, tmp_path):
    import yaml

    p = tmp_path / "shared.yaml"
    p.write_text(yaml.safe_dump(SHARED))
    inline = simulate_file(p)
    res = simulate_file(p, backend="ray")
    assert res.summary["engine_process"] == {"h0": "h0", "h1": "h1", "h2": "h0"}
    assert res.summary["trace_digest"] == inline.summary["trace_digest"]
    assert [(m["domain"], m["status"], m["downtime_ms"], m["bytes_sent"]) for m in res.summary["migrations"]] == [
        (m["domain"], m["status"], m["downtime_ms"], m["bytes_sent"]) for m in inline.summary["migrations"]
    ]
    assert [(m["domain"], m["status"]) for m in res.summary["migrations"]] == [("w2", "completed"), ("w0", "completed")]
    for h in ("h0", "h1", "h2"):
        assert [r.digest for r in res.reports[h]] == [r.digest for r in inline.reports[h]]


@pytest.mark.ray
def test_the_embedded_raylet_may_start_a_clusters_actors_at_once(ray_session):
    """The raylet started by the test session (as by ``hvsim run``) got the startup concurrency
    that keeps Ray's worker-count notices off the terminal."""
    import os

    import psutil

    from cluster.raysession import STARTUP_CONCURRENCY, STARTUP_ENV

    raylets = [p for p in psutil.Process().children(recursive=True) if "raylet" in p.name()]
    assert raylets, "no raylet among this process's children"
    expected = os.environ.get(STARTUP_ENV, str(STARTUP_CONCURRENCY))
    assert all(p.environ().get(STARTUP_ENV) == expected for p in raylets)
