"""Explainer validation on synthetic scenes, where the answer-bearing object is known.

    python benchmarks/bench_explainers.py                          # reference MLLM, 40 scenes, 224x224
    python benchmarks/bench_explainers.py --n 100 --size 224 448 --explainers gae attention
    python benchmarks/bench_explainers.py --n 100 --predictor checkpoints/predictor-reference
    python benchmarks/bench_explainers.py --adapter qwen3_5 --model checkpoints/reference-qwen3_5
    python benchmarks/bench_explainers.py --adapter qwen3_5 --model checkpoints/reference-qwen3_5 \
        --explainers gae gae:linear_layers=implicit input_x_gradient   # an explainer's options: name:key=value,...

For every held-out scene the model answers correctly, each method's relevance over the visual
tokens is compared with the ground truth (`gt_relevance`: the share of the object's pixels in each
token):
    mass      share of the relevance on the tokens the object touches (random: their share of tokens)
    pointing  how often the top-1 token lies on the object (the pointing game)
    kept@k    how often the object's main token (the one with most of its pixels) is among the top k
              share of tokens by relevance, i.e. survives pruning to keep ratio k
    named     how often the object the question names outscores every other object (their main
              tokens): whether the method depends on the instruction at all; chance is 1 / objects.
              A method can keep the named object at every k (it keeps all objects) and still sit at
              chance here, as any instruction-agnostic saliency would.
Methods: the registered explainers (`ground_truth` scores 100% everywhere: a check of the
benchmark), `layer0` (the predictor's input: layer-0 attention of the instruction over the visual
tokens, used directly), `predictor` (with --predictor <export>) and `random`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from reference_mllm import scenes
from data_gen.correctness import normalise
from data_gen.sources.synthetic_scenes import SyntheticScenes
from predictor.targets import num_kept

EXPLAINERS = ("gae", "attention", "input_x_gradient", "integrated_gradients", "ground_truth")
REF = "checkpoints/reference-qwen2vl"
KEEPS = (0.5, 0.25, 0.125)  # keep ratios of the kept@k columns


def run(model: str = REF, n: int = 40, size: tuple[int, int] = (224, 224), seed: int = 0,
        explainers: tuple[str, ...] = EXPLAINERS, split: str = "test", predictor: str | None = None,
        adapter_name: str = "qwen2_vl") -> dict:
    """-> {"rows": {method: {"mass", "pointing", "kept@k", "named", "seconds"}}, "scenes", "wrong",
    "object_share", "objects"}"""
    from data_gen.explainers import get_explainer
    from data_gen.explainers.ground_truth import attach_ground_truth
    from predictor.adapters import load_adapter

    torch.manual_seed(seed)
    adapter = load_adapter(adapter_name, model)
    methods = {name: _make(name) for name in explainers}
    methods["layer0"] = lambda a, p, ids: a.layer0_attention(p)[1]
    if predictor:
        from predictor import load_predictor
        from predictor.runtime import PredictorScores, make_context

        scorer = PredictorScores(load_predictor(predictor))
        methods["predictor"] = lambda a, p, ids: scorer.scores(make_context(a, p))
    gen = torch.Generator().manual_seed(seed)
    methods["random"] = lambda a, p, ids: torch.rand(p.num_visual, generator=gen)
    sums = {m: {"mass": 0.0, "pointing": 0.0, **{f"kept@{k}": 0.0 for k in KEEPS}, "named": 0.0, "seconds": 0.0}
            for m in methods}
    record = Path(model) / "training.json"  # draw scenes as the reference model was trained on
    scene_kw = json.loads(record.read_text())["config"].get("scenes", {}) if record.is_file() else {}
    source = SyntheticScenes(num_items=20 * n, seed=seed, split=split, sizes=[list(size)], **scene_kw)
    done = wrong = 0
    share = n_objects = 0.0
    bar = tqdm(total=n, desc="explainers")
    for i in range(len(source)):
        if done == n:
            break
        item = source[i]
        prepared = adapter.prepare(item.image, item.instruction)
        attach_ground_truth(prepared, item.extra)  # for the ground_truth row (a check of this benchmark)
        ids, text = adapter.generate(prepared, max_new_tokens=8)
        if ids.numel() == 0 or normalise(text) != normalise(item.answer):
            wrong += 1
            continue
        gt = torch.tensor(item.extra["gt_relevance"])
        inside = gt > 0  # (N_v,) tokens the object touches
        share += inside.float().mean().item()
        scene = source.scene(i)
        others = [scenes.main_token(scene, j) for j in range(len(scene.objects)) if j != scene.target]
        n_objects += len(scene.objects)
        for name, fn in methods.items():
            t0 = time.perf_counter()
            rel = fn(adapter, prepared, ids).detach().float().reshape(-1).cpu()
            sums[name]["seconds"] += time.perf_counter() - t0
            sums[name]["mass"] += (rel[inside].sum() / rel.sum().clamp_min(1e-12)).item()
            sums[name]["pointing"] += float(inside[rel.argmax()])
            rank = int((rel > rel[gt.argmax()]).sum())  # tokens scored above the object's main token
            for k in KEEPS:  # the runtime's rule for how many tokens a keep ratio keeps
                sums[name][f"kept@{k}"] += float(rank < num_kept(len(rel), k))
            sums[name]["named"] += float(bool(others) and bool(rel[gt.argmax()] > rel[others].max()))
        done += 1
        bar.update()
    bar.close()
    rows = {m: {k: v / max(done, 1) for k, v in s.items()} for m, s in sums.items()}
    return {"rows": rows, "scenes": done, "wrong": wrong, "object_share": share / max(done, 1),
            "objects": n_objects / max(done, 1), "size": list(size), "model": model}


def _make(spec: str):
    """"name" or "name:key=value,key=value" (e.g. gae:linear_layers=implicit) -> the explainer."""
    from data_gen.explainers import get_explainer

    name, _, opts = spec.partition(":")
    options = {}
    for opt in filter(None, opts.split(",")):
        key, eq, value = opt.partition("=")
        if not eq:
            raise ValueError(f"--explainers {spec!r}: options are key=value, e.g. gae:linear_layers=implicit")
        options[key] = int(value) if value.isdigit() else value
    return get_explainer(name)(**options)


def table(result: dict) -> str:
    h, w = result["size"]
    lines = [f"{result['scenes']} correctly answered held-out scenes ({h}x{w}, {h // 28 * (w // 28)} visual "
             f"tokens; {result['wrong']} answered wrongly were skipped); the object touches "
             f"{result['object_share'] * 100:.1f}% of the tokens on average; {result['objects']:.1f} objects "
             f"per scene, so 'named' is {100 / max(result['objects'], 1):.0f}% by chance.", "",
             "| method | relevance mass on the object | pointing game (top-1 on the object) "
             "| object kept at 50% / 25% / 12.5% | named object above the others | s / sample |",
             "|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        kept = " / ".join(f"{r[f'kept@{k}'] * 100:.0f}%" for k in KEEPS)
        lines.append(f"| {name} | {r['mass'] * 100:.1f}% | {r['pointing'] * 100:.1f}% | {kept} | "
                     f"{r['named'] * 100:.0f}% | {r['seconds']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=REF)
    p.add_argument("--adapter", default="qwen2_vl", help="the model's adapter (qwen3_5: the hybrid reference model)")
    p.add_argument("--n", type=int, default=40, help="correctly answered scenes to score")
    p.add_argument("--size", type=int, nargs=2, default=[224, 224], metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", help="synthetic_scenes split (train / heldout / test)")
    p.add_argument("--explainers", nargs="+", default=list(EXPLAINERS))
    p.add_argument("--predictor", default=None, help="also score with this predictor export")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(table(run(a.model, a.n, tuple(a.size), a.seed, tuple(a.explainers), a.split, a.predictor, a.adapter)))


if __name__ == "__main__":
    main()
