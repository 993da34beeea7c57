"""Training throughput of the paper's predictor and how far data loading is ahead of it.

    python benchmarks/bench_train.py                      # CPU defaults (small batches, few steps)
    python benchmarks/bench_train.py --device cuda --batch-size 128 --steps 20

For N_v = 256, 1024, 4096 (grids 16x16, 32x32, 64x64) it writes planted-pattern shards through the
schema, then measures, side by side:
  decode   samples/s of reading + decoding + building features (once per run, in ShardDataModule.setup)
  load     samples/s of the training DataLoader (padding collate of in-memory samples)
  train    samples/s of training steps (forward, KL loss, backward, Adam step) on the paper's net
  ratio    load / train: above 1 the GPU/CPU never waits for data; the requirement is >= 3
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from predictor.model import PredictorConfig, RelevancePredictor
from predictor.training import PredictorModule, ShardDataModule, write_synthetic_shards


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 128 on GPU, 16 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps; default 20 GPU, 3 CPU")
    ap.add_argument("--samples", type=int, default=256, help="samples per N_v")
    ap.add_argument("--sizes", default="16,32,64", help="grid sides: N_v = side^2")
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    bs = args.batch_size or (128 if gpu else 16)
    steps = args.steps or (20 if gpu else 3)
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
