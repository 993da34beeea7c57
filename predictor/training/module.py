"""LightningModule: trains a plain `RelevancePredictor` with the paper's KL loss.

loss = mean over the batch of KL(target || prediction), target = `make_target(R_v, keep)` (the
oracle's top `target_keep` fraction, renormalised). Validation logs `predictor.metrics` averaged
over samples (exact across DDP ranks: sums and counts are reduced, not per-rank means) next to two
references on the same samples: chance (random scores) and layer-0 attention used directly.
"""
from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import MeanMetric

from predictor.metrics import RETENTIONS, kl_div, relevance_metrics, topk_recall
from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor
from predictor.targets import make_target, num_kept

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = ("cosine", "constant")


class PredictorModule(pl.LightningModule):
    """model: the predictor to train (its config is saved in the checkpoint's hyperparameters, so
    `predictor.training.export.export_checkpoint` can rebuild it).

    optimizer: "adam" | "adamw"; schedule: "cosine" (linear warmup over `warmup_frac` of all steps,
    then cosine to `min_lr_frac * lr`) | "constant". trained_on: shard summary carried to the export.
    """

    def __init__(self, model: RelevancePredictor, lr: float = 1e-3, weight_decay: float = 0.0,
                 optimizer: str = "adam", schedule: str = "cosine", warmup_frac: float = 0.05,
                 min_lr_frac: float = 0.01, target_keep: float = 0.5,
                 trained_on: dict[str, Any] | None = None):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optim.name={optimizer!r}; available: {list(OPTIMIZERS)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown optim.schedule={schedule!r}; available: {list(SCHEDULES)}")
        if not 0 < target_keep <= 1:
            raise ValueError(f"target_keep must be in (0, 1], got {target_keep}")
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.hparams["predictor"] = model.config.to_dict()
        self.val_names = ["kl", "spearman",
                          *(f"recall@{r * 100:g}" for r in RETENTIONS),
                          *(f"chance_recall@{r * 100:g}" for r in RETENTIONS),
                          *(f"attn_recall@{r * 100:g}" for r in RETENTIONS), "attn_kl"]
        self.val_means = torch.nn.ModuleDict({n.replace(".", "_"): MeanMetric() for n in self.val_names})
        self.last_val_metrics: dict[str, float] = {}

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(batch["x"], batch["mask"], batch["grid"] if self.model.config.needs_grid else None,
                          spans=batch.get("spans"))

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = self(batch)
        target = make_target(batch["relevance"], batch["mask"], self.hparams.target_keep)
        return kl_div(target, pred, batch["mask"]).mean(), pred, target

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._loss(batch)
        self.log("train/kl", loss, prog_bar=True, batch_size=len(batch["keys"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, pred, target = self._loss(batch)
        mask, oracle = batch["mask"], batch["relevance"]
        values = relevance_metrics(pred, oracle, target, mask)  # each (B,)
        n = mask.sum(-1)
        for r in RETENTIONS:
            # expected recall of random scores: k of n tokens drawn, k of them are the oracle's
            values[f"chance_recall@{r * 100:g}"] = num_kept(n, r).float() / n.float()
            values[f"attn_recall@{r * 100:g}"] = topk_recall(batch["attn"], oracle, mask, r)
        attn_dist = batch["attn"].clamp_min(0) * mask
        attn_dist = attn_dist / attn_dist.sum(-1, keepdim=True).clamp_min(1e-30)
        values["attn_kl"] = kl_div(target, attn_dist, mask)
        for name, v in values.items():
            self.val_means[name.replace(".", "_")].update(v.float())

    def on_validation_epoch_end(self) -> None:
        out = {}
        for name in self.val_names:
            metric = self.val_means[name.replace(".", "_")]
            if metric.update_count == 0:
                continue
            out[name] = float(metric.compute())
            metric.reset()
        if out:
            for k, v in out.items():  # already reduced over ranks by the MeanMetrics
                self.log(f"val/{k}", v, prog_bar=k in ("recall@25", "kl"))
            self.last_val_metrics = out

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = OPTIMIZERS[hp.optimizer](self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.schedule == "constant":
            return {"optimizer": opt}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_frac * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_frac + (1 - hp.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["last_val_metrics"] = dict(self.last_val_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.last_val_metrics = dict(checkpoint.get("last_val_metrics", {}))

    @classmethod
    def from_checkpoint_file(cls, path: str) -> "PredictorModule":
        """Rebuild module and predictor from a Lightning checkpoint written by this class."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        hp = dict(ckpt.get("hyper_parameters", {}))
        if "predictor" not in hp:
            raise ValueError(f"{path} is not a checkpoint of predictor.training.PredictorModule "
                             "(no 'predictor' hyperparameters); pass a .ckpt written by train.py")
        model = RelevancePredictor(PredictorConfig.from_dict(hp.pop("predictor")))
        module = cls(model, **hp)
        module.load_state_dict(ckpt["state_dict"])
        module.on_load_checkpoint(ckpt)
        return module
