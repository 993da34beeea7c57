"""`train(cfg)`: train the relevance predictor on shards per a composed Hydra config, then export it.

`python train.py` is the thin Hydra entry over it (tests call `train` directly). The config is read
here and nowhere below: the data module, the LightningModule and the export get plain arguments.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from predictor.registry import Registry

log = logging.getLogger("train")


def _run_dir(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # composed without @hydra.main (tests, notebooks)
        return Path("outputs/train") / time.strftime("%Y-%m-%d/%H-%M-%S")


LOGGERS: Registry = Registry("logger")  # logger=<name>: (logger config, run dir) -> a Lightning logger or False


@LOGGERS.register("none")
def _no_logger(cfg: DictConfig, run_dir: Path):
    return False


@LOGGERS.register("csv")
def _csv_logger(cfg: DictConfig, run_dir: Path):
    from pytorch_lightning.loggers import CSVLogger

    return CSVLogger(str(run_dir), name="csv", version="")


@LOGGERS.register("wandb")
def _wandb_logger(cfg: DictConfig, run_dir: Path):
    import os

    from pytorch_lightning.loggers import WandbLogger

    if cfg.get("offline", True):
        os.environ.setdefault("WANDB_MODE", "offline")  # never prompts for a login
    return WandbLogger(project=cfg.project, save_dir=str(run_dir), offline=cfg.get("offline", True))


def _num_heads(configured: int, in_shards: int, shards) -> int:
    """The per-head input's H: the shards' (model.num_heads 0 means "from the shards"); a mismatch is refused."""
    if configured and configured != in_shards:
        raise ValueError(f"model.num_heads={configured} but the shards ({shards}) hold layer-0 attention of "
                         f"{in_shards} heads; set model.num_heads=0 (take it from the shards) or {in_shards}")
    return in_shards


def _labellers(shards) -> dict:
    """{"labeller": ...}: data_gen's labeller.json beside local shards (the MLLM's weight fingerprint, the
    explainer and its options), one dict, or a list when shard folders differ; {} for remote shards."""
    import json

    from predictor.training.shards import resolve_shards

    try:
        folders = sorted({p.parent for p in resolve_shards(shards)})
    except (FileNotFoundError, OSError, ValueError):  # URLs and pipe: commands have no folder to look in
        return {}
    found = [json.loads(f.read_text()) for f in (d / "labeller.json" for d in folders) if f.is_file()]
    unique = [x for i, x in enumerate(found) if x not in found[:i]]
    return {"labeller": unique[0] if len(unique) == 1 else unique} if unique else {}


def _held_out(shards, val_shards) -> dict:
    """trained_on's record of the held-out samples, which eval's fidelity check scores: the whole
    data.val_shards (then no key-hash split was made, so no val_fraction applies), or the keys of
    data.shards under trained_on.val_fraction. The specs as given (relative to the working folder)."""
    if OmegaConf.is_list(val_shards):
        val_shards = OmegaConf.to_container(val_shards)
    return {"shards": shards, "val_shards": val_shards} | ({"val_fraction": None} if val_shards else {})


# The main command's shards and the committed export made from them (README "Fresh machine")
REFERENCE_SHARDS, REFERENCE_EXPORT = "data/shards/reference", "checkpoints/predictor-reference"


def _export_dir(cfg: DictConfig, shards, run_dir: Path) -> Path:
    """export_dir, or for null: the committed export when training on the reference shards (the README's
    main command rewrites it), else <run dir>/export, so that training on other shards, or exporting a
    checkpoint, never replaces the shipped export."""
    if cfg.get("export_dir"):
        return Path(cfg.export_dir)
    reference = (isinstance(shards, str) and not cfg.get("export_from") and not cfg.data.get("val_shards")
                 and Path(shards).resolve() == Path(REFERENCE_SHARDS).resolve())
    return Path(REFERENCE_EXPORT) if reference else run_dir / "export"


def make_trainer(options: dict, dm, logger=False, callbacks=(), run_dir: Path | str | None = None):
    """The Lightning Trainer that `train` fits with: `options` are cfg.trainer (Lightning's arguments), `dm`
    the data module it will fit (ShardDataModule or StreamingDataModule). Tests that check what is trained
    per epoch build their Trainer here, so they run the settings a user's run has."""
    import pytorch_lightning as pl

    return pl.Trainer(**options, logger=logger, callbacks=list(callbacks),
                      default_root_dir=None if run_dir is None else str(run_dir),
                      use_distributed_sampler=False,  # both data modules shard batches per rank themselves
                      # a streamed epoch's shard deal (so its batch count) differs per epoch: a new loader each
                      reload_dataloaders_every_n_epochs=int(dm.streaming))


def train(cfg: DictConfig) -> Path:
    """Train per `cfg` (see conf/train/train.yaml) and export; returns the export folder."""
    from predictor.training.shards import expand_specs

    d = cfg.data
    shards = OmegaConf.to_container(d.shards) if OmegaConf.is_list(d.shards) else str(d.shards)
    if not cfg.get("export_from"):
        expand_specs(shards)  # fail fast, before the slow imports, when there is nothing to train on

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    from predictor.config import PredictorConfig
    from predictor.model import RelevancePredictor
    from predictor.training import PredictorModule, RelevanceFigureCallback
    from predictor.versions import versions
    from predictor.training.data import make_datamodule
    from predictor.training.export import export_checkpoint, export_module

    run_dir = _run_dir(cfg)
    if cfg.get("export_from"):
        return export_checkpoint(cfg.export_from, _export_dir(cfg, shards, run_dir)).resolve()

    pl.seed_everything(cfg.seed, workers=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    heads = "attn_heads" in model_cfg.get("inputs", [])
    # bad settings fail before the shards are read; num_heads 0 with per-head input: taken from the shards
    PredictorConfig.from_dict({**model_cfg, "num_heads": model_cfg.get("num_heads") or int(heads)})
    val_shards = d.get("val_shards")
    dm = make_datamodule(shards, model_cfg.get("inputs", ["attn"]), streaming=d.get("streaming", "auto"),
                         stream_above_gb=d.get("stream_above_gb", 4.0), shuffle_buffer=d.get("shuffle_buffer", 1000),
                         val_shards=OmegaConf.to_container(val_shards) if OmegaConf.is_list(val_shards) else val_shards,
                         batch_size=d.batch_size,
                         val_fraction=d.val_fraction, num_workers=d.num_workers, strict=d.strict, seed=cfg.seed,
                         figure_samples=d.figure_samples, modality=d.get("modality"))
    dm.setup("fit")  # read shards before anything else: a missing or empty dataset fails fast
    recorded = {**_held_out(shards, val_shards), **_labellers(shards)}  # trained_on besides the data's summary
    if heads:
        model_cfg["num_heads"] = _num_heads(model_cfg.get("num_heads") or 0, dm.num_heads, shards)
    pcfg = PredictorConfig.from_dict(model_cfg)
    o = cfg.optim
    module = PredictorModule(RelevancePredictor(pcfg), lr=o.lr, weight_decay=o.weight_decay, optimizer=o.name,
                             schedule=o.schedule, warmup_frac=o.warmup_frac, min_lr_frac=o.min_lr_frac,
                             target_keep=cfg.target_keep, trained_on={**dm.summary, **recorded})
    logger = LOGGERS.get(cfg.logger.name)(cfg.logger, run_dir)
    cb = cfg.callbacks
    ckpt_dir, has_val = str(run_dir / "checkpoints"), dm.has_val
    callbacks = [RelevanceFigureCallback(every_n_epochs=cb.figures.every_n_epochs, out_dir=str(run_dir))]
    if has_val and cb.checkpoint.save_top_k:  # the best epochs by val/kl
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_top_k=cb.checkpoint.save_top_k, monitor="val/kl",
                                         mode="min", filename="epoch{epoch:03d}", auto_insert_metric_name=False))
    if cb.checkpoint.save_last:
        # last.ckpt is the latest state after every epoch, for ckpt_path= after a kill. Not save_last=True on
        # the monitored callback: that rewrites last.ckpt only when val/kl improves (a resume would redo
        # every epoch since the last improvement)
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                         every_n_epochs=1, enable_version_counter=False))
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = make_trainer(OmegaConf.to_container(cfg.trainer, resolve=True), dm, logger=logger,
                           callbacks=callbacks, run_dir=run_dir)
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))

    export_dir = _export_dir(cfg, shards, run_dir)
    if trainer.is_global_zero:
        # streaming counts invalid samples as it meets them; versions: the libraries this training ran with
        ran_with = versions()
        module.hparams["trained_on"] = {**dm.summary, **recorded, "versions": ran_with}
        # seed, threads and torch: what the weights' bytes depend on (docs/export.md, "Reproducibility")
        export_dir = export_module(module, export_dir, epochs=trainer.current_epoch,
                                   batch_size=d.batch_size, max_epochs=cfg.trainer.max_epochs, seed=cfg.seed,
                                   threads=torch.get_num_threads(), torch=ran_with["torch"])
        if cfg.logger.name == "wandb" and logger:
            import wandb

            wandb.finish()  # now, not at exit: train.py's headline must stay the last line printed
            print(f"wandb: offline run in {run_dir / 'wandb'}; upload it with: "
                  f"wandb sync {run_dir / 'wandb'}/offline-run-*")
    return export_dir.resolve()
