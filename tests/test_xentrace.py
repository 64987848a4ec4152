"""Xen's binary trace out: what hvsim writes is what xentrace writes, decoded by a reader built
from trace.h alone (tests/xentrace_reader.py), and it tells the same story as summary.json."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess

import pytest
from typer.testing import CliRunner

import golden
import xentrace_reader as xr
from cluster.cli import app
from cluster.xentrace import CPU_CHANGE_HEADER, TSC_BASE, TSC_HZ, TSC_PER_NS, host_trace, pcpu_windows, tie_levels, trace_files, trace_name
from hosts import tracelog as tl
from hosts.messages import PcpuReport

from conftest import CONFIGS, simulate_file

QUICKSTART = CONFIGS / "quickstart.yaml"
EMPTY_DIGEST = hashlib.blake2b(digest_size=16).hexdigest()


# --- the numbers are Xen's ------------------------------------------------------------------------


def test_every_emitted_event_has_the_number_and_length_trace_h_gives():
    """hvsim's table (hosts/tracelog.py) against the reader's, copied from trace.h and the
    schedulers' sources independently."""
    for number, name in tl.EMITTED.items():
        if number == tl.TRC_SCHED_RUNSTATE_CHANGE:
            assert number == xr.TRC_SCHED_RUNSTATE_CHANGE == 0x00021001
            continue
        assert xr.LAYOUT[number][0] == name, name
    assert set(xr.LAYOUT) == set(tl.EMITTED) - {tl.TRC_SCHED_RUNSTATE_CHANGE}


def test_trace_h_constants():
    # classes and subclasses (xen/include/public/trace.h)
    assert (tl.TRC_GEN, tl.TRC_SCHED, tl.TRC_HVM, tl.TRC_PV) == (0x0001F000, 0x0002F000, 0x0008F000, 0x0020F000)
    assert (tl.TRC_SCHED_MIN, tl.TRC_SCHED_CLASS, tl.TRC_SCHED_VERBOSE) == (0x00021000, 0x00022000, 0x00028000)
    assert (tl.TRACE_EXTRA_SHIFT, tl.TRACE_EXTRA_MAX, tl.TRC_HD_CYCLE_FLAG) == (28, 7, 0x80000000)
    assert tl.TRC_TRACE_CPU_CHANGE == 0x0001F003 and tl.TRC_LOST_RECORDS == 0x0001F001
    assert tl.TRC_SCHED_SWITCH == 0x0002800A and tl.TRC_SCHED_SWITCH_INFCONT == 0x00028011
    assert tl.TRC_PV_HYPERCALL_V2 == 0x0020100D and tl.hypercall_v2_arg_32(0) == 1 << 20
    assert tl.TRC_HVM_VMEXIT64 == 0x00081102 and tl.TRC_HVM_VMMCALL == 0x00082012
    # TRC_SCHED_CLASS_EVT: the scheduler id in bits 9-11
    assert tl.TRC_SCHED_ID_SHIFT == 9 and tl.TRC_SCHED_ID_MASK == 0xE00
    assert tl.TRC_CSCHED_TICKLE == 0x00022006
    assert tl.TRC_CSCHED2_TICKLE == 0x00022206 and tl.TRC_CSCHED2_SCHEDULE == 0x00022215
    assert tl.TRC_RTDS_BUDGET_BURN == 0x00022803
    # runstate changes carry the old and new states in the event number
    assert tl.runstate_event(1, 0) == 0x00021101 and tl.runstate_event(0, 2) == 0x00021021


