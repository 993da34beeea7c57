"""python eval.py [key=value ...]: what an exported predictor is worth at inference.

For every method (predictor, oracle, layer-0 attention, random, downsampling, cluster aggregation)
and keep ratio: accuracy of pruned generation, accuracy retained relative to the unpruned model,
visual tokens kept, prefill time and KV-cache size. Also the predictor's fidelity to the oracle on
held-out shards, and the same evaluation on scenes with more visual tokens than in training.
Writes results.json, results.md, retained.png and figures/ into `out=`. Config: conf/eval.yaml.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("eval")

DS = "downsample"


def evaluate_items(adapter, source, methods: dict[str, Any], keeps: list[float], max_items: int,
                   max_new_tokens: int = 16, correctness: str = "auto", timing: bool = True,
                   figures: int = 0, figures_dir: Path | None = None, progress: bool = True,
                   desc: str = "eval") -> dict[str, dict[str, dict[str, float]]]:
    """Pruned generation over the first `max_items` items of `source`.

    methods: {name: selection method from predictor.runtime.make_method, or None for downsampling}.
    Returns {method: {str(keep): {accuracy, retained, visual_tokens, visual_fraction, prefill_ms,
    kv_cache_kib, n}}}; keep 1.0 is the unpruned model, shared by every method.
    """
    from tqdm.auto import tqdm

    from data_gen.correctness import is_correct
    from data_gen.images import load_image
    from predictor.runtime import downsample_image, left_pad, make_context, prefill, prune_context
    from predictor.runtime.report import kept_overlay

    n = min(max_items, len(source))
    if n == 0:
        raise ValueError("the source has no items to evaluate; check source.* and max_items")
    keeps = sorted({float(k) for k in keeps}, reverse=True)
    sums: dict[tuple[str, float], dict[str, float]] = {}

    def add(method: str, keep: float, correct: bool, n_vis: int, frac: float, pre: tuple[float, int] | None):
        s = sums.setdefault((method, keep), {"correct": 0, "n": 0, "visual_tokens": 0.0, "visual_fraction": 0.0,
                                             "prefill_s": 0.0, "kv_bytes": 0.0})
        s["correct"] += int(correct)
        s["n"] += 1
        s["visual_tokens"] += n_vis
        s["visual_fraction"] += frac
        if pre is not None:
            s["prefill_s"] += pre[0]
            s["kv_bytes"] += pre[1]

    def run(ctx, method, keep):
        pp, sel = prune_context(ctx, method, keep=keep)
        ids = adapter.generate_from_embeds(*left_pad([pp]), max_new_tokens=max_new_tokens)[0]
        pre = prefill(adapter, pp, repeats=2) if timing else None  # best of 2: CPU timings are noisy
        return ids, sel, pre

    for i in tqdm(range(n), desc=desc, unit="item", disable=not progress):
        item = source[i]
        image = load_image(item.image)
        prepared = adapter.prepare(image, item.instruction)
        ctx = make_context(adapter, prepared)
        n_v = prepared.num_visual
        full_ids, full_sel, pre = run(ctx, None, 1.0)
        ctx.answer_ids = full_ids
        full_ok = is_correct(adapter.decode_answer(full_ids), item.answer, correctness)
        kept_fig: dict[str, torch.Tensor] = {}
        for name, method in methods.items():
            add(name, 1.0, full_ok, n_v, 1.0, pre)
            for keep in keeps:
                if keep >= 1.0:
                    continue
                if method is None:  # downsampling: a smaller image, the model unpruned
                    p_ds = adapter.prepare(downsample_image(image, keep), item.instruction)
                    ids, _, pre_k = run(make_context(adapter, p_ds), None, 1.0)
                    n_kept = p_ds.num_visual
                else:
                    ids, sel, pre_k = run(ctx, method, keep)
                    n_kept = int(sel.kept.sum())
                    if keep == 0.25:
                        kept_fig[name] = sel.kept.cpu()
                ok = is_correct(adapter.decode_answer(ids), item.answer, correctness)
                add(name, keep, ok, n_kept, n_kept / n_v, pre_k)
        if figures_dir is not None and i < figures and kept_fig:
            figures_dir.mkdir(parents=True, exist_ok=True)
            kept_overlay(image, prepared.grid, kept_fig, figures_dir / f"{desc}-{i:03d}.png",
                         title=f"{item.instruction} -> {item.answer} (keep 0.25)")

    results: dict[str, dict[str, dict[str, float]]] = {}
    for (name, keep), s in sums.items():
        full = sums[(name, 1.0)]
        acc, full_acc = s["correct"] / s["n"], full["correct"] / full["n"]
        results.setdefault(name, {})[f"{keep:g}"] = {
            "accuracy": acc,
            "retained": acc / full_acc if full_acc > 0 else float("nan"),
            "visual_tokens": s["visual_tokens"] / s["n"],
            "visual_fraction": s["visual_fraction"] / s["n"],
            "prefill_ms": 1e3 * s["prefill_s"] / s["n"] if timing else None,
            "kv_cache_kib": s["kv_bytes"] / s["n"] / 1024 if timing else None,
            "n": s["n"],
        }
    return results


def fidelity(predictor_model, shards: str, val_fraction: float | None, target_keep: float = 0.5,
             progress: bool = True) -> dict[str, dict[str, float]]:
    """Predictor and raw layer-0 attention vs the oracle on shard samples (validation keys only
    when `val_fraction` is set): mean KL(target || prediction), Spearman, top-k recall."""
    from predictor.features import build_features
    from predictor.metrics import relevance_metrics
    from predictor.targets import make_target
    from predictor.training.data import is_val_key
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


def run_eval(model: dict[str, Any], source: dict[str, Any], explainer: dict[str, Any], predictor: str | None,
             out: str, methods: list[str], keeps: list[float], max_items: int = 200, max_new_tokens: int = 16,
             correctness: str = "auto", timing: bool = True, figures: int = 6, seed: int = 0,
             progress: bool = True, fidelity_cfg: dict[str, Any] | None = None,
             generalisation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Plain-argument body of eval.py (tests call it). Returns what results.json holds."""
    from data_gen.run import build_adapter, build_explainer, build_source, resolve_model_path
    from predictor.export import load_predictor, read_export_config
    from predictor.runtime import METHODS, make_method
    from predictor.runtime.report import markdown_table, plot_retained

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise KeyError(f"unknown methods {unknown} in methods=; available: {list(METHODS)}")
    pred_model, export_cfg = None, {}
    if "predictor" in methods or (fidelity_cfg or {}).get("shards"):
        if not predictor:
            raise ValueError("methods include 'predictor' but predictor= is not set; pass predictor=<export dir>")
        pred_model, export_cfg = load_predictor(predictor), read_export_config(predictor)
    resolve_model_path(str(model["path"]))
    adapter = build_adapter(model)
    expl = build_explainer(explainer)[0] if "oracle" in methods else None

    def build_methods():  # fresh per run: random pruning restarts from its seed
        return {m: make_method(m, predictor=pred_model, explainer=expl, seed=seed, max_new_tokens=max_new_tokens)
                for m in methods}

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    common = dict(max_new_tokens=max_new_tokens, correctness=correctness, timing=timing, progress=progress)
    res: dict[str, Any] = {"model": model, "source": source, "predictor": predictor, "keeps": list(keeps)}
    res["results"] = evaluate_items(adapter, build_source(source), build_methods(), keeps, max_items,
                                    figures=figures, figures_dir=out_dir / "figures", desc="eval", **common)
    md = markdown_table(res["results"], f"{model.get('name', model['path'])} on {source.get('name')}")
    plot_retained(res["results"], out_dir / "retained.png")

    for name, overrides in ((generalisation or {}).get("scales") or {}).items():
        src = {**source, **dict(overrides)}
        r = evaluate_items(adapter, build_source(src), build_methods(), keeps,
                           int(generalisation.get("max_items", max_items)), desc=f"eval-{name}", **common)
        res.setdefault("generalisation", {})[name] = {"source": src, "results": r}
        md += "\n" + markdown_table(r, f"generalisation {name}: {overrides}")
        plot_retained(r, out_dir / f"retained-{name}.png", title=f"generalisation {name}")

    fid = fidelity_cfg or {}
    if fid.get("shards") and pred_model is not None:
        vf = None
        if fid.get("val_only", True):
            vf = fid.get("val_fraction") or export_cfg.get("trained_on", {}).get("val_fraction")
            if vf is None:
                raise ValueError(f"{predictor}/config.json does not record the training split's val_fraction "
                                 "(exported before it was recorded); set fidelity.val_fraction=<the "
                                 "data.val_fraction it was trained with>, or fidelity.val_only=false")
        target_keep = float(export_cfg.get("training", {}).get("target_keep", 0.5))
        res["fidelity"] = fidelity(pred_model, fid["shards"], vf, target_keep, progress)
        md += "\n### fidelity to the oracle (held-out shards)\n\n| scores | n | KL | Spearman | " \
              "recall@50 | recall@25 | recall@12.5 |\n|---|---|---|---|---|---|---|\n"
        for name, m in res["fidelity"].items():
            md += (f"| {name} | {m['n']} | {m['kl']:.3f} | {m['spearman']:.3f} | {m['recall@50']:.3f} | "
                   f"{m['recall@25']:.3f} | {m['recall@12.5']:.3f} |\n")

    (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(md)
    print(md, flush=True)
    print(f"wrote {out_dir}/results.json, results.md, retained.png, figures/", flush=True)
    return res


def _main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(config_path="conf", config_name="eval", version_base=None)
    def main(cfg: DictConfig) -> None:
        c = OmegaConf.to_container(cfg, resolve=True)
        run_eval(model=c["model"], source=c["source"], explainer=c["explainer"], predictor=c["predictor"],
                 out=c["out"], methods=c["methods"], keeps=c["keeps"], max_items=c["max_items"],
                 max_new_tokens=c["max_new_tokens"], correctness=c["correctness"], timing=c["timing"],
                 figures=c["figures"], seed=c["seed"], progress=c["progress"], fidelity_cfg=c["fidelity"],
                 generalisation=c["generalisation"])

    main()


if __name__ == "__main__":
    _main()
