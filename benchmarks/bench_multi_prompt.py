"""Pruning prompts of two images and two-turn conversations on the embedded default (no GPU needed).

    python benchmarks/bench_multi_prompt.py --mode two_images --n 100
    python benchmarks/bench_multi_prompt.py --mode multi_turn --n 100 [--predictor <export>]
    python benchmarks/bench_multi_prompt.py --mode two_images --model checkpoints/reference-qwen2vl-chat \
        --predictor single=/tmp/single/export --predictor mix=/tmp/mix/export

Several `--predictor NAME=EXPORT` are measured in one run, beside the same baselines' rows ("predictor NAME").

On the synthetic scenes' `two_images` and `multi_turn` modes (data_gen/sources/synthetic_scenes.py), with the
reference MLLM: the unpruned accuracy, then per method and keep ratio the retained accuracy (pruned accuracy /
unpruned) and how often the named object's main token is kept, with the global budget and, for two images, with
at least half the budget per image (min_per_segment). multi_turn also reports, at each ratio, how often the kept
set holds the object of the current question and of the previous turn's (the swap check across turns).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from tqdm.auto import tqdm

from data_gen.correctness import is_correct
from data_gen.sources.synthetic_scenes import SyntheticScenes
from predictor import load_predictor
from predictor.adapters import load_adapter
from predictor.runtime import budget_for, make_context, make_method, pruned_generate

KEEPS = (0.5, 0.25, 0.125)
METHODS = ("predictor", "oracle", "attention", "cluster", "random")


def main_token(gt: list[float]) -> int:
    return int(np.argmax(gt))


def predictor_exports(specs: list[str]) -> dict[str, str]:
    """["NAME=EXPORT" or "EXPORT", ...] -> {row name: export}; a bare EXPORT's row is "predictor"."""
    out = {}
    for spec in specs:
        name, _, path = spec.rpartition("=")
        row = f"predictor {name}" if name else "predictor"
        if row in out:
            raise ValueError(f"--predictor {spec!r}: the row name {row!r} is given twice; name them NAME=EXPORT")
        out[row] = path
    return out


def run(mode: str, n: int, model: str, predictor: str | list[str], split: str = "test", batch: int = 25) -> dict:
    """predictor: an export, or several "NAME=EXPORT" (`predictor_exports`)."""
    exports = predictor_exports([predictor] if isinstance(predictor, str) else list(predictor))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    adapter = load_adapter("qwen2_vl", model)
    source = SyntheticScenes(split=split, mode=mode)
    items = [source[i] for i in range(n)]
    prepared = [adapter.prepare_messages(it.messages) for it in tqdm(items, desc="prepare")]
    contexts = [make_context(adapter, p) for p in prepared]
    full = []
    for s in range(0, n, batch):
        full += pruned_generate(adapter, prepared[s:s + batch], make_method("random"), keep=1.0, max_new_tokens=8,
                                contexts=contexts[s:s + batch])
    full_ok = [is_correct(o.text, it.references, "auto", it.instruction) for o, it in zip(full, items)]
    acc = sum(full_ok) / n
    for ctx, o in zip(contexts, full):
        ctx.answer_ids = o.answer_ids  # the oracle explains the unpruned answer
    from data_gen.explainers import get_explainer

    built = {row: dict(predictor=load_predictor(path)) for row, path in exports.items()}
    built["oracle"] = dict(explainer=get_explainer("gae")())
    out = {"mode": mode, "n": n, "unpruned_accuracy": acc, "num_visual": prepared[0].num_visual, "rows": {}}
    budgets = [("global", 0)] + ([("per-image", None)] if mode == "two_images" else [])
    for name in [*exports, *METHODS[1:]]:
        method = make_method(name.split()[0], seed=0, max_new_tokens=8, **built.get(name, {}))
        for budget_name, m in budgets:
            row = {}
            for keep in KEEPS:
                k = budget_for(prepared[0].num_visual, keep, None)
                per = (k // 2) if m is None else m
                outs = []
                for s in tqdm(range(0, n, batch), desc=f"{name} {budget_name} {keep}", leave=False):
                    outs += pruned_generate(adapter, prepared[s:s + batch], method, keep=keep, max_new_tokens=8,
                                            contexts=contexts[s:s + batch], min_per_segment=per)
                ok = [is_correct(o.text, it.references, "auto", it.instruction) for o, it in zip(outs, items)]
                kept_obj = [bool(o.kept_visual[main_token(it.extra["gt_relevance"])]) for o, it in zip(outs, items)]
                cell = {"accuracy": sum(ok) / n, "retained": (sum(ok) / n) / acc if acc else float("nan"),
                        "object_kept": sum(kept_obj) / n}
                if mode == "multi_turn":
                    cell["previous_object_kept"] = sum(
                        bool(o.kept_visual[main_token(it.extra["previous"]["gt_relevance"])])
                        for o, it in zip(outs, items)) / n
                row[str(keep)] = cell
            out["rows"][f"{name} ({budget_name})"] = row
    return out


def table(res: dict) -> str:
    lines = [f"{res['mode']}: {res['n']} test scenes, {res['num_visual']} visual tokens, unpruned accuracy "
             f"{res['unpruned_accuracy']:.1%}", "", "| method (budget) | " + " | ".join(f"keep {k:g}" for k in KEEPS) + " |",
             "|---|" + "---:|" * len(KEEPS)]
    for name, row in res["rows"].items():
        cells = []
        for k in KEEPS:
            c = row[str(k)]
            extra = f", prev {c['previous_object_kept']:.0%}" if "previous_object_kept" in c else ""
            cells.append(f"{c['retained']:.1%} ({c['object_kept']:.0%}{extra})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("two_images", "multi_turn"), required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--model", default="checkpoints/reference-qwen2vl")
    ap.add_argument("--predictor", action="append", default=None,
                    help="an export, or NAME=EXPORT, repeatable (default: checkpoints/predictor-reference)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    res = run(a.mode, a.n, a.model, a.predictor or ["checkpoints/predictor-reference"])
    print(table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
