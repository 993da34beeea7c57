"""The embedded default, as a user runs it: `python -m data_gen` then `python train.py`, with no model,
source or explainer arguments (only a small max_samples and a short training), on the committed
reference MLLM. Also: that reference folder loads through the adapter exactly like a real checkpoint
and answers held-out scenes at the accuracy its training record states."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_gen.correctness import normalise
from data_gen.reference_train import heldout_items

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "checkpoints" / "reference-qwen2vl"
MARGIN = 0.15  # 32 scenes: about two standard errors of a binomial near 0.3


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((REF / "training.json").read_text())


def test_reference_folder_is_a_small_documented_hf_checkpoint(record):
    files = {p.name for p in REF.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training.json"} <= files
    size = sum(p.stat().st_size for p in REF.rglob("*") if p.is_file())
    assert size < 10 * 2**20, f"reference model folder is {size / 2**20:.1f} MiB, the limit is 10 MiB"
    card = (REF / "README.md").read_text()
    assert "not a general MLLM" in card and "python -m data_gen.reference_train" in card
    assert f"{record['heldout_accuracy']['224x224'] * 100:.1f}%" in card  # the card states the measured accuracy


def test_reference_answers_heldout_scenes_at_recorded_accuracy(record):
    from predictor.adapters import load_adapter

    adapter = load_adapter("qwen2_vl", str(REF))  # the same call that loads Qwen2-VL-7B
    cfg = record["config"]
    items = heldout_items(record["seed"], [224, 224], 32, cfg["question_types"], cfg["num_objects"])
    correct = 0
    for item in items:
        prepared = adapter.prepare(item.image, item.instruction)
        assert prepared.num_visual == item.extra["grid"][1] * item.extra["grid"][2]
        ids, text = adapter.generate(prepared, max_new_tokens=8)
        assert 1 <= ids.numel() <= 2, f"expected a one-word answer ended by <|im_end|>, got {text!r}"
        correct += normalise(text) == normalise(item.answer)
    assert abs(correct / len(items) - record["heldout_accuracy"]["224x224"]) <= MARGIN


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_default_chain_end_to_end(tmp_path):
    shards, export = tmp_path / "shards", tmp_path / "export"
    # the defaults of conf/data_gen.yaml (reference MLLM, synthetic_scenes, gae); only the size differs
    _run(["-m", "data_gen", f"out={shards}", "max_samples=40", "progress=false",
          f"hydra.run.dir={tmp_path}/hydra"], cwd=ROOT)
    summary = json.loads(next(shards.glob("summary-r*.json")).read_text())
    assert summary["written"] >= 1 and summary["written"] + summary["wrong_answers"] + sum(
        summary["skipped"].values()) == 40
    out = _run(["train.py", f"data.shards={shards}", f"export_dir={export}", "trainer.max_epochs=2",
                "logger=none", f"hydra.run.dir={tmp_path}/train"], cwd=ROOT)
    assert out.strip().splitlines()[-1] == str(export.resolve())
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["trained_on"]["adapter"] == "qwen2_vl" and cfg["trained_on"]["explainer"] == "gae"
    assert "reference-qwen2vl" in cfg["trained_on"]["model_id"]
    assert cfg["trained_on"]["num_samples"] == summary["written"]
