"""How hard are the synthetic scenes for instruction-agnostic pruning? No model involved.

    python benchmarks/bench_scenes.py                          # 1000 test scenes at 224x224 (64 tokens)
    python benchmarks/bench_scenes.py --size 448 448 --n 500   # 4x the tokens

An instruction-agnostic selection can at best keep "the objects", not the one the question names.
Two such oracles, each given the drawn scene (every object's pixels) but not the question:
    salient   keeps whole objects, most pixels first (ties at random), while the token budget lasts
    nameable  the same, but first every object that *could* be named (its colour or its shape is
              unique in the scene): it knows how the questions are made, not which one was asked
For each keep ratio: the share of scenes whose named object keeps its main token. An
instruction-aware method can reach 100% at any ratio (one token suffices); these oracles cannot
once objects outnumber the budget. `named-only` is that: the named object's tokens alone.
"""
from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from reference_mllm import scenes
from data_gen.sources.synthetic_scenes import SyntheticScenes
from predictor.targets import num_kept

KEEPS = (0.5, 0.25, 0.125)


def _keeps_named(order: list[int], tokens: list[np.ndarray], named: int, budget: int) -> bool:
    """Keep objects in `order` while their tokens fit in `budget`; is `named`'s main token kept?"""
    kept: set[int] = set()
    for o in order:
        new = set(int(t) for t in tokens[o]) - kept
        if len(kept) + len(new) > budget:
            continue  # a smaller object further down may still fit
        kept |= new
    return int(tokens[named][0]) in kept


def run(n: int = 1000, size: tuple[int, int] = (224, 224), seed: int = 0, split: str = "test",
        num_objects: tuple[int, int] | None = None) -> dict:
    kw = {"num_objects": num_objects} if num_objects else {}  # default: the source's (SceneConfig)
    source = SyntheticScenes(num_items=n, seed=seed, split=split, sizes=[list(size)], **kw)
    rng = np.random.default_rng(seed)
    hits = {m: Counter() for m in ("salient", "nameable")}
    counts, nameable_counts = [], []
    for i in range(n):
        s = source.scene(i)
        n_v = s.grid[1] * s.grid[2]
        rel = [scenes.object_relevance(s, j) for j in range(len(s.objects))]
        # each object's tokens, its main token first
        tokens = [np.concatenate([[r.argmax()], np.flatnonzero(r > 0)]) for r in rel]
        area = np.array([scenes.object_mask(o, s.height, s.width).sum() for o in s.objects], dtype=float)
        colour_n = Counter(o.colour for o in s.objects)
        shape_n = Counter(o.shape for o in s.objects)
        can_name = np.array([colour_n[o.colour] == 1 or shape_n[o.shape] == 1 for o in s.objects])
        noise = rng.random(len(s.objects))  # random tie-breaks
        salient = list(np.lexsort((noise, -area)))
        nameable = list(np.lexsort((noise, -area, ~can_name)))
        counts.append(len(s.objects))
        nameable_counts.append(int(can_name.sum()))
        for k in KEEPS:
            budget = num_kept(n_v, k)
            hits["salient"][k] += _keeps_named(salient, tokens, s.target, budget)
            hits["nameable"][k] += _keeps_named(nameable, tokens, s.target, budget)
    return {"n": n, "size": list(size), "objects": (min(counts), float(np.mean(counts)), max(counts)),
            "nameable": (min(nameable_counts), float(np.mean(nameable_counts)), max(nameable_counts)),
            "rows": {m: {k: h[k] / n for k in KEEPS} for m, h in hits.items()}}


def table(r: dict) -> str:
    h, w = r["size"]
    n_v = (h // scenes.TOKEN_PX) * (w // scenes.TOKEN_PX)
    lo, mean, hi = r["objects"]
    nlo, nmean, nhi = r["nameable"]
    head = " | ".join(f"keep {k:g} ({num_kept(n_v, k)} tokens)" for k in KEEPS)
    lines = [f"{r['n']} test scenes at {h}x{w} ({n_v} visual tokens): {lo}-{hi} objects (mean {mean:.1f}), "
             f"of which {nlo}-{nhi} nameable (mean {nmean:.1f}).", "",
             f"| instruction-agnostic oracle | {head} |", "|---|" + "---:|" * len(KEEPS)]
    for m, row in r["rows"].items():
        lines.append(f"| {m} | " + " | ".join(f"{row[k] * 100:.1f}%" for k in KEEPS) + " |")
    lines.append("| named-only (instruction-aware) | " + " | ".join("100.0%" for _ in KEEPS) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, nargs=2, default=[224, 224], metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test")
    p.add_argument("--num-objects", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="objects per scene (default: the source's)")
    a = p.parse_args()
    print(table(run(a.n, tuple(a.size), a.seed, a.split, a.num_objects)))


if __name__ == "__main__":
    main()
