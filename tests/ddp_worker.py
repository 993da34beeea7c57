"""Run by tests/test_ddp.py under torch.distributed.run: 2 CPU ranks (gloo) fit with the Trainer train.py
builds (tests/production.py), and each records the keys it trains and validates on per epoch (mode
"memory": ShardDataModule, "stream": StreamingDataModule) in <out>/<mode>-rank<r>.json.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT MODE SHARDS EPOCHS ...
"""
import json
import sys

import torch
from production import Recording, production_trainer

from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor
from predictor.training import ShardDataModule
from predictor.training.streaming import StreamingDataModule


def fit(shards: str, out: str, mode: str, epochs: int) -> None:
    if mode == "stream":
        dm = StreamingDataModule(shards, ["attn"], batch_size=16, val_fraction=0.2, buffer=20)
    else:
        dm = ShardDataModule(shards, ["attn"], batch_size=16, val_fraction=0.2)
    module = Recording(RelevancePredictor(PredictorConfig(widths=[8, 16])))
    trainer = production_trainer(dm, max_epochs=epochs, devices=2, strategy="ddp")
    trainer.fit(module, datamodule=dm)
    with open(f"{out}/{mode}-rank{trainer.global_rank}.json", "w") as f:
        json.dump({"seen": module.seen, "metrics": module.last_val_metrics, "world": trainer.world_size,
                   **({} if mode == "stream" else {"train": [it.key for it in dm.train_set.items],
                                                    "val": [it.key for it in dm.val_set.items]})}, f)


if __name__ == "__main__":
    # <out> then <mode> <shards> <epochs> per fit: one launch for several fits (starting the ranks takes longest)
    torch.set_num_threads(1)
    _, out, *jobs = sys.argv
    for i in range(0, len(jobs), 3):
        fit(jobs[i + 1], out, jobs[i], int(jobs[i + 2]))
