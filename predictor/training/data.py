"""LightningDataModule: shards -> in-memory features -> padded batches with masks.

Batch (a dict):
    x         (B, C, N) float32  predictor input (`predictor.features.build_features`), 0 on padding
    relevance (B, N) float32     oracle R_v, 0 on padding
    attn      (B, N) float32     raw layer-0 attention (for the attention-only reference), 0 on padding
    mask      (B, N) bool        True on each sample's N_v valid tokens (they come first)
    grid      (B, 3) long        (t, h, w) per sample, t*h*w == N_v
    keys      list[str]          sample keys
N is the longest N_v in the batch.

DDP: `EvenBatchSampler` gives every rank the same number of batches (DDP's gradient all-reduce
would hang otherwise) while each sample is seen exactly once per epoch across ranks: the shuffled
indices are cut into world_size * K nearly equal batches (sizes differ by at most one, none larger
than batch_size) and rank r takes batches r, r + world_size, ... No sample is repeated or dropped
to even out the counts, unlike torch's DistributedSampler, which pads with repeats. No batch is
empty either: where batch_size=1 and world_size does not divide the sample count, no split meets
all three, so each rank takes n // world_size batches and n % world_size of them hold 2 samples
(fewer, larger batches, rather than an empty batch or a repeated or dropped sample).
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from predictor.features import build_features
from predictor.schema import MODALITIES, Sample
from predictor.split import is_val_key
from predictor.training.shards import ReadStats, expand_specs, is_url, read_shards, resolve_shards

log = logging.getLogger(__name__)


@dataclass
class Example:
    key: str
    x: torch.Tensor  # (C, N_v)
    relevance: torch.Tensor  # (N_v,)
    attn: torch.Tensor  # (N_v,)
    grid: tuple[int, int, int]
    thumbnail: bytes | None = None
    instruction: str = ""  # figure samples only (their figures show the question)


class ExampleDataset(Dataset):
    def __init__(self, items: list[Example]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Example:
        return self.items[i]


def _heads(samples: list[Sample], shards) -> int:
    """The one head count H of the samples' per-head attention; samples without it, or with two different
    counts (shards of two models), are refused with the fix."""
    counts = {None if s.attn_heads is None else int(s.attn_heads.shape[0]) for s in samples}
    if None in counts:
        missing = next(s.key for s in samples if s.attn_heads is None)
        raise ValueError(f"the predictor's inputs include attn_heads, but sample {missing!r} of data.shards={shards} "
                         f"has no per-head attention: regenerate the shards with python -m data_gen save_heads=true, "
                         f"or train without it (model=conv1d_coords)")
    if len(counts) > 1:
        raise ValueError(f"data.shards={shards} mixes per-head attention of {sorted(counts)} heads (shards of "
                         f"different models); train on one model's shards")
    return counts.pop()


def _one_modality(samples: list[Sample], modality: str | None, shards) -> list[Sample]:
    """The samples of `modality` (None: all, refused if they mix image and video: a predictor is per modality)."""
    counts = Counter(s.meta["modality"] for s in samples)
    found = ", ".join(f"{n} {m}" for m, n in sorted(counts.items()))
    if modality is None:
        if len(counts) > 1:
            raise ValueError(f"data.shards={shards} mixes modalities ({found} samples); a predictor is for one "
                             f"modality: train one per modality with data.modality=image or data.modality=video")
        return samples
    kept = [s for s in samples if s.meta["modality"] == modality]
    if not kept:
        raise ValueError(f"data.modality={modality} but data.shards={shards} has no {modality} samples (found "
                         f"{found}); set data.modality to one of those, or null")
    if len(kept) < len(samples):
        log.info("data.modality=%s: training on %d of %d samples (%s)", modality, len(kept), len(samples), found)
    return kept


def make_example(sample: Sample, inputs: list[str], keep_thumbnail: bool = False) -> Example:
    x = build_features(inputs, sample.attn, sample.grid, sample.attn_heads)
    return Example(sample.key, x, sample.relevance, sample.attn, sample.grid,
                   sample.thumbnail if keep_thumbnail else None,
                   str(sample.meta.get("instruction", "")) if keep_thumbnail else "")


def collate(items: list[Example]) -> dict[str, Any]:
    """Pad to the longest N_v of the batch; see the module docstring for the shapes."""
    assert items, "collate got an empty batch (EvenBatchSampler never yields one)"
    B, C = len(items), items[0].x.shape[0]
    N = max(it.x.shape[1] for it in items)
    x = torch.zeros(B, C, N)
    rel = torch.zeros(B, N)
    attn = torch.zeros(B, N)
    mask = torch.zeros(B, N, dtype=torch.bool)
    for b, it in enumerate(items):
        n = it.x.shape[1]
        x[b, :, :n] = it.x
        rel[b, :n] = it.relevance
        attn[b, :n] = it.attn
        mask[b, :n] = True
    grid = torch.tensor([it.grid for it in items], dtype=torch.long)
    return {"x": x, "relevance": rel, "attn": attn, "mask": mask, "grid": grid, "keys": [it.key for it in items]}


class EvenBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices for one rank: equal batch counts on every rank, each index once
    per epoch across ranks (see the module docstring). Shuffling is seeded by (seed, epoch), the
    same on every rank; `epoch_fn` supplies the epoch (the trainer's, so a resumed run continues
    the sequence)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, epoch_fn: Callable[[], int] | None = None):
        if n < world_size:
            raise ValueError(f"{n} samples cannot be split over {world_size} ranks; "
                             "generate more shards or use fewer devices (trainer.devices=)")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.epoch_fn = rank, world_size, epoch_fn
        self.epoch = 0
        # batches per rank: enough to keep each within batch_size, but never more than n // world_size,
        # past which some batch would be empty (only possible with batch_size=1; see the module docstring)
        per_rank = min(math.ceil(n / (world_size * batch_size)), n // world_size)
        self.num_global = world_size * per_rank  # batches over all ranks

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_global // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=g).numpy()
        else:
            order = np.arange(self.n)
        parts = np.array_split(order, self.num_global)
        for part in parts[self.rank :: self.world_size]:
            yield part.tolist()


class ShardDataModule(pl.LightningDataModule):
    """Reads shards (a folder, glob or list), splits train/val by a stable hash of each sample's key,
    builds predictor inputs once, and serves padded batches (see `collate`).

    inputs: predictor input channels (PredictorConfig.inputs); val_fraction: share of keys held out;
    modality: "image" or "video" keeps only those samples; None refuses shards that mix the two.
    """

    streaming = False

    def __init__(self, shards: str | list[str], inputs: list[str], batch_size: int = 128,
                 val_fraction: float = 0.1, num_workers: int = 0, strict: bool = False,
                 seed: int = 0, figure_samples: int = 4, modality: str | None = None):
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if modality is not None and modality not in MODALITIES:
            raise ValueError(f"data.modality={modality!r}: expected 'image' or 'video' (keep only those samples), "
                             "or null (all samples, refused if they mix modalities)")
        self.modality = modality
        self.shards, self.inputs = shards, list(inputs)
        self.batch_size, self.val_fraction, self.num_workers = batch_size, val_fraction, num_workers
        self.strict, self.seed, self.figure_samples = strict, seed, figure_samples
        self.train_set: ExampleDataset | None = None
        self.val_set: ExampleDataset | None = None
        self.stats: ReadStats | None = None
        self.summary: dict[str, Any] = {}
        self.num_heads = 0  # H of the samples' per-head layer-0 attention (read only for the attn_heads input)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        paths = resolve_shards(self.shards)
        samples, self.stats = read_shards(paths, load_heads="attn_heads" in self.inputs, strict=self.strict)
        if not samples:
            raise ValueError(f"no valid samples in {len(paths)} shard(s) of data.shards={self.shards} "
                             f"({len(self.stats.corrupt_shards)} corrupt shards, {self.stats.skipped_samples} "
                             f"invalid samples: {self.stats.skip_reasons[:2]}); regenerate with python -m data_gen")
        samples = _one_modality(samples, self.modality, self.shards)
        if "attn_heads" in self.inputs:
            self.num_heads = _heads(samples, self.shards)
        train, val = [], []
        for s in samples:
            (val if is_val_key(s.key, self.val_fraction) else train).append(s)
        if not train:
            raise ValueError(f"all {len(samples)} samples fell into validation; lower data.val_fraction")
        train.sort(key=lambda s: s.key)
        val.sort(key=lambda s: s.key)
        self.summary = summarise(samples, train, val, paths, self.stats, self.val_fraction)
        self.train_set = ExampleDataset([make_example(s, self.inputs) for s in train])
        self.val_set = ExampleDataset([make_example(s, self.inputs, keep_thumbnail=i < self.figure_samples)
                                    for i, s in enumerate(val)])
        log.info("data: %d train / %d val samples from %d shards", len(train), len(val), len(paths))

    def _rank(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, ds: ExampleDataset, shuffle: bool) -> DataLoader:
        rank, world = self._rank()
        sampler = EvenBatchSampler(len(ds), self.batch_size, shuffle, self.seed, rank, world,
                                   epoch_fn=(lambda: self.trainer.current_epoch) if self.trainer else None)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if not len(self.val_set):
            log.warning("no validation samples (data.val_fraction=%s); validation metrics are skipped",
                        self.val_fraction)
            return []
        return self._loader(self.val_set, shuffle=False)

    @property
    def has_val(self) -> bool:
        return bool(self.val_set and len(self.val_set))

    def figure_batch(self) -> dict[str, Any] | None:
        """The first few validation samples (fixed across epochs), with thumbnails, for figures."""
        if not self.val_set or not len(self.val_set):
            return None
        return figure_batch_of(self.val_set.items[: self.figure_samples])


def figure_batch_of(items: list) -> dict[str, Any]:
    """A padded batch of these examples with what the figures print beside them: thumbnails, questions."""
    batch = collate(items)
    batch["thumbnails"] = [it.thumbnail for it in items]
    batch["instructions"] = [it.instruction for it in items]
    return batch


def one_or_all(counts: Counter, name: str) -> Any:
    """The one value of a metadata field, or {value: count} (warned) when the shards mix several."""
    if len(counts) > 1:
        log.warning("shards mix several %s values %s: a predictor is meant for one MLLM and modality",
                    name, dict(counts))
    return next(iter(counts)) if len(counts) == 1 else {str(k): v for k, v in counts.items()}


def summarise(samples: list[Sample], train: list[Sample], val: list[Sample], paths: list,
              stats: ReadStats, val_fraction: float) -> dict[str, Any]:
    """What the predictor is trained on, for the export's config.json (`trained_on`). `val_fraction`
    is recorded so that later fidelity checks (eval.py) score the same held-out keys."""
    def meta(name: str) -> Any:
        return one_or_all(Counter(s.meta.get(name) for s in samples), name)  # str or int values: hashable

    n_v = [s.num_visual for s in samples]
    return {
        "model_id": meta("model_id"),
        "adapter": meta("adapter"),
        "explainer": meta("explainer"),
        "modality": meta("modality"),
        "schema_version": meta("schema_version"),
        "num_samples": len(samples),
        "num_train": len(train),
        "num_val": len(val),
        "val_fraction": float(val_fraction),  # is_val_key(key, val_fraction): the held-out keys
        "num_shards": len(paths),
        "corrupt_shards": len(stats.corrupt_shards),
        "skipped_samples": stats.skipped_samples,
        "n_v_min": min(n_v),
        "n_v_max": max(n_v),
        "n_v_mean": float(np.mean(n_v)),
    }


def make_datamodule(shards, inputs: list[str], streaming: bool | str = "auto", stream_above_gb: float = 4.0,
                    val_shards=None, shuffle_buffer: int = 1000, **kw) -> pl.LightningDataModule:
    """ShardDataModule (decoded into memory) or StreamingDataModule, per data.streaming: true, false, or
    "auto": streaming for URLs, `pipe:` commands, data.val_shards, or local shards above `stream_above_gb`
    (the choice and the size are printed). kw: the arguments both modules share."""
    if streaming not in (True, False, "auto"):
        raise ValueError(f"data.streaming={streaming!r}: expected true, false or auto")
    specs = expand_specs(shards)
    urls = [u for u in specs if is_url(u)]
    if streaming is False and (urls or val_shards):
        why = f"URLs or pipe: commands ({urls[0]})" if urls else "data.val_shards"
        raise ValueError(f"data.streaming=false but data.shards has {why}, which only the streaming mode reads; "
                         "set data.streaming=true (or auto)")
    if streaming == "auto":
        gb = sum(os.path.getsize(p) for p in specs if not is_url(p)) / 1e9
        streaming = bool(urls or val_shards) or gb > stream_above_gb
        why = "URLs or pipe: commands" if urls else "data.val_shards" if val_shards else (
            f"{gb:.2f} GB of shards {'>' if streaming else '<='} data.stream_above_gb={stream_above_gb}")
        print(f"data: {'streaming' if streaming else 'decoded into memory'} ({why})")
    if streaming:
        from predictor.training.streaming import StreamingDataModule

        return StreamingDataModule(shards, inputs, val_shards=val_shards, buffer=shuffle_buffer, **kw)
    return ShardDataModule(shards, inputs, **kw)
