"""Callback: figures of predicted vs oracle relevance (and layer-0 attention) on the visual grid.

Each validation epoch (every `every_n_epochs`) it draws the same few validation samples, one row
each: thumbnail (if the shard has one), oracle R_v, prediction, layer-0 attention, each reshaped to
the (h, w) grid (frames averaged for video) with its colour bar, under the sample's full key and its
question. Each sample's figure is written to `<run dir>/figures/<key>.png` (the latest epoch); with
the wandb logger on, all of them also go to wandb as one image per epoch.
"""
from __future__ import annotations

import io
import logging
import textwrap
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def _on_grid(v: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    t, h, w = (int(g) for g in grid)
    return v[: t * h * w].reshape(t, h, w).mean(0)


def relevance_figure(batch: dict, pred: torch.Tensor, title: str = "", rows: list[int] | None = None):
    """matplotlib Figure for a batch from `DataModule.figure_batch` (either store) and its predictions (B, N):
    one row per sample in `rows` (default: all)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = list(range(len(batch["keys"]))) if rows is None else rows
    thumbs = batch.get("thumbnails") or [None] * len(batch["keys"])
    questions = batch.get("instructions") or [""] * len(batch["keys"])
    has_thumb = any(thumbs[b] is not None for b in rows)
    cols = ["oracle R_v", "predicted", "layer-0 attention"]
    ncol = len(cols) + has_thumb
    fig = plt.figure(figsize=(2.9 * ncol, 3.2 * len(rows)), layout="constrained")
    for sub, b in zip(np.atleast_1d(fig.subfigures(len(rows), 1)), rows):
        # the full key and the question over the row: which sample, and what its relevance is about
        label = batch["keys"][b] + (f"\n{questions[b]}" if questions[b] else "")
        sub.suptitle("\n".join(textwrap.wrap(label, 34 * ncol, replace_whitespace=False)), fontsize=8, x=0.02,
                     ha="left")
        axes = sub.subplots(1, ncol)
        c = 0
        if has_thumb:
            if thumbs[b] is not None:
                from PIL import Image

                axes[0].imshow(Image.open(io.BytesIO(thumbs[b])))
            axes[0].set_axis_off()
            c = 1
        maps = [batch["relevance"][b], pred[b], batch["attn"][b]]
        for ax, name, v in zip(axes[c:], cols, maps):
            im = ax.imshow(_on_grid(v.detach().float().cpu(), batch["grid"][b]).numpy(), cmap="viridis")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
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
        title = f"epoch {trainer.current_epoch}"
        out = Path(self.out_dir or trainer.default_root_dir) / "figures"
        out.mkdir(parents=True, exist_ok=True)
        for b, key in enumerate(batch["keys"]):
            fig = relevance_figure(batch, pred, title=title, rows=[b])
            fig.savefig(out / f"{key.replace('/', '_')}.png", dpi=90)  # data_gen's keys have no '/'; other shards' may
            plt.close(fig)
        from pytorch_lightning.loggers import WandbLogger

        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb_loggers:
            import wandb

            fig = relevance_figure(batch, pred, title=title)
            try:
                wandb_loggers[0].log_image("val/relevance", [wandb.Image(fig)], step=trainer.global_step)
            finally:
                plt.close(fig)
