"""Streamed batches of one epoch: `StreamDataset` (an IterableDataset) and `StreamLoader` (its DataLoader).

Per epoch and rank the plan (`epochs.plan_epoch`) gives each loader worker its shards and batch sizes.
Each worker's samples of its split and data.modality (by key and meta.json, as `index.index_shard` counts
them) pass through webdataset's shuffle buffer (raw bytes, seeded by seed, epoch, rank and worker), then
are decoded and validated by `predictor.schema.decode` and padded by `batches.collate`. Validation: no
shuffle, every sample once. `len()` of a loader is of the trainer's current epoch, as its batches are
(Lightning stops at len()).

Resume: `StreamLoader` tells Lightning how many batches of the epoch were done; a resumed epoch replays its
shuffle and skips the samples of those batches, decoding them to pass over exactly the samples an unbroken run
put in them (undecodable ones are not among them), so it continues with the batches an unbroken run has next.
"""
from __future__ import annotations

import itertools
import json
import math
import tarfile
from typing import Any, Callable, Iterator

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from predictor.schema import EXT_META, SampleError, decode
from predictor.split import is_val_key
from predictor.training.batches import collate, make_example
from predictor.training.epochs import plan_epoch, worker_skips
from predictor.training.shards import corrupt_shard
from predictor.training.tar_stream import stream_samples


