"""EvenBatchSampler over a grid of (n, batch_size, world_size): no empty batch, equal batch counts
per rank, each index once per epoch; batch_size exceeded only where nothing else satisfies those."""
import itertools

import pytest

from predictor.training.epochs import EvenBatchSampler

GRID = list(itertools.product([1, 2, 3, 5, 7, 8, 10, 31, 64, 100], [1, 2, 3, 4, 16], [1, 2, 3, 4, 8]))


@pytest.mark.parametrize("n,bs,world", [g for g in GRID if g[0] >= g[2]])
def test_every_rank_same_count_no_empty_batch_each_index_once(n, bs, world):
    per_rank, seen, sizes = set(), [], []
    for rank in range(world):
        s = EvenBatchSampler(n, bs, shuffle=True, seed=2, rank=rank, world_size=world)
        batches = list(s)
        assert len(batches) == len(s)
        per_rank.add(len(batches))
        sizes += [len(b) for b in batches]
        seen += [i for b in batches for i in b]
    assert min(sizes) > 0, f"empty batch: sizes {sizes}"
    assert len(per_rank) == 1, f"ranks step {per_rank} times: DDP would hang"
    assert sorted(seen) == list(range(n))
    assert max(sizes) - min(sizes) <= 1
    # batch_size holds unless no equal split without empty batches exists (bs=1, world does not divide n)
    assert max(sizes) <= (bs + 1 if bs == 1 and n % world else bs)
    if bs == 1 and n % world:  # as many batches as possible: one per rank fewer would be needless
        assert per_rank == {n // world}

