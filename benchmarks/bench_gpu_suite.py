"""The GPU suite: label generation, pruned prefill and the paper's training recipe at 7B size.
Run it through `benchmarks/gpu_suite.sh`, which prints the versions it runs with.

    benchmarks/gpu_suite.sh                                   # 7B shapes, bf16, cuda; ~ minutes on one H100/H200
    benchmarks/gpu_suite.sh --size tiny --device cpu --out /tmp/suite   # what the test runs (~ 30 s)

(a) label generation: bench_datagen at ~1300 prompt tokens (1024 visual) with 16-token answers: samples/s
    (generate + layer-0 attention + the explainer) and peak memory of gae batched, gae loop, the reference.
(b) pruned prefill: full vs 50% vs 25% of the visual tokens at batch 1 and 8 (the same prompt repeated),
    the scoring overhead (layer-0 attention + predictor) against the full batch-1 prefill, KV-cache size.
(c) the paper's training recipe (10K samples of ~1000 visual tokens, batch 128, 100 epochs): training steps
    timed over a few epochs' worth (bench_train), then extrapolated to 100 epochs.
Writes <out>/gpu_suite.json and <out>/gpu_suite.md. Random weights at Qwen2-VL shapes (speed does not depend on
them); the predictor is the paper's architecture.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

import bench_datagen
from _sizes import SIZES, bf16_peak, flops_text, prefill_flops, random_qwen2_vl

# per size: prompt tokens and answer tokens of (a), image side in px of (b), batches of (b),
# recipe (samples, visual-token grid side, batch, epochs) and epochs timed for (c)
PRESETS = {
    "7b": dict(length=1300, answer=16, image=896, batches=(1, 8), recipe=(10_000, 32, 128, 100), timed_epochs=3),
    "2b": dict(length=1300, answer=16, image=896, batches=(1, 8), recipe=(10_000, 32, 128, 100), timed_epochs=3),
    "tiny": dict(length=48, answer=3, image=112, batches=(1, 2), recipe=(32, 8, 8, 100), timed_epochs=1),
}


def versions() -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "device": "CPU"}
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name()
    return out


def _timed(fn, device: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def prefill_part(size: str, device: str, dtype: torch.dtype, image_px: int, batches) -> list[dict]:
    """(b): prefill ms, KV-cache MiB and achieved FLOP/s per (keep, batch), and the scoring overhead."""
    import numpy as np
    from PIL import Image

    from predictor.config import PredictorConfig

    from predictor.model import RelevancePredictor
    from predictor.runtime import PredictorScores, instruction_attention, make_context, prefill, prune_context

    adapter = random_qwen2_vl(size, device, dtype, max_pixels=image_px * image_px, attn="sdpa")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (image_px, image_px, 3), dtype=np.uint8))
    p = adapter.prepare(image, "what shape is the red object left of the blue circle")
    ctx = make_context(adapter, p)
    method = PredictorScores(RelevancePredictor(PredictorConfig()).to(device))

    def score():
        ctx.layer0_cache = instruction_attention(adapter, ctx.embeds, ctx.position_ids, p.instruction_positions,
                                                 p.visual_positions)
        ctx.cache.clear()
        method.scores(ctx)
        ctx.layer0_cache = None

    score()  # warm-up
    score_s = _timed(score, device)
    peak, rows = bf16_peak(device, dtype), []
    for keep in (1.0, 0.5, 0.25):
        pp, _ = prune_context(ctx, method, keep=keep)
        for batch in batches:
            prefill(adapter, pp, batch=batch)  # warm-up
            seconds, kv = prefill(adapter, pp, repeats=3, batch=batch)
            flops = prefill_flops(SIZES[size], pp.seq_len, batch)
            rows.append({"keep": keep, "batch": batch, "S": pp.seq_len, "N_v": p.num_visual, "ms": 1e3 * seconds,
                         "kv_mib": kv / 2**20, "tflops": flops / seconds / 1e12,
                         "flops_text": flops_text(flops, seconds, peak), "score_ms": 1e3 * score_s})
    for r in rows:
        full = next(x for x in rows if x["keep"] == 1.0 and x["batch"] == r["batch"])
        r["ratio"] = r["ms"] / full["ms"]
        r["score_share"] = r["score_ms"] / next(x for x in rows if x["keep"] == 1.0 and x["batch"] == 1)["ms"]
    return rows


def train_part(device: str, recipe, timed_epochs: int) -> dict:
    """(c): samples/s of training steps (and of the data loader) on the recipe's token count, extrapolated."""
    from bench_train import bench

    samples, side, batch, epochs = recipe
    steps = timed_epochs * math.ceil(samples / batch)
    with tempfile.TemporaryDirectory() as tmp:  # a few batches' worth of shards; the steps cycle over them
        r = bench(side, min(samples, 8 * batch), batch, steps, device, tmp)
    rate = min(r["train"], r["load"])
    return {"samples": samples, "n_v": side * side, "batch": batch, "epochs": epochs, "timed_steps": steps,
            "train_per_s": r["train"], "load_per_s": r["load"], "extrapolated_min": samples * epochs / rate / 60}


