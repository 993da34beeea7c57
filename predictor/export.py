"""The export folder that inference loads: config.json + model.safetensors + README.md.

This module is the folder format and only that: writing and reading a folder on this machine (hub repo ids
resolve to a folder in predictor.hub, above it). Loading needs torch and safetensors only; there is no
pickle anywhere in the folder. Training
checkpoints (Lightning .ckpt) are never what inference loads: `export` turns one into this.

config.json is untrusted input: its types, ranges and versions are checked, and the tensor shapes
it implies (from a module built on the meta device, which allocates nothing) are compared with
the safetensors header before any weight is read or any module is built. The folder is 0755 and
its files 0644 whatever the umask, so other users of a shared cluster can load it.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor
from predictor.schema import MODALITIES, SCHEMA_VERSION, SUPPORTED_VERSIONS

EXPORT_FORMAT = "relevance-predictor"
EXPORT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"


def save_predictor(
    model: RelevancePredictor,
    path: str | os.PathLike,
    trained_on: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    training: dict[str, Any] | None = None,
    modality: str | None = None,
) -> Path:
    """Write the export folder atomically (a temp folder renamed into place); returns its path.

    trained_on: what the shards were (model id, adapter, explainer, modality, sample counts, N_v range)
    metrics: validation metrics at export time; training: the recipe (target keep, epochs, ...)
    modality: "image" or "video", the prompts it scores (the runtime refuses the other); None: trained_on's,
    else the model's `modality` (set by load_export), else "image"
    """
    path = Path(path)
    config = {
        "format": EXPORT_FORMAT,
        "export_version": EXPORT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "modality": _modality_to_save(modality, trained_on or {}, model.modality),
        "predictor": model.config.to_dict(),
        "trained_on": trained_on or {},
        "training": training or {},
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / CARD_NAME).write_text(model_card(config, location=str(path)))
    tmp.chmod(0o755)  # mkdtemp makes 0700, and a umask of 077 would make the files 0600
    for f in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):
        (tmp / f).chmod(0o644)
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            _rmtree(old)
        path.rename(old)
        tmp.rename(path)
        _rmtree(old)
    else:
        tmp.rename(path)
    return path


def save_pretrained(model: RelevancePredictor, save_directory: str | os.PathLike, **export_fields) -> Path:
    """save_predictor, with trained_on / metrics / training defaulting to those the model was loaded with
    (so that a loaded export saves again as it was)."""
    loaded = model.export_config or {}
    for k in ("trained_on", "metrics", "training"):
        export_fields.setdefault(k, loaded.get(k))
    return save_predictor(model, save_directory, **export_fields)


def _modality_to_save(modality: str | None, trained_on: dict[str, Any], model_modality: str | None) -> str:
    recorded = trained_on.get("modality")
    if isinstance(recorded, dict):  # summarise's per-value counts: the shards mixed modalities
        raise ValueError(f"trained_on.modality={recorded}: the training data mixes modalities; a predictor is "
                         "for one of them: retrain with data.modality=image or data.modality=video")
    if modality is not None and recorded is not None and modality != recorded:
        raise ValueError(f"save_predictor(modality={modality!r}) contradicts trained_on.modality={recorded!r}; "
                         "pass the modality of the training data, or none")
    chosen = modality or recorded or model_modality or "image"
    if chosen not in MODALITIES:
        raise ValueError(f"modality: expected 'image' or 'video', found {chosen!r}")
    return chosen


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


def load_export(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> RelevancePredictor:
    """Rebuild an exported predictor (eval mode) from its folder (predictor.load_predictor also takes hub
    repo ids). `.modality` is what it was trained on; `.export_config` the whole config.json."""
    path = Path(path)
    cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not cfg_file.is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{path} is not a predictor export (expected {CONFIG_NAME} and {WEIGHTS_NAME}); "
            "create one with: python train.py export_dir=<dir>, or python train.py export_from=<run.ckpt>"
        )
    config = read_export_config(path)
    cfg = PredictorConfig.from_dict(config["predictor"])
    check_weights(path, cfg)
    model = RelevancePredictor(cfg)
    model.load_state_dict(load_file(str(weights), device=str(map_location)))
    model.modality = config["modality"]
    model.export_config = config
    return model.eval()


def read_export_config(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of an export, with its format, versions, modality and predictor section validated. A format
    change bumps EXPORT_VERSION, and a folder of another version is refused with a message to re-export it."""
    file = Path(path) / CONFIG_NAME
    try:
        config = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: expected JSON, found a file that does not parse ({e}); re-export it") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object, found {type(config).__name__}; re-export it")
    if config.get("format") != EXPORT_FORMAT or config.get("export_version") != EXPORT_VERSION:
        raise ValueError(
            f"{file}: expected format {EXPORT_FORMAT!r} version {EXPORT_VERSION}, found "
            f"{config.get('format')!r} version {config.get('export_version')!r}; re-export it with this version"
        )
    if config.get("schema_version") not in SUPPORTED_VERSIONS:  # the shard schema its features come from
        raise ValueError(f"{file}: field 'schema_version': expected one of {list(SUPPORTED_VERSIONS)} (this code "
                         f"writes {SCHEMA_VERSION}), found {config.get('schema_version')!r}; use the code version "
                         "that wrote it, or retrain on shards of this version")
    try:
        PredictorConfig.from_dict(config.get("predictor"))
    except ValueError as e:
        raise ValueError(f"{file}: {e}; re-export it, or restore the file") from None
    config["modality"] = _read_modality(config, file)
    return config


