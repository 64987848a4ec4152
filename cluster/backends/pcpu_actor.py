"""The pCPU actor: one per pCPU of every host (``cluster.backends.ray_backend`` places them).

Most of them step nothing (one process per host or fewer is faster on few cores), so this
module imports only the standard library, ray and msgpack: the engine (``hosts``, numpy,
pydantic, the shared-memory ports) is imported by the methods that run it. Ray imports this
module in every actor's worker; parked actors then start without paying for the engine
(about 0.2 s of CPU each, 48 of them in a 16-host cluster of 4 pCPUs on two cores).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Iterable

import msgpack
import ray

if TYPE_CHECKING:
    from hosts.host import HostEngine, HostSpec
    from hosts.memory import HostMemory
    from hosts.pcpu import PcpuCore

    from cluster.backends.shm import Doorbells, Segment, ShmPorts


def unpack_doc(b: bytes) -> dict[str, Any]:
    """A config document sent as msgpack (lists stay lists)."""
    doc: dict[str, Any] = msgpack.unpackb(b, raw=False, strict_map_key=False)
    return doc


def _spec(host_cfg: bytes, run_cfg: bytes) -> HostSpec:
    from cluster.config import host_spec

    return host_spec(unpack_doc(host_cfg), unpack_doc(run_cfg))


def _mem_bytes(spec: HostSpec) -> int:
    from hosts.memory import buffer_size

    return buffer_size(spec.mem_pages, spec.full_memory)


def _group_cores(spec: HostSpec, group: Iterable[int], memory: HostMemory, seed: int) -> dict[int, PcpuCore]:
    """The cores one process steps. Like inline, they hand vCPU objects to each other (debug
    checks keep the codec in the loop); what leaves the process is sealed (``shm.seal_*``)."""
    from hosts.host import make_core

    cores = {c: make_core(spec, c, {}, memory, seed, 0) for c in group}
    for core in cores.values():
        core.wire = core.checks
    return cores


class _Stepped:
    """A host whose engine runs in this process: its segment, doorbells, cores and engine."""

    def __init__(self, spec: HostSpec, seg: Segment, bells: Doorbells, groups: list[tuple[int, ...]]):
        self.spec = spec
        self.seg = seg
        self.bells = bells
        self.groups = groups
        self.ports: ShmPorts | None = None
        self.host: HostEngine | None = None


class PcpuActor:
    """One pCPU. Thin: all logic is in PcpuCore and HostEngine.

    A *master* runs host engines: its own host's (as pCPU 0) and, where a node's cores are
    fewer than its hosts, other hosts' on the same node (``ray_backend.steppers``). Every host a
    master runs is addressed by name. A *follower* steps a group of its host's pCPUs inside one
    long ``serve`` call; every other actor waits in ``park``."""

    def __init__(self, host_cfg: bytes, run_cfg: bytes, pcpu: int, seed: int, tag: str):
        self.host_cfg = host_cfg
        self.run_cfg = run_cfg
        self.pcpu = pcpu
        self.seed = seed
        self.tag = tag
        self.seg: Segment | None = None
        self.stepped: dict[str, _Stepped] = {}

    def whoami(self) -> tuple[int, str]:
        return os.getpid(), ray.get_runtime_context().get_node_id()

    def park(self) -> None:
        """For an actor that steps nothing: wait in a call until killed. An idle Ray actor's
        main thread wakes every 10 ms to check for signals (about 0.5% of a core each, measured);
        one inside a call does not."""
        threading.Event().wait()

    # --- master: the host engines this process runs ---------------------------------------------
    def create_segment(self, host_cfg: bytes | None, groups: list[list[int]]) -> tuple[str, str, int]:
        """``host_cfg``: another host's config to run here (None: this actor's own host).
        ``groups``: that host's pCPUs by stepping process, this process's (with pCPU 0) first."""
        from cluster.backends.shm import Doorbells, Segment

        spec = _spec(self.host_cfg if host_cfg is None else host_cfg, self.run_cfg)
        name = f"hvsim-{self.tag}-{spec.name}"
        gs = [tuple(g) for g in groups]
        seg = Segment(name, _mem_bytes(spec), spec.nr_pcpus, create=True)
        bells = Doorbells([g[0] for g in gs[1:]])
        self.stepped[spec.name] = _Stepped(spec, seg, bells, gs)
        return name, bells.dir, os.getpid()

    def start_master(self, host: str, follower_pids: dict[str, int]) -> bool:
        """``follower_pids``: the pid of each other stepping process of ``host``, by its first pCPU."""
        from hosts.host import HostEngine
        from hosts.memory import HostMemory

        from cluster.backends.shm import ShmPorts

        st = self.stepped[host]
        memory = HostMemory(st.seg.memory_view(), st.spec.mem_pages, st.spec.full_memory, master=True)
        cores = _group_cores(st.spec, st.groups[0], memory, self.seed)
        ports = ShmPorts(st.seg, st.bells, {c: core.step for c, core in cores.items()}, {g[0]: g for g in st.groups[1:]}, st.spec.name)
        ports.follower_pids = {int(k): int(v) for k, v in follower_pids.items()}
        st.ports = ports
        st.host = HostEngine(st.spec, ports, memory, self.seed)
        # every pCPU has mapped the segment and opened its doorbell: drop the names
        st.seg.unlink()
        st.bells.unlink_all()
        return True

    def _engine(self, host: str) -> HostEngine:
        st = self.stepped.get(host)
        if st is None or st.host is None:
            from cluster.errors import ManagerError

            raise ManagerError(f"host {host} is not run by this process (it runs {sorted(self.stepped)})")
        return st.host

    def call(self, host: str, req: bytes) -> bytes:
        """One toolstack request (``hosts.hostops``) on ``host``."""
        from hosts import hostops
        from hosts.wire import packb, unpackb

        return packb(hostops.serve(self._engine(host), unpackb(req)))

    def call_with(self, host: str, req: bytes, answer: bytes) -> bytes:
        """``call`` whose last field is another host's answer, passed actor to actor."""
        from hosts import hostops
        from hosts.wire import packb, unpackb

        return packb(hostops.serve(self._engine(host), hostops.with_peer_answer(unpackb(req), unpackb(answer))))

    # --- the other stepping processes -----------------------------------------------------------
    def attach(self, name: str, fifo_dir: str, master_pid: int, group: list[int]) -> int:
        """Map the host's segment and build the cores of ``group`` (this pCPU first)."""
        from hosts.memory import HostMemory

        from cluster.backends.shm import Doorbells, Segment

        spec = _spec(self.host_cfg, self.run_cfg)
        self.seg = Segment(name, _mem_bytes(spec), spec.nr_pcpus, create=False)
        self.bells = Doorbells([self.pcpu], fifo_dir)
        self.cmd_fd = self.bells.open(f"cmd{self.pcpu}")
        self.done_fd = self.bells.open("done")
        self.master_pid = master_pid
        memory = HostMemory(self.seg.memory_view(), spec.mem_pages, spec.full_memory, master=False)
        self.cores = _group_cores(spec, group, memory, self.seed)
        return os.getpid()

    def serve(self) -> bytes:
        """Step this group until the run's end; the result is its pCPUs' reports by pCPU."""
        from hosts.wire import packb

        from cluster.backends.shm import serve

        try:
            os.nice(2)  # a woken pCPU should not preempt its host's master on a busy machine
        except OSError:
            pass
        assert self.seg is not None
        reports = serve(self.seg, self.cmd_fd, self.done_fd, {c: core.step for c, core in self.cores.items()}, self.pcpu, self.master_pid)
        return packb(reports)