def markdown(res: dict) -> str:
    v, a = res["versions"], res["label_generation"]
    lines = [f"GPU suite, size {res['size']}, {res['dtype']} on {v['device']} (torch {v['torch']}, transformers "
             f"{v['transformers']}, CUDA {v['cuda']}); {res['seconds']:.0f} s", "",
             "| (a) label generation | S | T | samples/s | explainer s | peak MB | FLOP/s |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in a:
        mb = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| gae {r['method']} | {r['S']} | {r['T']} | {r['samples_per_s']:.3f} | {r['seconds']:.3f} | "
                     f"{mb} | {r['flops_text']} |")
    ref, bat = (next(r for r in a if r["method"] == m) for m in ("reference", "batched"))
    mem = "n/a" if ref["peak_mb"] is None else f"{bat['peak_mb'] / max(ref['peak_mb'], 1e-9):.3f}"
    lines += ["", f"batched vs reference: {bat['samples_per_s'] / ref['samples_per_s']:.2f}x samples/s "
                  f"(goal >= 5x), peak memory {mem} of it (goal <= 0.25)", "",
              "| (b) prefill | batch | tokens | ms | ratio to full | KV MiB | FLOP/s |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in res["prefill"]:
        lines.append(f"| keep {r['keep']:.0%} | {r['batch']} | {r['S']} | {r['ms']:.1f} | {r['ratio']:.2f} | "
                     f"{r['kv_mib']:.1f} | {r['flops_text']} |")
    p = res["prefill"][0]
    lines += ["", f"scoring {p['score_ms']:.2f} ms = {p['score_share']:.2%} of the full batch-1 prefill (goal < 1%); "
                  f"goal for keep 25%: ratio <= 0.35", ""]
    t = res["training"]
    lines += [f"(c) training recipe: {t['samples']} samples x {t['epochs']} epochs, N_v {t['n_v']}, batch {t['batch']}: "
              f"{t['train_per_s']:.0f} samples/s training, {t['load_per_s']:.0f} samples/s loading over "
              f"{t['timed_steps']} steps -> {t['extrapolated_min']:.1f} min extrapolated (goal < 5 min)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="7b", choices=sorted(PRESETS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--out", default="gpu_suite_out", help="folder for gpu_suite.json and gpu_suite.md")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} but torch {torch.__version__} sees no GPU; "
                         f"run with --size tiny --device cpu to check the suite on a CPU")
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    preset, t0 = PRESETS[args.size], time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"size": args.size, "device": args.device, "dtype": dtype_name, "versions": versions(), "preset": preset}
    print(json.dumps(res["versions"]), flush=True)
    print("(a) label generation", flush=True)
    res["label_generation"] = bench_datagen.main(
        ["--size", args.size, "--device", args.device, "--dtype", dtype_name, "--lengths", str(preset["length"]),
         "--answers", str(preset["answer"]), "--item", "--one-process"])
    print("(b) pruned prefill", flush=True)
    res["prefill"] = prefill_part(args.size, args.device, getattr(torch, dtype_name), preset["image"],
                                  preset["batches"])
    print("(c) training recipe", flush=True)
    res["training"] = train_part(args.device, preset["recipe"], preset["timed_epochs"])
    res["seconds"] = time.perf_counter() - t0
    (out / "gpu_suite.json").write_text(json.dumps(res, indent=2))
    text = markdown(res)
    (out / "gpu_suite.md").write_text(text)
    print(text, flush=True)
    return res


if __name__ == "__main__":
    main()
