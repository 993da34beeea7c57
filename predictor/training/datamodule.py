"""The data policy both stores share (`DataModule`): the train/validation split, the modality kept, the
per-head attention required, the rank, the loaders' contract, the figure samples and the summary.

A store (`memory.ShardDataModule`: decoded into memory; `streaming.StreamingDataModule`: streamed) holds
samples only: in `setup()` it reads or indexes its shards, counts what it found, and calls the checks
below in the order it can answer them; it builds the loaders (`_loader`) and the first validation examples
for figures (`_figure_examples`). Whatever the store, the same shards give the same split (by key hash,
`predictor.split.is_val_key`), the same errors and the same summary (a test compares the two).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from predictor.schema import MODALITIES
from predictor.split import is_val_key
from predictor.training.batches import Example, figure_batch_of

log = logging.getLogger(__name__)

SUMMARY_META = ("model_id", "adapter", "probe_layer", "explainer", "modality", "schema_version")  # meta.json fields summarised


def summarise_field(counts: Counter, name: str) -> Any:
    """The one value of a metadata field, or {value: count} (warned) when the shards mix several."""
    if len(counts) > 1:
        log.warning("shards mix several %s values %s: a predictor is meant for one MLLM and modality",
                    name, dict(counts))
    return next(iter(counts)) if len(counts) == 1 else {str(k): v for k, v in counts.items()}


class DataModule(pl.LightningDataModule):
    """Shards (a folder, glob, list, brace pattern or URLs) -> padded batches (`predictor.training.batches`)
    split train/val by a stable hash of each sample's key.

    inputs: predictor input channels (PredictorConfig.inputs); val_fraction: share of keys held out;
    modality: "image" or "video" keeps only those samples; None refuses shards that mix the two;
    figure_samples: validation samples drawn by the figure callback; strict: the first corrupt shard or
    invalid sample raises (else it is skipped and counted in the summary).
    After setup(): `summary` (the export's trained_on), `num_heads` (H of the per-head input, else 0).
    """

    streaming: bool  # the store's kind: train.make_trainer reloads a streamed epoch's loaders

    def __init__(self, shards, inputs: list[str], batch_size: int = 128, val_fraction: float = 0.1,
                 num_workers: int = 0, strict: bool = False, seed: int = 0, figure_samples: int = 4,
                 modality: str | None = None):
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if modality is not None and modality not in MODALITIES:
            raise ValueError(f"data.modality={modality!r}: expected 'image' or 'video' (keep only those samples), "
                             "or null (all samples, refused if they mix modalities)")
        self.shards, self.inputs, self.modality = shards, list(inputs), modality
        self.batch_size, self.val_fraction, self.num_workers = batch_size, val_fraction, num_workers
        self.strict, self.seed, self.figure_samples = strict, seed, figure_samples
        self.summary: dict[str, Any] = {}
        self.num_heads = 0  # H of the samples' per-head layer-0 attention (read only for the attn_heads input)
        self._figures: list[Example] | None = None

    # -- the policy a store's setup() applies ------------------------------------------------------------
    def is_val(self, key: str) -> bool:
        """Whether sample `key` is held out (the key-hash split of data.shards)."""
        return is_val_key(key, self.val_fraction)

    def _keep_modality(self, found: Counter, kept: int) -> None:
        """Refuse shards that mix modalities (data.modality null) or hold none of data.modality. found: samples
        per meta.json modality, all of them; kept: those of data.modality."""
        text = ", ".join(f"{n} {m}" for m, n in sorted(found.items(), key=str))
        if self.modality is None:
            if len(found) > 1:
                raise ValueError(f"data.shards={self.shards} mixes modalities ({text} samples); a predictor is for "
                                 "one modality: train one per modality with data.modality=image or "
                                 "data.modality=video")
            return
        if not kept:
            raise ValueError(f"data.modality={self.modality} but data.shards={self.shards} has no {self.modality} "
                             f"samples (found {text}); set data.modality to one of those, or null")
        if kept < sum(found.values()):
            log.info("data.modality=%s: training on %d of %d samples (%s)", self.modality, kept,
                     sum(found.values()), text)

    def _check_split(self, num_train: int, num_val: int) -> None:
        if not num_train:
            raise ValueError(f"all {num_val} samples fell into validation; lower data.val_fraction")

    def _missing_heads(self, key: str) -> ValueError:
        """The error for sample `key` lacking the per-head attention that the attn_heads input needs."""
        return ValueError(f"the predictor's inputs include attn_heads, but sample {key!r} of "
                          f"data.shards={self.shards} has no per-head attention: regenerate the shards with "
                          "python -m data_gen save_heads=true, or train without it (model=conv1d_coords)")

    def _summarise(self, meta: dict[str, Counter], num_train: int, num_val: int, num_shards: int,
                   corrupt_shards: int, skipped_samples: int, n_v: tuple[int, int, int]) -> None:
        """`summary`: what the predictor is trained on, for the export's config.json (`trained_on`). meta: per
        SUMMARY_META field, the kept samples' values counted; n_v: (min, max, sum) of their N_v. `val_fraction`
        is recorded so that later fidelity checks (eval.py) score the same held-out keys."""
        self.summary = {k: summarise_field(meta[k], k) for k in SUMMARY_META}
        self.summary.update(num_samples=num_train + num_val, num_train=num_train, num_val=num_val,
                            val_fraction=float(self.val_fraction),  # is_val_key(key, val_fraction): held out
                            num_shards=num_shards, corrupt_shards=corrupt_shards, skipped_samples=skipped_samples,
                            n_v_min=n_v[0], n_v_max=n_v[1], n_v_mean=n_v[2] / (num_train + num_val))

    def _rank(self) -> tuple[int, int]:
        """(global rank, world size) of the trainer, (0, 1) without one."""
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    # -- what a store provides ---------------------------------------------------------------------------
    def _loader(self, train: bool) -> DataLoader:
        """This rank's loader of the train or validation split (batches per `predictor.training.epochs`)."""
        raise NotImplementedError

    def _figure_examples(self) -> list[Example]:
        """The first `figure_samples` validation examples, with thumbnails and questions."""
        raise NotImplementedError

    # -- Lightning's side --------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return self._loader(train=True)

    def val_dataloader(self) -> DataLoader | list:
        if not self.has_val:
            log.warning("no validation samples (data.val_fraction=%s); validation metrics are skipped",
                        self.val_fraction)
            return []
        return self._loader(train=False)

    @property
    def has_val(self) -> bool:
        return bool(self.summary.get("num_val"))

    def figure_batch(self) -> dict[str, Any] | None:
        """The first few validation samples (fixed across epochs), with thumbnails, for figures."""
        if self._figures is None:
            self._figures = self._figure_examples() if self.has_val else []
        return figure_batch_of(self._figures) if self._figures else None
