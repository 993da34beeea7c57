"""Pruned generation on one image, for a person: the answer with all visual tokens and with the kept
ones, how many were kept, the time saved, and a PNG of the image with the kept tokens highlighted.

    python -m predictor.runtime.demo                                   # the reference MLLM + export on docs/example.png
                                                                       # -> outputs/demo/kept-tokens.png
    python -m predictor.runtime.demo --image photo.jpg --question "What is on the table?" \\
        --model qwen2_vl --model-path /models/Qwen2-VL-7B-Instruct --predictor my-org/qwen2vl-7b-relevance --keep 0.25

The defaults are the repository's reference MLLM (checkpoints/reference-qwen2vl) and the predictor
export of the README's main command (checkpoints/predictor-reference); docs/example.png is a held-out
synthetic scene they were made for (synthetic_scenes, split test, seed 0, item 1; the answer is "cross").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_IMAGE = ROOT / "docs" / "example.png"
EXAMPLE_QUESTION = "What shape is the pink object?"
# under the working directory's outputs/, where eval.py and train.py write theirs (ignored by git)
DEFAULT_OUT = str(Path("outputs") / "demo" / "kept-tokens.png")


def _timed(fn, device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def _best(fn, device: str, repeats: int = 3):
    """(result, best seconds of `repeats`): the minimum is what the work costs, the rest is other load."""
    runs = [_timed(fn, device) for _ in range(repeats)]
    return runs[0][0], min(t for _, t in runs)


def prepare_input(image: str, question: str, model: str, model_path: str, device: str):
    """(adapter, image as the model sees it, prepared prompt). The image is capped by `cap_pixels`, as
    data_gen labels and eval and lmms-eval prune, not by the processor's own cap, which rounds to another
    token count (1008 instead of 1032 at 1920x1080 on Qwen2-VL): the predictor must prune at its labels' count."""
    from PIL import Image, UnidentifiedImageError

    from predictor.adapters import load_adapter
    from predictor.media import DEFAULT_MAX_PIXELS, cap_pixels

    try:
        img = Image.open(image).convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, IsADirectoryError) as e:
        raise FileNotFoundError(f"--image {image}: cannot read it as an image ({e.__class__.__name__}); "
                                "pass a PNG or JPEG file") from None
    img = cap_pixels(img, DEFAULT_MAX_PIXELS)
    adapter = load_adapter(model, model_path, device=device)
    return adapter, img, adapter.prepare(img, question)


def run(image: str, question: str, model: str, model_path: str, predictor: str, keep: float | None,
        budget: int | None, out: str, max_new_tokens: int, device: str, revision: str | None = None) -> dict:
    """Answer with all tokens and pruned; write the overlay PNG; return the figures printed."""
    from predictor.hub import load_predictor
    from predictor.runtime.generate import make_context, prefill, prune_context, pruned_generate
    from predictor.runtime.report import kept_overlay
    from predictor.runtime import make_method

    pred = load_predictor(predictor, revision=revision)
    adapter, img, prepared = prepare_input(image, question, model, model_path, device)
    method = make_method("predictor", predictor=pred)

    def answer(k, b):  # the whole call as a user makes it: vision tower, scoring, removal, generation
        return pruned_generate(adapter, [prepared], method, keep=k, budget=b, max_new_tokens=max_new_tokens)[0]

    answer(1.0, None)  # warm-up
    (full, t_full), (small, t_small) = (_best(lambda: answer(1.0, None), device),
                                        _best(lambda: answer(keep, budget), device))
    ctx = make_context(adapter, prepared)
    pp_full, _ = prune_context(ctx, method, 1.0)
    (pp_small, _), t_score = _best(lambda: prune_context(make_context(adapter, prepared), method, keep, budget),
                                   device, 5)
    _, t_embed = _best(lambda: make_context(adapter, prepared), device, 5)
    t_score -= t_embed  # layer-0 q/k, the predictor and the removal, not the vision tower
    p_full, kv_full = prefill(adapter, pp_full, repeats=5)
    p_small, kv_small = prefill(adapter, pp_small, repeats=5)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    png = kept_overlay(img, tuple(prepared.grid), {f"all {full.num_visual}": full.kept_visual,
                                                    f"kept {small.num_kept}": small.kept_visual}, out,
                       title=question, token_px=adapter.token_px)
    return {"question": question, "full": full.text, "pruned": small.text, "num_visual": full.num_visual,
            "num_kept": small.num_kept, "generate_full_s": t_full, "generate_pruned_s": t_small,
            "score_s": max(t_score, 0.0), "prefill_full_s": p_full, "prefill_pruned_s": p_small, "kv_full": kv_full,
            "kv_pruned": kv_small, "png": str(png) if png else None}


