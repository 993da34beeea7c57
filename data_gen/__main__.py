"""`python -m data_gen [overrides]`: compose conf/data_gen.yaml and run this process's rank.

Under torchrun (`torchrun --nproc-per-node 8 -m data_gen ...`) each rank processes its own slice.
"""
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="data_gen")
def main(cfg: DictConfig) -> None:
    from data_gen.lock import FolderInUse
    from data_gen.run import DataGenFailed, main as run_main  # heavy imports after Hydra parsed the command line
    from predictor.cli import one_line_errors

    c = OmegaConf.to_container(cfg, resolve=True)
    # a problem the user can fix: one line (HYDRA_FULL_ERROR=1: the trace)
    with one_line_errors(FolderInUse, DataGenFailed):
        run_main(model=c.pop("model"), source=c.pop("source"), explainer=c.pop("explainer"), options=c)


if __name__ == "__main__":
    from predictor.cli import entry

    entry(main, CONF, "data_gen")
