"""What tests of "which samples are trained each epoch" share, so that they run what `python train.py` runs:

    production_trainer(dm, max_epochs=6)  # the Trainer of train.py (make_trainer), conf/train's trainer options
    Recording(...)                        # a PredictorModule that records the keys of every batch it steps on
    write_uneven_shards(out)              # shards whose streamed batch count changes between epochs
    planned_steps(dm, world, workers, n)  # the training batches of each epoch per the streaming plan

Used by tests/test_streaming.py and tests/ddp_worker.py (pytest and the DDP launcher put tests/ on sys.path).
"""
from __future__ import annotations

from pathlib import Path

from synthetic_shards import write_synthetic_shards

from predictor.training import PredictorModule

ROOT = Path(__file__).resolve().parents[1]

# shards of 10 / 30 / 50 / 70 samples at batch 16: epoch 4's shard deal takes more batches than epoch 0's, on
# one rank with 2 loader workers (11 against 10, val_fraction 0) and on 2 ranks (7 against 5, val_fraction 0.2)
UNEVEN = (10, 30, 50, 70)


def write_uneven_shards(out: Path) -> list[Path]:
    """Shards `u0-000000.tar` ... of UNEVEN sizes (1x4x4 grids); returns their paths."""
    return [p for i, n in enumerate(UNEVEN)
            for p in write_synthetic_shards(out, n, grids=[(1, 4, 4)], samples_per_shard=n, prefix=f"u{i}", seed=i)]


def planned_steps(dm, world: int, workers: int, epochs: int) -> list[int]:
    """Per epoch, the training batches every rank takes per the streaming plan of `dm` (set up)."""
    from predictor.training.epochs import plan_epoch

    counts = [ix.train for ix in dm.train_index if not ix.corrupt]
    return [sum(len(sizes) for _, sizes in plan_epoch(counts, e, dm.seed, world, workers, dm.batch_size, True)[0])
            for e in range(epochs)]


def production_trainer(dm, callbacks=(), run_dir=None, **options):
    """The Trainer train.py fits `dm` with: conf/train's trainer options composed as train.py composes them,
    then `options` (max_epochs, devices, ...), through predictor.training.train.make_trainer. Tests turn off
    what only costs time (progress bar, model summary, checkpoints unless `callbacks` ask for them)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from predictor.training.train import make_trainer

    with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base="1.3"):
        trainer_cfg = OmegaConf.to_container(compose(config_name="train").trainer, resolve=True)
    quiet = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
             "enable_checkpointing": bool(callbacks)}
    return make_trainer({**trainer_cfg, **quiet, **options}, dm, callbacks=callbacks, run_dir=run_dir)


class Recording(PredictorModule):
    """`seen`: (split, epoch, keys) of every training and validation batch (the sanity check's left out)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen: list[tuple[str, int, list[str]]] = []

    def training_step(self, batch, i):
        self.seen.append(("train", self.current_epoch, batch["keys"]))
        return super().training_step(batch, i)

    def validation_step(self, batch, i):
        if not self.trainer.sanity_checking:
            self.seen.append(("val", self.current_epoch, batch["keys"]))
        return super().validation_step(batch, i)