def _change(saved: float) -> str:
    return f"{100 * saved:.0f}% less" if saved >= 0 else f"{-100 * saved:.0f}% more"


def report(r: dict) -> str:
    pct = 100 * r["num_kept"] / r["num_visual"]
    saved = 1 - r["prefill_pruned_s"] / r["prefill_full_s"]
    whole = 1 - r["generate_pruned_s"] / r["generate_full_s"]
    lines = [
        f"question: {r['question']}",
        f"all {r['num_visual']} visual tokens:  {r['full']!r}   (generation {1000 * r['generate_full_s']:.0f} ms, "
        f"prefill {1000 * r['prefill_full_s']:.1f} ms, KV cache {r['kv_full'] / 2**20:.2f} MiB)",
        f"kept {r['num_kept']} of {r['num_visual']} ({pct:.1f}%):  {r['pruned']!r}   (generation "
        f"{1000 * r['generate_pruned_s']:.0f} ms, prefill {1000 * r['prefill_pruned_s']:.1f} ms, KV cache "
        f"{r['kv_pruned'] / 2**20:.2f} MiB; scoring {1000 * r['score_s']:.1f} ms)",
        f"time: prefill {_change(saved)}, whole generation {_change(whole)}"
        + ("   (scoring costs more than the pruning saves on a model this small)" if whole < 0 else "")
        + ("" if r["full"] == r["pruned"] else "   (the answers differ)"),
    ]
    lines.append(f"kept tokens: {r['png']}" if r["png"] else "kept tokens: no figure (the grid does not tile the image)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m predictor.runtime.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(EXAMPLE_IMAGE), help="image file (default: docs/example.png)")
    ap.add_argument("--question", default=None, help=f"default with the example image: {EXAMPLE_QUESTION!r}")
    ap.add_argument("--model", default="qwen2_vl", help="adapter: qwen2_vl | qwen2_5_vl | llava_onevision | ...")
    ap.add_argument("--model-path", default=str(ROOT / "checkpoints" / "reference-qwen2vl"),
                    help="the MLLM: a folder or a hub id in the local cache (default: the reference MLLM)")
    ap.add_argument("--predictor", default=str(ROOT / "checkpoints" / "predictor-reference"),
                    help="export folder or hub repo id (default: the committed reference export)")
    ap.add_argument("--revision", default=None, help="branch, tag or commit of a hub predictor")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--keep", type=float, default=None, help="share of visual tokens kept (default 0.25)")
    group.add_argument("--budget", type=int, default=None, help="visual tokens kept, instead of --keep")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"the PNG written (default: {DEFAULT_OUT})")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    question = a.question
    if question is None:
        if Path(a.image).resolve() != EXAMPLE_IMAGE:
            ap.error("--question is needed with your own --image")
        question = EXAMPLE_QUESTION
    keep = a.keep if a.keep is not None or a.budget is not None else 0.25
    try:
        r = run(a.image, question, a.model, a.model_path, a.predictor, keep, a.budget, a.out, a.max_new_tokens,
                a.device, a.revision)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
