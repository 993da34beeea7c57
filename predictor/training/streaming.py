"""Streaming data mode: shards read as a stream with memory bounded by the shuffle buffer and the batch.

Shards may be local paths (folders, globs, brace patterns `shard-r{00000..00007}-{000000..000099}.tar`),
`pipe:` commands or URLs (http(s) through webdataset's curl opener; s3://, gcs://, ... through fsspec).

setup() makes one index pass: every sample's key and meta.json, never its arrays (local tars seek over
them; a URL is read once). It gives per-shard counts of train and val samples, so that each epoch can be
planned before any array is decoded:
  - train: shards are shuffled by (seed, epoch) and dealt round-robin to ranks, then to each rank's loader
    workers (the split of webdataset's split_by_node / split_by_worker, with the rank passed explicitly).
    Every rank takes the same number of batches S (the largest any rank needs), each at most batch_size:
    a rank with fewer samples takes smaller batches, so each sample is seen once per epoch across ranks.
    Only a rank with fewer samples than S batches (or whose samples failed to decode after the index
    counted them) starts its shards over to fill its batches.
  - each worker's samples of its split and data.modality (by key and meta.json, as the index counts them)
    pass through webdataset's shuffle buffer (raw bytes, seeded by seed, epoch, rank and worker), then are
    decoded and validated by `predictor.schema.decode` and padded by `collate`.
  - val: no shuffle; val shards dealt round-robin to ranks and workers; every sample once.
  - `len()` of a loader is of the trainer's current epoch, as its batches are (Lightning stops at len()).
Resume: `StreamLoader` tells Lightning how many batches of the epoch were done; a resumed epoch replays its
shuffle and skips the samples of those batches, decoding them to pass over exactly the samples an unbroken run
put in them (undecodable ones are not among them), so it continues with the batches an unbroken run has next.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset
from webdataset.gopen import gopen, gopen_schemes
from webdataset.tariterators import tar_file_iterator

from predictor.schema import EXT_META, MODALITIES, SampleError, decode
from predictor.split import is_val_key
from predictor.training.data import collate, figure_batch_of, make_example, one_or_all
from predictor.training.shards import _check_complete, _group, expand_specs, is_url

log = logging.getLogger(__name__)


def _fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    import fsspec

    return fsspec.open(url, mode).open()


def open_stream(url: str):
    """A readable byte stream for a local path, `pipe:` command or URL. Schemes webdataset has no opener
    for (s3, gcs, az, memory, ...) go through fsspec."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme and scheme not in gopen_schemes and scheme != "file":
        return _fsspec_open(url)
    return gopen(url)


class CheckedStream:
    """A byte stream that, once drained, checks what `shards._check_complete` checks on a file: a whole
    number of 512-byte blocks ending in two zero blocks. tarfile's stream mode stops quietly at a truncation."""

    def __init__(self, raw, url: str):
        self.raw, self.url, self.size, self.tail = raw, url, 0, b""

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.size += len(data)
        self.tail = (self.tail + data)[-1024:]
        return data

    def check(self) -> None:
        while self.read(1 << 20):
            pass
        if self.size < 1024 or self.size % 512 or self.tail.count(0) != len(self.tail):
            raise tarfile.ReadError(f"truncated tar ({self.size} bytes, no end-of-archive marker)")

    def close(self) -> None:
        self.raw.close()


@dataclass
class ShardIndex:
    url: str
    train: int = 0
    val: int = 0
    n_v: list[int] = field(default_factory=list)  # [min, max, sum] over the kept samples
    meta: dict[str, Counter] = field(default_factory=dict)  # model_id, adapter, ... over the kept samples
    modalities: Counter = field(default_factory=Counter)  # over all samples (data.modality filters the rest)
    corrupt: str | None = None


SUMMARY_META = ("model_id", "adapter", "explainer", "modality", "schema_version")


def _members(url: str) -> Iterator[dict]:
    """Tar members as {"fname", "data"}; only meta.json is read, other members' data is b""."""
    def members(tar: tarfile.TarFile) -> Iterator[dict]:
        for m in tar:
            if m.isreg():
                yield {"fname": m.name, "data": tar.extractfile(m).read() if m.name.endswith("." + EXT_META) else b""}

    if not is_url(url):
        _check_complete(Path(url))
        with tarfile.open(url, "r:") as tar:  # seeks over the arrays
            yield from members(tar)
        return
    stream = CheckedStream(open_stream(url), url)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield from members(tar)
        stream.check()
    finally:
        stream.close()


