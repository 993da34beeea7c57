"""2-process DDP on CPU (gloo), with the Trainer train.py builds: each sample is seen exactly once per epoch
across the ranks, in memory and streaming (over epochs whose streamed batch count changes)."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from production import planned_steps, write_uneven_shards
from synthetic_shards import write_synthetic_shards

from predictor.training import ShardDataModule
from predictor.training.streaming import StreamingDataModule


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    """(folder, {"memory": [record of rank 0, of rank 1], "stream": ...}), shards in folder/<mode>: both fits
    in one launch of 2 ranks (tests/ddp_worker.py), as starting the ranks takes longer than the fits.
    memory: 157 samples in shards of 50, 50, 50, 7 (counts that divide by neither the ranks nor the batch
    size), 2 epochs; stream: UNEVEN shards, 6 epochs (an epoch takes more batches than the first)."""
    out = tmp_path_factory.mktemp("ddp")
    write_synthetic_shards(out / "memory", 157, grids=[(1, 6, 6), (1, 8, 8)], samples_per_shard=50)
    write_uneven_shards(out / "stream")
    worker = Path(__file__).with_name("ddp_worker.py")
    # PYTHONPATH: the ranks import this tree's predictor, not whichever one is installed
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(worker.parents[1])}
    # --standalone: the launcher's rendezvous store listens on a port the OS picks and keeps it open, and the
    # ranks join that store, so no port is chosen here and released for another process to take meanwhile
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(worker), str(out), "memory", str(out / "memory"), "2", "stream", str(out / "stream"), "6"],
                       env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-4000:]
    return out, {mode: [json.loads((out / f"{mode}-rank{i}.json").read_text()) for i in range(2)]
                 for mode in ("memory", "stream")}


def _keys(ranks: list[dict], split: str, epoch: int) -> list[list[str]]:
    """Per rank, the keys of `split` it stepped on in `epoch`."""
    return [[k for (s, e, ks) in rk["seen"] if s == split and e == epoch for k in ks] for rk in ranks]


def _steps(ranks: list[dict], split: str, epoch: int) -> list[int]:
    return [sum(1 for (s, e, _) in rk["seen"] if s == split and e == epoch) for rk in ranks]


def test_ddp_streaming_each_sample_once_per_epoch_as_batch_counts_change(ddp_runs):
    out, runs = ddp_runs
    shards = str(out / "stream")
    mem = ShardDataModule(shards, ["attn"], val_fraction=0.2)
    mem.setup()
    index = StreamingDataModule(shards, ["attn"], batch_size=16, val_fraction=0.2)
    index.setup()
    steps = planned_steps(index, world=2, workers=1, epochs=6)
    assert max(steps) > steps[0], steps  # the case in point: an epoch takes more batches than the first
    ranks = runs["stream"]
    for split, items in (("train", mem.train_set.items), ("val", mem.val_set.items)):
        for epoch in range(6):
            per_rank = _keys(ranks, split, epoch)
            assert not set(per_rank[0]) & set(per_rank[1]) and all(per_rank), (split, epoch)
            counts = Counter(per_rank[0] + per_rank[1])
            assert counts.keys() == {it.key for it in items} and set(counts.values()) == {1}, (split, epoch)
    for epoch in range(6):
        trained = _steps(ranks, "train", epoch)
        assert trained[0] == trained[1] == steps[epoch], (epoch, trained, steps)  # DDP would hang otherwise
    epochs = [set(_keys(ranks, "train", ep)[0]) for ep in range(6)]
    assert len({frozenset(e) for e in epochs}) > 1  # shards are dealt to the ranks anew each epoch
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and "recall@25" in ranks[0]["metrics"]


def test_ddp_each_sample_once_per_epoch(ddp_runs):
    ranks = ddp_runs[1]["memory"]
    assert all(rk["world"] == 2 for rk in ranks)
    train_keys, val_keys = set(ranks[0]["train"]), set(ranks[0]["val"])
    assert train_keys == set(ranks[1]["train"]) and len(train_keys) + len(val_keys) == 157
    for split, keys in (("train", train_keys), ("val", val_keys)):
        for epoch in (0, 1):
            per_rank = _keys(ranks, split, epoch)
            counts = Counter(per_rank[0] + per_rank[1])
            assert set(counts) == keys and set(counts.values()) == {1}, (split, epoch)
            steps = _steps(ranks, split, epoch)
            assert steps[0] == steps[1]
    # both ranks report the same validation metrics (reduced over all validation samples)
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and "recall@25" in ranks[0]["metrics"]