def test_record_layout_and_cpu_change_windows():
    buf = tl.new_buffer()
    buf.extend((5, tl.TRC_SCHED_WAKE | 2 << 28, 3, 1))
    buf.extend((7, tl.TRC_HVM_VMENTRY, ))
    buf.extend((1 << 33, tl.TRC_CSCHED2_CREDIT_BURN | 4 << 28, 1 | 3 << 16, -5, -(1 << 31), 9))
    rep = PcpuReport("h", 3, 0, 0, 0, 0, "", b"", 0, {}, {}, {}, {}, {}, {}, {}, buf.tobytes())
    data = host_trace([rep])
    hdr, cpu, size = struct.unpack_from("<IiI", data, 0)
    assert hdr == CPU_CHANGE_HEADER == 0x2001F003 and cpu == 3 and size == len(data) - 12
    w0 = struct.unpack_from("<IIIII", data, 12)
    tsc = TSC_BASE + 4 * 5  # TSC = 4 GHz x time, from one second after boot
    assert w0 == (0x80000000 | 2 << 28 | 0x00028004, tsc & 0xFFFFFFFF, tsc >> 32, 3, 1)
    tr = xr.read(data)
    assert not tr.unknown and [r.name for r in tr.records] == ["TRC_SCHED_WAKE", "TRC_HVM_VMENTRY", "TRC_CSCHED2_CREDIT_BURN"]
    burn = tr.records[2]
    assert burn.tsc == TSC_BASE + (1 << 33) * TSC_PER_NS and burn.words == (1 | 3 << 16, (1 << 32) - 5, 1 << 31, 9)  # 32-bit two's complement
    # windows are cut at record boundaries and stay in time order
    assert len(pcpu_windows(list(tl.records(buf)), window_max=24)) == 3


def test_tsc_rate_is_exact():
    assert TSC_HZ == 4_000_000_000 and TSC_PER_NS == 4 and TSC_BASE == TSC_HZ
    assert trace_name("xentrace.bin", "host1", True) == "xentrace.host1.bin" and trace_name("t.bin", "h", False) == "t.bin"


# --- the quickstart trace against its summary ---------------------------------------------------------


def _decode(res, hosts):
    files = trace_files(res.reports, hosts)
    return {h: xr.read(files[trace_name("xentrace.bin", h, len(hosts) > 1)]) for h in hosts}


def _check_against_summary(res, traces):
    """Per-vCPU runstate ns, per-pCPU idle ns and the switch digest, from the records alone."""
    s = res.summary
    hosts = list(traces)
    dom0 = {d["host"]: d["uid"] for d in s["domains"] if d["dom0"]}
    rs = xr.per_vcpu_runstates(traces, dom0, TSC_PER_NS, s["sim_time_ns"], TSC_BASE)
    checked = 0
    for d in s["domains"]:
        for v in d["vcpus"]:
            want = [v["running_ns"], v["runnable_ns"], v["blocked_ns"], v["offline_ns"]]
            got = rs.get((d["uid"], v["id"]))
            if got is None:  # never changed state: offline since its creation
                assert want[:3] == [0, 0, 0], (d["name"], v["id"], want)
            else:
                assert got == want, (d["name"], v["id"])
                checked += 1
    for p in s["pcpus"]:
        idle = xr.idle_ns(traces[p["host"]], TSC_PER_NS, s["sim_time_ns"], TSC_BASE).get(p["id"], s["sim_time_ns"])
        assert idle == p["idle_ns"], p
    h = hashlib.blake2b(digest_size=16)
    for host in hosts:
        dig = xr.switch_digest(traces[host], dom0[host], TSC_PER_NS, TSC_BASE)
        for cpu in sorted(p["id"] for p in s["pcpus"] if p["host"] == host):
            h.update(f"{host}:{cpu}:{dig.get(cpu, EMPTY_DIGEST)};".encode())
    assert h.hexdigest() == s["trace_digest"], "the context switches of the digest are not those of the trace"
    return checked


@pytest.fixture(scope="module")
def quickstart():
    res = simulate_file(QUICKSTART, overrides=["run.xentrace=true"])
    return res, _decode(res, ["host0", "host1"])


