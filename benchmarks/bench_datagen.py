"""gae with batched backward vs gae's per-token loop vs the naive full-matrix reference: time and peak memory.

    python benchmarks/bench_datagen.py                      # CPU: 'small' Qwen2-VL LM, S ~ 256/1024/2048, T = 1/16
    python benchmarks/bench_datagen.py --device cuda --dtype bfloat16 --size 7b --lengths 1300 --answers 16 --item
    python benchmarks/bench_datagen.py --saved --answers 1  # gae with and without an fp32 mask saved per layer

Methods: `batched` = gae with chunk 16 (one backward pass carries up to 16 answer tokens), `loop` = gae with
chunk 1 (one backward per answer token), `reference` = data_gen/explainers/reference.py
(every layer's (H, S, S) maps kept, full S x S rollout). Random weights at the shapes of --size
(benchmarks/_sizes.py; speed does not depend on them), or an existing Qwen2-VL folder with --model.

Peak memory is the extra memory a method needs. CPU: each (method, S, T) runs in its own subprocess, and it
is the process's peak resident set (ru_maxrss) minus its resident set just before the call (model loaded,
sample prepared, one warm-up call at a short length). CUDA: one process; torch.cuda.max_memory_allocated
minus the allocation before the call. FLOP/s: the matmul FLOPs of gae (_sizes.gae_flops, the same count for
every method) per second, against the device's bf16 peak where one is known. --item also times the rest of a
label-generation item (greedy generate of T tokens, layer-0 attention): samples/s = 1 / (that + method).
--saved compares gae with a variant in which each layer saves its own fp32 (1, 1, S, S) additive
mask and adds the MB saved for backward (distinct storages seen by saved_tensors_hooks), all and in (S, S).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from _sizes import SIZES, bf16_peak, check_size, flops_text, gae_flops


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _save_mask_per_layer() -> None:
    """Restore, in this process only, the save of an fp32 (B, 1, Q, K) additive mask per layer."""
    from predictor.adapters import attention

    new = attention._RecomputedAttention

    class _SavesMask(new):
        @staticmethod
        def forward(ctx, q, k, v, attention_mask, *rest):
            mask = attention._additive_mask(attention_mask, q.shape[2], k.shape[2], q.device)
            return new.forward(ctx, q, k, v, mask, *rest)  # saves `mask`

    attention._RecomputedAttention = _SavesMask


class _SavedBytes:
    """Bytes of the distinct storages saved for backward while active: all, and those of (n, n) tensors.
    The model's weights (saved by reference, no extra memory) are left out."""

    def __init__(self, n: int, model):
        self.n, self.all, self.square = n, {}, {}
        self.weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}

    def __enter__(self):
        def pack(t):
            st = t.untyped_storage()
            if st.data_ptr() not in self.weights:
                self.all[st.data_ptr()] = st.nbytes()
                if t.shape[-2:] == (self.n, self.n):
                    self.square[st.data_ptr()] = st.nbytes()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def _method(name: str):
    from data_gen.explainers import get_explainer
    from data_gen.explainers.reference import reference_gae

    if name == "reference":
        return lambda a, p, ans: reference_gae(a, p, ans, rule="abs")  # gae's default rule
    if name == "old":
        _save_mask_per_layer()
    return get_explainer("gae")(chunk=16 if name == "batched" else 1)


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _worker(args) -> list[dict]:
    import resource

    from PIL import Image

    from _sizes import random_qwen2_vl
    from predictor.adapters import load_adapter

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    max_pixels = 28 * 28 * (max(args.lengths) + 64)
    adapter = (load_adapter("qwen2_vl", args.model, device=args.device, dtype=args.dtype, max_pixels=max_pixels)
               if args.model else random_qwen2_vl(args.size, args.device, dtype, max_pixels))
    cuda, peak = args.device.startswith("cuda"), bf16_peak(args.device, dtype)
    small = adapter.prepare(Image.new("RGB", (56, 56)), "what shape?")
    methods = {m: _method(m) for m in args.methods}
    for fn in methods.values():
        fn(adapter, small, torch.tensor([12, 13]))  # warm-up (first-call costs) at a small size, before the baseline
    rows = []
    for length in args.lengths:
        side = max(1, round((length - 30) ** 0.5))  # visual tokens ~ S - 30 template/instruction tokens
        p = adapter.prepare(Image.new("RGB", (28 * side, 28 * side), (90, 120, 200)),
                            "what shape is the red object left of the blue circle?")
        for n_t in args.answers:
            answer = torch.randint(10, 60, (n_t,))
            item_s = None
            if args.item:  # the rest of a label-generation item: answer, layer-0 attention
                _sync(cuda)
                t0 = time.perf_counter()
                p.cache.visual_features = None
                adapter.model.generation_config.min_new_tokens = n_t  # random weights: no early EOS
                adapter.generate(p, max_new_tokens=n_t)
                adapter.layer0_attention(p)
                _sync(cuda)
                item_s = time.perf_counter() - t0
            for name, fn in methods.items():
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                else:
                    before = _rss_bytes()
                _sync(cuda)
                t0 = time.perf_counter()
                with _SavedBytes(p.seq_len + n_t, adapter.model) as saved:
                    rel = fn(adapter, p, answer)
                _sync(cuda)
                seconds = time.perf_counter() - t0
                top = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                flops = gae_flops(SIZES[args.size], p.seq_len + n_t, n_t) if not args.model else None
                rows.append({"method": name, "S": p.seq_len, "N_v": p.num_visual, "T": n_t, "seconds": seconds,
                             "peak_mb": None if args.one_process and not cuda else (top - before) / 2**20, "rel_sum": float(rel.sum()), "item_s": item_s,
                             "samples_per_s": 1.0 / (seconds + (item_s or 0.0)),
                             "tflops": flops / seconds / 1e12 if flops else None,
                             "flops_text": flops_text(flops, seconds, peak) if flops else "n/a",
                             "saved_mb": sum(saved.all.values()) / 2**20,
                             "square_mb": sum(saved.square.values()) / 2**20})
    return rows


