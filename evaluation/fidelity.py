"""The predictor's fidelity to the oracle on held-out shard samples (no MLLM needed).

Which samples are held out is what the export records (`trained_on`): the whole `data.val_shards`,
or the samples of `data.shards` whose key hash falls under `val_fraction`. Scoring any other sample
would measure the predictor on what it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class HeldOut:
    """The shard samples to score: those of `shards` (a spec as train.py takes it), every one when
    `val_fraction` is None, else the keys `is_val_key(key, val_fraction)` picks."""

    shards: Any
    val_fraction: float | None
    what: str  # in words, for results.md: where the samples come from


def held_out(export_cfg: dict[str, Any], fid: dict[str, Any], predictor: str | None) -> HeldOut | str:
    """fidelity settings + the export's record -> the held-out samples, or why the check is skipped.

    fidelity.shards null (the default) takes the export's own held-out shards and skips the check, with
    the reason, when there are none here. Explicit settings that cannot give held-out samples raise
    ValueError / FileNotFoundError, before anything is evaluated."""
    shards, trained = fid.get("shards"), export_cfg.get("trained_on") or {}
    if shards is False:
        return "fidelity.shards=false"
    if predictor is None:
        return "no predictor= to score"
    if shards is None:
        return _recorded(trained, predictor, fid)
    if not fid.get("val_only", True):
        return _check_local(HeldOut(shards, None, f"every sample of {shards} (fidelity.val_only=false)"))
    if trained.get("val_shards"):  # whole shards were held out: there is no key-hash split to apply
        raise ValueError(
            f"fidelity.shards={shards} with fidelity.val_only=true: {predictor} was trained with data.val_shards="
            f"{trained['val_shards']} held out whole, not with a key-hash split, so the held-out samples of "
            f"{shards} cannot be told apart. Leave fidelity.shards unset (null) to score the recorded val_shards, "
            "or set fidelity.val_only=false if every sample of those shards was held out")
    vf = fid.get("val_fraction") or trained.get("val_fraction")
    if vf is None:
        raise ValueError(f"{predictor}/config.json does not record the training split's val_fraction "
                         "(it was saved without a training record); set fidelity.val_fraction=<the "
                         "data.val_fraction it was trained with>, or fidelity.val_only=false")
    return _check_local(HeldOut(shards, float(vf), f"keys of {shards} held out by hash (val_fraction {vf:g})"))


def _recorded(trained: dict[str, Any], predictor: str, fid: dict[str, Any]) -> HeldOut | str:
    """The held-out shards the export records, or why there are none to score here."""
    if trained.get("val_shards"):
        found = HeldOut(trained["val_shards"], None, f"data.val_shards of the training run, {trained['val_shards']}")
    elif trained.get("shards") is not None:
        vf = fid.get("val_fraction") or trained.get("val_fraction")
        if not vf:
            return f"{predictor} was trained with data.val_fraction={vf}: no sample was held out"
        found = HeldOut(trained["shards"], float(vf),
                        f"keys of {trained['shards']} held out by hash in training (val_fraction {vf:g})")
    else:
        return (f"{predictor}/config.json records no held-out shards (it was saved without a training record); "
                "set fidelity.shards=<the shards it was trained on> to score their held-out keys")
    try:
        return _check_local(found)
    except FileNotFoundError as e:
        return f"the held-out shards recorded in {predictor}/config.json are not here ({e})"


def _check_local(h: HeldOut) -> HeldOut:
    """The shards exist as local files (the check reads no URLs), else FileNotFoundError naming fidelity.shards."""
    from predictor.training.shards import is_url, resolve_shards

    specs = [h.shards] if isinstance(h.shards, str) else list(h.shards)
    urls = [s for s in map(str, specs) if is_url(s)]
    if urls:
        raise FileNotFoundError(f"fidelity reads local shards only, found {urls[0]}; copy them here and set "
                                "fidelity.shards=<folder>")
    try:
        resolve_shards(h.shards)
    except FileNotFoundError:
        raise FileNotFoundError(f"no shards found at {h.shards} (fidelity.shards); set fidelity.shards=<a folder, "
                                "glob or list of .tar shards>, or fidelity.shards=false to skip the check") from None
    return h


def fidelity(predictor_model, shards, val_fraction: float | None, target_keep: float = 0.5,
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


def fidelity_section(pred_model, export_cfg: dict[str, Any], h: HeldOut,
                     progress: bool) -> tuple[dict[str, Any], str]:
    """`fidelity` on the held-out samples `h` -> (results, markdown table)."""
    target_keep = float(export_cfg.get("training", {}).get("target_keep", 0.5))
    res = fidelity(pred_model, h.shards, h.val_fraction, target_keep, progress)
    md = f"\n### fidelity to the oracle (held-out shards)\n\nsamples: {h.what}\n\n| scores | n | KL | Spearman | " \
         "recall@50 | recall@25 | recall@12.5 |\n|---|---|---|---|---|---|---|\n"
    for name, m in res.items():
        md += (f"| {name} | {m['n']} | {m['kl']:.3f} | {m['spearman']:.3f} | {m['recall@50']:.3f} | "
               f"{m['recall@25']:.3f} | {m['recall@12.5']:.3f} |\n")
    return res, md
