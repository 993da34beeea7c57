"""Reference (full-matrix) GAE vs ours on the same model and sample: time and peak memory.

    python benchmarks/bench_datagen.py                      # CPU: tiny Qwen2-VL, S ~ 256/1024/2048, T = 1/16
    python benchmarks/bench_datagen.py --lengths 256 --answers 1
    python benchmarks/bench_datagen.py --saved --answers 1  # gae before/after issue 11 (fp32 mask per layer)

Each (method, S, T) runs in its own subprocess. Peak memory = that process's peak resident set
(resource.getrusage ru_maxrss) minus its resident set just before the explainer runs (model
loaded, sample prepared, one warm-up call at a short length), i.e. the extra memory the method
needs. On CUDA it is torch.cuda.max_memory_allocated minus the allocation before the call.

--saved compares ours with ours as it was before issue 11 (each layer saved its own fp32 (1, 1, S, S)
additive mask for backward) instead of with the reference, and adds the bytes saved for backward over
the pass (distinct storages seen by torch.autograd.graph.saved_tensors_hooks) and the part of them
in (S, S)-shaped tensors.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


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
        import torch

        def pack(t):
            st = t.untyped_storage()
            if st.data_ptr() in self.weights:
                return t
            self.all[st.data_ptr()] = st.nbytes()
            if t.shape[-2:] == (self.n, self.n):
                self.square[st.data_ptr()] = st.nbytes()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def _worker(args) -> dict:
    import resource

    import torch
    from PIL import Image

    from data_gen.explainers import get_explainer
    from data_gen.explainers.reference import reference_gae
    from predictor.adapters import load_adapter

    torch.manual_seed(0)
    adapter = load_adapter("qwen2_vl", args.model, device=args.device, dtype="float32", max_pixels=28 * 28 * 2304)
    side = max(1, round((args.length - 30) ** 0.5))  # visual tokens ~ S - 30 template/instruction tokens
    image = Image.new("RGB", (28 * side, 28 * side), (90, 120, 200))
    p = adapter.prepare(image, "what shape is the red object left of the blue circle?")
    answer = torch.randint(10, 60, (args.answer,))
    if args.method == "ours_old":
        _save_mask_per_layer()
    fn = get_explainer("gae")() if args.method.startswith("ours") else (lambda a, pr, ans: reference_gae(a, pr, ans))
    small = adapter.prepare(Image.new("RGB", (56, 56)), "what shape?")
    fn(adapter, small, answer[:1])  # warm-up (first-call costs) at a small size, before the baseline
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    t0 = time.perf_counter()
    with _SavedBytes(p.seq_len + args.answer, adapter.model) as saved:
        rel = fn(adapter, p, answer)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"method": args.method, "S": p.seq_len, "N_v": p.num_visual, "T": args.answer, "seconds": seconds,
            "peak_mb": (peak - before) / 2**20, "rel_sum": float(rel.sum()),
            "saved_mb": sum(saved.all.values()) / 2**20, "square_mb": sum(saved.square.values()) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--answers", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="existing Qwen2-VL folder (default: build a random tiny one)")
    ap.add_argument("--saved", action="store_true", help="gae before/after issue 11 instead of reference/ours")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, default=256, help=argparse.SUPPRESS)
    ap.add_argument("--answer", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    tmp = tempfile.mkdtemp(prefix="bench_datagen_")
    if args.model is None:
        from data_gen.hf_build import DEFAULT_WORDS, build_qwen2_vl

        args.model = str(build_qwen2_vl(f"{tmp}/qwen2_vl", list(DEFAULT_WORDS), max_pixels=28 * 28 * 2304,
                                        text=dict(hidden_size=args.hidden, num_hidden_layers=args.layers,
                                                  num_attention_heads=args.heads, num_key_value_heads=args.heads,
                                                  intermediate_size=4 * args.hidden)))
    print(f"model {args.model}: {args.layers} layers, hidden {args.hidden}, {args.heads} heads; device {args.device}")
    base, tag = ("ours_old", "old") if args.saved else ("reference", "ref")
    head = f"{'S':>6} {'T':>3} | {tag + ' s':>8} {'ours s':>8} {'speedup':>8} | {tag + ' MB':>8} {'ours MB':>8} {'mem ratio':>9}"
    if args.saved:  # MB saved for backward over the pass, and of it in (S, S) tensors
        head += f" | {'old svd':>8} {'ours svd':>8} | {'old SxS':>8} {'ours SxS':>8}"
    print(head)
    for length in args.lengths:
        for answer in args.answers:
            res = {}
            for method in (base, "ours"):
                cmd = [sys.executable, __file__, "--worker", "--method", method, "--length", str(length),
                       "--answer", str(answer), "--model", args.model, "--device", args.device]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                res[method] = json.loads(out.stdout.strip().splitlines()[-1])
            r, o = res[base], res["ours"]
            assert abs(r["rel_sum"] - o["rel_sum"]) <= 1e-3 * max(abs(r["rel_sum"]), 1e-12), (r, o)
            assert not args.saved or r["rel_sum"] == o["rel_sum"], (r, o)  # the same arithmetic
            row = (f"{o['S']:>6} {answer:>3} | {r['seconds']:>8.2f} {o['seconds']:>8.2f} "
                   f"{r['seconds'] / o['seconds']:>7.1f}x | {r['peak_mb']:>8.0f} {o['peak_mb']:>8.0f} "
                   f"{o['peak_mb'] / max(r['peak_mb'], 1e-9):>9.3f}")
            if args.saved:
                row += (f" | {r['saved_mb']:>8.1f} {o['saved_mb']:>8.1f} | {r['square_mb']:>8.1f} "
                        f"{o['square_mb']:>8.1f}")
            print(row, flush=True)


if __name__ == "__main__":
    main()
