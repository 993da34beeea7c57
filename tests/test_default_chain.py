"""The embedded default, as a user runs it: `python -m data_gen` then `python train.py`, with no model,
source or explainer arguments (only a small max_items and a short training), on the committed
reference MLLM (tests/test_reference_model.py checks the model itself)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_default_chain_end_to_end(tmp_path):
    shards, export = tmp_path / "shards", tmp_path / "export"
    # the defaults of conf/data_gen.yaml (reference MLLM, synthetic_scenes, gae); only the size differs
    printed = _run(["-m", "data_gen", f"out={shards}", "max_items=40", "progress=false",
                    f"hydra.run.dir={tmp_path}/hydra"], cwd=ROOT)
    assert printed.count(" written, ") == 1  # the summary, once, naming the output folder
    assert printed.strip().splitlines()[-1].endswith(f" -> {shards}/")
    summary = json.loads(next(shards.glob("summary-r*.json")).read_text())
    # the reference model answers >= 95% of held-out scenes, so nearly every item becomes a sample
    assert summary["written"] >= 34 and summary["written"] + summary["wrong_answers"] + sum(
        summary["skipped"].values()) == 40
    out = _run(["train.py", f"data.shards={shards}", f"export_dir={export}", "trainer.max_epochs=2",
                "logger=none", f"hydra.run.dir={tmp_path}/train"], cwd=ROOT)
    assert out.strip().splitlines()[-1].startswith(f"export -> {export.resolve()}; val KL ")
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["trained_on"]["adapter"] == "qwen2_vl" and cfg["trained_on"]["explainer"] == "gae"
    assert "reference-qwen2vl" in cfg["trained_on"]["model_id"]
    assert cfg["trained_on"]["num_samples"] == summary["written"]
