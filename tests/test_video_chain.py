"""The video chain as a user runs it, on a few synthetic clips and a tiny random Qwen2-VL (the reference
MLLM does not answer video yet): `python -m data_gen source=synthetic_video`, `python train.py`, then
`python eval.py source=synthetic_video`; the export is a video predictor and eval uses it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from models import tiny_models  # noqa: F401  (session fixture: tiny HF model folders)

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_video_data_gen_train_eval(tiny_models, tmp_path):
    shards, export = tmp_path / "shards", tmp_path / "export"
    model = [f"model.path={tiny_models['qwen2_vl']}", "model.device=cpu"]
    _run(["-m", "data_gen", *model, "source=synthetic_video", "max_items=6", "correctness=none", "max_new_tokens=2",
          "shard_size=3", f"out={shards}", "progress=false", f"hydra.run.dir={tmp_path}/h1"])
    summary = json.loads((shards / "summary-r00000.json").read_text())
    assert summary["written"] == 6 and summary["visual_tokens_per_sample"] == 64  # 4 frame pairs x 16 cells
    _run(["train.py", f"data.shards={shards}", f"export_dir={export}", "trainer.max_epochs=1", "logger=none",
          "data.val_fraction=0", "model.widths=[4,8]", f"hydra.run.dir={tmp_path}/h2"])
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["trained_on"]["modality"] == "video" and cfg["modality"] == "video"
    _run(["eval.py", *model, "source=synthetic_video", f"predictor={export}", "max_items=2", "max_new_tokens=2",
          "correctness=none", "timing=false", "figures=0", "fidelity.shards=null", "progress=false",
          "generalisation.max_items=1", f"out={tmp_path / 'eval'}", f"hydra.run.dir={tmp_path}/h3"])
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["results"]["predictor"]["0.25"]["visual_tokens"] == 16 and res["swap"]["predictor"]["n"] == 2