def test_quickstart_trace_decodes_with_no_unknown_record(quickstart):
    res, traces = quickstart
    total: dict[str, int] = {}
    for tr in traces.values():
        assert tr.unknown == [] and tr.windows >= 2
        for k, n in xr.counts(tr).items():
            total[k] = total.get(k, 0) + n
    for kind in ("TRC_SCHED_RUNSTATE_CHANGE", "TRC_SCHED_SWITCH", "TRC_SCHED_SWITCH_INFPREV", "TRC_SCHED_SWITCH_INFNEXT",
                 "TRC_SCHED_SWITCH_INFCONT", "TRC_SCHED_CONTINUE_RUNNING", "TRC_SCHED_WAKE", "TRC_SCHED_BLOCK",
                 "TRC_SCHED_YIELD", "TRC_SCHED_SLEEP", "TRC_SCHED_DOM_ADD", "TRC_HVM_VMEXIT64", "TRC_HVM_VMMCALL",
                 "TRC_HVM_VMENTRY", "TRC_CSCHED_SCHEDULE", "TRC_CSCHED_TICKLE", "TRC_CSCHED_BOOST_START", "TRC_CSCHED_PICKED_CPU"):
        assert total.get(kind, 0) > 0, kind
    assert total["TRC_SCHED_SWITCH"] == res.summary["context_switches"]
    assert total["TRC_HVM_VMEXIT64"] == total["TRC_HVM_VMENTRY"] == total["TRC_HVM_VMMCALL"]


def test_quickstart_trace_equals_its_summary(quickstart):
    res, traces = quickstart
    assert _check_against_summary(res, traces) >= 10


def test_switch_records_name_the_vcpus_the_runstates_do(quickstart):
    """Each TRC_SCHED_SWITCH is followed by the prev's and next's runstate changes (core.c
    sched_switch_units), and INFPREV/INFNEXT name the same units."""
    _res, traces = quickstart
    for tr in traces.values():
        by_cpu: dict[int, list[xr.Rec]] = {}
        for r in tr.records:
            by_cpu.setdefault(r.cpu, []).append(r)
        for recs in by_cpu.values():
            for i, r in enumerate(recs):
                if r.event != xr.TRC_SCHED_SWITCH:
                    continue
                prev, nxt = recs[i - 2], recs[i - 1]
                assert prev.name == "TRC_SCHED_SWITCH_INFPREV" and nxt.name == "TRC_SCHED_SWITCH_INFNEXT"
                assert prev.words[:2] == r.words[:2] and nxt.words[:2] == r.words[2:]
                a, b = recs[i + 1], recs[i + 2]
                assert a.name == b.name == "TRC_SCHED_RUNSTATE_CHANGE"
                assert a.words[0] == r.words[1] | r.words[0] << 16 and (a.event >> 8) & 3 == xr.RUNNING
                assert b.words[0] == r.words[3] | r.words[2] << 16 and (b.event >> 4) & 3 == xr.RUNNING


@pytest.mark.parametrize("path,over", [
    (CONFIGS / "validation" / "credit2-cap.yaml", []),
    (CONFIGS / "validation" / "rtds-deadlines-global.yaml", []),
    (CONFIGS / "schedulers-compare.yaml", ["run.duration_ms=1500"]),
    (CONFIGS / "migration-web.yaml", ["run.duration_ms=6000"]),
    (CONFIGS / "dom0-io.yaml", ["run.duration_ms=1500"]),
], ids=["credit2-cap", "rtds-global", "schedulers-compare", "migration-web", "dom0-io"])
def test_other_schedulers_and_a_live_migration_trace_equals_the_summary(path, over):
    res = simulate_file(path, overrides=over + ["run.xentrace=true"])
    hosts = [p["host"] for p in res.summary["pcpus"]]
    traces = _decode(res, list(dict.fromkeys(hosts)))
    for tr in traces.values():
        assert tr.unknown == []
    _check_against_summary(res, traces)