class StreamDataset(IterableDataset):
    """Padded batches (`collate`, plus "skipped": reasons of samples and shards dropped since the last
    batch) of one split for one rank, planned per epoch (see `plan_epoch`)."""

    def __init__(self, urls: list[str], counts: list[int], split: str | None, train: bool, inputs: list[str],
                 batch_size: int, val_fraction: float, modality: str | None, num_heads: int, strict: bool,
                 seed: int, buffer: int, rank: int = 0, world: int = 1, workers: int = 0):
        self.urls, self.counts, self.split, self.train, self.inputs = urls, counts, split, train, inputs
        self.batch_size, self.val_fraction, self.modality = batch_size, val_fraction, modality
        self.num_heads, self.strict, self.seed, self.buffer = num_heads, strict, seed, buffer
        self.rank, self.world, self.workers = rank, world, max(1, workers)
        self.epoch, self.done = 0, 0  # done: batches of this epoch already trained (a resume skips them)

    def plan(self) -> list[tuple[list[int], list[int] | None]]:
        return plan_epoch(self.counts, self.epoch, self.seed, self.world, self.workers, self.batch_size,
                          self.train)[self.rank]

    def __len__(self) -> int:
        return sum(len(sizes) if sizes is not None else math.ceil(sum(self.counts[i] for i in shards)
                                                                   / self.batch_size)
                   for shards, sizes in self.plan())

    def _wanted(self, raw: dict) -> bool:
        """Of this split and data.modality, by key and meta.json alone (as `index_shard` counts). A meta.json
        that does not parse passes: decoding rejects it with its reason."""
        if not (self.split or is_val_key(raw["__key__"], self.val_fraction) == (not self.train)):
            return False
        if self.modality is None:
            return True
        try:
            return json.loads(raw[EXT_META]).get("modality") == self.modality
        except Exception:  # noqa: BLE001 (decode names the fault)
            return True

    def _raw(self, urls: list[str], skipped: list[str]) -> Iterator[dict]:
        """Raw samples of these shards in order (`_wanted` ones only); a shard's repeated key or a failing
        shard is counted."""
        for url in urls:
            seen: set[str] = set()
            try:
                for raw in stream_samples(url):
                    if raw["__key__"] in seen:
                        skipped.append(f"sample {raw['__key__']!r}: a second sample with this key in {url}")
                        continue
                    seen.add(raw["__key__"])
                    if self._wanted(raw):
                        yield raw
            except (tarfile.TarError, OSError, EOFError) as e:
                if self.strict:
                    raise corrupt_shard(url, f"{type(e).__name__}: {e}") from e
                skipped.append(f"corrupt shard {url}: {type(e).__name__}: {e}")

    def _examples(self, urls: list[str], skip: int, skipped: list[str], pass_no: int, worker: int):
        """Examples of these shards through the shuffle buffer, less the first `skip` (a resume: samples of
        batches already trained). Samples of another split or modality never enter the buffer; samples that
        fail to decode are dropped after it, so the skip decodes what it passes over, to count only the
        samples an unbroken run put in its batches."""
        rng_seed = (((self.seed * 1_000_003 + self.epoch) * 1009 + self.rank) * 101 + worker) * 7 + pass_no
        raws = iter(self._raw(urls, skipped))
        if self.train:
            raws = wds.shuffle(self.buffer, min(self.buffer, 100), seed=rng_seed)(raws)
        for raw in raws:
            try:
                sample = decode(raw, load_heads="attn_heads" in self.inputs)
            except SampleError as e:
                if self.strict:
                    raise SampleError(e.key, e.field, e.expected, f"{e.found} (in shard {raw['__url__']})") from e
                skipped.append(str(e))
                continue
            if "attn_heads" in self.inputs and (sample.attn_heads is None
                                                or sample.attn_heads.shape[0] != self.num_heads):
                raise ValueError(f"sample {sample.key!r} of {raw['__url__']} has per-head attention of "
                                 f"{None if sample.attn_heads is None else sample.attn_heads.shape[0]} heads, "
                                 f"the first sample {self.num_heads}: train on one model's shards written "
                                 "with python -m data_gen save_heads=true")
            if skip:
                skip -= 1
                continue
            yield make_example(sample, self.inputs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        plan = self.plan()  # one (shards, batch sizes) per loader worker
        skips, start = worker_skips([len(bs or []) for _, bs in plan], self.done)
        # a resumed loader starts its round-robin at worker 0: worker 0 takes the part of the one next in turn
        worker = ((info.id if info is not None else 0) + start) % len(plan)
        shards, sizes = plan[worker]
        urls = [self.urls[i] for i in shards]
        skip_batches = skips[worker]
        skipped: list[str] = []
        if sizes is None:  # validation: one pass, fixed-size batches
            it = self._examples(urls, 0, skipped, 0, worker)
            while batch := list(itertools.islice(it, self.batch_size)):
                yield {**collate(batch), "skipped": skipped[:]}
                skipped.clear()
            return
        passes = itertools.count()
        it = self._examples(urls, sum(sizes[:skip_batches]), skipped, next(passes), worker)
        for size in sizes[skip_batches:]:
            batch = list(itertools.islice(it, size))
            if len(batch) < size and self.world == 1:  # no other rank to keep in step with
                if batch:
                    yield {**collate(batch), "skipped": skipped[:]}
                return
            while len(batch) < size:  # this rank's shards ran out before its planned batches: go round again
                it = self._examples(urls, 0, skipped, next(passes), worker)
                more = list(itertools.islice(it, size - len(batch)))
                if not more:
                    raise ValueError(f"no valid samples in shards {urls} on rank {self.rank}: {skipped[:2]}")
                batch += more
            yield {**collate(batch), "skipped": skipped[:]}
            skipped.clear()


class StreamLoader(DataLoader):
    """DataLoader over a StreamDataset that sets the epoch on each iter() and skips the batches a resumed
    epoch already trained. state_dict() marks it resumable for Lightning; the state itself travels through
    StreamingDataModule.state_dict too, as Lightning restores no loader it built before the restore (it
    builds one to size the LR schedule)."""

    def __init__(self, dataset: StreamDataset, num_workers: int, epoch_fn: Callable[[], int] | None,
                 progress: Callable[[], dict[str, int]] | None = None,
                 resume: Callable[[dict[str, int] | None], dict[str, int] | None] | None = None):
        super().__init__(dataset, batch_size=None, num_workers=num_workers)
        self.epoch_fn, self.progress, self.resume = epoch_fn, progress, resume

    def _follow_epoch(self) -> None:
        """Plan the trainer's current epoch. Both len() and iter() ask: Lightning takes an epoch's batch count
        from len() before it iterates, and stops after that many batches, so len() must be of the same plan
        (each epoch's shard deal has its own batch count)."""
        if self.epoch_fn:
            self.dataset.epoch = self.epoch_fn()

    def __len__(self) -> int:
        self._follow_epoch()
        return super().__len__()

    def __iter__(self):
        ds = self.dataset
        self._follow_epoch()
        state = self.resume(None) if self.resume else None  # taken once: later epochs start from their first batch
        ds.done = state["batches"] if state and state["epoch"] == ds.epoch else 0
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return self.progress() if self.progress else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if self.resume:
            self.resume(state)
