"""One run per workdir: `<workdir>/run.lock`, held by process 0 for the whole run.

Two runs in one workdir would overwrite each other's checkpoints and prune each other's
history. The lock names its holder (host, process id, when it started) and carries a heartbeat,
refreshed by a background thread, so that a lock left by a crash is recognised as stale and
taken over: at once when its process is gone from this host, after `STALE_SECONDS` without a
heartbeat when it was held on another host (a preempted pod's hosts do not come back).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Optional

from vqjax.core import paths

LOCK_NAME = "run.lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 5 * HEARTBEAT_SECONDS


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def is_stale(holder: dict, now: float, host: str) -> bool:
    """Whether a lock's holder is gone: its process has ended on this host, or its heartbeat
    stopped long enough ago that no live run can be behind it."""
    if holder.get("host") == host and not _process_alive(int(holder.get("pid", -1))):
        return True
    return now - float(holder.get("heartbeat", 0.0)) > STALE_SECONDS


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds `<workdir>/run.lock` or raises WorkdirBusyError naming
    the run that holds it."""

    def __init__(self, workdir: str):
        self.path = paths.join(workdir, LOCK_NAME)
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _record(self) -> dict:
        return {"host": self.host, "pid": os.getpid(), "started": self.started, "heartbeat": time.time(),
                "token": self.token}

    def _holder(self) -> Optional[dict]:
        try:
            return paths.read_json(self.path)
        except (FileNotFoundError, ValueError):  # gone meanwhile, or written by a crash mid-way
            return None

    def acquire(self) -> "WorkdirLock":
        for _ in range(2):
            if paths.create_exclusive(self.path, paths.json_bytes(self._record())):
                break
            holder = self._holder()
            if holder is None:  # perhaps being written this instant: look again
                time.sleep(1.0)
                holder = self._holder()
            if holder is not None and not is_stale(holder, time.time(), self.host):
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
                raise WorkdirBusyError(
                    f"{os.fspath(paths.resolve(self.path.parent))} is in use by another run (process "
                    f"{holder.get('pid')} on {holder.get('host')}, started {started}); wait for it to "
                    f"end or use another --workdir. If that run is gone, delete {os.fspath(self.path)}.")
            paths.remove_tree(self.path)  # a crashed run's lock
        else:
            raise WorkdirBusyError(f"Could not take {os.fspath(self.path)}: another run took it at the "
                                   "same moment; use another --workdir.")
        self._thread = threading.Thread(target=self._beat, name="vqjax-workdir-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            holder = self._holder()
            if holder is None or holder.get("token") != self.token:
                return  # taken over (deleted by hand): no longer ours to refresh
            paths.write_json(self.path, self._record())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self._holder()
        if holder is not None and holder.get("token") == self.token:
            paths.remove_tree(self.path)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
