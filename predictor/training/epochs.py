"""Epoch planning: which samples form which batch on which rank, per epoch, for both data stores.

Both plans hold what DDP needs: every rank takes the same number of batches (DDP's gradient all-reduce
would hang otherwise), each sample is seen once per epoch across ranks, and no batch is empty. The order
is a permutation seeded by (seed, epoch), the same on every rank (`epoch_order`).

In memory, `EvenBatchSampler` plans over sample indices: the shuffled indices are cut into
world_size * K nearly equal batches (sizes differ by at most one, none larger than batch_size) and rank r
takes batches r, r + world_size, ... No sample is repeated or dropped to even out the counts, unlike
torch's DistributedSampler, which pads with repeats. Where batch_size=1 and world_size does not divide the
sample count, no split meets all three, so each rank takes n // world_size batches and n % world_size of
them hold 2 samples (fewer, larger batches, rather than an empty batch or a repeated or dropped sample).

Streamed, `plan_epoch` plans over whole shards (only their sample counts are known before decoding):
shards are shuffled and dealt round-robin to ranks, then to each rank's loader workers (the split of
webdataset's split_by_node / split_by_worker, with the rank passed explicitly). Every rank takes the
same number of batches S (the largest any rank needs), each at most batch_size: a rank with fewer samples
takes smaller batches. Only a rank with fewer samples than S batches starts its shards over to fill them.
`worker_skips` says which of those batches a resumed epoch has already trained.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator

import numpy as np
import torch


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """0..n-1, permuted by (seed, epoch) where `shuffle`: the same on every rank and every resume."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


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
        order = np.asarray(epoch_order(self.n, self.seed, epoch, self.shuffle), dtype=np.int64)
        parts = np.array_split(order, self.num_global)
        for part in parts[self.rank :: self.world_size]:
            yield part.tolist()


def plan_epoch(counts: list[int], epoch: int, seed: int, world: int, workers: int, batch_size: int,
               train: bool) -> list[list[tuple[list[int], list[int] | None]]]:
    """[rank][worker] -> (shard indices, batch sizes), for shards of `counts` samples each (see the module
    docstring). Val (train=False): shards in order, batch sizes None (batch_size each, the last one smaller)."""
    shards = [i for i in epoch_order(len(counts), seed, epoch, train) if counts[i]]
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
