"""Which kept sets does the reference MLLM still answer from? Fixed selections, no scorer.

    python benchmarks/probe_keep_sets.py                      # 60 test scenes, 8 of 64 tokens kept
    python benchmarks/probe_keep_sets.py --n 100 --budget 16

For correctly answered test scenes, keep the named object's main token plus `budget - 1` others chosen
by a fixed rule, prune physically as eval does, and generate:
    objects     other objects' main tokens (what a saliency-driven selection keeps)
    background  tokens that hold no object
    top, bottom the first / last tokens in raster order (image rows)
    random      drawn uniformly
    alone       the named object's token only
An answer that fails although the object is kept shows what the model needs besides the object.
"""
from __future__ import annotations

import argparse

import torch

from _answered import answered, scene_source
from reference_mllm import scenes
from data_gen.correctness import normalise
from predictor.runtime import make_context
from predictor.runtime.generate import prune_context
from predictor.runtime.prune import left_pad
from predictor.runtime.scorers import Selection

REF = "checkpoints/reference-qwen2vl"
RULES = ("objects", "background", "top", "bottom", "random", "alone")


class _Fixed:
    """A pruning method that keeps a given list of visual tokens."""

    def __init__(self, tokens: list[int]):
        self.tokens = tokens

    def select(self, ctx, k: int) -> Selection:
        kept = torch.zeros(ctx.prepared.num_visual, dtype=torch.bool, device=ctx.embeds.device)
        kept[self.tokens] = True
        return Selection(kept=kept)


def run(model: str = REF, n: int = 60, budget: int = 8, seed: int = 0) -> dict:
    from predictor.adapters import load_adapter

    adapter = load_adapter("qwen2_vl", model)
    source = scene_source(model, n, seed)
    gen = torch.Generator().manual_seed(seed)
    correct, done = dict.fromkeys(RULES, 0), 0
    for _, item, scene, prepared, _ in answered(adapter, source, n):
        done += 1
        named = scenes.main_token(scene, scene.target)
        others = [t for t in range(prepared.num_visual) if t != named]
        occupied = {scenes.main_token(scene, j) for j in range(len(scene.objects))}
        m = budget - 1
        picks = {"objects": [t for t in others if t in occupied][:m],
                 "background": [t for t in others if t not in occupied][:m],
                 "top": others[:m], "bottom": others[-m:],
                 "random": [others[j] for j in torch.randperm(len(others), generator=gen)[:m].tolist()],
                 "alone": []}
        ctx = make_context(adapter, prepared)
        for rule, rest in picks.items():
            pruned, _ = prune_context(ctx, _Fixed([named] + rest), budget=budget)
            embeds, mask, pos = left_pad([pruned])
            answer = adapter.generate_from_embeds(embeds, mask, pos, max_new_tokens=4)[0]
            correct[rule] += normalise(adapter.decode_answer(answer)) == normalise(item.answer)
    return {"n": done, "budget": budget, "accuracy": {r: c / max(done, 1) for r, c in correct.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=REF)
    p.add_argument("--n", type=int, default=60, help="correctly answered scenes")
    p.add_argument("--budget", type=int, default=8, help="visual tokens kept (the named object's included)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    r = run(a.model, a.n, a.budget, a.seed)
    print(f"{r['n']} correctly answered test scenes, {r['budget']} visual tokens kept, the named object's always:\n")
    print("| the other kept tokens | accuracy |\n|---|---:|")
    for rule in RULES:
        print(f"| {rule} | {r['accuracy'][rule]:.1%} |")


if __name__ == "__main__":
    main()
