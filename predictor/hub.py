"""Predictor exports on the Hugging Face Hub: load one by folder or repo id, and publish one.

    python -m predictor.hub push checkpoints/predictor-reference my-org/my-predictor --base-model Qwen/Qwen2-VL-7B-Instruct
    python -m predictor.hub download my-org/my-predictor [--revision v1]

A hub repo holds exactly an export folder (config.json + model.safetensors + README.md, predictor.export),
so a downloaded snapshot is loaded by the same checks as a local folder. With `HF_HUB_OFFLINE=1` the id
is resolved through the local HF cache only. `load_predictor` / `save_pretrained` (predictor.export) /
`push_to_hub` are PyTorchModelHubMixin's from_pretrained / save_pretrained / push_to_hub as functions, not
mixin methods: the model class does no I/O (predictor.model sits below this module), and the mixin's default
config.json is not the export's validated one.
huggingface_hub is imported on first use, not by `import predictor`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from predictor.export import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, load_export, model_card, save_pretrained
from predictor.model import RelevancePredictor

EXPORT_FILES = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]


def looks_like_repo_id(name: str) -> bool:
    """True for "org/name" as the hub accepts it (absolute, ./ ../ or ~ paths never are). A bare "name",
    which the hub also accepts, is refused: here it is far more often a mistyped folder."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def load_predictor(name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                   revision: str | None = None, cache_dir: str | None = None,
                   token: str | bool | None = None) -> RelevancePredictor:
    """Rebuild an exported predictor (eval mode) from its folder or a hub repo id ("org/name", resolved
    through the local HF cache, downloaded if missing unless HF_HUB_OFFLINE=1; `revision`: a branch, tag or
    commit). `.modality` is what it was trained on; `.export_config` the whole config.json."""
    folder = resolve_export(name_or_path, revision=revision, cache_dir=cache_dir, token=token)
    return load_export(folder, map_location)


def push_to_hub(model: RelevancePredictor, repo_id: str, **push_kwargs) -> Any:
    """Save `model` to a temporary export folder (save_pretrained) and upload it (push_export's options)."""
    with tempfile.TemporaryDirectory(prefix="predictor-") as tmp:
        return push_export(save_pretrained(model, f"{tmp}/export"), repo_id, **push_kwargs)


def resolve_export(name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None,
                   token: str | bool | None = None) -> Path:
    """A local export folder as given, or a hub repo id's snapshot folder (downloaded if needed and allowed).

    Raises FileNotFoundError for a path that is neither, and for an id that cannot be had, saying what to run.
    """
    path = Path(name_or_path).expanduser()
    name = str(name_or_path)
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} was given for the local folder {name}; revisions are for "
                             "hub repo ids: drop it, or pass the repo id")
        return path
    if not looks_like_repo_id(name):
        raise FileNotFoundError(
            f"predictor {name!r}: no such folder, and not a hub repo id (org/name); pass an export folder "
            "(python train.py writes one) or a repo id such as my-org/my-predictor")
    folder = _snapshot(name, revision, cache_dir, token)
    missing = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / f).is_file()]
    if missing:  # the snapshot folder is at hand: asking the cache per file (try_to_load_from_cache) adds nothing
        raise FileNotFoundError(
            f"predictor {name!r}{_at(revision)}: the cached snapshot {folder} lacks {', '.join(missing)} (an "
            f"interrupted download, or a repo that is not a predictor export); run: {_download_cmd(name, revision)}")
    return folder


def _at(revision: str | None) -> str:
    return f" (revision {revision!r})" if revision else ""


def _download_cmd(repo_id: str, revision: str | None) -> str:
    return f"python -m predictor.hub download {repo_id}" + (f" --revision {revision}" if revision else "")


def _snapshot(repo_id: str, revision: str | None, cache_dir: str | None, token: str | bool | None) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    offline = constants.is_offline_mode()
    where = f"predictor {repo_id!r}{_at(revision)}"
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                      allow_patterns=EXPORT_FILES, local_files_only=offline))
    except HFValidationError as e:
        raise FileNotFoundError(f"{where}: not a valid hub repo id ({e}); pass org/name or an export folder") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{where}: the repo exists but has no such revision; pass a branch, tag or commit "
                                f"of it (see https://huggingface.co/{repo_id}/tree/main)") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{where}: no such repo on the hub, or it is private or gated; check the id, and "
                                "for a private repo log in first (hf auth login, or pass token=)") from None
    except LocalEntryNotFoundError:
        if offline:
            cached = _cached_revisions(repo_id, cache_dir)
            have = f" (the cache has revisions: {', '.join(cached)})" if cached else " (the cache has none of it)"
            raise FileNotFoundError(
                f"{where}: not in the local HF cache{have} and HF_HUB_OFFLINE=1 forbids downloading; on a machine "
                f"with internet run: {_download_cmd(repo_id, revision)} (or unset HF_HUB_OFFLINE)") from None
        raise FileNotFoundError(f"{where}: the hub cannot be reached and the files are not cached; check the "
                                f"connection, then run: {_download_cmd(repo_id, revision)}") from None


