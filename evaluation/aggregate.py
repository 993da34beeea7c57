"""Per-item records -> the tables of an evaluation: retained accuracy and cost per method and keep
ratio, the instruction-swap check, and the generalisation scales a source supports."""
from __future__ import annotations

from typing import Any

from evaluation.records import skipped_summary


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


def headline(results: dict[str, dict[str, dict[str, float]]], methods: list[str]) -> str:
    """The one line a user wants from the main table: how much of the unpruned accuracy the predictor
    keeps at the smallest keep ratio, beside layer-0 attention (the signal it starts from), e.g.
    "predictor keeps 96.9% of the accuracy at 12.5% of the tokens (layer-0 attention 47.7%)".
    Without the predictor: the first method evaluated."""
    name = "predictor" if "predictor" in methods else methods[0]
    rows = results[name]
    keep = min(rows, key=float)
    if keep == "1":
        return f"{name}: {rows[keep]['accuracy']:.1%} accuracy unpruned (no keep ratio below 1 was evaluated)"
    row = rows[keep]
    if row["retained"] != row["retained"]:  # NaN: the unpruned model answered nothing right
        return f"{name}: the unpruned model answered no item correctly, so no share of its accuracy can be kept"
    line = f"{name} keeps {row['retained']:.1%} of the accuracy at {row['visual_fraction']:.1%} of the tokens"
    if name != "attention" and "attention" in results:
        line += f" (layer-0 attention {results['attention'][keep]['retained']:.1%})"
    return line


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


def table_heading(model: dict[str, Any], source: dict[str, Any], scale: tuple[str, dict[str, Any]] | None = None) -> str:
    """A results.md heading: "reference on synthetic_scenes (split test)", and a scale's overrides in
    words ("generalisation 2x: sizes 224x448 px")."""
    if scale is not None:
        name, overrides = scale
        return f"generalisation {name}: " + ", ".join(f"{k} {_words(v)}" for k, v in dict(overrides).items())
    split = f" (split {source['split']})" if source.get("split") else ""
    return f"{model.get('name', model.get('path'))} on {source.get('name')}{split}"


def _words(v: Any) -> str:
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in v):
        return ", ".join(f"{h}x{w}" for h, w in v) + " px"  # synthetic scenes' sizes: [[height, width]]
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
