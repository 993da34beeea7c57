"""The library versions that labels, evaluations and exports depend on, recorded beside them.

Labels are numbers computed by torch and transformers (the MLLM's forward, its processor's resizing and chat
template, the explainer's backward): another release can change them. `labeller.json`, `eval-settings.json` and
an export's `trained_on` record these versions, and resuming a folder under others is refused (data_gen/settings_guard.py).
Read from the installed distributions' metadata: nothing here imports torch or transformers.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PROJECT = "relevance-predictor"
GUARDED = ("torch", "transformers")  # what a resumed folder must match; the project's own version is recorded only


def installed(dist: str) -> str | None:
    """The installed version of distribution `dist` without its local tag (2.14.1, not 2.14.1+cu130); None if absent."""
    try:
        return version(dist).split("+")[0]
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """{"torch": ..., "transformers": ..., "relevance-predictor": ...} as installed now (None: not installed)."""
    return {name: installed(name) for name in (*GUARDED, PROJECT)}
