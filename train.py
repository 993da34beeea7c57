"""Train the relevance predictor on shards, then export it.

    python train.py                                   # data/shards/reference -> checkpoints/predictor-reference
    python train.py data.shards=DIR trainer.max_epochs=3 logger=csv      # -> <run dir>/export
    python train.py ckpt_path=outputs/train/.../checkpoints/last.ckpt     # resume
    python train.py export_from=outputs/train/.../checkpoints/last.ckpt   # export only

The last line printed names the export folder, with its validation KL and recall@25 beside layer-0
attention's ("export -> <folder>; val KL 1.14, recall@25 0.66 (layer-0 attention 0.27)"). The work is
`predictor.training.train.train(cfg)` (tests call it); this file only composes the config (conf/train/).
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
    from predictor.training.export import headline
    from predictor.training.train import train

    with one_line_errors():  # a problem the user can fix: one line (HYDRA_FULL_ERROR=1: the trace)
        out = train(cfg)
    print(headline(out))  # the last line: the export folder and its validation metrics


if __name__ == "__main__":
    from predictor.cli import entry

    entry(main, CONF, "train", open_keys={"trainer": trainer_options})
