"""A host's fast lane: shared-memory mailboxes and FIFO doorbells between its pCPU actors.

One Ray call per pCPU per epoch would cost more than the simulation itself (ARCHITECTURE.md:
~0.8 ms per call, ~8.5 ms for a barrier over 8 actors). So a host's pCPU actors talk through
the host's shared-memory segment instead: the master (pCPU 0's actor) writes a command into a
stepping process's *in* slot and rings its doorbell (one byte into a named FIFO); that
process, blocked in a long-running ``serve`` call, wakes, steps its pCPUs' cores, writes
the replies into its *out* slot and rings the master's doorbell. A round is two hops through
the kernel (~0.06 ms for four actors on two cores, measured), not two Ray calls.

A host's pCPUs are stepped by one or more processes (*groups* of consecutive pCPUs, see
``cluster.backends.ray_backend.pcpu_groups``): the master steps its own group in-process and
each other group's first pCPU actor steps the rest of its group. One group per pCPU is the
classic layout; fewer groups than pCPUs suit a node with fewer cores than pCPUs, where waking
one process per pCPU at every boundary costs more than the pCPUs' own work. A group's slot
spans its pCPUs' slots. The epoch protocol, and so every result, is the same for any grouping.

The same segment holds the host's guest memory (``hosts.memory``), so a host is one segment.
Its name and the FIFOs' paths are unlinked as soon as every pCPU has opened them: mappings and
open descriptors stay valid, and nothing is left in /dev/shm or on disk whatever happens to
the processes afterwards.

Messages are msgpack through ``hosts.wire`` (named message types survive; sequences come back
as tuples); never pickle.
"""

from __future__ import annotations

import os
import select
import struct
import sys
import tempfile
import traceback
from multiprocessing import resource_tracker, shared_memory
from typing import Any, Callable, NamedTuple

from hosts.codec import pack_vcpu
from hosts.messages import Command, Finish, Reply, Run, RunReply, Xfer, XferOut
from hosts.sched.base import UnitRecord
from hosts.vcpu import VcpuState
from hosts.wire import message, packb, unpackb

__all__ = ["Doorbells", "GroupCmd", "Segment", "ShmPorts", "SlotReply", "Stop", "packb", "serve", "unpackb"]

from cluster.errors import TransportError


@message
class Stop(NamedTuple):
    """The master tells a follower pCPU to leave its serve loop (no report)."""


@message
class GroupCmd(NamedTuple):
    """The master's commands for the pCPUs one process steps, by pCPU (handled in that order)."""

    cmds: dict[int, Command]


@message
class SlotReply(NamedTuple):
    """What a stepping process writes back: its pCPUs' replies by pCPU (None after ``Finish``:
    the reports go back as the ``serve`` call's result), or the traceback of what it raised."""

    ok: bool
    payload: Any

SLOT_BYTES = 8 << 20  # per pCPU and direction; tmpfs backs only the pages touched
HDR = struct.Struct("<Q")
POLL_S = 2.0


def mailbox_bytes(nr_pcpus: int) -> int:
    return 2 * nr_pcpus * SLOT_BYTES


class Segment:
    """The host's segment: [guest memory][in slots][out slots]."""

    def __init__(self, name: str, mem_bytes: int, nr_pcpus: int, create: bool):
        self.name = name
        self.nr = nr_pcpus
        self.mem_bytes = (mem_bytes + 4095) // 4096 * 4096
        size = self.mem_bytes + mailbox_bytes(nr_pcpus)
        self.shm = _untracked_shm(name, create, size if create else 0)
        buf = self.shm.buf
        assert buf is not None
        self.buf: memoryview = buf
        self.linked = True

    def memory_view(self) -> memoryview:
        return self.buf[: self.mem_bytes]

    def _slot(self, direction: int, c: int) -> int:
        return self.mem_bytes + (direction * self.nr + c) * SLOT_BYTES

    def write(self, direction: int, c: int, data: bytes, slots: int = 1) -> None:
        """Write into pCPU ``c``'s slot, which may span ``slots`` consecutive pCPUs' slots."""
        if len(data) + HDR.size > SLOT_BYTES * slots:
            raise TransportError(
                f"message of {len(data)} bytes for pCPU {c} exceeds the {SLOT_BYTES * slots >> 20} MiB mailbox; "
                "this is a bug in hvsim (or an unusually large domain table)"
            )
        off = self._slot(direction, c)
        self.buf[off + HDR.size : off + HDR.size + len(data)] = data
        HDR.pack_into(self.buf, off, len(data))

    def read(self, direction: int, c: int) -> Any:
        off = self._slot(direction, c)
        (n,) = HDR.unpack_from(self.buf, off)
        return unpackb(self.buf[off + HDR.size : off + HDR.size + n])

    def unlink(self) -> None:
        if self.linked:
            orig = resource_tracker.unregister
            resource_tracker.unregister = lambda *a, **k: None
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
            finally:
                resource_tracker.unregister = orig
            self.linked = False

    def close(self) -> None:
        self.buf = memoryview(b"")
        try:
            self.shm.close()
        except BufferError:
            pass  # numpy views still alive; the mapping goes with the process