def index_shard(url: str, val_fraction: float, modality: str | None, split: str | None) -> ShardIndex:
    """Count the samples of one shard by split (split "train"/"val": all samples in that split; None: by
    key hash). Samples whose meta.json is unreadable are left out (decoding skips and counts them)."""
    idx = ShardIndex(url, meta={k: Counter() for k in SUMMARY_META})
    seen: set[str] = set()
    try:
        for raw in _group(_members(url), url):
            key = raw["__key__"]
            if key in seen:
                continue
            seen.add(key)
            try:
                meta = json.loads(raw[EXT_META])
                n_v = math.prod(int(g) for g in meta["grid"])
            except Exception:  # noqa: BLE001 (decode names the fault when the sample is streamed)
                continue
            idx.modalities[meta.get("modality")] += 1
            if modality is not None and meta.get("modality") != modality:
                continue
            for k in SUMMARY_META:
                idx.meta[k][meta.get(k)] += 1
            is_val = split == "val" if split else is_val_key(key, val_fraction)
            idx.val += is_val
            idx.train += not is_val
            idx.n_v = [min(idx.n_v[0], n_v), max(idx.n_v[1], n_v), idx.n_v[2] + n_v] if idx.n_v else [n_v] * 3
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        idx.corrupt = f"{type(e).__name__}: {e}"
    return idx


