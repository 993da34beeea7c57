"""Label generation per item, with the vision features computed once per prompt (now) against once per
embedding (before: the explainer's pass and layer-0 attention each re-ran the vision tower).

    python benchmarks/bench_vision_cache.py                   # 2B-shaped, depth-reduced config, 448 px
    python benchmarks/bench_vision_cache.py --image 224 --repeats 3

One item = what `data_gen` does with it: greedy answer (transformers' generate, from the
cached features, so "now" is one tower pass per item), the gae explainer, layer-0 attention. The model is Qwen2-VL-2B-shaped (vision: embed 1280,
16 heads; text: hidden 1536, 12 heads, 2 KV heads) with depths cut by the same factor (vision 32 -> 8,
text 28 -> 7), so that the tower's share of the work stays about the real one while a CPU run takes
seconds. Random weights: speed does not depend on them. Both variants run in this one process, on the
same prepared prompt, alternating, best of --repeats.
"""
from __future__ import annotations

import argparse
import time

import torch

VISION = dict(depth=8, embed_dim=1280, num_heads=16)
TEXT = dict(hidden_size=1536, num_hidden_layers=7, num_attention_heads=12, num_key_value_heads=2,
            intermediate_size=8960)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=int, default=448, help="square image side in px (28 px per visual token)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--answer", type=int, default=4, help="answer tokens generated and explained")
    args = ap.parse_args()

    from PIL import Image

    from data_gen.explainers import get_explainer
    from reference_mllm.tiny_models import DEFAULT_WORDS, make_qwen2_vl
    from predictor.adapters import get_adapter
    from predictor.adapters.attention import ATTN_IMPL, register
    from predictor.adapters.base import PromptCache

    px = args.image
    model, processor = make_qwen2_vl(list(DEFAULT_WORDS), text=TEXT, vision=VISION, max_pixels=px * px,
                                     min_pixels=px * px)
    register()  # the attention data_gen loads models with: SDPA, fp32 maps only inside the explainer
    model.set_attn_implementation(ATTN_IMPL)
    adapter = get_adapter("qwen2_vl")(model.eval(), processor, "random-2b-shaped")
    image = Image.new("RGB", (px, px), (120, 90, 60))
    prepared = adapter.prepare(image, "What shape is the red object?")
    gae = get_explainer("gae")()

    def item(cached: bool) -> None:
        prepared.cache = PromptCache()
        ids, _ = adapter.generate(prepared, max_new_tokens=args.answer)
        ids = ids if ids.numel() else torch.tensor([5])
        if not cached:
            prepared.cache = PromptCache()
        gae(adapter, prepared, ids)
        if not cached:
            prepared.cache = PromptCache()
        adapter.layer0_attention(prepared)

    def tower() -> None:
        prepared.cache = PromptCache()
        adapter.visual_features(prepared)

    best = {"recomputed": float("inf"), "cached": float("inf"), "tower": float("inf")}
    item(True)  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("recomputed", lambda: item(False)), ("cached", lambda: item(True)), ("tower", tower)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    print(f"{prepared.num_visual} visual tokens, prompt {prepared.seq_len} tokens, {args.answer}-token answer cap, "
          f"{torch.get_num_threads()} threads")
    print("| per item | seconds |\n|---|---:|")
    print(f"| vision tower once | {best['tower']:.2f} |")
    print(f"| before: tower per embedding | {best['recomputed']:.2f} |")
    print(f"| now: tower features cached | {best['cached']:.2f} |")
    print(f"now / before: {best['cached'] / best['recomputed']:.2f}")


if __name__ == "__main__":
    main()
