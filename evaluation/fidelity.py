"""The predictor's fidelity to the oracle on held-out shard samples (no MLLM needed)."""
from __future__ import annotations

from typing import Any

import torch


def fidelity(predictor_model, shards: str, val_fraction: float | None, target_keep: float = 0.5,
             progress: bool = True) -> dict[str, dict[str, float]]:
    """Predictor and raw layer-0 attention vs the oracle on shard samples (validation keys only
    when `val_fraction` is set): mean KL(target || prediction), Spearman, top-k recall."""
    from predictor.features import build_features
    from predictor.metrics import relevance_metrics
    from predictor.targets import make_target
    from predictor.split import is_val_key
    from predictor.training.shards import read_shards, resolve_shards

    samples, _ = read_shards(resolve_shards(shards), progress=progress)
    if val_fraction:
        samples = [s for s in samples if is_val_key(s.key, val_fraction)]
    if not samples:
        raise ValueError(f"no held-out samples in fidelity.shards={shards} (val_fraction={val_fraction}); "
                         "set fidelity.val_only=false or point it at other shards")
    cfg = predictor_model.config
    sums: dict[str, dict[str, float]] = {"predictor": {}, "attention": {}}
    for s in samples:
        mask = torch.ones(1, s.num_visual, dtype=torch.bool)
        x = build_features(cfg.inputs, s.attn, s.grid, s.attn_heads.float() if s.attn_heads is not None else None)
        with torch.no_grad():
            pred = predictor_model(x[None], mask, torch.tensor([s.grid]))
        rel = s.relevance[None]
        target = make_target(rel, mask, target_keep)
        attn = s.attn[None] / s.attn.sum().clamp_min(1e-30)
        for name, p in (("predictor", pred), ("attention", attn)):
            for k, v in relevance_metrics(p, rel, target, mask).items():
                sums[name][k] = sums[name].get(k, 0.0) + float(v[0])
    return {name: {k: v / len(samples) for k, v in m.items()} | {"n": len(samples)} for name, m in sums.items()}


def fidelity_section(pred_model, export_cfg: dict[str, Any], predictor: str, fid: dict[str, Any],
                     progress: bool) -> tuple[dict[str, Any], str]:
    """`fidelity` with the split recorded in the export -> (results, markdown table)."""
    vf = None
    if fid.get("val_only", True):
        vf = fid.get("val_fraction") or export_cfg.get("trained_on", {}).get("val_fraction")
        if vf is None:
            raise ValueError(f"{predictor}/config.json does not record the training split's val_fraction "
                             "(exported before it was recorded); set fidelity.val_fraction=<the "
                             "data.val_fraction it was trained with>, or fidelity.val_only=false")
    target_keep = float(export_cfg.get("training", {}).get("target_keep", 0.5))
    res = fidelity(pred_model, fid["shards"], vf, target_keep, progress)
    md = "\n### fidelity to the oracle (held-out shards)\n\n| scores | n | KL | Spearman | " \
         "recall@50 | recall@25 | recall@12.5 |\n|---|---|---|---|---|---|---|\n"
    for name, m in res.items():
        md += (f"| {name} | {m['n']} | {m['kl']:.3f} | {m['spearman']:.3f} | {m['recall@50']:.3f} | "
               f"{m['recall@25']:.3f} | {m['recall@12.5']:.3f} |\n")
    return res, md
