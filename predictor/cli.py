"""How the entry points (`python -m data_gen`, `train.py`, `eval.py`) stop on a problem the user can fix.

Such a problem (a missing file, a bad setting, a full or read-only disk, a folder that another run
is writing) ends the command with one line, `error: <what, where, and what to do>`, instead of
Hydra's chained traceback; `HYDRA_FULL_ERROR=1` re-raises it, with the trace. Anything else (a bug)
keeps its traceback.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import Iterator

# errors of the disk a job writes to, not of the job's input: the job stops and resumes later
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)

_DISK_FIX = {
    errno.ENOSPC: "free space on that disk (or write somewhere else), then re-run the same command: it resumes "
                  "where it stopped",
    errno.EDQUOT: "your disk quota is used up: free some (or write somewhere else), then re-run the same command: "
                  "it resumes where it stopped",
    errno.EROFS: "that file system is read-only: choose a writable folder for the output (out=...; train.py: "
                 "run_dir= and export_dir=)",
    errno.EIO: "the disk reported an I/O error: check it, then re-run the same command: it resumes where it stopped",
    errno.EACCES: "you may not write there: fix the folder's permissions, or write somewhere else",
}


def with_path(e: OSError, path: str) -> OSError:
    """`e` naming `path` (errors of writes to an open file carry no file name)."""
    if e.filename is not None:
        return e
    named = type(e)(e.errno, e.strerror or os.strerror(e.errno or 0), path)
    named.__cause__ = e
    return named


def describe(e: BaseException, user_errors: tuple[type[BaseException], ...] = ()) -> str | None:
    """The one line for a problem the user can fix, or None for anything else."""
    if isinstance(e, OSError) and e.errno in _DISK_FIX:
        where = f" ({e.filename})" if e.filename else ""
        return f"{os.strerror(e.errno)}{where}: {_DISK_FIX[e.errno]}"
    if isinstance(e, (FileNotFoundError, ValueError, KeyError, *user_errors)):
        return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return None


@contextmanager
def one_line_errors(*user_errors: type[BaseException]) -> Iterator[None]:
    """Turn problems the user can fix (see `describe`; plus `user_errors`) into `SystemExit("error: ...")`."""
    try:
        yield
    except Exception as e:
        msg = describe(e, user_errors)
        if msg is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"error: {msg}") from None
