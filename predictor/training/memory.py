"""The in-memory store: every shard decoded once (`shards.read_shards`), predictor inputs built once,
batches planned by `epochs.EvenBatchSampler`. The split, modality and summary are `DataModule`'s."""
from __future__ import annotations

import logging
from collections import Counter

from torch.utils.data import DataLoader, Dataset

from predictor.schema import Sample, meta_value
from predictor.training.batches import Example, collate, make_example
from predictor.training.datamodule import SUMMARY_META, DataModule
from predictor.training.epochs import EvenBatchSampler
from predictor.training.shards import ReadStats, read_shards, resolve_shards

log = logging.getLogger(__name__)


class ExampleDataset(Dataset):
    def __init__(self, items: list[Example]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Example:
        return self.items[i]


class ShardDataModule(DataModule):
    """`DataModule` over samples decoded into memory: `train_set` and `val_set` (sorted by key), `stats`
    (the corrupt shards and invalid samples skipped)."""

    streaming = False

    def __init__(self, *args, **kw):  # DataModule's arguments
        super().__init__(*args, **kw)
        self.train_set: ExampleDataset | None = None
        self.val_set: ExampleDataset | None = None
        self.stats: ReadStats | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        paths = resolve_shards(self.shards)
        samples, self.stats = read_shards(paths, load_heads="attn_heads" in self.inputs, strict=self.strict)
        if not samples:
            raise ValueError(f"no valid samples in {len(paths)} shard(s) of data.shards={self.shards} "
                             f"({len(self.stats.corrupt_shards)} corrupt shards, {self.stats.skipped_samples} "
                             f"invalid samples: {self.stats.skip_reasons[:2]}); regenerate with python -m data_gen")
        kept = [s for s in samples if self.modality is None or s.meta["modality"] == self.modality]
        self._keep_modality(Counter(s.meta["modality"] for s in samples), len(kept))
        if "attn_heads" in self.inputs:
            self.num_heads = self._heads(kept)
        train, val = [], []
        for s in kept:
            (val if self.is_val(s.key) else train).append(s)
        self._check_split(len(train), len(val))
        train.sort(key=lambda s: s.key)
        val.sort(key=lambda s: s.key)
        n_v = [s.num_visual for s in kept]
        self._summarise({k: Counter(meta_value(s.meta, k) for s in kept) for k in SUMMARY_META}, len(train), len(val),
                        len(paths), len(self.stats.corrupt_shards), self.stats.skipped_samples,
                        (min(n_v), max(n_v), sum(n_v)))
        self.train_set = ExampleDataset([make_example(s, self.inputs) for s in train])
        self.val_set = ExampleDataset([make_example(s, self.inputs, keep_thumbnail=i < self.figure_samples)
                                       for i, s in enumerate(val)])
        log.info("data: %d train / %d val samples from %d shards", len(train), len(val), len(paths))

    def _heads(self, samples: list[Sample]) -> int:
        """The one head count H of the samples' per-head attention; samples of two different counts (shards
        of two models) are refused with the fix."""
        counts = {None if s.attn_heads is None else int(s.attn_heads.shape[0]) for s in samples}
        if None in counts:
            raise self._missing_heads(next(s.key for s in samples if s.attn_heads is None))
        if len(counts) > 1:
            raise ValueError(f"data.shards={self.shards} mixes per-head attention of {sorted(counts)} heads "
                             "(shards of different models); train on one model's shards")
        return counts.pop()

    def _loader(self, train: bool) -> DataLoader:
        ds = self.train_set if train else self.val_set
        rank, world = self._rank()
        sampler = EvenBatchSampler(len(ds), self.batch_size, train, self.seed, rank, world,
                                   epoch_fn=(lambda: self.trainer.current_epoch) if self.trainer else None)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def _figure_examples(self) -> list[Example]:
        return self.val_set.items[: self.figure_samples]
