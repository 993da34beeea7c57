"""The labeller settings of a data_gen folder: what makes a label, recorded on the first run and checked on resume."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from data_gen.build import model_fingerprint, recorded_explainer
from data_gen.config import DataGenConfig
from data_gen.settings_guard import check_same_settings
from predictor.versions import versions


def check_same_labeller(out: str, labeller: dict[str, Any], allow_version_change: bool = False) -> None:
    """Resuming into `out` is only safe with the labeller that made its samples: the model, explainer
    and every option that changes a label or which items are kept (see `labeller_settings`). Recorded
    in `out/labeller.json` on the first run; later runs raise ValueError if they differ. The weights'
    fingerprint, not the model path string, says whether the model is the same one; torch and transformers
    must be the same releases unless `allow_version_change`."""
    check_same_settings(Path(out) / "labeller.json", labeller, ignore=("model",),
                        why="Its samples were labelled another way, and resuming would mix labels.",
                        allow_version_change=allow_version_change)


def labeller_settings(model: dict[str, Any], model_dir: str, adapter_name: str, explainer: dict[str, Any],
                      cfg: DataGenConfig) -> dict[str, Any]:
    """What makes a label: the model's weights and numerics, the explainer, the image size (token
    count), the answer length (the relevance is of the generated answer), which answers are kept, and the
    torch / transformers releases that computed it (predictor.versions)."""
    return {"versions": versions(), "adapter": adapter_name, "model": str(model["path"]), "model_fingerprint": model_fingerprint(model_dir),
            "dtype": model.get("dtype"), "attn_implementation": model.get("attn_implementation"),
            # gae's chunk sets memory, not labels (batched and per-token backward agree to ~1e-6)
            "explainer": {k: v for k, v in recorded_explainer(explainer).items() if k != "chunk"},
            "max_pixels": cfg.max_pixels, "max_video_pixels": cfg.max_video_pixels, "max_new_tokens": cfg.max_new_tokens,
            "correctness": cfg.correctness, "keep_wrong": cfg.keep_wrong, "save_heads": cfg.save_heads}

