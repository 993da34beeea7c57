"""Building a job's parts from plain config dicts, and where it runs: shared by `python -m data_gen`
and `eval.py` (neither imports the other's loop).

    dist_env / resolve_device        torchrun's rank and the device of this process
    resolve_model_path / model_fingerprint   a local model folder (or cached hub id), and a cheap hash of it
    build_source / build_explainer / build_adapter   {"name": ..., **options} -> the registered part
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from data_gen.sources.base import Source, get_source

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun or set both")
    return rank, world, int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(device: str, local_rank: int = 0) -> str:
    """'auto' -> cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if device == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return device


def resolve_model_path(path: str) -> str:
    """A local folder (relative paths also tried against the project root), or a hub id that is
    already in the local HF cache. Raises FileNotFoundError saying how to get the model."""
    p = Path(path).expanduser()
    if p.is_dir():
        return str(p)
    if not p.is_absolute() and (PROJECT_ROOT / p).is_dir():
        return str(PROJECT_ROOT / p)
    if "/" in path and not p.is_absolute() and not path.startswith("."):
        try:  # a hub id such as Qwen/Qwen2-VL-7B-Instruct, if already downloaded
            from huggingface_hub import snapshot_download
            return snapshot_download(path, local_files_only=True)
        except Exception:
            pass
    hint = ("the reference model is committed in the repository (restore it with: git checkout -- "
            "checkpoints/reference-qwen2vl) and can be rebuilt with: python -m reference_mllm.train"
            if "reference-qwen2vl" in path else
            f"download it first (hf download {path if '/' in path else '<org/name>'} --local-dir <dir>, "
            "huggingface_hub's CLI) and set model.path=<dir>")
    raise FileNotFoundError(f"model.path={path!r}: no such folder (nor in the local HF cache); {hint}")


def model_fingerprint(path: str) -> str:
    """A cheap fingerprint of a model folder's weights: name, size and the first and last MiB of each
    weight file, plus config.json. Retraining in place changes it; reading a 15 GB checkpoint does not
    take long."""
    import hashlib

    h = hashlib.sha256()
    root = Path(path)
    files = sorted(f for f in root.iterdir() if f.suffix in (".safetensors", ".bin") or f.name == "config.json")
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(2**20))
            if size > 2**21:
                fh.seek(size - 2**20)
                h.update(fh.read(2**20))
    return h.hexdigest()[:16]


def build_source(spec: dict[str, Any], adapter: Any = None) -> Source:
    """{"name": registered source name, **constructor arguments} -> Source. With `adapter`, a source that
    draws per visual-token cell (`cell_sized`: the synthetic ones) draws in the adapter's cells (`token_px`:
    28 px for Qwen2-VL, 32 for Qwen3-VL) when the adapter's tokens tile the image (`cell_grid`)."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name is None:
        raise KeyError("source config has no `name`; pick one with source=<jsonl|llava_json|hf_dataset|synthetic_scenes>")
    cls = get_source(name)
    if getattr(cls, "cell_sized", False) and getattr(adapter, "cell_grid", False):
        given = spec.setdefault("token_px", adapter.token_px)
        if given != adapter.token_px:
            raise ValueError(f"source.token_px={given}, but a visual token of adapter {adapter.name!r} covers "
                             f"{adapter.token_px} px; drop source.token_px (the adapter's is used)")
    return cls(**spec)


def recorded_explainer(spec: dict[str, Any]) -> dict[str, Any]:
    """The explainer config as resumable folders record it: gae's linear_layers=residual, its default, is left
    out, as folders made before the option record it (their labels are the residual ones, bit for bit)."""
    return {k: v for k, v in spec.items() if not (k == "linear_layers" and v == "residual")}


def build_explainer(spec: dict[str, Any]) -> tuple[Callable, str]:
    """{"name": registered explainer name, **options} -> (explainer, name)."""
    from data_gen.explainers.base import get_explainer

    spec = dict(spec)
    name = spec.pop("name", None)
    if name is None:
        raise KeyError("explainer config has no `name`; pick one with explainer=<gae|attention|...>")
    return get_explainer(name)(**spec), name


def build_adapter(spec: dict[str, Any], local_rank: int = 0) -> Any:
    """{"adapter": name, "path": folder or cached hub id, "dtype", "device", "attn_implementation"}."""
    from predictor.adapters.base import get_adapter

    spec = dict(spec)
    spec.pop("name", None)
    name = spec.pop("adapter")
    path = resolve_model_path(str(spec.pop("path")))  # fails fast, before any slow work
    spec["device"] = resolve_device(spec.get("device", "auto"), local_rank)
    return get_adapter(name).load(path, **spec)