def _cached_revisions(repo_id: str, cache_dir: str | None) -> list[str]:
    """The refs, then the commits (12 hex digits), of `repo_id` that the local HF cache holds."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:  # the folder named now: scan_cache_dir's own default is the one read when huggingface_hub was imported
        repos = scan_cache_dir(cache_dir or constants.HF_HUB_CACHE).repos
    except CacheNotFound:
        return []
    revisions = [r for repo in repos if repo.repo_id == repo_id and repo.repo_type == "model" for r in repo.revisions]
    return sorted(ref for r in revisions for ref in r.refs) + sorted(r.commit_hash[:12] for r in revisions)


def push_export(export_dir: str | os.PathLike, repo_id: str, *, base_model: str | None = None,
                license: str = "apache-2.0", private: bool = False, revision: str | None = None,
                token: str | bool | None = None, commit_message: str | None = None, api: Any = None) -> Any:
    """Upload an export folder, with a model card written for `repo_id`, to a hub model repo.

    base_model: the hub id of the MLLM the predictor belongs to (the card's `base_model`); needed when the
    export's trained_on.model_id is a local path. Returns huggingface_hub's CommitInfo.
    """
    export_dir = Path(export_dir)
    if not (export_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{export_dir}: not a predictor export (no {CONFIG_NAME}); pass the folder "
                                "train.py printed last, or export one with python train.py export_from=<ckpt>")
    config = load_export(export_dir).export_config  # every check of loading: never publish a broken export
    if not looks_like_repo_id(repo_id):
        raise ValueError(f"repo id {repo_id!r}: expected org/name (e.g. my-org/qwen2vl-7b-relevance)")
    base_model = base_model or hub_base_model(config)
    if base_model is None:
        raise ValueError(
            f"{export_dir}: trained_on.model_id={config.get('trained_on', {}).get('model_id')!r} is a local path, so "
            "the card cannot name the MLLM this predictor belongs to; pass --base-model <hub id of that MLLM> "
            "(e.g. Qwen/Qwen2-VL-7B-Instruct)")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="predictor-push-") as tmp:
        for f in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copy2(export_dir / f, Path(tmp) / f)
        (Path(tmp) / CARD_NAME).write_text(model_card(config, repo_id=repo_id, base_model=base_model,
                                                      license=license))
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, allow_patterns=EXPORT_FILES,
                                 commit_message=commit_message or f"Upload relevance predictor ({config['modality']})")


def hub_base_model(config: dict[str, Any]) -> str | None:
    """trained_on.model_id when it names a hub repo: an org/name that is not a folder here or in the project
    (data_gen records model.path as given: a hub id, or a folder on the machine that labelled)."""
    model_id = str((config.get("trained_on") or {}).get("model_id") or "")
    project = Path(__file__).resolve().parent.parent
    if not looks_like_repo_id(model_id) or Path(model_id).exists() or (project / model_id).exists():
        return None
    return model_id


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m predictor.hub", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    push = sub.add_parser("push", help="upload an export folder with its model card")
    push.add_argument("export", help="export folder (config.json + model.safetensors)")
    push.add_argument("repo_id", help="org/name of the hub model repo (created if missing)")
    push.add_argument("--base-model", help="hub id of the MLLM it belongs to (default: the export's model_id "
                                           "when that is a hub id)")
    push.add_argument("--license", default="apache-2.0")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", help="branch to push to (created if missing; default main)")
    push.add_argument("--message", help="commit message")
    get = sub.add_parser("download", help="fetch an export into the local HF cache (for offline use later)")
    get.add_argument("repo_id")
    get.add_argument("--revision")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "push":
            info = push_export(args.export, args.repo_id, base_model=args.base_model, license=args.license,
                               private=args.private, revision=args.revision, commit_message=args.message)
            print(getattr(info, "commit_url", info))
        else:
            from huggingface_hub import constants

            if constants.is_offline_mode():
                raise FileNotFoundError("HF_HUB_OFFLINE=1 is set: downloading is off; unset it to download")
            print(resolve_export(args.repo_id, revision=args.revision))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
