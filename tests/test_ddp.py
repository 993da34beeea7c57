"""2-process DDP on CPU (gloo): each sample is seen exactly once per epoch across the ranks."""
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

from predictor.training import write_synthetic_shards


def test_ddp_each_sample_once_per_epoch(tmp_path):
    # 157 samples: counts that do not divide evenly by ranks or batch size
    write_synthetic_shards(tmp_path / "shards", 157, grids=[(1, 6, 6), (1, 8, 8)], samples_per_shard=50)
    with socket.socket() as sock:  # a free port, so parallel runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    worker = Path(__file__).with_name("ddp_worker.py")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(port), str(worker), str(tmp_path / "shards"), str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
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
