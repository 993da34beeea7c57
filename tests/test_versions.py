"""Versions travel with the data: labeller.json and eval-settings.json record torch, transformers and the project's
version, and a folder made under another torch or transformers release is not resumed unless asked."""
from __future__ import annotations

import json
import logging
from importlib.metadata import version

import pytest

from data_gen.config import DataGenConfig
from data_gen.labeller import check_same_labeller, labeller_settings
from models import tiny_image, tiny_model_dir
from predictor.adapters.attention import ATTN_IMPL
from predictor.export import save_predictor
from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor
from predictor.versions import versions

TRANSFORMERS = version("transformers").split("+")[0]
TORCH = version("torch").split("+")[0]


def test_versions_are_the_installed_ones():
    v = versions()
    assert v == {"torch": TORCH, "transformers": TRANSFORMERS, "relevance-predictor": version("relevance-predictor")}


def _labeller(tmp_path):
    model_dir = tmp_path / "mllm"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    model = {"path": str(model_dir), "dtype": "float32", "attn_implementation": ATTN_IMPL}
    return labeller_settings(model, str(model_dir), "qwen2_vl", {"name": "gae"}, DataGenConfig(out=str(tmp_path)))


def _rewrite(path, **changed):
    rec = json.loads(path.read_text())
    rec["versions"].update(changed)
    path.write_text(json.dumps(rec))


def test_a_shard_folder_labelled_under_another_transformers_is_not_resumed(tmp_path, caplog):
    out = tmp_path / "out"
    check_same_labeller(str(out), _labeller(tmp_path))
    recorded = json.loads((out / "labeller.json").read_text())["versions"]
    assert recorded == versions()
    _rewrite(out / "labeller.json", transformers="4.57.0")  # as if labelled before an upgrade
    with pytest.raises(ValueError, match=rf"transformers 4\.57\.0 there, {TRANSFORMERS} now.*allow_version_change=true"):
        check_same_labeller(str(out), _labeller(tmp_path))
    with caplog.at_level(logging.WARNING):
        check_same_labeller(str(out), _labeller(tmp_path), allow_version_change=True)
    assert "transformers 4.57.0 there" in caplog.text
    # the record keeps what the folder was started with
    assert json.loads((out / "labeller.json").read_text())["versions"]["transformers"] == "4.57.0"


def test_torch_is_guarded_and_the_projects_own_version_only_recorded(tmp_path):
    out = tmp_path / "out"
    check_same_labeller(str(out), _labeller(tmp_path))
    _rewrite(out / "labeller.json", **{"relevance-predictor": "0.0.9"})
    check_same_labeller(str(out), _labeller(tmp_path))  # our own release does not change a label by itself
    _rewrite(out / "labeller.json", torch="2.13.0")
    with pytest.raises(ValueError, match=rf"torch 2\.13\.0 there, {TORCH} now"):
        check_same_labeller(str(out), _labeller(tmp_path))


def test_an_evaluation_made_under_another_torch_is_not_resumed(tmp_path):
    from evaluation import EvalSettings, run_eval

    model = {"adapter": "qwen2_vl", "path": str(tiny_model_dir("qwen2_vl", tmp_path)), "dtype": "float32",
             "device": "cpu", "attn_implementation": ATTN_IMPL}
    export = save_predictor(RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn"])), tmp_path / "export")
    tiny_image().save(tmp_path / "a.png")
    (tmp_path / "items.jsonl").write_text(json.dumps({"image": "a.png", "instruction": "what shape is it?",
                                                      "answer": "circle"}) + "\n")
    out = tmp_path / "out"
    kw = dict(model=model, predictor=str(export), out=str(out), max_items=1, explainer={"name": "gae"},
              source={"name": "jsonl", "path": str(tmp_path / "items.jsonl"), "image_root": str(tmp_path)},
              methods=["attention"], keeps=[1.0, 0.5], max_new_tokens=2, correctness="none", figures=0,
              progress=False, timing=False, fidelity={"shards": None})
    run_eval(EvalSettings.from_dict(kw))
    assert json.loads((out / "eval-settings.json").read_text())["versions"] == versions()
    _rewrite(out / "eval-settings.json", torch="2.13.0")
    with pytest.raises(ValueError, match=rf"torch 2\.13\.0 there, {TORCH} now"):
        run_eval(EvalSettings.from_dict(kw))
    res = run_eval(EvalSettings.from_dict({**kw, "allow_version_change": True}))
    assert res["results"]["attention"]["0.5"]["n"] == 1