def _rank_order(n: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def plan_epoch(counts: list[int], epoch: int, seed: int, world: int, workers: int, batch_size: int,
               train: bool) -> list[list[tuple[list[int], list[int] | None]]]:
    """[rank][worker] -> (shard indices, batch sizes). See the module docstring. Val (train=False): batch
    sizes None (batch_size each, the last one smaller)."""
    shards = [i for i in _rank_order(len(counts), epoch, seed, train) if counts[i]]
    deal = [[shards[r::world][w::workers] for w in range(workers)] for r in range(world)]
    if not train:
        return [[(s, None) for s in rank] for rank in deal]
    n = [[sum(counts[i] for i in s) for s in rank] for rank in deal]  # samples per (rank, worker)
    steps = max(sum(math.ceil(x / batch_size) for x in rank) for rank in n)
    plan = []
    for rank_shards, rank_n in zip(deal, n):
        b = [math.ceil(x / batch_size) for x in rank_n]
        extra = steps - sum(b)
        for w, x in enumerate(rank_n):  # more, smaller batches where a worker has samples to spare
            add = min(extra, x - b[w])
            b[w], extra = b[w] + add, extra - add
        for w in itertools.cycle([w for w, x in enumerate(rank_n) if x]):  # too few samples: repeats
            if extra <= 0:
                break
            b[w], extra = b[w] + 1, extra - 1
        sizes = [[len(p) for p in np.array_split(np.arange(max(x, k)), k)] if k else [] for x, k in zip(rank_n, b)]
        plan.append(list(zip(rank_shards, sizes)))
    return plan


def worker_skips(num_batches: list[int], done: int) -> tuple[list[int], int]:
    """How many of each worker's batches are among the first `done` a DataLoader yields (it takes one
    batch from each worker in turn, passing over workers that have finished), and the worker it takes
    the next batch from."""
    skips, left, nxt = [0] * len(num_batches), done, 0
    while left > 0 and any(s < n for s, n in zip(skips, num_batches)):
        for w, n in enumerate(num_batches):
            if left and skips[w] < n:
                skips[w], left, nxt = skips[w] + 1, left - 1, (w + 1) % len(num_batches)
    return skips, nxt


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
                stream = CheckedStream(open_stream(url), url)
                try:
                    for raw in _group(tar_file_iterator(stream), url):
                        if raw["__key__"] in seen:
                            skipped.append(f"sample {raw['__key__']!r}: a second sample with this key in {url}")
                            continue
                        seen.add(raw["__key__"])
                        if self._wanted(raw):
                            yield raw
                    stream.check()
                finally:
                    stream.close()
            except (tarfile.TarError, OSError, EOFError) as e:
                if self.strict:
                    raise ValueError(f"shard {url} is corrupt ({type(e).__name__}: {e}); regenerate it with "
                                     "python -m data_gen, or set data.strict=false to skip it") from e
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


def index_shards(urls: list[str], val_fraction: float, modality: str | None, split: str | None,
                 strict: bool) -> list[ShardIndex]:
    with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:  # I/O bound (URLs, cold disks)
        out = list(pool.map(lambda u: index_shard(u, val_fraction, modality, split), urls))
    bad = [ix for ix in out if ix.corrupt]
    if bad and strict:
        raise ValueError(f"shard {bad[0].url} is corrupt ({bad[0].corrupt}); regenerate it with python -m "
                         "data_gen, or set data.strict=false to skip it")
    for ix in bad:
        log.warning("skipping corrupt shard %s (%s)", ix.url, ix.corrupt)
    return out


class StreamingDataModule(pl.LightningDataModule):
    """ShardDataModule's interface (summary, num_heads, has_val, figure_batch) over streamed shards.

    val_shards: shards held out whole for validation (then data.shards trains on all of its samples);
    None: the key-hash split of data.shards (validation then streams every shard, decoding its val keys).
    buffer: samples in each loader worker's shuffle buffer.
    """

    streaming = True

    def __init__(self, shards, inputs: list[str], batch_size: int = 128, val_fraction: float = 0.1,
                 num_workers: int = 0, strict: bool = False, seed: int = 0, figure_samples: int = 4,
                 modality: str | None = None, val_shards=None, buffer: int = 1000):
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if modality is not None and modality not in MODALITIES:
            raise ValueError(f"data.modality={modality!r}: expected 'image' or 'video', or null")
        if buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1 sample, got {buffer}")
        self.shards, self.val_shards, self.inputs, self.modality = shards, val_shards, list(inputs), modality
        self.batch_size, self.val_fraction, self.num_workers = batch_size, val_fraction, num_workers
        self.strict, self.seed, self.figure_samples, self.buffer = strict, seed, figure_samples, buffer
        self.summary: dict[str, Any] = {}
        self.num_heads = 0
        self.skipped: set[str] = set()  # reasons of invalid samples met so far (the same sample each epoch)
        self.corrupt: set[str] = set()
        self._figures: list | None = None
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
        counts = {k: sum((ix.meta[k] for ix in good), Counter()) for k in SUMMARY_META}
        modalities = sum((ix.modalities for ix in good), Counter())
        found = ", ".join(f"{n} {m}" for m, n in sorted(modalities.items(), key=str))
        num_train = sum(ix.train for ix in self.train_index if not ix.corrupt)
        num_val = sum(ix.val for ix in self.val_index if not ix.corrupt)
        if not good or not sum(modalities.values()):
            raise ValueError(f"no valid samples in {len(every)} shard(s) of data.shards={self.shards} "
                             f"({len(self.corrupt)} corrupt); regenerate with python -m data_gen")
        if self.modality is None and len(modalities) > 1:
            raise ValueError(f"data.shards={self.shards} mixes modalities ({found} samples); a predictor is for "
                             "one modality: train one per modality with data.modality=image or data.modality=video")
        if self.modality is not None and num_train + num_val == 0:
            raise ValueError(f"data.modality={self.modality} but data.shards={self.shards} has no {self.modality} "
                             f"samples (found {found}); set data.modality to one of those, or null")
        if not num_train:
            raise ValueError(f"all {num_val} samples fell into validation; lower data.val_fraction")
        if "attn_heads" in self.inputs:
            self.num_heads = self._first_heads()
        kept = [ix for ix in good if ix.n_v]
        total_nv = sum(ix.n_v[2] for ix in kept)
        self.summary = {k: one_or_all(counts[k], k) for k in SUMMARY_META}
        self.summary.update(num_samples=num_train + num_val, num_train=num_train, num_val=num_val,
                            val_fraction=float(self.val_fraction), num_shards=len(every),
                            corrupt_shards=len(self.corrupt), skipped_samples=0,
                            n_v_min=min(ix.n_v[0] for ix in kept), n_v_max=max(ix.n_v[1] for ix in kept),
                            n_v_mean=total_nv / (num_train + num_val))
        print(f"data: streaming {num_train} train / {num_val} val samples from {len(every)} shards "
              f"({len(self.corrupt)} corrupt), shuffle buffer {self.buffer} per loader worker")

    def _first_heads(self) -> int:
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
                    raise ValueError(f"the predictor's inputs include attn_heads, but sample {s.key!r} of "
                                     f"data.shards={self.shards} has no per-head attention: regenerate the shards "
                                     "with python -m data_gen save_heads=true, or train without it "
                                     "(model=conv1d_coords)")
                return int(s.attn_heads.shape[0])
        raise ValueError(f"no decodable sample in data.shards={self.shards}; regenerate with python -m data_gen")

    def _rank(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

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

    def train_dataloader(self) -> StreamLoader:
        return self._loader(train=True)

    def val_dataloader(self) -> StreamLoader | list:
        if not self.has_val:
            log.warning("no validation samples (data.val_fraction=%s); validation metrics are skipped",
                        self.val_fraction)
            return []
        return self._loader(train=False)

    @property
    def has_val(self) -> bool:
        return any(ix.val for ix in self.val_index if not ix.corrupt)

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        for reason in batch.pop("skipped", []):
            (self.corrupt if reason.startswith("corrupt shard") else self.skipped).add(reason)
        self.summary.update(skipped_samples=len(self.skipped), corrupt_shards=len(self.corrupt))
        return batch

    def figure_batch(self) -> dict[str, Any] | None:
        """The first few validation samples (fixed across epochs), with thumbnails, for figures."""
        if self._figures is None:
            self._figures = []
            if self.has_val:
                index = [ix for ix in self.val_index if not ix.corrupt and ix.val]
                ds = self._dataset([ix.url for ix in index], [ix.val for ix in index],
                                   "val" if self.val_shards else None, train=False)
                for raw in ds._raw(ds.urls, []):
                    try:
                        s = decode(raw, load_heads="attn_heads" in self.inputs)
                    except SampleError:
                        continue
                    self._figures.append(make_example(s, self.inputs, keep_thumbnail=True))  # _raw: of data.modality
                    if len(self._figures) >= self.figure_samples:
                        break
        return figure_batch_of(self._figures) if self._figures else None
