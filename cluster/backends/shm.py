"""A host's fast lane: shared-memory mailboxes and FIFO doorbells between its pCPU actors.

One Ray call per pCPU per epoch would cost more than the simulation itself (ARCHITECTURE.md:
~0.8 ms per call, ~8.5 ms for a barrier over 8 actors). So a host's pCPU actors talk through
the host's shared-memory segment instead: the master (pCPU 0's actor) writes each pCPU's
command into that pCPU's *in* slot and rings its doorbell (one byte into a named FIFO); the
pCPU, blocked in a long-running ``serve`` call, wakes, steps its ``PcpuCore``, writes the
reply into its *out* slot and rings the master's doorbell. A round is two hops through the
kernel (~0.06 ms for four actors on two cores, measured), not two Ray calls.

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

from hosts.messages import Command, Finish, Reply
from hosts.wire import message, packb, unpackb

__all__ = ["Doorbells", "Segment", "ShmPorts", "SlotReply", "Stop", "packb", "serve", "unpackb"]

from cluster.errors import TransportError


@message
class Stop(NamedTuple):
    """The master tells a follower pCPU to leave its serve loop (no report)."""


@message
class SlotReply(NamedTuple):
    """What a follower writes back: its reply, or the traceback of what it raised."""

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

    def write(self, direction: int, c: int, data: bytes) -> None:
        if len(data) + HDR.size > SLOT_BYTES:
            raise TransportError(
                f"message of {len(data)} bytes for pCPU {c} exceeds the {SLOT_BYTES >> 20} MiB mailbox; "
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
    """Named FIFOs: one per follower pCPU (commands) and one for the master (replies)."""

    def __init__(self, nr_pcpus: int, directory: str | None = None):
        self.dir = directory or tempfile.mkdtemp(prefix="hvsim-fifo-")
        self.nr = nr_pcpus
        if directory is None:
            for c in range(1, nr_pcpus):
                os.mkfifo(os.path.join(self.dir, f"cmd{c}"))
            os.mkfifo(os.path.join(self.dir, "done"))
        self.fds: dict[str, int] = {}

    def open(self, name: str) -> int:
        fd = os.open(os.path.join(self.dir, name), os.O_RDWR)  # O_RDWR: never blocks on open
        self.fds[name] = fd
        return fd

    def unlink_all(self) -> None:
        for c in range(1, self.nr):
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


class ShmPorts:
    """The master's side: ``exchange`` commands with its pCPUs over the mailboxes."""

    def __init__(self, seg: Segment, bells: Doorbells, local_step: Callable[[Command], Reply], host: str):
        self.seg = seg
        self.host = host
        self.local_step = local_step
        self.cmd_fds = {c: bells.open(f"cmd{c}") for c in range(1, seg.nr)}
        self.done_fd = bells.open("done")
        self.follower_pids: dict[int, int] = {}
        self.exchanges = 0

    def exchange(self, cmds: dict[int, Command]) -> dict[int, Any]:
        self.exchanges += 1
        followers = [c for c in cmds if c != 0]
        for c in followers:
            self.seg.write(IN, c, packb(cmds[c]))
        for c in followers:  # ring only once every mailbox is written
            os.write(self.cmd_fds[c], b"x")
        out: dict[int, Any] = {}
        if 0 in cmds:
            out[0] = self.local_step(cmds[0])
        self._wait(len(followers))
        for c in followers:
            rep = self.seg.read(OUT, c)
            if type(rep) is not SlotReply or not rep.ok:
                raise TransportError(f"host {self.host}: pCPU {c} failed:\n{rep.payload if type(rep) is SlotReply else rep}")
            out[c] = rep.payload
        return out

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


def serve(seg: Segment, cmd_fd: int, done_fd: int, step: Callable[[Command], Reply], pcpu: int, leader_pid: int) -> Any:
    """A follower pCPU's loop: wait for a command, step, reply. Returns the final report."""
    while True:
        r, _, _ = select.select([cmd_fd], [], [], POLL_S)
        if not r:
            if not _alive(leader_pid):
                return None
            continue
        os.read(cmd_fd, 1)
        cmd = seg.read(IN, pcpu)
        if type(cmd) is Stop:
            return None
        try:
            reply = step(cmd)
        except Exception:
            seg.write(OUT, pcpu, packb(SlotReply(False, traceback.format_exc())))
            os.write(done_fd, b"x")
            continue
        if type(cmd) is Finish:
            seg.write(OUT, pcpu, packb(SlotReply(True, None)))
            os.write(done_fd, b"x")
            return reply
        seg.write(OUT, pcpu, packb(SlotReply(True, reply)))
        os.write(done_fd, b"x")
