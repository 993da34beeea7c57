"""python eval.py [key=value ...]: what an exported predictor is worth at inference.

For every method (predictor, oracle, layer-0 attention, random, downsampling, cluster aggregation)
and keep ratio: accuracy of pruned generation, accuracy retained relative to the unpruned model,
visual tokens kept, prefill time and KV-cache size. Also the predictor's fidelity to the oracle on
held-out shards, the same evaluation on scenes with more visual tokens than in training, and the
instruction-swap check (the same image asked about two different objects: does the kept set follow
the question?). Writes results.json, results.md, retained.png and figures/ into `out=`. Config: conf/eval.yaml.
Resumable: every finished item is appended to `out/items-*.jsonl`; re-running with the same `out=`
and settings evaluates only the items not yet there (`eval-settings.json` guards the settings).
An item that cannot be read (bad record, missing or broken image, a path outside the image root) is
recorded as skipped with its reason, as data_gen does, and counted in the results.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from data_gen.images import DEFAULT_MAX_PIXELS, ImageError  # PIL only

log = logging.getLogger("eval")

DS = "downsample"


def read_records(path: Path) -> dict[int, dict[str, Any]]:
    """Finished items of an earlier, interrupted run: {item index: record}. A line cut short by a kill
    (or otherwise unreadable) is ignored, so that item is simply evaluated again."""
    done: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return done
    bad = 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            done[int(rec["i"])] = rec
        except (ValueError, KeyError, TypeError):
            bad += 1
    if bad:
        log.warning("%s: ignored %d unreadable line(s); those items are evaluated again", path, bad)
    return done


def item_id(source, i: int) -> str:
    """Item i's id, or data_gen's index key for a record that cannot be read."""
    try:
        return source[i].id
    except Exception:
        return f"index-{i:09d}"


def skipped_record(i: int, key: str, e: Exception) -> dict[str, Any]:
    """The record of an item that cannot be evaluated: the reason is an ImageError's tag, or bad_item
    for a record the source cannot read (data_gen's reasons)."""
    reason = e.reason if isinstance(e, ImageError) else "bad_item"
    detail = str(e) if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
    log.warning("item %d (%s) skipped: %s", i, key, detail)
    return {"i": i, "id": key, "skipped": reason, "detail": detail[:500]}


def skipped_summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """-> {n, of, reasons: {reason: count}, items: [{i, id, reason, detail}]} over the skipped records."""
    bad = [r for r in recs if "skipped" in r]
    return {"n": len(bad), "of": len(recs), "reasons": dict(Counter(r["skipped"] for r in bad)),
            "items": [{"i": r["i"], "id": r["id"], "reason": r["skipped"], "detail": r["detail"]} for r in bad]}


def skipped_line(summary: dict[str, Any], records: str) -> str:
    if not summary["n"]:
        return ""
    why = ", ".join(f"{k} {v}" for k, v in sorted(summary["reasons"].items()))
    return (f"\nskipped {summary['n']} of {summary['of']} items ({why}); each item's reason is in results.json "
            f"and {records}\n")


def evaluate_items(adapter, source, methods: dict[str, Any], keeps: list[float], max_items: int,
                   timing: bool = True, **kwargs: Any) -> dict[str, dict[str, dict[str, float]]]:
    """`evaluate_records` aggregated: {method: {str(keep): means over the items}} (see `aggregate`)."""
    recs = evaluate_records(adapter, source, methods, keeps, max_items, timing=timing, **kwargs)
    return aggregate(recs, list(methods), sorted({float(k) for k in keeps}, reverse=True), timing)


def evaluate_records(adapter, source, methods: dict[str, Any], keeps: list[float], max_items: int,
                     max_new_tokens: int = 16, correctness: str = "auto", timing: bool = True,
                     figures: int = 0, figures_dir: Path | None = None, progress: bool = True,
                     desc: str = "eval", records: Path | None = None, swap_keep: float | None = None,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[dict[str, Any]]:
    """Pruned generation over the first `max_items` items of `source`: one record per item (below),
    or {"i", "id", "skipped": reason, "detail"} for an item that cannot be read (see `skipped_record`;
    a resumed run does not try it again).

    methods: {name: selection method from predictor.runtime.make_method, or None for downsampling}.
    records: a JSON-lines file that gets one line per finished item; items already in it are not run
    again, so a killed evaluation resumes where it stopped (the caller checks that the settings match).
    swap_keep: run the instruction-swap check at this keep ratio on items whose source gives a second
    question about another object of the same image (`extra.swap`, synthetic scenes); see
    `aggregate_swap`.
    max_pixels: images are downscaled to at most this many pixels first, as data_gen does, so that
    pruning happens at the token count the labels were made at (None: no cap).
    """
    from tqdm.auto import tqdm

    from data_gen.correctness import is_correct
    from data_gen.explainers.ground_truth import attach_ground_truth
    from data_gen.images import cap_pixels, load_image
    from predictor.metrics import instruction_swap
    from predictor.runtime import downsample_image, left_pad, make_context, prefill, prune_context
    from predictor.runtime.report import kept_overlay

    n = min(max_items, len(source))
    if n == 0:
        raise ValueError("the source has no items to evaluate; check source.* and max_items")
    keeps = sorted({float(k) for k in keeps}, reverse=True)
    done = read_records(records) if records is not None else {}
    if done:
        log.info("%s: resuming, %d of %d items already evaluated (%s)", desc, sum(i < n for i in done), n, records)
        last = max(done)  # the data behind the source may have changed under the same settings
        if last < len(source) and item_id(source, last) != done[last]["id"]:
            raise ValueError(f"{records} was made from other data: its item {last} is {done[last]['id']!r}, the "
                             f"source's item {last} is now {item_id(source, last)!r}. Write to a new folder (out=...), "
                             f"or delete {records} to evaluate these items again.")
        tmp = records.with_name(records.name + ".tmp")  # drop a line cut short by the kill before appending
        tmp.write_text("".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
        os.replace(tmp, records)

    def run(ctx, method, keep):
        pp, sel = prune_context(ctx, method, keep=keep)
        ids = adapter.generate_from_embeds(*left_pad([pp]), max_new_tokens=max_new_tokens)[0]
        pre = prefill(adapter, pp, repeats=2) if timing else None  # best of 2: CPU timings are noisy
        return ids, sel, pre

    def evaluate(i: int) -> dict[str, Any]:
        """One item -> {"i", "id", "num_visual", "rows": {method: {keep: {"answer", "correct",
        "visual_tokens", "object_kept", "prefill_s", "kv_bytes"}}}}. object_kept: whether the token with
        the most ground-truth relevance survived (sources with `extra.gt_relevance`, e.g. synthetic
        scenes; None without it, and for downsampling, which keeps no tokens of the original grid)."""
        try:
            item = source[i]
        except Exception as e:  # a record the source cannot read
            return skipped_record(i, f"index-{i:09d}", e)
        try:
            image = cap_pixels(load_image(item.image), max_pixels)
        except ImageError as e:
            return skipped_record(i, item.id, e)
        extra = item.extra if isinstance(item.extra, dict) else {}

        def context(instruction: str, gt_extra: dict[str, Any]):
            """-> (score context, main token of the ground truth in gt_extra or None)"""
            prepared = adapter.prepare(image, instruction)
            attach_ground_truth(prepared, gt_extra)  # the oracle may be explainer=ground_truth
            ctx = make_context(adapter, prepared)
            ctx.item = i
            gt = gt_extra.get("gt_relevance")
            ok = gt is not None and len(gt) == prepared.num_visual
            return ctx, (int(torch.as_tensor(gt).argmax()) if ok else None)

        ctx, main = context(item.instruction, extra)
        prepared = ctx.prepared
        n_v = prepared.num_visual
        full_ids, _, pre = run(ctx, None, 1.0)
        ctx.answer_ids = full_ids

        def row(ids, n_kept, pre_k, kept=None):
            text = adapter.decode_answer(ids)
            return {"answer": text, "correct": bool(is_correct(text, item.answer, correctness)),
                    "visual_tokens": int(n_kept),
                    "object_kept": bool(kept[main]) if kept is not None and main is not None else None,
                    "prefill_s": pre_k[0] if pre_k else None, "kv_bytes": pre_k[1] if pre_k else None}

        rows: dict[str, dict[str, dict[str, Any]]] = {}
        kept_fig: dict[str, torch.Tensor] = {}
        for name, method in methods.items():
            rows[name] = {"1": row(full_ids, n_v, pre, torch.ones(n_v, dtype=torch.bool))}
            for keep in keeps:
                if keep >= 1.0:
                    continue
                if method is None:  # downsampling: a smaller image, the model unpruned
                    p_ds = adapter.prepare(downsample_image(image, keep), item.instruction)
                    ids, _, pre_k = run(make_context(adapter, p_ds), None, 1.0)
                    n_kept, kept = p_ds.num_visual, None
                else:
                    ids, sel, pre_k = run(ctx, method, keep)
                    n_kept, kept = int(sel.kept.sum()), sel.kept.cpu()
                    if keep == 0.25:
                        kept_fig[name] = kept
                rows[name][f"{keep:g}"] = row(ids, n_kept, pre_k, kept)
        if figures_dir is not None and i < figures and kept_fig:
            figures_dir.mkdir(parents=True, exist_ok=True)
            kept_overlay(image, prepared.grid, kept_fig, figures_dir / f"{desc}-{i:03d}.png",
                         title=f"{item.instruction} -> {item.answer} (keep 0.25)")
        rec = {"i": i, "id": item.id, "num_visual": n_v, "rows": rows}
        other = extra.get("swap")
        if swap_keep is not None and other is not None and main is not None:
            ctx_b, main_b = context(other["instruction"], other)  # the same image, another object named
            if main_b is not None:
                rec["swap"] = {}
                for name, method in methods.items():
                    if method is None:  # downsampling keeps no tokens of the original grid
                        continue
                    kept = [prune_context(c, method, keep=swap_keep)[1].kept.cpu()[None] for c in (ctx, ctx_b)]
                    check = instruction_swap(*kept, torch.tensor([main]), torch.tensor([main_b]))
                    rec["swap"][name] = {k: bool(v[0]) for k, v in check.items()}
        return rec

    todo = [i for i in range(n) if i not in done]
    with tqdm(total=n, initial=n - len(todo), desc=desc, unit="item", disable=not progress) as bar:
        for i in todo:
            rec = evaluate(i)
            done[i] = rec
            if records is not None:  # one line per finished item, on disk before the next item starts
                with open(records, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            bar.update()
    return [done[i] for i in range(n)]


def aggregate(recs: list[dict[str, Any]], methods: list[str], keeps: list[float],
              timing: bool = True) -> dict[str, dict[str, dict[str, float]]]:
    """Per-item records (see evaluate_records) -> {method: {str(keep): {accuracy, retained,
    visual_tokens, visual_fraction, object_kept, prefill_ms, kv_cache_kib, n}}}, means over the items;
    keep 1.0 is the unpruned model, shared by every method.
    object_kept: share of items whose most relevant token by ground truth was kept (None when the
    source has no `gt_relevance`, and for downsampling). For cluster aggregation: the token is its
    cluster's representative slot (a cluster of its own keeps it; a merged one may not).
    Skipped items (see `skipped_record`) are left out; ValueError when no item is left."""
    skipped = skipped_summary(recs)
    recs = [r for r in recs if "skipped" not in r]
    if not recs:
        eg = "".join(f", e.g. item {r['i']}: {r['detail']}" for r in skipped["items"][:1])
        raise ValueError(f"no item could be evaluated: all {skipped['of']} were skipped ({skipped['reasons']}{eg}). "
                         f"Fix the source, then run again with a new out= (skipped items are not retried in the "
                         f"same folder)")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in methods:
        full_acc = sum(r["rows"][name]["1"]["correct"] for r in recs) / len(recs)
        for keep in [1.0] + [k for k in keeps if k < 1.0]:
            rows = [r["rows"][name][f"{keep:g}"] for r in recs]
            acc = sum(row["correct"] for row in rows) / len(rows)
            mean = lambda f: sum(map(f, rows)) / len(rows)  # noqa: E731
            found = [row["object_kept"] for row in rows if row.get("object_kept") is not None]
            results.setdefault(name, {})[f"{keep:g}"] = {
                "accuracy": acc,
                "retained": acc / full_acc if full_acc > 0 else float("nan"),
                "visual_tokens": mean(lambda row: row["visual_tokens"]),
                "visual_fraction": sum(r["rows"][name][f"{keep:g}"]["visual_tokens"] / r["num_visual"]
                                       for r in recs) / len(recs),
                "object_kept": sum(found) / len(found) if found else None,
                "prefill_ms": 1e3 * mean(lambda row: row["prefill_s"]) if timing else None,
                "kv_cache_kib": mean(lambda row: row["kv_bytes"]) / 1024 if timing else None,
                "n": len(rows),
            }
    return results


def aggregate_swap(recs: list[dict[str, Any]]) -> dict[str, dict[str, float]] | None:
    """The instruction-swap check over the records that have one -> {method: {changed, own, swap, n}}
    (shares of items; see `predictor.metrics.instruction_swap`), or None if no record has one."""
    swaps = [r["swap"] for r in recs if r.get("swap")]
    if not swaps:
        return None
    return {name: {k: sum(s[name][k] for s in swaps) / len(swaps) for k in ("changed", "own", "swap")}
            | {"n": len(swaps)} for name in swaps[0]}


def swap_table(swap: dict[str, dict[str, float]], keep: float) -> str:
    lines = [f"### instruction swap at keep {keep:g} (same image, two questions about different objects)", "",
             "| method | kept set changes | keeps each question's object | both (swap score) | n |",
             "|---|---|---|---|---|"]
    lines += [f"| {m} | {r['changed']:.1%} | {r['own']:.1%} | {r['swap']:.1%} | {r['n']} |" for m, r in swap.items()]
    return "\n".join(lines) + "\n"


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


def generalisation_scales(src, name: str, generalisation: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """-> ({scale name: source overrides} to run, why none run or None). Only a source that can draw
    its items with more visual tokens (`Source.scale_options`, e.g. synthetic scenes' sizes) is
    evaluated at other scales; overrides of any other option are a ValueError."""
    scales = dict((generalisation or {}).get("scales") or {})
    options = tuple(getattr(src, "scale_options", ()))
    if not options:
        return {}, (f"source {name} cannot draw its items with more visual tokens; only a source with scale "
                    f"options can (synthetic_scenes: sizes)")
    if not scales:
        return {}, "generalisation.scales is empty"
    bad = sorted({k for o in scales.values() for k in dict(o)} - set(options))
    if bad:
        raise ValueError(f"generalisation.scales overrides {bad}, which do not change the token count of source "
                         f"{name}; it scales by {list(options)} (e.g. {{2x: {{sizes: [[224, 448]]}}}})")
    return scales, None


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


def run_eval(model: dict[str, Any], source: dict[str, Any], explainer: dict[str, Any], predictor: str | None,
             out: str, methods: list[str], keeps: list[float], max_items: int = 200, max_new_tokens: int = 16,
             correctness: str = "auto", timing: bool = True, figures: int = 6, seed: int = 0,
             progress: bool = True, fidelity_cfg: dict[str, Any] | None = None,
             generalisation: dict[str, Any] | None = None, swap_keep: float | None = 0.125,
             max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Plain-argument body of eval.py (tests call it). Returns what results.json holds.
    A first start that fails before any item is on disk removes the eval-settings.json it wrote, so
    the corrected command is not refused as "other settings"."""
    from data_gen.run import (build_adapter, build_explainer, build_source, check_same_settings, model_fingerprint,
                              resolve_model_path)
    from predictor.export import load_predictor, read_export_config
    from predictor.runtime import METHODS, make_method
    from predictor.runtime.report import markdown_table, plot_retained

    from data_gen.correctness import MODES
    from data_gen.lock import WriterLock

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise KeyError(f"unknown methods {unknown} in methods=; available: {list(METHODS)}")
    if correctness not in MODES:  # checked here: at the first answer it would fail every item
        raise ValueError(f"correctness={correctness!r}: expected one of {', '.join(MODES)}")
    pred_model, export_cfg = None, {}
    if "predictor" in methods or (fidelity_cfg or {}).get("shards"):
        if not predictor:
            raise ValueError("methods include 'predictor' but predictor= is not set; pass predictor=<export dir>")
        pred_model, export_cfg = load_predictor(predictor), read_export_config(predictor)
    model_dir = resolve_model_path(str(model["path"]))  # a local folder, or the HF-cache snapshot of a repo id
    src = build_source(source)  # bad source settings fail here, before anything is written
    scales, no_scales = generalisation_scales(src, source.get("name"), generalisation)
    adapter = build_adapter(model)
    expl = build_explainer(explainer)[0] if "oracle" in methods else None

    def build_methods():  # fresh per run: random pruning restarts from its seed
        return {m: make_method(m, predictor=pred_model, explainer=expl, seed=seed, max_new_tokens=max_new_tokens)
                for m in methods}

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # one evaluation per out=: a second one would append the same items to items-*.jsonl
    lock = WriterLock(str(out_dir / ".lock"), str(out_dir)).acquire()
    settings = out_dir / "eval-settings.json"
    fresh = not settings.is_file()
    # items already evaluated in out/ (items-*.jsonl) are reused only if they were made the same way;
    # max_items may grow (more items are evaluated), figures and progress do not matter
    check_same_settings(settings, {
        "model": {k: v for k, v in model.items() if k != "path"}, "model_fingerprint": model_fingerprint(model_dir),
        "predictor_fingerprint": model_fingerprint(predictor) if pred_model is not None else None,
        "explainer": explainer if "oracle" in methods else None, "source": source, "generalisation": scales,
        "methods": list(methods), "keeps": sorted(float(k) for k in keeps), "max_new_tokens": max_new_tokens,
        "correctness": correctness, "timing": timing, "seed": seed, "swap_keep": swap_keep,
        "max_pixels": max_pixels},
        why="Its per-item results (items-*.jsonl) would be mixed with results made another way.")
    try:
        common = dict(max_new_tokens=max_new_tokens, correctness=correctness, timing=timing, progress=progress,
                      swap_keep=swap_keep, max_pixels=max_pixels)
        keeps_desc = sorted({float(k) for k in keeps}, reverse=True)
        res: dict[str, Any] = {"model": model, "source": source, "predictor": predictor, "keeps": list(keeps)}
        recs = evaluate_records(adapter, src, build_methods(), keeps, max_items, figures=figures,
                                figures_dir=out_dir / "figures", desc="eval", records=out_dir / "items-eval.jsonl",
                                **common)
        res["skipped"] = skipped_summary(recs)
        res["results"] = aggregate(recs, list(methods), keeps_desc, timing)
        md = markdown_table(res["results"], f"{model.get('name', model['path'])} on {source.get('name')}")
        md += skipped_line(res["skipped"], "items-eval.jsonl")
        plot_retained(res["results"], out_dir / "retained.png")
        res["swap"] = aggregate_swap(recs)
        if res["swap"]:
            md += "\n" + swap_table(res["swap"], swap_keep)

        if no_scales:
            log.info("generalisation to more visual tokens skipped: %s", no_scales)
            res["generalisation_skipped"] = no_scales
            md += f"\ngeneralisation to more visual tokens: skipped, {no_scales}\n"
        for name, overrides in scales.items():
            g_src = {**source, **dict(overrides)}
            g_recs = evaluate_records(adapter, build_source(g_src), build_methods(), keeps,
                                      int(generalisation.get("max_items", max_items)), desc=f"eval-{name}",
                                      records=out_dir / f"items-eval-{name}.jsonl", **common)
            r = aggregate(g_recs, list(methods), keeps_desc, timing)
            g = {"source": g_src, "results": r, "swap": aggregate_swap(g_recs), "skipped": skipped_summary(g_recs)}
            res.setdefault("generalisation", {})[name] = g
            md += "\n" + markdown_table(r, f"generalisation {name}: {overrides}")
            md += skipped_line(g["skipped"], f"items-eval-{name}.jsonl")
            if g["swap"]:
                md += "\n" + swap_table(g["swap"], swap_keep)
            plot_retained(r, out_dir / f"retained-{name}.png", title=f"generalisation {name}")

        fid = fidelity_cfg or {}
        if fid.get("shards") and pred_model is not None:
            res["fidelity"], fid_md = fidelity_section(pred_model, export_cfg, predictor, fid, progress)
            md += fid_md
    except BaseException:
        if fresh and not any(f.stat().st_size for f in out_dir.glob("items-*.jsonl")):
            settings.unlink(missing_ok=True)  # nothing was made with these settings: nothing to guard
        raise
    finally:
        lock.release()

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
        from data_gen.lock import FolderInUse
        from predictor.cli import one_line_errors

        c = OmegaConf.to_container(cfg, resolve=True)
        with one_line_errors(FolderInUse):  # a problem the user can fix: one line (HYDRA_FULL_ERROR=1: the trace)
            run_eval(model=c["model"], source=c["source"], explainer=c["explainer"], predictor=c["predictor"],
                     out=c["out"], methods=c["methods"], keeps=c["keeps"], max_items=c["max_items"],
                     max_new_tokens=c["max_new_tokens"], correctness=c["correctness"], timing=c["timing"],
                     figures=c["figures"], seed=c["seed"], progress=c["progress"], fidelity_cfg=c["fidelity"],
                     generalisation=c["generalisation"], swap_keep=c["swap_keep"], max_pixels=c["max_pixels"])

    main()


if __name__ == "__main__":
    _main()
