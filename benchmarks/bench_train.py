"""Training throughput of the paper's predictor and how far data loading is ahead of it.

    python benchmarks/bench_train.py                      # CPU defaults (small batches, few steps)
    python benchmarks/bench_train.py --device cuda --batch-size 128 --steps 20

For N_v = 256, 1024, 4096 (grids 16x16, 32x32, 64x64) it writes planted-pattern shards through the
schema, then measures, side by side:
  decode   samples/s of reading + decoding + building features (once per run, in ShardDataModule.setup)
  load     samples/s of the training DataLoader (padding collate of in-memory samples)
  train    samples/s of training steps (forward, KL loss, backward, Adam step) on the paper's net
  ratio    load / train: above 1 the GPU/CPU never waits for data; the requirement is >= 3

    python benchmarks/bench_train.py --streaming [--shards '/tmp/corpus/shard-r00000-{000000..000195}.tar']

compares, on the same N_v 1024 shards (written here unless --shards is given; benchmarks/make_corpus.py
writes a 100K-sample corpus), each mode in a fresh process: in-memory (setup decodes everything, then one
epoch from memory) and streaming (index pass, then one streamed epoch): samples/s, peak RSS and RSS every
--rss-every batches, then training samples/s and the streaming loading/training ratio.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch
from _planted import write_synthetic_shards

from predictor.config import PredictorConfig

from predictor.model import RelevancePredictor
from predictor.training import PredictorModule, ShardDataModule


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(n_side: int, num_samples: int, batch_size: int, steps: int, device: str, tmp: str) -> dict:
    shards = f"{tmp}/nv{n_side * n_side}"
    write_synthetic_shards(shards, num_samples, grids=[(1, n_side, n_side)], samples_per_shard=128)
    dm = ShardDataModule(shards, ["attn"], batch_size=batch_size, val_fraction=0.0)
    t = time.perf_counter()
    dm.setup("fit")
    decode = num_samples / (time.perf_counter() - t)

    loader = dm.train_dataloader()
    t, n = time.perf_counter(), 0
    for _ in range(3):  # a few epochs, to time more than a handful of batches
        for batch in loader:
            n += len(batch["keys"])
    load = n / (time.perf_counter() - t)

    module = PredictorModule(RelevancePredictor(PredictorConfig())).to(device)  # the paper's widths
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    batches = [b for b, _ in zip(loader, range(steps + 1))]
    batches = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in batches]

    def step(b):
        loss, _, _ = module._loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up (allocations, kernels)
    sync(device)
    t, n = time.perf_counter(), 0
    for i in range(steps):
        b = batches[1 + i % (len(batches) - 1)] if len(batches) > 1 else batches[0]
        step(b)
        n += len(b["keys"])
    sync(device)
    train = n / (time.perf_counter() - t)
    return {"n_v": n_side * n_side, "decode": decode, "load": load, "train": train, "ratio": load / train}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def load_epoch(mode: str, shards: str, batch_size: int, workers: int, rss_every: int) -> dict:
    """One epoch of training batches in `mode` (run in a fresh process: peak RSS is per process)."""
    from predictor.training.data import make_datamodule

    torch.set_num_threads(1)
    dm = make_datamodule(shards, ["attn"], streaming=mode == "stream", batch_size=batch_size, val_fraction=0.0,
                         num_workers=workers)
    t0 = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - t0
    rss, n, t = [(0, rss_mb())], 0, time.perf_counter()
    for i, batch in enumerate(dm.train_dataloader()):
        n += len(batch["keys"])
        if (i + 1) % rss_every == 0:
            rss.append((n, rss_mb()))
    load_s = time.perf_counter() - t
    return {"mode": mode, "samples": n, "setup_s": setup_s, "load": n / load_s, "overall": n / (setup_s + load_s),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss": rss}


def bench_streaming(args, bs: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards
        if not shards:
            write_synthetic_shards(f"{tmp}/nv1024", args.samples, grids=[(1, 32, 32)], samples_per_shard=128)
            shards = f"{tmp}/nv1024"
        results = {}
        for mode in args.modes.split(","):
            r = subprocess.run([sys.executable, __file__, "--child", mode, "--shards", shards, "--batch-size", str(bs),
                                "--workers", str(args.workers), "--rss-every", str(args.rss_every)],
                               capture_output=True, text=True, check=True)
            results[mode] = json.loads(r.stdout.strip().splitlines()[-1])
        # training throughput on batches of the same shape (N_v 1024)
        train = bench(32, 4 * bs, bs, steps, args.device, tmp)["train"]
    print(f"shards={shards} batch={bs} workers={args.workers} device={args.device}")
    print(f"{'mode':>8} {'samples':>8} {'setup s':>8} {'load/s':>8} {'overall/s':>10} {'peak RSS MB':>12} "
          f"{'load/train':>11}")
    for mode, r in results.items():
        print(f"{mode:>8} {r['samples']:>8} {r['setup_s']:>8.1f} {r['load']:>8.0f} {r['overall']:>10.0f} "
              f"{r['peak_rss_mb']:>12.0f} {r['load'] / train:>11.1f}")
    print(f"train samples/s at N_v 1024: {train:.1f}")
    for mode, r in results.items():
        print(f"RSS MB over the epoch ({mode}, every {args.rss_every} batches): "
              + " ".join(f"{n}:{m:.0f}" for n, m in r["rss"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 128 on GPU, 16 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps; default 20 GPU, 3 CPU")
    ap.add_argument("--samples", type=int, default=256, help="samples per N_v")
    ap.add_argument("--sizes", default="16,32,64", help="grid sides: N_v = side^2")
    ap.add_argument("--streaming", action="store_true", help="in-memory vs streaming at N_v 1024 (see above)")
    ap.add_argument("--shards", default=None, help="--streaming: existing N_v 1024 shards (default: written here)")
    ap.add_argument("--modes", default="memory,stream", help="--streaming: memory,stream or one of them")
    ap.add_argument("--workers", type=int, default=0, help="--streaming: data.num_workers")
    ap.add_argument("--rss-every", type=int, default=100, help="--streaming: RSS sampled every N batches")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    bs = args.batch_size or (128 if gpu else 16)
    steps = args.steps or (20 if gpu else 3)
    if args.child:
        print(json.dumps(load_epoch(args.child, args.shards, bs, args.workers, args.rss_every)))
        return
    if args.streaming:
        bench_streaming(args, bs, steps)
        return
    print(f"device={args.device} threads={torch.get_num_threads()} batch={bs} steps={steps} "
          f"samples/N_v={args.samples} model=paper conv1d 32-64-128-256-512 k5")
    print(f"{'N_v':>6} {'decode/s':>10} {'load/s':>10} {'train/s':>10} {'load/train':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for side in (int(s) for s in args.sizes.split(",")):
            r = bench(side, args.samples, bs, steps, args.device, tmp)
            print(f"{r['n_v']:>6} {r['decode']:>10.0f} {r['load']:>10.0f} {r['train']:>10.1f} {r['ratio']:>11.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
