"""Callback: figures of predicted vs oracle relevance (and layer-0 attention) on the visual grid.

Each validation epoch (every `every_n_epochs`) it draws the same few validation samples, one row
each: thumbnail (if the shard has one), oracle R_v, prediction, layer-0 attention, each reshaped to
the (h, w) grid (frames averaged for video). Logged as images to wandb when the wandb logger is on,
otherwise written as PNGs to `<run dir>/figures/`.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def _on_grid(v: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    t, h, w = (int(g) for g in grid)
    return v[: t * h * w].reshape(t, h, w).mean(0)


def relevance_figure(batch: dict, pred: torch.Tensor, title: str = ""):
    """matplotlib Figure for a batch from `ShardDataModule.figure_batch` and its predictions (B, N)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    thumbs = batch.get("thumbnails") or [None] * len(batch["keys"])
    has_thumb = any(t is not None for t in thumbs)
    cols = ["oracle R_v", "predicted", "layer-0 attention"]
    ncol = len(cols) + has_thumb
    B = len(batch["keys"])
    fig, axes = plt.subplots(B, ncol, figsize=(2.6 * ncol, 2.6 * B), squeeze=False)
    for b in range(B):
        c = 0
        if has_thumb:
            ax = axes[b, 0]
            if thumbs[b] is not None:
                from PIL import Image

                ax.imshow(Image.open(io.BytesIO(thumbs[b])))
            ax.set_axis_off()
            c = 1
        maps = [batch["relevance"][b], pred[b], batch["attn"][b]]
        for j, (name, v) in enumerate(zip(cols, maps)):
            ax = axes[b, c + j]
            ax.imshow(_on_grid(v.detach().float().cpu(), batch["grid"][b]).numpy(), cmap="viridis")
            ax.set_xticks([]), ax.set_yticks([])
            if b == 0:
                ax.set_title(name, fontsize=9)
        axes[b, c].set_ylabel(batch["keys"][b][-16:], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class RelevanceFigureCallback(pl.Callback):
    def __init__(self, every_n_epochs: int = 5, out_dir: str | None = None):
        self.every_n_epochs = max(1, every_n_epochs)
        self.out_dir = out_dir

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if trainer.current_epoch % self.every_n_epochs and not last:
            return
        dm = trainer.datamodule
        batch = dm.figure_batch() if dm is not None and hasattr(dm, "figure_batch") else None
        if batch is None:
            return
        import matplotlib.pyplot as plt

        dev = pl_module.device
        moved = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        with torch.no_grad():
            pred = pl_module(moved).cpu()
        fig = relevance_figure(batch, pred, title=f"epoch {trainer.current_epoch}")
        try:
            from pytorch_lightning.loggers import WandbLogger

            wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
            if wandb_loggers:
                import wandb

                wandb_loggers[0].log_image("val/relevance", [wandb.Image(fig)], step=trainer.global_step)
            else:
                out = Path(self.out_dir or trainer.default_root_dir) / "figures"
                out.mkdir(parents=True, exist_ok=True)
                fig.savefig(out / f"relevance_epoch{trainer.current_epoch:04d}.png", dpi=80)
        finally:
            plt.close(fig)
