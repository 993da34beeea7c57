"""Prefill time of the full vs the pruned prompt, and the cost of scoring, in one run.

    python benchmarks/bench_runtime.py [--sizes reference,2b] [--image 448] [--repeats 3]

For each model: prefill (LLM forward over the prompt embeddings, batch 1, with KV cache; the vision
tower is excluded because it runs the same for every method) of the full prompt and of the prompt
pruned to 50% and 25% of its visual tokens, and the scoring overhead (layer-0 instruction-to-visual
attention from q/k + the predictor) as a share of the full prefill.
Goals: overhead < 3% of full prefill; prefill at 25% < 40% of full.

Models: `reference` = checkpoints/reference-qwen2vl (if present); `2b` = a Qwen2-VL-2B-sized language
model (28 layers, hidden 1536, 12 heads, 2 KV heads, MLP 8960) with random weights and a tiny vision
tower (speed does not depend on the weights); `7b` = a Qwen2-VL-7B-sized one (GPU only); `qwen3_8b` = a
Qwen3-VL-8B-sized one (36 layers, hidden 4096, 32 heads, 8 KV heads, head dim 128, MLP 12288, q/k norms,
3 DeepStack layers, 32 px visual tokens), `--layers N` keeps its first N layers (fp32 8B needs ~33 GB);
`qwen3_5_27b` = a Qwen3.5-27B-sized hybrid decoder (64 layers, three Gated DeltaNet linear-attention layers
(16 key / 48 value heads of 128) before each gated softmax layer (24 heads, 4 KV heads, head dim 256), hidden
5120, MLP 17408, 32 px visual tokens), `--layers N` keeps its first N layers in that pattern (N >= 4 reaches
the probe layer, 3). Its scoring cost includes the linear layers before the probe layer, run over the prompt.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _sizes import SIZES, bf16_peak, flops_text, prefill_flops

ROOT = Path(__file__).resolve().parent.parent


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


QWEN3_SIZES = {"qwen3_8b": dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                                 intermediate_size=12288)}


QWEN3_5_SIZES = {"qwen3_5_27b": dict(hidden_size=5120, num_hidden_layers=64, num_attention_heads=24,
                                     num_key_value_heads=4, head_dim=256, intermediate_size=17408,
                                     linear_num_key_heads=16, linear_num_value_heads=48, linear_key_head_dim=128,
                                     linear_value_head_dim=128, linear_conv_kernel_dim=4)}


def random_qwen3_5(text: dict, device: str, dtype: torch.dtype, image_px: int, name: str):
    """Qwen3.5 adapter over a random model: hybrid language model `text` (Qwen3.5's layout: every fourth layer
    softmax attention), a tiny vision tower."""
    from reference_mllm.tiny_models import DEFAULT_WORDS, make_qwen3_5
    from predictor.adapters import get_adapter

    n = text["num_hidden_layers"]
    text = {**text, "layer_types": ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n)]}
    with torch.device(device):
        model, processor = make_qwen3_5(list(DEFAULT_WORDS), text=text, max_pixels=image_px * image_px)
    model.set_attn_implementation("sdpa")
    return get_adapter("qwen3_5")(model.to(dtype=dtype).eval(), processor, f"random-{name}")


def random_qwen3_vl(text: dict, device: str, dtype: torch.dtype, image_px: int, name: str):
    """Qwen3-VL adapter over a random model: language model `text`, a tiny vision tower with 3 DeepStack layers."""
    from reference_mllm.tiny_models import DEFAULT_WORDS, make_qwen3_vl
    from predictor.adapters import get_adapter

    with torch.device(device):
        model, processor = make_qwen3_vl(list(DEFAULT_WORDS), text=text, max_pixels=image_px * image_px,
                                         vision={"depth": 3, "deepstack_visual_indexes": [0, 1, 2]})
    model.set_attn_implementation("sdpa")
    return get_adapter("qwen3_vl")(model.to(dtype=dtype).eval(), processor, f"random-{name}")


def load(name: str, device: str, dtype: torch.dtype, image_px: int, layers: int | None = None):
    from predictor.adapters import get_adapter

    if name in QWEN3_SIZES:
        text = {**QWEN3_SIZES[name], **({"num_hidden_layers": layers} if layers else {})}
        return random_qwen3_vl(text, device, dtype, image_px, name)
    if name in QWEN3_5_SIZES:
        text = {**QWEN3_5_SIZES[name], **({"num_hidden_layers": layers} if layers else {})}
        return random_qwen3_5(text, device, dtype, image_px, name)

    qwen = get_adapter("qwen2_vl")
    if name == "reference":
        path = ROOT / "checkpoints" / "reference-qwen2vl"
        if not path.is_dir():
            return None
        return qwen.load(str(path), dtype="float32", device=device, attn_implementation="sdpa")
    from _sizes import random_qwen2_vl  # built on the device: a 7B model never sits in host memory in fp32

    return random_qwen2_vl(SIZES[name], device, dtype, max_pixels=image_px * image_px * 4, attn="sdpa", name=name)


@torch.no_grad()
def bench(name: str, adapter, image_px: int, repeats: int, device: str) -> dict:
    from predictor.config import PredictorConfig
    from predictor.model import RelevancePredictor
    from predictor.runtime import PredictorScores, make_context, prefill, prune_context
    from predictor.adapters.layer0 import instruction_attention

    export = ROOT / "checkpoints" / "predictor-reference"
    if name == "reference" and (export / "config.json").is_file():
        from predictor import load_predictor
        pred = load_predictor(export)
    else:  # the paper's architecture; its speed does not depend on the weights
        pred = RelevancePredictor(PredictorConfig())
    pred = pred.to(device)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (image_px, image_px, 3), dtype=np.uint8))
    p = adapter.prepare(image, "what shape is the red object left of the blue circle")
    ctx = make_context(adapter, p)
    method = PredictorScores(pred)

    def score():
        heads, mean = instruction_attention(adapter, ctx.embeds, ctx.position_ids, p.instruction_positions,
                                            p.visual_positions)
        ctx.layer0_cache = (heads, mean)
        ctx.cache.clear()
        method.scores(ctx)
        ctx.layer0_cache = None

    score()  # warm-up
    t_score = _best(score, repeats, device)
    row = {"model": name, "S": p.seq_len, "N_v": p.num_visual, "score_ms": 1e3 * t_score,
           "probe": adapter.probe_layer}
    for keep in (1.0, 0.5, 0.25):
        pp, _ = prune_context(ctx, method, keep=keep)
        prefill(adapter, pp)  # warm-up
        t, kv = prefill(adapter, pp, repeats=repeats)
        row[f"prefill_{keep:g}_ms"], row[f"kv_{keep:g}_kib"], row[f"S_{keep:g}"] = 1e3 * t, kv / 1024, pp.seq_len
    full = row["prefill_1_ms"]
    if name in SIZES:
        row["prefill_flops"] = flops_text(prefill_flops(SIZES[name], p.seq_len), full / 1e3,
                                          bf16_peak(device, adapter.model.dtype))
    row["overhead"] = row["score_ms"] / full
    row["ratio_0.5"], row["ratio_0.25"] = row["prefill_0.5_ms"] / full, row["prefill_0.25_ms"] / full
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", "--size", default="reference,2b", help="comma list of reference, 2b, 7b")
    ap.add_argument("--image", type=int, default=448, help="image side in px (28 px per visual token side)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 (random-weight models)")
    ap.add_argument("--layers", type=int, default=None,
                    help="qwen3_8b, qwen3_5_27b: keep only the first N decoder layers")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device: {dev_name}, torch threads: {torch.get_num_threads()}, image {args.image}px, "
          f"best of {args.repeats}")
    rows = []
    for name in args.sizes.split(","):
        if name == "7b" and not args.device.startswith("cuda"):
            print("skipping 7b: needs a GPU")
            continue
        adapter = load(name, args.device, getattr(torch, args.dtype), args.image, args.layers)
        if adapter is None:
            print(f"skipping {name}: checkpoints/reference-qwen2vl not found")
            continue
        px = 224 if name == "reference" else args.image  # the reference model was trained on 224 px scenes
        rows.append(bench(name, adapter, px, args.repeats, args.device))
        del adapter
    head = ("| model | prompt tokens | visual | full prefill ms | 50% ms (ratio) | 25% ms (ratio) | "
            "scoring ms (share of full) | KV full / 25% KiB |")
    print("\n" + head + "\n|" + "---|" * 8)
    for r in rows:
        print(f"| {r['model']} | {r['S']} | {r['N_v']} | {r['prefill_1_ms']:.1f} | {r['prefill_0.5_ms']:.1f} "
              f"({r['ratio_0.5']:.0%}) | {r['prefill_0.25_ms']:.1f} ({r['ratio_0.25']:.0%}) | "
              f"{r['score_ms']:.2f} ({r['overhead']:.2%}) | {r['kv_1_kib']:.0f} / {r['kv_0.25_kib']:.0f} |")
    for r in rows:
        if "prefill_flops" in r:
            print(f"{r['model']}: full prefill {r['prefill_flops']}")
    for r in rows:
        ok_o, ok_p = r["overhead"] < 0.03, r["ratio_0.25"] < 0.40
        print(f"{r['model']}: overhead {r['overhead']:.2%} (probe layer {r['probe']}; goal < 3%: "
              f"{'met' if ok_o else 'NOT met'}), "
              f"prefill at 25% = {r['ratio_0.25']:.0%} of full (goal < 40%: {'met' if ok_p else 'NOT met'})")


if __name__ == "__main__":
    main()
