"""data_gen.reference_train: the options of the recipe, and a few real steps that save a loadable model."""
from __future__ import annotations

import json

import pytest
import torch

from data_gen.reference_train import RefTrainConfig, clean_probability, objects_at, train


def test_curriculum_and_clean_schedule():
    cfg = RefTrainConfig(steps=100, curriculum=[[0, 1], [0.12, 2], [0.35, 3]], clean_until=0.6, clean_fade=0.25)
    assert [objects_at(cfg, s) for s in (0, 11, 12, 34, 35, 99)] == [1, 1, 2, 2, 3, 3]
    assert objects_at(RefTrainConfig(steps=100), 50) is None  # no curriculum: the config's num_objects
    assert [clean_probability(cfg, s) for s in (0, 59, 60)] == [1.0, 1.0, 1.0]
    assert clean_probability(cfg, 72) == pytest.approx(1 - 0.12 / 0.25)
    assert clean_probability(cfg, 85) == 0.0 and clean_probability(cfg, 99) == 0.0
    assert clean_probability(RefTrainConfig(steps=100), 0) == 0.0  # off by default


def test_a_few_steps_save_a_model_the_adapter_loads(tmp_path):
    torch.set_num_threads(1)
    cfg = RefTrainConfig(out=str(tmp_path / "ref"), steps=4, visual_tokens_per_step=64, sizes=[[112, 112]],
                         size_weights=[1.0], eval_items=2, eval_sizes=[[112, 112]], aux_head="regress",
                         clean_until=0.5, clean_fade=0.25, curriculum=[[0, 1], [0.5, 3]])
    record = train(cfg)
    assert record["steps"] == 4 and 0.0 <= record["heldout_accuracy"]["112x112"] <= 1.0
    saved = json.loads((tmp_path / "ref" / "training.json").read_text())
    assert saved["config"]["aux_head"] == "regress" and saved["config"]["curriculum"] == [[0, 1], [0.5, 3]]
    from predictor.adapters import load_adapter

    adapter = load_adapter("qwen2_vl", str(tmp_path / "ref"))
    assert adapter.model.config.model_type == "qwen2_vl"


def test_guided_layers_must_exist(tmp_path):
    with pytest.raises(ValueError, match=r"att_layers=\[1, 2\].*layers 0..1"):
        train(RefTrainConfig(out=str(tmp_path / "x"), steps=2, text={**RefTrainConfig().text, "num_hidden_layers": 2}))


def test_bad_curriculum_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must start at fraction 0"):
        train(RefTrainConfig(out=str(tmp_path / "x"), steps=2, curriculum=[[0.5, 2]]))


def test_cli_options_reach_the_record(tmp_path):
    from data_gen.reference_train import main

    torch.set_num_threads(1)
    out = tmp_path / "ref"
    main(["--steps", "2", "--eval-items", "1", "--out", str(out), "--att-layers", "0,1", "--label-smoothing", "0.2",
          "--text", '{"num_hidden_layers": 2}', "--sizes", "112x112"])
    cfg = json.loads((out / "training.json").read_text())["config"]
    assert cfg["att_layers"] == [0, 1] and cfg["label_smoothing"] == 0.2 and cfg["sizes"] == [[112, 112]]
    assert cfg["text"]["num_hidden_layers"] == 2 and cfg["text"]["initializer_range"] == 0.1  # merged with the defaults
    card = (out / "README.md").read_text()
    assert "Provisional" in card and "text layers 0 and 1" in card  # 2 steps: far below the bar, and it says so


def test_deterministic_given_the_seed(tmp_path):
    """Two runs with the same seed (and threads) save byte-identical weights; another seed does not."""
    torch.set_num_threads(1)
    kw = dict(steps=3, visual_tokens_per_step=64, sizes=[[112, 112]], size_weights=[1.0], eval_items=1,
              eval_sizes=[[112, 112]])
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(RefTrainConfig(out=str(tmp_path / name), seed=seed, **kw))
    weights = {n: (tmp_path / n / "model.safetensors").read_bytes() for n in "abc"}
    assert weights["a"] == weights["b"]
    assert weights["a"] != weights["c"]


def test_l0_cue_reaches_the_record_and_trains_layer0(tmp_path):
    from data_gen.reference_train import main

    torch.set_num_threads(1)
    args = ["--steps", "2", "--eval-items", "1", "--sizes", "112x112"]
    main([*args, "--out", str(tmp_path / "cue"), "--l0-cue", "0.3"])
    main([*args, "--out", str(tmp_path / "plain")])
    cfg = json.loads((tmp_path / "cue" / "training.json").read_text())["config"]
    assert cfg["l0_cue"] == 0.3
    assert "weak cue" in (tmp_path / "cue" / "README.md").read_text()
    assert "is not guided" in (tmp_path / "plain" / "README.md").read_text()
    # the hinge is active from the start (chance mass is about 1/S), so the same seed trains other weights
    assert (tmp_path / "cue" / "model.safetensors").read_bytes() != (tmp_path / "plain" / "model.safetensors").read_bytes()