def _read_modality(config: dict[str, Any], file: Path) -> str:
    if config.get("modality") not in MODALITIES:
        found = repr(config["modality"]) if "modality" in config else "no such field"
        raise ValueError(f"{file}: field 'modality': expected 'image' or 'video', found {found}; "
                         "set it to what the predictor was trained on, or re-export it")
    return config["modality"]


def check_weights(path: str | os.PathLike, cfg: PredictorConfig) -> None:
    """Compare the tensor names and shapes that `cfg` implies with the safetensors header (no weights
    read, nothing allocated); raises ValueError naming both files, the tensor, expected and found."""
    file = Path(path) / WEIGHTS_NAME
    try:
        with safe_open(str(file), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError on a bad header
        raise ValueError(f"{file}: expected a safetensors file, found one whose header does not parse "
                         f"({e}); re-export it") from None
    mismatch = f"{file} does not match {Path(path) / CONFIG_NAME}"
    if len(cfg.widths) > len(found):  # each layer has several tensors: no need to build the module
        raise ValueError(f"{mismatch}: field 'predictor.widths' lists {len(cfg.widths)} layers, the weights "
                         f"hold only {len(found)} tensors; re-export it, or restore config.json")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in RelevancePredictor(cfg).state_dict().items()}
    bad = [k for k in [*expected, *(found.keys() - expected.keys())] if expected.get(k) != found.get(k)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{mismatch}: tensor {k!r}: expected shape {expected.get(k, 'no such tensor')} from the config "
            f"(arch={cfg.arch}, widths={cfg.widths}, kernel_size={cfg.kernel_size}, norm={cfg.norm}, "
            f"inputs={cfg.inputs}, num_heads={cfg.num_heads}), found {found.get(k, 'no such tensor')}"
            f"{f' ({len(bad) - 1} more tensors differ)' if len(bad) > 1 else ''}; re-export it, or restore "
            "config.json")


def model_card(config: dict[str, Any], repo_id: str | None = None, base_model: str | None = None,
               license: str = "apache-2.0", location: str | None = None) -> str:
    """The export's README.md: hub metadata (library_name, base_model, tags, license, modality) and a
    "how to use" block that runs as written once the MLLM and an image are at hand.
    repo_id / location: what the snippet loads (the hub id, else the folder); base_model: the MLLM's hub id."""
    from huggingface_hub import ModelCardData  # here, not at the top: `import predictor` stays free of it

    p, t, m = config["predictor"], config["trained_on"], config["metrics"]
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(m.items())) or "| (none recorded) | |"
    trained = "\n".join(f"- {k}: {v}" for k, v in sorted(t.items()) if k not in ("modality", "versions", "labeller"))
    labeller = t.get("labeller") if isinstance(t.get("labeller"), dict) else {}
    if labeller:
        trained += "\n- labeller: " + ", ".join(f"{k} {v}" for k, v in sorted(labeller.items()) if k != "versions")
    versions = _versions_table({"labels (python -m data_gen)": labeller.get("versions"),
                                "training (python train.py)": t.get("versions")})
    modality = config["modality"]
    mllm = base_model or t.get("model_id") or "<path of the MLLM>"
    header = ModelCardData(library_name="relevance-predictor", license=license, base_model=base_model,
                           tags=["token-pruning", "visual-token-pruning", "multimodal", modality],
                           modality=modality).to_yaml()
    media = ('image = Image.open("example.jpg").convert("RGB")   # any image\n'
             'prompt = adapter.prepare(image, "What is in the picture?")') if modality == "image" else (
            'frames = [Image.open(f"frame{i}.jpg").convert("RGB") for i in range(8)]   # sampled frames\n'
            'prompt = adapter.prepare(None, "What happens in the video?", video=frames, fps=1.0)')
    return f"""---
{header}
---
# Visual-token relevance predictor ({modality})

Scores the visual tokens of a multimodal LLM from its first layer's attention, so that the
least relevant tokens can be dropped before the LLM runs (Lei et al., arXiv 2506.01097).
It is specific to the MLLM and modality it was trained on (below): do not use it with another.

## How to use
`pip install "relevance-predictor[data_gen]"` (the project's repository), then:
```python
from PIL import Image
from predictor import load_predictor
from predictor.adapters import load_adapter
from predictor.runtime import make_method, pruned_generate

predictor = load_predictor("{repo_id or location or 'path/to/this/folder'}")   # torch + safetensors only
adapter = load_adapter("{t.get('adapter', 'qwen2_vl')}", "{mllm}")   # the MLLM it was trained for
{media}
out = pruned_generate(adapter, [prompt], make_method("predictor", predictor=predictor), keep=0.25)[0]
print(out.text, f"({{out.num_kept}} of {{out.num_visual}} visual tokens)")
```

## Architecture
`{p['arch']}`, widths {p['widths']}, kernel {p['kernel_size']}, norm `{p['norm']}`, inputs {p['inputs']}.

## Trained on
- modality: {modality}
{trained}

## Versions
{versions}

## Validation metrics
| metric | value |
|---|---|
{rows}
"""


def _versions_table(rows: dict[str, dict | None]) -> str:
    """The library versions each step ran with (predictor.versions), as a table; what was not recorded says so."""
    from predictor.versions import GUARDED, PROJECT

    cols = (*GUARDED, PROJECT)
    lines = [f"| step | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]
    lines += [f"| {step} | " + " | ".join(str((v or {}).get(c) or "not recorded") for c in cols) + " |"
              for step, v in rows.items()]
    return "\n".join(lines)