def test_scheduler_class_records_of_credit2_and_rtds():
    res = simulate_file(CONFIGS / "schedulers-compare.yaml", overrides=["run.duration_ms=1500", "run.xentrace=true"])
    traces = _decode(res, ["h-credit", "h-credit2", "h-rtds", "h-null", "h-arinc653"])
    c2, rt = xr.counts(traces["h-credit2"]), xr.counts(traces["h-rtds"])
    for kind in ("TRC_CSCHED2_SCHEDULE", "TRC_CSCHED2_RUNQ_CANDIDATE", "TRC_CSCHED2_TICKLE_NEW", "TRC_CSCHED2_TICKLE",
                 "TRC_CSCHED2_RUNQ_POS", "TRC_CSCHED2_CREDIT_BURN", "TRC_CSCHED2_CREDIT_RESET"):
        assert c2.get(kind, 0) > 0, kind
    for kind in ("TRC_RTDS_SCHEDULE", "TRC_RTDS_BUDGET_BURN", "TRC_RTDS_RUNQ_PICK", "TRC_RTDS_BUDGET_REPLENISH", "TRC_RTDS_TICKLE"):
        assert rt.get(kind, 0) > 0, kind
    assert not any(k.startswith(("TRC_CSCHED", "TRC_RTDS")) for k in xr.counts(traces["h-null"]))


# --- tracing changes nothing ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["quickstart", "validation/credit2-cap", "validation/rtds-deadlines", "migration-web", "bench/mixed"])
def test_tracing_on_changes_no_result(name):
    path, over = next((p, o) for n, p, o in golden.cases() if n == name)
    off = golden.fingerprint(simulate_file(path, overrides=over).summary)
    on = simulate_file(path, overrides=over + ["run.xentrace=true"])
    recorded = json.loads(golden.GOLDEN.read_text())[name]
    assert golden.fingerprint(on.summary) == off == recorded
    assert all(r.xentrace for rs in on.reports.values() for r in rs)


def test_tracing_off_keeps_no_record():
    res = simulate_file(QUICKSTART)
    assert all(r.xentrace == b"" for rs in res.reports.values() for r in rs)


# --- the CLI ----------------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_xentrace_file_per_host(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["run", str(QUICKSTART), "--backend", "inline", "-q", "--out", str(out), "--xentrace", str(tmp_path / "q.bin"), "--set", "run.duration_ms=500"])
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in tmp_path.glob("q.*.bin"))
    assert files == ["q.host0.bin", "q.host1.bin"]
    assert not (out / "xentrace.bin").exists() and not list(out.glob("xentrace*"))
    s = json.loads((out / "summary.json").read_text())
    assert s["xentrace"]["tsc_hz"] == TSC_HZ and len(s["xentrace"]["files"]) == 2
    assert "--cpu-hz=4G" in r.output
    for f in files:
        assert xr.read((tmp_path / f).read_bytes()).unknown == []


def test_run_xentrace_writes_xentrace_bin_into_the_run_directory(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["run", str(CONFIGS / "validation" / "credit-case-a.yaml"), "--backend", "inline", "-q", "--out", str(out), "--set", "run.xentrace=true", "--set", "run.duration_ms=300"])
    assert r.exit_code == 0, r.output
    tr = xr.read((out / "xentrace.bin").read_bytes())
    assert tr.unknown == [] and tr.records


def test_cli_xentrace_into_a_missing_directory_is_bad_input(tmp_path):
    r = runner.invoke(app, ["run", str(QUICKSTART), "--backend", "inline", "-q", "--out", str(tmp_path / "r"), "--xentrace", str(tmp_path / "nope" / "t.bin")])
    assert r.exit_code == 2 and "--xentrace" in r.output and "Traceback" not in r.output


