"""The 3-D grid-aware predictor (arch=conv3d) against the paper's 1-D net on planted video shards.

    python benchmarks/bench_video_arch.py                         # CPU: a few minutes
    python benchmarks/bench_video_arch.py --samples 3000 --epochs 20 --widths 32 64 128 256 512

Writes temporal planted-pattern shards (`planted_clip` in tests/synthetic_shards.py: the object is in
t // 4 consecutive frames, a distractor that layer 0 sees as strongly drifts through all of them),
trains each architecture on the same train/val split with the same recipe, and prints the
validation metrics at the last epoch, with layer-0 attention used directly and random scores as
references. Not an MLLM: real video shards (data_gen source=synthetic_video) are the real test.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time

import pytorch_lightning as pl
import torch
from _planted import write_synthetic_shards

from predictor.config import PredictorConfig

from predictor.model import RelevancePredictor
from predictor.training import PredictorModule, ShardDataModule

ARCHS = {  # name -> (arch, inputs, kernel_size)
    "conv1d": ("conv1d", ["attn"], 5),
    "conv1d+coords": ("conv1d", ["attn", "coords"], 5),
    "conv2d": ("conv2d", ["attn"], 3),
    "conv3d": ("conv3d", ["attn"], 3),
}
KEYS = ("kl", "spearman", "recall@50", "recall@25", "recall@12.5")


def run(name: str, shards: str, widths: list[int], epochs: int, batch_size: int, lr: float, tmp: str) -> dict:
    arch, inputs, k = ARCHS[name]
    pl.seed_everything(0, workers=True)
    dm = ShardDataModule(shards, inputs, batch_size=batch_size, val_fraction=0.2, modality="video")
    module = PredictorModule(RelevancePredictor(PredictorConfig(arch=arch, widths=widths, kernel_size=k,
                                                                inputs=inputs)), lr=lr)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, default_root_dir=tmp)
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return {**module.last_val_metrics, "seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=1200)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    a = ap.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    grids = [(8, 6, 6), (8, 5, 7), (4, 8, 8)]
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_shards(f"{tmp}/shards", a.samples, grids=grids, samples_per_shard=500, temporal=True)
        rows = {n: run(n, f"{tmp}/shards", a.widths, a.epochs, a.batch_size, a.lr, tmp) for n in a.archs}
    ref = next(iter(rows.values()))
    print(f"\n{a.samples} temporal planted clips, grids {grids}, widths {a.widths}, {a.epochs} epochs, 20% held out")
    print("| method | " + " | ".join(KEYS) + " | train s |")
    print("|---|" + "---|" * (len(KEYS) + 1))
    for n, m in rows.items():
        print(f"| {n} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + f" | {m['seconds']:.0f} |")
    print("| layer-0 attention | " + f"{ref['attn_kl']:.3f} | - | " + " | ".join(
        f"{ref[f'attn_recall@{r}']:.3f}" for r in ("50", "25", "12.5")) + " | - |")
    print("| random | - | - | " + " | ".join(f"{ref[f'chance_recall@{r}']:.3f}" for r in ("50", "25", "12.5"))
          + " | - |")


if __name__ == "__main__":
    main()
