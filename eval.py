"""python eval.py [key=value ...]: what an exported predictor is worth at inference.

Config: conf/eval.yaml (+ conf/eval_source/<source>.yaml). The work is `evaluation.run_eval`
(tests call it); this file only composes the config. See the `evaluation` package for the outputs.
"""
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(config_path=str(CONF), config_name="eval", version_base=None)
def main(cfg: DictConfig) -> None:
    from data_gen.lock import FolderInUse
    from evaluation import EvalSettings, run_eval  # heavy imports after Hydra has parsed the command line
    from predictor.cli import one_line_errors

    with one_line_errors(FolderInUse):  # a problem the user can fix: one line (HYDRA_FULL_ERROR=1: the trace)
        run_eval(EvalSettings.from_dict(OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    from predictor.cli import entry

    entry(main, CONF, "eval", open_keys={"generalisation.scales": None})  # scales are named by the user
