"""The reaper: cleans up after a driver that died, however it died (SIGKILL included).

``Reaper.start(tag)`` spawns ``python -m cluster.reaper PARENT_PID TAG`` with a pipe on its
stdin that only the driver holds. The driver tells it, line by line, what to clean if it dies:
``PROC pid:create_time ...`` (processes, e.g. the local Ray's), ``DIR path`` (temporary
directories, a half-built run directory). ``DONE`` means the driver cleaned up itself. On EOF
(the driver is gone) the reaper terminates the named processes that are still the same
processes (checked by creation time) and kills what remains, removes the directories, and
unlinks any shared-memory name of the run (``/dev/shm/hvsim-TAG-*``). After ``DONE`` it only
does the last step and removes directories the driver forgot (none, normally).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from typing import Union

StrPath = Union[str, "os.PathLike[str]"]


class Reaper:
    """Driver side of the reaper."""

    def __init__(self, proc: subprocess.Popen[bytes], fd: int):
        self.proc = proc
        self.fd: int | None = fd  # None once DONE was said
        self.dirs: list[str] = []

    @classmethod
    def start(cls, tag: str) -> "Reaper":
        r, w = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.reaper", str(os.getpid()), tag],
            stdin=r,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C to our process group must not reach it
        )
        os.close(r)
        return cls(proc, w)

    def _say(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (line + "\n").encode())
        except OSError:
            pass

    def watch_dir(self, path: StrPath) -> None:
        self._say(f"DIR {os.fspath(path)}")

    def forget_dir(self, path: StrPath) -> None:
        self._say(f"KEEP {os.fspath(path)}")

    def watch_children(self) -> None:
        """Name every descendant of this process (e.g. a local Ray just started)."""
        try:
            import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs installed (types-psutil)

            kids = [p for p in psutil.Process().children(recursive=True) if p.pid != self.proc.pid]
            self._say("PROC " + " ".join(f"{p.pid}:{p.create_time()}" for p in kids))
        except Exception:
            pass

    def done(self) -> None:
        if self.fd is None:
            return
        self._say("DONE")
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.fd = None
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> int:
    tag = sys.argv[2]
    procs: dict[int, float] = {}
    dirs: list[str] = []
    done = False
    buf = b""
    while True:
        try:
            chunk = os.read(0, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            kind, _, rest = line.decode(errors="replace").strip().partition(" ")
            if kind == "DONE":
                done = True
            elif kind == "DIR":
                dirs.append(rest)
            elif kind == "KEEP":
                dirs = [d for d in dirs if d != rest]
            elif kind == "PROC":
                for item in rest.split():
                    try:
                        pid, ct = item.split(":")
                        procs[int(pid)] = float(ct)
                    except ValueError:
                        pass
    if not done and procs:
        _kill(procs)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    for path in glob.glob(f"/dev/shm/hvsim-{tag}-*"):
        try:
            os.unlink(path)
        except OSError:
            pass
    return 0


def _kill(procs: dict[int, float]) -> None:
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs installed (types-psutil)
    except ImportError:  # pragma: no cover
        return
    alive: list[psutil.Process] = []
    for pid, ct in procs.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - ct) < 0.01:
                alive.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    time.sleep(0.5)  # Ray's own fate-sharing usually gets there first
    alive = [p for p in alive if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=5)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    sys.exit(main())