IN, OUT = 0, 1


def _untracked_shm(name: str, create: bool, size: int) -> shared_memory.SharedMemory:
    """A SharedMemory the multiprocessing resource tracker does not follow.

    We unlink the name ourselves as soon as every pCPU has mapped it. Before Python 3.13 every
    SharedMemory registers with a tracker that may be shared by several Ray workers and would
    unlink (and warn) again at exit; 3.13 has ``track=False`` for this.
    """
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, create=create, size=size, track=False)  # type: ignore[call-arg,unused-ignore]
    orig = resource_tracker.register
    resource_tracker.register = lambda *a, **k: None
    try:
        return shared_memory.SharedMemory(name=name, create=create, size=size)
    finally:
        resource_tracker.register = orig


class Doorbells:
    """Named FIFOs: one per stepping process other than the master's (commands, named after
    the process's first pCPU) and one for the master (replies)."""

    def __init__(self, leaders: list[int], directory: str | None = None):
        self.dir = directory or tempfile.mkdtemp(prefix="hvsim-fifo-")
        self.leaders = list(leaders)
        if directory is None:
            for c in self.leaders:
                os.mkfifo(os.path.join(self.dir, f"cmd{c}"))
            os.mkfifo(os.path.join(self.dir, "done"))
        self.fds: dict[str, int] = {}

    def open(self, name: str) -> int:
        fd = os.open(os.path.join(self.dir, name), os.O_RDWR)  # O_RDWR: never blocks on open
        self.fds[name] = fd
        return fd

    def unlink_all(self) -> None:
        for c in self.leaders:
            try:
                os.unlink(os.path.join(self.dir, f"cmd{c}"))
            except FileNotFoundError:
                pass
        try:
            os.unlink(os.path.join(self.dir, "done"))
        except FileNotFoundError:
            pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _sealed(v: VcpuState) -> bytes:
    """A vCPU object's record. Within a process a scheduler may hand its unit record over with
    the object (``PcpuScheduler.keeps_record``); across processes it travels as its dict."""
    if isinstance(v.sched, UnitRecord):
        v.sched = v.sched.to_wire()
    return pack_vcpu(v, with_sched=True)


def seal_cmd(cmd: Command) -> Command:
    """``cmd`` fit for another process: a vCPU handed over as an object (pCPUs of one process
    do that, as inline) travels as its record, which the receiving pCPU decodes."""
    if type(cmd) is not Run or not any(type(it) is Xfer and type(it.vcpu) is VcpuState for it in cmd.inbox):
        return cmd
    inbox = tuple(it._replace(vcpu=_sealed(it.vcpu)) if type(it) is Xfer and type(it.vcpu) is VcpuState else it for it in cmd.inbox)
    return cmd._replace(inbox=inbox)


def seal_reply(rep: Reply) -> Reply:
    """``rep`` fit for another process (see ``seal_cmd``): vCPUs leaving as objects become records."""
    if type(rep) is not RunReply or not any(type(m) is XferOut and type(m.vcpu) is VcpuState for m in rep.out):
        return rep
    out = [m._replace(vcpu=_sealed(m.vcpu)) if type(m) is XferOut and type(m.vcpu) is VcpuState else m for m in rep.out]
    return rep._replace(out=out)


