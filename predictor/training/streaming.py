"""The streaming store: shards read as a stream, memory bounded by the shuffle buffer and the batch.

setup() indexes every shard (`index.index_shards`: keys and meta.json only), which gives the split's counts,
the summary and each epoch's plan before any array is decoded; the loaders (`stream_loader.StreamLoader`) decode
while they train. The split, modality and summary are `DataModule`'s, as for the in-memory store.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from predictor.schema import SampleError, decode
from predictor.training.batches import Example, make_example
from predictor.training.datamodule import SUMMARY_META, DataModule
from predictor.training.index import ShardIndex, index_shards
from predictor.training.shards import expand_specs
from predictor.training.stream_loader import StreamDataset, StreamLoader


class StreamingDataModule(DataModule):
    """`DataModule` over streamed shards.

    val_shards: shards held out whole for validation (then data.shards trains on all of its samples);
    None: the key-hash split of data.shards (validation then streams every shard, decoding its val keys).
    buffer: samples in each loader worker's shuffle buffer.
    """

    streaming = True

    def __init__(self, shards, inputs: list[str], *args, val_shards=None, buffer: int = 1000, **kw):
        super().__init__(shards, inputs, *args, **kw)  # DataModule's arguments
        if buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1 sample, got {buffer}")
        self.val_shards, self.buffer = val_shards, buffer
        self.skipped: set[str] = set()  # reasons of invalid samples met so far (the same sample each epoch)
        self.corrupt: set[str] = set()
        self._resume: dict[str, int] | None = None  # the epoch and batches done of a resumed checkpoint
        self.train_index: list[ShardIndex] = []
        self.val_index: list[ShardIndex] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_index:
            return
        urls = expand_specs(self.shards)
        val_urls = expand_specs(self.val_shards) if self.val_shards else []
        urls = [u for u in urls if u not in set(val_urls)]
        split = "train" if val_urls else None
        self.train_index = index_shards(urls, self.val_fraction, self.modality, split, self.strict)
        self.val_index = (index_shards(val_urls, 0.0, self.modality, "val", self.strict) if val_urls
                          else self.train_index)
        every = self.train_index + (self.val_index if val_urls else [])
        self.corrupt = {f"{ix.url}: {ix.corrupt}" for ix in every if ix.corrupt}
        good = [ix for ix in every if not ix.corrupt]
        modalities = sum((ix.modalities for ix in good), Counter())
        num_train = sum(ix.train for ix in self.train_index if not ix.corrupt)
        num_val = sum(ix.val for ix in self.val_index if not ix.corrupt)
        if not good or not sum(modalities.values()):
            raise ValueError(f"no valid samples in {len(every)} shard(s) of data.shards={self.shards} "
                             f"({len(self.corrupt)} corrupt); regenerate with python -m data_gen")
        self._keep_modality(modalities, num_train + num_val)
        self._check_split(num_train, num_val)
        if "attn_heads" in self.inputs:
            self.num_heads = self._first_heads()
        kept = [ix for ix in good if ix.n_v]
        self._summarise({k: sum((ix.meta[k] for ix in good), Counter()) for k in SUMMARY_META}, num_train, num_val,
                        len(every), len(self.corrupt), 0,  # invalid samples: counted as the loaders meet them
                        (min(ix.n_v[0] for ix in kept), max(ix.n_v[1] for ix in kept), sum(ix.n_v[2] for ix in kept)))
        print(f"data: streaming {num_train} train / {num_val} val samples from {len(every)} shards "
              f"({len(self.corrupt)} corrupt), shuffle buffer {self.buffer} per loader worker")

    def _first_heads(self) -> int:
        """H of the first decodable sample; the loaders refuse a later sample of another H."""
        for ix in self.train_index:
            if ix.corrupt or not ix.train + ix.val:
                continue
            ds = self._dataset([ix.url], [1], "all", train=False)  # a split set: every key, val_fraction 0 too
            for raw in ds._raw([ix.url], []):
                try:
                    s = decode(raw)
                except SampleError:
                    continue
                if s.attn_heads is None:
                    raise self._missing_heads(s.key)
                return int(s.attn_heads.shape[0])
        raise ValueError(f"no decodable sample in data.shards={self.shards}; regenerate with python -m data_gen")

    def _dataset(self, urls, counts, split, train: bool) -> StreamDataset:
        rank, world = self._rank()
        return StreamDataset(urls, counts, split, train, self.inputs, self.batch_size, self.val_fraction,
                             self.modality, self.num_heads, self.strict, self.seed, self.buffer, rank, world,
                             self.num_workers)

    def _loader(self, train: bool) -> StreamLoader:
        index = [ix for ix in (self.train_index if train else self.val_index) if not ix.corrupt]
        counts = [ix.train if train else ix.val for ix in index]
        split = ("train" if train else "val") if self.val_shards else None
        world = self._rank()[1]
        if sum(c > 0 for c in counts) < world:
            raise ValueError(f"{sum(c > 0 for c in counts)} shard(s) hold {'train' if train else 'val'} samples "
                             f"for {world} ranks: streaming deals whole shards to ranks; write smaller shards "
                             "(python -m data_gen shard_size=...) or use data.streaming=false")
        t = self.trainer
        return StreamLoader(self._dataset([ix.url for ix in index], counts, split, train), self.num_workers,
                            (lambda: t.current_epoch) if t is not None and train else None,
                            self.state_dict if t is not None and train else None, self._take_resume if train else None)

    def _figure_examples(self) -> list[Example]:
        index = [ix for ix in self.val_index if not ix.corrupt and ix.val]
        ds = self._dataset([ix.url for ix in index], [ix.val for ix in index],
                           "val" if self.val_shards else None, train=False)
        out: list[Example] = []
        for raw in ds._raw(ds.urls, []):  # of the validation split and data.modality
            try:
                s = decode(raw, load_heads="attn_heads" in self.inputs)
            except SampleError:
                continue
            out.append(make_example(s, self.inputs, keep_thumbnail=True))
            if len(out) >= self.figure_samples:
                break
        return out

    def state_dict(self) -> dict[str, int]:
        """The training batches done in the current epoch, for a mid-epoch resume."""
        t = self.trainer
        if t is None:
            return {}
        return {"epoch": t.current_epoch, "batches": t.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state) if state else None

    def _take_resume(self, state: dict[str, int] | None) -> dict[str, int] | None:
        if state is not None:
            self._resume = dict(state)
            return None
        state, self._resume = self._resume, None
        return state

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        for reason in batch.pop("skipped", []):
            (self.corrupt if reason.startswith("corrupt shard") else self.skipped).add(reason)
        self.summary.update(skipped_samples=len(self.skipped), corrupt_shards=len(self.corrupt))
        return batch
