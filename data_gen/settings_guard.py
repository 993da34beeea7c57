"""The settings guard of resumable jobs: a folder is only resumed with the settings that made it.

`data_gen` guards its labels with it (`out/labeller.json`), `eval.py` its per-item results
(`out/eval-settings.json`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def check_same_settings(path: Path, settings: dict[str, Any], why: str, ignore: tuple[str, ...] = (),
                        allow_version_change: bool = False) -> None:
    """Resuming a job whose folder holds `path` is only safe with the settings that made it: write
    `settings` there on the first run; on later runs raise ValueError (nothing done yet) naming every
    key that differs (keys in `ignore` may differ), a key the file does not record included. `why` says
    what resuming would spoil.

    `settings["versions"]` (predictor.versions) is checked for torch and transformers: another release of
    either is refused with both versions named, unless `allow_version_change` (the config key of that
    name), which resumes with a warning and keeps the versions the folder was started with."""
    if path.is_file():
        old = json.loads(path.read_text())
        _check_versions(path, old.get("versions"), settings.get("versions"), allow_version_change)
        ignore = (*ignore, "versions")
        diff = {k: v for k, v in settings.items() if k not in ignore and (k not in old or old[k] != v)}
        if diff:
            what = "; ".join(f"{k}: {old[k]!r} there, {v!r} now" if k in old else f"{k}: not recorded there, {v!r} now"
                             for k, v in diff.items())
            raise ValueError(f"{path.parent} was made with other settings ({what}). {why} Write to a new "
                             f"folder (out=...), or delete {path.parent} to start over.")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # atomic: torchrun ranks may race here, with identical content


def _check_versions(path: Path, then: dict[str, Any] | None, now: dict[str, Any] | None, allow: bool) -> None:
    from predictor.versions import GUARDED

    if now is None:
        return
    changed = {k: ((then or {}).get(k), now.get(k)) for k in GUARDED if (then or {}).get(k) != now.get(k)}
    if not changed:
        return
    what = "; ".join(f"{k} {a or 'unrecorded'} there, {b or 'not installed'} now" for k, (a, b) in changed.items())
    if allow:
        log.warning("%s was made with other library versions (%s); resuming anyway (allow_version_change=true): "
                    "the folder now mixes results of both", path.parent, what)
        return
    raise ValueError(f"{path.parent} was made with other library versions ({what}). Their numbers can differ, and "
                     f"resuming would mix them. Install the versions it was made with (pip install -r "
                     f"requirements/lock.txt gives the tested set), write to a new folder (out=...), or pass "
                     f"allow_version_change=true to resume anyway.")
