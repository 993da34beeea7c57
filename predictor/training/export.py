"""Export a trained predictor (from a live module or a Lightning checkpoint) to the inference folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from predictor.export import CONFIG_NAME, read_export_config, save_predictor
from predictor.training.module import PredictorModule


def recipe(module: PredictorModule, **extra: Any) -> dict[str, Any]:
    hp = module.hparams
    keys = ("optimizer", "lr", "weight_decay", "schedule", "warmup_frac", "min_lr_frac", "target_keep")
    return {**{k: hp[k] for k in keys}, **extra}


def export_module(module: PredictorModule, export_dir: str | Path, **training: Any) -> Path:
    """Write config.json + model.safetensors + README.md for the module's predictor."""
    return save_predictor(module.model, export_dir, trained_on=dict(module.hparams.get("trained_on") or {}),
                          metrics=module.last_val_metrics, training=recipe(module, **training))


def export_checkpoint(ckpt_path: str | Path, export_dir: str | Path) -> Path:
    """`python train.py export_from=<ckpt>`: export a checkpoint's weights, with its recorded metrics."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"export_from={ckpt_path}: no such checkpoint; the checkpoints of a run are "
                                "in <run dir>/checkpoints/*.ckpt (last.ckpt is the latest)")
    module = PredictorModule.from_checkpoint_file(str(ckpt_path))
    return export_module(module, export_dir, from_checkpoint=str(ckpt_path))


def headline(export_dir: str | Path) -> str:
    """train.py's last line: where the export went and what it is worth on validation, beside layer-0
    attention (the signal it starts from): "export -> <folder>; val KL 1.14, recall@25 0.66 (layer-0
    attention 0.27)". A folder without config.json (a DDP rank other than 0 does not export) gets the path."""
    export_dir = Path(export_dir)
    if not (export_dir / CONFIG_NAME).is_file():
        return f"export -> {export_dir}"
    m = read_export_config(export_dir)["metrics"]
    if "kl" not in m:
        return f"export -> {export_dir}; no validation metrics (no sample was held out: data.val_fraction=0)"
    return (f"export -> {export_dir}; val KL {m['kl']:.2f}, recall@25 {m['recall@25']:.2f} "
            f"(layer-0 attention {m['attn_recall@25']:.2f})")