def _runs(args) -> list[dict]:
    """CPU: a subprocess per (method, S, T), for a clean peak resident set; CUDA (or --one-process): one."""
    base = [sys.executable, __file__, "--worker", "--device", args.device, "--dtype", args.dtype, "--size", args.size]
    base += ["--model", args.model] if args.model else []
    base += ["--item"] if args.item else []
    base += ["--one-process"] if args.one_process else []
    if args.device.startswith("cuda") or args.one_process:
        jobs = [base + ["--methods", *args.methods, "--lengths", *map(str, args.lengths),
                        "--answers", *map(str, args.answers)]]
    else:
        jobs = [base + ["--methods", m, "--lengths", str(s), "--answers", str(t)]
                for s in args.lengths for t in args.answers for m in args.methods]
    rows = []
    for cmd in jobs:
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"worker failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048], help="prompt tokens S (about)")
    ap.add_argument("--answers", type=int, nargs="+", default=[1, 16], help="answer tokens T")
    ap.add_argument("--size", default="small", help=f"random-weight language model: {', '.join(SIZES)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16")
    ap.add_argument("--model", default=None, help="an existing Qwen2-VL folder instead of random weights")
    ap.add_argument("--item", action="store_true", help="also time generate + layer-0 attention: samples/s")
    ap.add_argument("--saved", action="store_true", help="gae with and without a saved fp32 mask per layer instead of the three methods")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--one-process", action="store_true",
                    help="CPU: all runs in one process (quick; no peak memory, the resident peak only grows)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--methods", nargs="+", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    check_size(args.size)
    if args.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype {args.dtype!r}; expected float32 or bfloat16")
    if args.worker:
        print(json.dumps(_worker(args)))
        return []
    args.methods = ["old", "loop"] if args.saved else ["reference", "loop", "batched"]
    print(f"model {args.model or 'random ' + args.size}; device {args.device} "
          f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), {args.dtype}, "
          f"{torch.get_num_threads()} threads; torch {torch.__version__}")
    rows = _runs(args)
    table(rows, args.methods, args.dtype)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


def table(rows: list[dict], methods: list[str], dtype: str = "float32") -> None:
    first, last = methods[0], methods[-1]
    print(f"| S | T | {' | '.join(f'{m} s' for m in methods)} | {last} vs {first} | {last} vs {methods[1]} | "
          f"{' | '.join(f'{m} MB' for m in methods)} | mem {last}/{first} | samples/s {last} | {last} FLOP/s |")
    print("|" + "---:|" * (2 * len(methods) + 7))
    for s, t in dict.fromkeys((r["S"], r["T"]) for r in rows):
        r = {x["method"]: x for x in rows if (x["S"], x["T"]) == (s, t)}
        sums = [r[m]["rel_sum"] for m in methods]
        diff = (max(sums) - min(sums)) / max(abs(max(sums)), 1e-12)
        if dtype == "float32":
            assert diff <= 1e-3, (s, t, sums)  # the same relevance, whatever the method
        if methods[0] == "old":
            assert sums[0] == sums[1], sums  # the same arithmetic
        secs = " | ".join(f"{r[m]['seconds']:.2f}" for m in methods)
        mem = [r[m]["peak_mb"] for m in methods]
        mbs = " | ".join("n/a" if x is None else f"{x:.0f}" for x in mem)
        ratio = "n/a" if mem[0] is None else f"{mem[-1] / max(mem[0], 1e-9):.3f}"
        print(f"| {s} | {t} | {secs} | "
              f"{r[first]['seconds'] / r[last]['seconds']:.1f}x | {r[methods[1]]['seconds'] / r[last]['seconds']:.1f}x | "
              f"{mbs} | "
              f"{ratio} | {r[last]['samples_per_s']:.3f} | "
              f"{r[last]['flops_text']} |", flush=True)
        if methods[0] == "old":
            print(f"|   | saved MB old / ours {r['old']['saved_mb']:.1f} / {r['loop']['saved_mb']:.1f}, "
                  f"of it (S, S): {r['old']['square_mb']:.1f} / {r['loop']['square_mb']:.1f} |")


if __name__ == "__main__":
    main()
