"""2-process DDP on CPU (gloo): each sample is seen exactly once per epoch across the ranks, in memory and\nstreaming."""
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

from predictor.training import ShardDataModule, write_synthetic_shards


def _run_ddp(tmp_path, mode: str) -> list[dict]:
    # 157 samples: counts that do not divide evenly by ranks or batch size (shards of 50, 50, 50, 7)
    write_synthetic_shards(tmp_path / "shards", 157, grids=[(1, 6, 6), (1, 8, 8)], samples_per_shard=50)
    with socket.socket() as sock:  # a free port, so parallel runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    worker = Path(__file__).with_name("ddp_worker.py")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(port), str(worker), str(tmp_path / "shards"), str(tmp_path), mode],
                       env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]


def test_ddp_streaming_ranks_see_disjoint_samples(tmp_path):
    ranks = _run_ddp(tmp_path, "stream")
    mem = ShardDataModule(str(tmp_path / "shards"), ["attn"], val_fraction=0.2)
    mem.setup()
    for split, items in (("train", mem.train_set.items), ("val", mem.val_set.items)):
        for epoch in (0, 1):
            per_rank = [[k for (s, e, ks) in rk["seen"] if s == split and e == epoch for k in ks] for rk in ranks]
            assert not set(per_rank[0]) & set(per_rank[1]) and all(per_rank), (split, epoch)
            counts = Counter(per_rank[0] + per_rank[1])
            assert counts.keys() == {it.key for it in items} and set(counts.values()) == {1}, (split, epoch)
    for epoch in (0, 1):
        steps = [sum(1 for (s, e, _) in rk["seen"] if s == "train" and e == epoch) for rk in ranks]
        assert steps[0] == steps[1]  # DDP would hang otherwise
    epochs = [{k for (s, e, ks) in ranks[0]["seen"] if s == "train" and e == ep for k in ks} for ep in (0, 1)]
    assert epochs[0] != epochs[1]  # shards are dealt to the ranks anew each epoch
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and "recall@25" in ranks[0]["metrics"]


def test_ddp_each_sample_once_per_epoch(tmp_path):
    ranks = _run_ddp(tmp_path, "memory")
    assert all(rk["world"] == 2 for rk in ranks)
    train_keys, val_keys = set(ranks[0]["train"]), set(ranks[0]["val"])
    assert train_keys == set(ranks[1]["train"]) and len(train_keys) + len(val_keys) == 157
    for split, keys in (("train", train_keys), ("val", val_keys)):
        for epoch in (0, 1):
            counts = Counter(k for rk in ranks for (s, e, ks) in rk["seen"] if s == split and e == epoch for k in ks)
            assert set(counts) == keys and set(counts.values()) == {1}, (split, epoch)
            steps = [sum(1 for (s, e, _) in rk["seen"] if s == split and e == epoch) for rk in ranks]
            assert steps[0] == steps[1]
    # both ranks report the same validation metrics (reduced over all validation samples)
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and "recall@25" in ranks[0]["metrics"]