@pytest.mark.ray
def test_ray_backend_writes_the_same_trace(ray_session):
    path = CONFIGS / "validation" / "credit2-weights.yaml"
    over = ["run.duration_ms=400", "run.xentrace=true"]
    a = simulate_file(path, overrides=over)
    b = simulate_file(path, backend="ray", overrides=over)
    hosts = list(dict.fromkeys(p["host"] for p in a.summary["pcpus"]))
    assert trace_files(a.reports, hosts) == trace_files(b.reports, hosts)


# --- one instant on several pCPUs, and xenalyze itself -------------------------------------------------


def test_same_instant_moves_between_pcpus_get_ordered_ticks():
    """A vCPU leaving pCPU 1 and starting on pCPU 0 at one ns: pCPU 0's records get the later
    tick (the state before says which came first), and the ns stays exact."""
    v = 1 | 5 << 16
    before = [(10, tl.runstate_event(1, 0), (v,))]  # it started running on pCPU 1 at 10 ns
    recs = {
        0: [(20, tl.TRC_SCHED_SWITCH, (0x7FFF, 0, 5, 1)), (20, tl.runstate_event(1, 0), (v,)), (20, tl.TRC_SCHED_WAKE, (3, 0))],
        1: before + [(20, tl.runstate_event(0, 1), (v,))],
    }
    levels, unresolved = tie_levels(recs)
    assert unresolved == 0 and levels[1] == [0, 0] and levels[0] == [1, 1, 1]
    rep = lambda cpu: PcpuReport("h", cpu, 0, 0, 0, 0, "", b"", 0, {}, {}, {}, {}, {}, {}, {}, _buf(recs[cpu]))  # noqa: E731
    tr = xr.read(host_trace([rep(0), rep(1)]))
    ticks = {(r.cpu, r.name): r.tsc - TSC_BASE for r in tr.records}
    assert ticks[(1, "TRC_SCHED_RUNSTATE_CHANGE")] == 20 * TSC_PER_NS  # the last one of pCPU 1
    assert ticks[(0, "TRC_SCHED_SWITCH")] == 20 * TSC_PER_NS + 1 and all((t - TSC_BASE) // TSC_PER_NS in (10, 20) for t in (r.tsc for r in tr.records))


def _buf(recs):
    b = tl.new_buffer()
    for t, ev, args in recs:
        b.extend((t, ev | len(args) << 28, *args))
    return b.tobytes()


@pytest.mark.parametrize("path,over", [(QUICKSTART, []), (CONFIGS / "xl" / "xl-guests.yaml", []), (CONFIGS / "migration-web.yaml", ["run.duration_ms=6000"])],
                         ids=["quickstart", "xl-guests", "migration-web"])
def test_every_same_instant_order_fits_in_the_ticks(path, over):
    res = simulate_file(path, overrides=over + ["run.xentrace=true"])
    for reps in res.reports.values():
        _levels, unresolved = tie_levels({r.pcpu: list(tl.records(r.xentrace)) for r in reps})
        assert unresolved == 0


@pytest.mark.skipif(shutil.which("xenalyze") is None, reason="xenalyze (Xen's tools, e.g. Debian's xen-utils-common) is not installed")
@pytest.mark.parametrize("path", [QUICKSTART, CONFIGS / "xl" / "xl-guests.yaml", CONFIGS / "schedulers-compare.yaml"], ids=["quickstart", "xl-guests", "schedulers-compare"])
def test_xenalyze_reads_the_trace(tmp_path, path):
    res = simulate_file(path, overrides=["run.duration_ms=1000", "run.xentrace=true"])
    hosts = list(dict.fromkeys(p["host"] for p in res.summary["pcpus"]))
    for name, data in trace_files(res.reports, hosts).items():
        f = tmp_path / name
        f.write_bytes(data)
        p = subprocess.run(["xenalyze", "--summary", f"--cpu-hz={TSC_HZ // 1_000_000_000}G", str(f)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        assert "skew" not in p.stderr and "FATAL" not in p.stderr, p.stderr[-2000:]
        assert "Total time: 1.00 seconds (using cpu speed 4.00 GHz)" in p.stdout
