"""One writer per output slot: a lock file that names its holder.

`data_gen` ranks each lock `out/.lock-r<rank>` for as long as they write; a second process that
asks for the same slot (a second run on the same `out=`, or two runs that both think they are
rank 0) is refused at once with the holder's pid, host and start time. The lock is an OS file
lock (flock), so the kernel drops it when the holder dies, even by SIGKILL: a stale lock file is
simply taken over. On filesystems without flock the file itself is the lock, and a stale one is
taken over when its pid is dead on this host (a holder on another host cannot be checked: the
error says to delete the file if that run is over).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class FolderInUse(RuntimeError):
    """Another live process holds this output slot."""


def _holder_text(info: dict[str, Any]) -> str:
    if not info:
        return "a process that has not written its details yet"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')}, started {started}: {info.get('cmd', '')[:200]}"


def _read_info(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            info = json.loads(f.read() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class WriterLock:
    """Exclusive lock on `path` for this process. `what` names the slot in the error message."""

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what
        self._fd: int | None = None  # the flock'd file
        self._by_pid = False  # held through the file's content (no flock on this filesystem)

    def _refuse(self, info: dict[str, Any]) -> FolderInUse:
        return FolderInUse(
            f"{self.what} is being written by another process ({_holder_text(info)}). Two writers on one "
            f"output would lose or mix items: wait for it to finish, stop it (a killed run resumes where it "
            f"stopped), or write to another folder (out=...). Lock file: {self.path}")

    def acquire(self) -> "WriterLock":
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "cmd": " ".join(sys.argv)}
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(_read_info(self.path)) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                os.close(fd)
                return self._acquire_by_pid(info)
        else:
            os.close(fd)
            return self._acquire_by_pid(info)
        os.ftruncate(fd, 0)  # a dead holder's details are replaced by ours
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def _acquire_by_pid(self, info: dict[str, Any]) -> "WriterLock":
        """No flock here: the lock is the file's content. Ours only if empty or its holder is dead on this host."""
        old = _read_info(self.path)
        if old.get("pid") not in (None, os.getpid()):
            same_host = old.get("host") == info["host"]
            if not same_host or _pid_alive(int(old["pid"])):
                err = self._refuse(old)
                if not same_host:
                    err = FolderInUse(f"{err} This filesystem has no file locks, so a holder on another host "
                                      f"cannot be checked: delete the lock file if that run is over.")
                raise err
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(info, f)
        os.replace(tmp, self.path)
        if _read_info(self.path).get("pid") != os.getpid():  # lost a race with another taker
            raise self._refuse(_read_info(self.path))
        self._by_pid = True
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock; the file stays (removing it would race a new taker)
            self._fd = None
        elif self._by_pid:
            self._by_pid = False
            try:
                os.remove(self.path)
            except OSError:
                pass
