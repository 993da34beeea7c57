"""Train the relevance predictor on shards, then export it.

    python train.py                                   # data/shards/reference -> checkpoints/predictor-reference
    python train.py data.shards=DIR trainer.max_epochs=3 logger=csv
    python train.py ckpt_path=outputs/train/.../checkpoints/last.ckpt     # resume
    python train.py export_from=outputs/train/.../checkpoints/last.ckpt   # export only

The last line printed is the export folder. The work is `predictor.training.train.train(cfg)` (tests
call it); this file only composes the config (conf/train/).
"""
import inspect
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parent / "conf" / "train"


def trainer_options() -> list[str]:
    """What `+trainer.<name>=...` may add: Lightning Trainer's arguments."""
    import pytorch_lightning as pl

    return list(inspect.signature(pl.Trainer).parameters)


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="train")
def main(cfg: DictConfig) -> None:
    from predictor.cli import one_line_errors
    from predictor.training.train import train

    with one_line_errors():  # a problem the user can fix: one line (HYDRA_FULL_ERROR=1: the trace)
        out = train(cfg)
    print(out)


if __name__ == "__main__":
    from predictor.cli import entry

    entry(main, CONF, "train", open_keys={"trainer": trainer_options})
