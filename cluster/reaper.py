"""The reaper: cleans up after a driver that died (see ``cluster.raysession``).

Usage: ``python -m cluster.reaper PARENT_PID TMPDIR TAG`` with a pipe on stdin. The parent
writes lines ``pid:create_time ...`` naming the processes to clean up, and ``DONE`` when it
has shut Ray down itself. On EOF without ``DONE`` (the parent died) the reaper terminates the
named processes that are still the same processes (checked by creation time), then kills what
remains, and removes TMPDIR and any shared-memory name of the run (``/dev/shm/hvsim-TAG-*``).
On ``DONE`` it still removes TMPDIR and those names, and checks that no named process is left.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import time


def main() -> int:
    parent, tmpdir, tag = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    procs: dict[int, float] = {}
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
            text = line.decode(errors="replace").strip()
            if text == "DONE":
                done = True
                continue
            for item in text.split():
                try:
                    pid, ct = item.split(":")
                    procs[int(pid)] = float(ct)
                except ValueError:
                    pass
    try:
        import psutil
    except ImportError:  # pragma: no cover
        psutil = None
    if psutil is not None and procs:
        alive = []
        for pid, ct in procs.items():
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - ct) < 0.01:
                    alive.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if alive and done:
            time.sleep(2.0)  # a normal shutdown may still be finishing
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
    shutil.rmtree(tmpdir, ignore_errors=True)
    for path in glob.glob(f"/dev/shm/hvsim-{tag}-*"):
        try:
            os.unlink(path)
        except OSError:
            pass
    del parent
    return 0


if __name__ == "__main__":
    sys.exit(main())
