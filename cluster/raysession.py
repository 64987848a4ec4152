"""Starting, joining and leaving Ray, leaving nothing behind.

* Embedded (no address): start a private local Ray in a fresh temporary directory, with the
  dashboard off. A small *reaper* process (``python -m cluster.reaper``) is started first; it
  waits on a pipe only this process holds and, when the pipe breaks (this process exited,
  however it died, SIGKILL included), it kills whatever is left of the Ray processes it saw
  being born (they are descendants of this process) and removes the temporary directory and
  any of the run's shared-memory names. On a normal exit we shut Ray down first and the reaper
  only finds nothing to do.
* ``--address`` (``auto`` or ``HOST:PORT``): join an existing cluster. We never stop a cluster we
  did not start: leaving only disconnects this driver. Ray's token authentication stays on; a
  driver on the cluster's machine finds the token by itself.
* Already initialised in this process (the test suite starts Ray once): reuse it, leave it up.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.reaper import Reaper

# Actors' and Ray's own worker logs stay in the session's log directory unless asked for:
# forwarded, Ray's notices (e.g. on starting many actors on few cores) would mix with hvsim's
# tables and --json output. Failures reach the driver as errors either way.
LOG_TO_DRIVER = os.environ.get("HVSIM_RAY_LOGS", "") not in ("", "0")


#: worker processes the embedded raylet may start at once (unless the environment says)
STARTUP_ENV = "RAY_worker_maximum_startup_concurrency"
STARTUP_CONCURRENCY = 256


def run_id() -> str:
    return uuid.uuid4().hex[:10]


class RaySession:
    def __init__(self, address: str | None = None, num_cpus: int | None = None, run_tag: str | None = None, reaper: Reaper | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self.run_tag = run_tag or run_id()
        self.reaper = reaper
        self.own_reaper = False
        self.owned = False  # we started the cluster
        self.joined = False  # we called ray.init
        self.tmpdir: str | None = None

    def __enter__(self) -> "RaySession":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> "RaySession":
        import ray

        if ray.is_initialized():
            return self
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        if self.address:
            ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=LOG_TO_DRIVER)
            self.joined = True
        else:
            from cluster.reaper import Reaper

            if self.reaper is None:
                self.reaper = Reaper.start(self.run_tag)
                self.own_reaper = True
            self.tmpdir = tempfile.mkdtemp(prefix="hvsim-ray-")
            self.reaper.watch_dir(self.tmpdir)
            ncpu = self.num_cpus or max(2, os.cpu_count() or 2)
            # The raylet starts at most one worker per core at a time and, past a few times
            # that, tells the driver's terminal so at every multiple (a cluster of 8 hosts of 4
            # pCPUs is 32 actors). It reads this at its start; the run's start-up time is the
            # same either way (measured: 13.9 s and 13.2 s for 32 actors on 2 cores).
            saved = os.environ.get(STARTUP_ENV)
            os.environ.setdefault(STARTUP_ENV, str(STARTUP_CONCURRENCY))
            try:
                ray.init(
                    num_cpus=ncpu,
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=LOG_TO_DRIVER,
                    _temp_dir=self.tmpdir,
                )
            finally:
                if saved is None:
                    os.environ.pop(STARTUP_ENV, None)
            self.owned = True
            self.joined = True
            self.reaper.watch_children()
        return self

    def note_children(self) -> None:
        if self.reaper is not None and self.owned:
            self.reaper.watch_children()

    def close(self) -> None:
        import ray

        if self.joined and ray.is_initialized():
            ray.shutdown()  # stops the cluster only if we started it; otherwise disconnects
        self.joined = False
        if self.owned:
            if self.tmpdir:
                import shutil

                shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.owned = False
        if self.own_reaper and self.reaper is not None:
            self.reaper.done()
            self.reaper = None
