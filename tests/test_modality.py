"""Per-modality predictors: the export records its modality, the runtime refuses a predictor of
the other modality unless told otherwise, and training refuses shards that mix modalities."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from predictor import load_predictor
from predictor.export import read_export_config, save_predictor
from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor
from predictor.runtime import PredictorScores, ScoreContext, make_method

TINY = PredictorConfig(widths=[4, 8], inputs=["attn", "coords"])


def _export(tmp_path, name="exp", **kw):
    torch.manual_seed(0)
    return save_predictor(RelevancePredictor(TINY), tmp_path / name, **kw)


def _rewrite(out, fn):
    cfg = json.loads((out / "config.json").read_text())
    fn(cfg)
    (out / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("modality", ["image", "video"])
def test_export_records_modality_and_load_exposes_it(tmp_path, modality):
    out = _export(tmp_path, trained_on={"modality": modality})
    assert read_export_config(out)["modality"] == modality
    assert load_predictor(out).modality == modality
    assert f"modality: {modality}" in (out / "README.md").read_text()
    out2 = _export(tmp_path, "explicit", modality=modality)  # no trained_on: the argument alone
    assert json.loads((out2 / "config.json").read_text())["modality"] == modality


def test_export_refuses_bad_or_contradicting_modality(tmp_path):
    with pytest.raises(ValueError, match=r"modality.*'image' or 'video'.*'audio'"):
        _export(tmp_path, modality="audio")
    with pytest.raises(ValueError, match=r"modality='image'.*trained_on.*'video'"):
        _export(tmp_path, modality="image", trained_on={"modality": "video"})
    with pytest.raises(ValueError, match=r"mixes modalities.*data.modality"):
        _export(tmp_path, trained_on={"modality": {"image": 3, "video": 2}})


def test_export_without_modality_is_refused(tmp_path):
    """No fallback to trained_on or to "image": a folder without the field is not this export version's."""
    out = _export(tmp_path, trained_on={"modality": "video"})
    _rewrite(out, lambda c: c.pop("modality"))
    with pytest.raises(ValueError, match=r"config.json: field 'modality': expected 'image' or 'video', found no such"):
        load_predictor(out)


@pytest.mark.parametrize("value", ["audio", 3, None, ["video"]])
def test_bad_modality_in_config_names_file_field_and_found(tmp_path, value):
    out = _export(tmp_path)
    _rewrite(out, lambda c: c.update(modality=value))
    with pytest.raises(ValueError) as e:
        load_predictor(out)
    msg = str(e.value)
    assert "config.json" in msg and "'modality'" in msg and "'image' or 'video'" in msg and repr(value) in msg, msg


def _ctx(modality: str) -> ScoreContext:
    grid, n = (2, 2, 3), 12
    mean = torch.softmax(torch.randn(n, generator=torch.Generator().manual_seed(0)), 0)
    adapter = SimpleNamespace(name="stub", model_id="stub", probe_layer=0)  # features read from layer 0
    ctx = ScoreContext(adapter=adapter, prepared=SimpleNamespace(grid=grid, num_visual=n, modality=modality),
                       embeds=torch.zeros(1, n, 2), position_ids=torch.arange(n)[None], item=0)
    ctx.layer0_cache = (mean[None], mean)
    return ctx


def test_runtime_refuses_predictor_of_the_other_modality(tmp_path):
    image_pred = load_predictor(_export(tmp_path, trained_on={"modality": "image"}))
    with pytest.raises(ValueError) as e:
        make_method("predictor", predictor=image_pred).select(_ctx("video"), 4)
    msg = str(e.value)
    assert "'image'" in msg and "'video'" in msg and "allow_modality_mismatch=True" in msg, msg
    with pytest.raises(ValueError, match="allow_modality_mismatch"):
        PredictorScores(image_pred).scores(_ctx("video"))
    assert make_method("predictor", predictor=image_pred).select(_ctx("image"), 4).kept.sum() == 4
    for method in (make_method("predictor", predictor=image_pred, allow_modality_mismatch=True),
                   PredictorScores(image_pred, allow_modality_mismatch=True)):
        assert method.select(_ctx("video"), 4).kept.sum() == 4
    # a module built in code, not loaded from an export, has no recorded modality: nothing to check
    assert PredictorScores(RelevancePredictor(TINY)).select(_ctx("video"), 4).kept.sum() == 4


def test_allow_modality_mismatch_is_ignored_by_other_methods():  # eval builds every method with one set of options
    assert make_method("random", allow_modality_mismatch=True).select(_ctx("video"), 4).kept.sum() == 4


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    from synthetic_shards import write_synthetic_shards

    out = tmp_path_factory.mktemp("mixed")
    write_synthetic_shards(out, 12, grids=[(1, 4, 4)], prefix="img", seed=0)
    write_synthetic_shards(out, 8, grids=[(2, 4, 4)], prefix="vid", seed=1)
    return out


def test_training_on_mixed_modalities_refused_or_filtered(mixed):
    from predictor.training import ShardDataModule

    with pytest.raises(ValueError) as e:
        ShardDataModule(str(mixed), ["attn"], val_fraction=0.0).setup()
    msg = str(e.value)
    assert "12 image" in msg and "8 video" in msg and "data.modality=image" in msg and "data.modality=video" in msg
    for modality, n in (("image", 12), ("video", 8)):
        dm = ShardDataModule(str(mixed), ["attn"], val_fraction=0.0, modality=modality)
        dm.setup()
        assert len(dm.train_set) == n and dm.summary["modality"] == modality
        assert {it.grid[0] for it in dm.train_set.items} == {1 if modality == "image" else 2}
    with pytest.raises(ValueError, match=r"data.modality='audio'.*'image' or 'video'"):
        ShardDataModule(str(mixed), ["attn"], modality="audio")


def test_data_modality_with_none_of_it_refused(tmp_path):
    from predictor.training import ShardDataModule
    from synthetic_shards import write_synthetic_shards

    write_synthetic_shards(tmp_path, 5, grids=[(1, 4, 4)])
    with pytest.raises(ValueError, match=r"data.modality=video.*no video samples.*5 image"):
        ShardDataModule(str(tmp_path), ["attn"], modality="video").setup()


def test_train_video_predictor_end_to_end(mixed, tmp_path):
    from hydra import compose, initialize_config_dir

    from predictor.training.train import train

    conf = Path(__file__).resolve().parents[1] / "conf" / "train"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"data.shards={mixed}", "data.modality=video", "model=conv3d", "model.widths=[4,8]", "logger=none",
            "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "data.val_fraction=0.0",
            f"run_dir={tmp_path}/run", f"export_dir={tmp_path}/exp"])
    out = train(cfg)
    m = load_predictor(out)
    assert m.modality == "video" and m.config.arch == "conv3d"
    assert read_export_config(out)["trained_on"]["num_samples"] == 8
