"""Run by tests/test_ddp.py under torch.distributed.run: 2 CPU ranks (gloo), records the keys each
rank trains and validates on per epoch (mode "memory": ShardDataModule, "stream": StreamingDataModule)."""
import json
import sys

import pytorch_lightning as pl
import torch

from predictor.config import PredictorConfig

from predictor.model import RelevancePredictor
from predictor.training import PredictorModule, ShardDataModule
from predictor.training.streaming import StreamingDataModule


class Recording(PredictorModule):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen = []

    def training_step(self, batch, i):
        self.seen.append(("train", self.current_epoch, batch["keys"]))
        return super().training_step(batch, i)

    def validation_step(self, batch, i):
        if not self.trainer.sanity_checking:
            self.seen.append(("val", self.current_epoch, batch["keys"]))
        return super().validation_step(batch, i)


def main(shards: str, out: str, mode: str = "memory") -> None:
    torch.set_num_threads(1)
    if mode == "stream":
        dm = StreamingDataModule(shards, ["attn"], batch_size=16, val_fraction=0.2, buffer=20)
    else:
        dm = ShardDataModule(shards, ["attn"], batch_size=16, val_fraction=0.2)
    module = Recording(RelevancePredictor(PredictorConfig(widths=[8, 16])))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
        json.dump({"seen": module.seen, "metrics": module.last_val_metrics, "world": trainer.world_size,
                   **({} if mode == "stream" else {"train": [it.key for it in dm.train_set.items],
                                                    "val": [it.key for it in dm.val_set.items]})}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
