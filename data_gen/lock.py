"""One writer per output slot: a lock file that names its holder.

`data_gen` ranks each lock `out/.lock-r<rank>` for as long as they write; a second process that
asks for the same slot (a second run on the same `out=`, or two runs that both think they are
rank 0) is refused at once with the holder's pid, host and start time. The lock is filelock's
`FileLock`: an OS file lock (flock), so the kernel drops it when the holder dies, even by SIGKILL,
and a stale lock file is simply taken over. The holder writes its details into the file once it
holds the lock (a contender never truncates it, so the refusal can quote them). On filesystems
without flock filelock falls back to its `SoftFileLock`, whose file holds the holder's pid and host
and is taken over when that pid is dead on this host (a holder on another host cannot be checked:
the error says to delete the file if that run is over).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from filelock import FileLock, SoftFileLock, Timeout


class FolderInUse(RuntimeError):
    """Another live process holds this output slot."""


def _holder_text(info: dict[str, Any]) -> str:
    if not info:
        return "a process that has not written its details yet"
    if "started" not in info:  # a SoftFileLock's marker: pid and host only
        return f"pid {info.get('pid')} on host {info.get('host')}"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
    return f"pid {info.get('pid')} on host {info.get('host')}, started {started}: {info.get('cmd', '')[:200]}"


def _read_info(path: str) -> dict[str, Any]:
    """The holder's details: our JSON under a native lock, or SoftFileLock's "<pid>\\n<host>\\n" marker."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return {}
    try:
        info = json.loads(text or "{}")
        return info if isinstance(info, dict) else {}
    except ValueError:
        lines = text.split("\n")
        return {"pid": lines[0], "host": lines[1]} if len(lines) > 2 else {}


class WriterLock:
    """Exclusive lock on `path` for this process. `what` names the slot in the error message."""

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what
        # blocking=False: a second writer is refused at once, never queued behind the first
        self._lock = FileLock(path, blocking=False)

    def _refuse(self) -> FolderInUse:
        info = _read_info(self.path)
        msg = (f"{self.what} is being written by another process ({_holder_text(info)}). Two writers on one "
               f"output would lose or mix items: wait for it to finish, stop it (a killed run resumes where it "
               f"stopped), or write to another folder (out=...). Lock file: {self.path}")
        if isinstance(self._lock, SoftFileLock) and info.get("host") not in (None, socket.gethostname()):
            msg += (" This filesystem has no file locks, so a holder on another host cannot be checked: delete the "
                    "lock file if that run is over.")
        return FolderInUse(msg)

    def acquire(self) -> "WriterLock":
        try:
            self._lock.acquire()
        except Timeout:
            raise self._refuse() from None
        if not isinstance(self._lock, SoftFileLock):  # a soft lock's file is filelock's own marker
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "cmd": " ".join(sys.argv)}
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump(info, f)
        return self

    def release(self) -> None:
        """Drop the lock; the file stays under a native lock (removing it would race a new taker)."""
        self._lock.release()