class ShmPorts:
    """The master's side: ``exchange`` commands with its host's stepping processes.

    ``local``: the pCPUs the master steps itself (pCPU -> step function); ``groups``: for every
    other stepping process, its first pCPU -> the pCPUs it steps."""

    def __init__(self, seg: Segment, bells: Doorbells, local: dict[int, Callable[[Command], Reply]], groups: dict[int, tuple[int, ...]], host: str):
        self.seg = seg
        self.host = host
        self.local = local
        self.groups = groups
        self.group_of = {c: lead for lead, members in groups.items() for c in members}
        self.cmd_fds = {lead: bells.open(f"cmd{lead}") for lead in groups}
        self.done_fd = bells.open("done")
        self.follower_pids: dict[int, int] = {}  # first pCPU of a stepping process -> its pid
        self.exchanges = 0

    def exchange(self, cmds: dict[int, Command]) -> dict[int, Any]:
        self.exchanges += 1
        remote: dict[int, dict[int, Command]] = {}
        group_of = self.group_of
        for c, cmd in cmds.items():
            lead = group_of.get(c)
            if lead is not None:
                remote.setdefault(lead, {})[c] = seal_cmd(cmd)
        for lead, sub in remote.items():
            self.seg.write(IN, lead, packb(GroupCmd(sub)), len(self.groups[lead]))
        for lead in remote:  # ring only once every mailbox is written
            os.write(self.cmd_fds[lead], b"x")
        got: dict[int, Any] = {}
        for c, cmd in cmds.items():
            step = self.local.get(c)
            if step is not None:
                got[c] = step(cmd)
        self._wait(len(remote))
        for lead in remote:
            rep = self.seg.read(OUT, lead)
            if type(rep) is not SlotReply or not rep.ok:
                raise TransportError(f"host {self.host}: the process stepping pCPUs {list(self.groups[lead])} failed:\n{rep.payload if type(rep) is SlotReply else rep}")
            if rep.payload is None:
                got.update(dict.fromkeys(remote[lead]))
            else:
                got.update(rep.payload)
        return {c: got[c] for c in cmds}  # in the order asked (pCPU order), as inline

    def _wait(self, n: int) -> None:
        got = 0
        while got < n:
            r, _, _ = select.select([self.done_fd], [], [], POLL_S)
            if not r:
                dead = [c for c, pid in self.follower_pids.items() if not _alive(pid)]
                if dead:
                    raise TransportError(f"host {self.host}: pCPU actor(s) {dead} died")
                continue
            got += len(os.read(self.done_fd, n - got))

    def stop(self) -> None:
        for c, fd in self.cmd_fds.items():
            try:
                self.seg.write(IN, c, packb(Stop()))
                os.write(fd, b"x")
            except (OSError, TypeError):
                pass


def serve(seg: Segment, cmd_fd: int, done_fd: int, steps: dict[int, Callable[[Command], Reply]], slot: int, leader_pid: int) -> dict[int, Any] | None:
    """A stepping process's loop: wait for a command, step its pCPUs, reply. Returns the final
    reports by pCPU (None when stopped, or when the master is gone)."""
    while True:
        r, _, _ = select.select([cmd_fd], [], [], POLL_S)
        if not r:
            if not _alive(leader_pid):
                return None
            continue
        os.read(cmd_fd, 1)
        slots = len(steps)
        try:
            cmd = seg.read(IN, slot)
            if type(cmd) is Stop:
                return None
            if type(cmd) is not GroupCmd:
                raise TransportError(f"unknown command {type(cmd).__name__} for the process stepping pCPUs {sorted(steps)}")
            replies = {c: steps[c](x) for c, x in cmd.cmds.items()}
        except Exception:
            seg.write(OUT, slot, packb(SlotReply(False, traceback.format_exc())), slots)
            os.write(done_fd, b"x")
            continue
        if any(type(x) is Finish for x in cmd.cmds.values()):
            seg.write(OUT, slot, packb(SlotReply(True, None)), slots)
            os.write(done_fd, b"x")
            return replies
        seg.write(OUT, slot, packb(SlotReply(True, {c: seal_reply(r) for c, r in replies.items()})), slots)
        os.write(done_fd, b"x")
