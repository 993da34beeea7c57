"""How the entry points (`python -m data_gen`, `train.py`, `eval.py`) stop on a problem the user can fix.

Such a problem (a missing file, a bad setting, a full or read-only disk, a folder that another run
is writing) ends the command with one line, `error: <what, where, and what to do>`, instead of
Hydra's chained traceback; `HYDRA_FULL_ERROR=1` re-raises it, with the trace. Anything else (a bug)
keeps its traceback. A run folder of Hydra's that such a problem leaves with nothing but Hydra's own
records (`.hydra/`, the log) is removed.

`entry` runs an entry point: thread defaults (`predictor.threads`), then the command line's keys checked
against the config before anything is loaded, then the `@hydra.main` function.
"""
from __future__ import annotations

import difflib
import errno
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from predictor.threads import configure as configure_threads

# parent key -> the names a `+parent.name=...` addition may use (None: any name, e.g. a user-named scale)
OpenKeys = Mapping[str, "Callable[[], Iterable[str]] | None"]

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
        if msg is not None:
            _drop_bare_run_dir()
        if msg is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"error: {msg}") from None


def _drop_bare_run_dir() -> None:
    """Remove Hydra's run folder of this job if it holds only Hydra's records, and its parents below
    the working directory that this leaves empty (outputs/train/<date>/)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):  # not under @hydra.main
        return
    if not run_dir.is_dir() or any(p.name != ".hydra" and p.suffix != ".log" for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir)
    cwd = Path.cwd().resolve()
    for parent in run_dir.resolve().parents:
        if parent == cwd or cwd not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:  # not empty
            break


def entry(main: Callable[[], None], config_dir: Path, config_name: str, open_keys: OpenKeys | None = None) -> None:
    """Run the `@hydra.main` function `main` as a command (see the module docstring)."""
    with one_line_errors():
        configure_threads()
        check_overrides(config_dir, config_name, sys.argv[1:], open_keys or {})
    main()


def check_overrides(config_dir: Path, config_name: str, argv: list[str], open_keys: OpenKeys) -> None:
    """KeyError for a command-line key (`key=v`, `+key=v`, `~key`) that the config composed with the
    command's group choices does not have, naming the closest key. Hydra checks its own keys
    (`hydra.*`) and group choices; `+parent.name=v` is allowed where `open_keys` allows it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    overrides = _overrides(argv)
    names = [o.key_or_group.split("@")[0] for o in overrides]  # group@package=choice: the group
    groups = [o for o, k in zip(overrides, names) if (Path(config_dir) / k).is_dir() or k.startswith("hydra/")]
    keys = [o for o in overrides if o not in groups and not o.key_or_group.startswith("hydra.")]
    if not keys:
        return
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name, overrides=[o.input_line for o in groups if not o.is_sweep_override()])
    except HydraException:  # e.g. an unknown group choice: Hydra's own message lists the choices
        return
    known = set(_paths(OmegaConf.to_container(cfg, resolve=False)))
    for o in keys:
        key = o.key_or_group
        if key in known:
            continue
        parent = next((k for k in open_keys if key.startswith(k + ".")), None)
        if (o.is_add() or o.is_force_add()) and parent is not None:
            names = open_keys[parent]
            if names is None:
                continue
            if key[len(parent) + 1:].split(".")[0] in set(names()):
                continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise KeyError(f"unknown key {key} in the override {o.input_line!r}; {hint}"
                       f"(--help lists the main options; --cfg job prints them all)")


def _overrides(argv: list[str]) -> list:
    """The overrides among the command line's words, parsed by Hydra's public override grammar (the plugin API),
    not its private argv parser: Hydra's flags start with '-', and a flag's value (`job`, a config name, a
    path) never has an override's form, so every other word that parses is an override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, out = OverridesParser.create(), []
    for word in argv:
        if word.startswith("-"):
            continue
        try:
            out.append(parser.parse_override(word))
        except HydraException:  # not an override, or a malformed one: Hydra's own message says where
            continue
    return out


def _paths(node, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}{k}"
            yield path
            yield from _paths(v, path + ".")
