"""train.py as a user runs it: Hydra overrides, loggers, last line = export path and metrics, missing shards."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_shards import write_synthetic_shards

TRAIN = Path(__file__).resolve().parents[1] / "train.py"


def run(args, cwd, env_drop=()):
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["OMP_NUM_THREADS"] = "1"  # tiny model; avoids oversubscribing a shared CPU
    return subprocess.run([sys.executable, str(TRAIN), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_shards")
    write_synthetic_shards(out, 200, grids=[(1, 8, 8)], samples_per_shard=100, num_heads=2)
    return out


@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_train_cli(shards, tmp_path, logger):
    # wandb: the default, offline with no account: WANDB_MODE and keys removed, stdin closed -> no prompt
    r = run([f"data.shards={shards}", "trainer.max_epochs=1", "model.widths=[8,16]", f"logger={logger}",
             f"export_dir={tmp_path}/export"], cwd=tmp_path, env_drop=("WANDB_MODE", "WANDB_API_KEY"))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    m = cfg["metrics"]  # the last line: the export and its validation metrics beside layer-0 attention's
    assert lines[-1] == (f"export -> {(tmp_path / 'export').resolve()}; val KL {m['kl']:.2f}, recall@25 "
                         f"{m['recall@25']:.2f} (layer-0 attention {m['attn_recall@25']:.2f})")
    assert cfg["trained_on"]["num_samples"] == 200 and "recall@25" in cfg["metrics"]
    run_dirs = list((tmp_path / "outputs" / "train").glob("*/*"))
    assert len(run_dirs) == 1
    if logger == "csv":
        assert "val/recall@25" in (run_dirs[0] / "csv" / "metrics.csv").read_text()
    else:
        assert "wandb sync" in r.stdout
        assert list((run_dirs[0] / "wandb").glob("offline-run-*"))


def test_no_shards_says_what_and_how(tmp_path):
    r = run([f"data.shards={tmp_path}/missing", "logger=none"], cwd=tmp_path)
    assert r.returncode != 0
    assert f"{tmp_path}/missing" in r.stderr and "python -m data_gen out=" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "pytorch_lightning" not in r.stderr  # failed before the slow imports
