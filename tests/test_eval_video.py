"""eval on video: synthetic clips through a tiny random Qwen2-VL, every method at every keep ratio, the
downsampling baseline in time and space, the generalisation to more frames, and the modality guard."""
from __future__ import annotations

import pytest

from models import tiny_model_dir
from predictor.adapters.attention import ATTN_IMPL
from predictor.export import save_predictor
from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_video")
    model = {"adapter": "qwen2_vl", "path": str(tiny_model_dir("qwen2_vl", root)), "dtype": "float32",
             "device": "cpu", "attn_implementation": ATTN_IMPL}
    net = RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn"]))
    return root, model, save_predictor(net, root / "video", modality="video"), save_predictor(net, root / "image")


def _run(root, model, export, out, **kw):
    from evaluation import EvalSettings, run_eval

    return run_eval(EvalSettings(model=model, source={"name": "synthetic_video", "split": "test"}, predictor=str(export),
                                 out=str(root / out), methods=["predictor", "attention", "random", "downsample"],
                                 keeps=[1.0, 0.5, 0.25, 0.125], max_items=2, max_new_tokens=2, correctness="none",
                                 figures=1, progress=False, timing=False, **kw))


def test_eval_on_synthetic_video(setup):
    root, model, video, _ = setup
    res = _run(root, model, video, "out", generalisation={"max_items": 1, "scales": {"16f": {"num_frames": 16}}})
    r = res["results"]
    # 8 frames of 112 px: 4 frame pairs x 16 cells
    assert [r["predictor"][k]["visual_tokens"] for k in ("1", "0.5", "0.25", "0.125")] == [64, 32, 16, 8]
    assert all(r[m][k]["object_kept"] is not None for m in ("predictor", "attention", "random") for k in r[m])
    # downsampling: half the frame pairs, then one pair, then one pair of smaller frames
    assert [r["downsample"][k]["visual_tokens"] for k in ("0.5", "0.25")] == [32, 16]
    assert r["downsample"]["0.125"]["visual_tokens"] < 16
    assert res["swap"]["predictor"]["n"] == 2
    assert res["generalisation"]["16f"]["results"]["attention"]["1"]["visual_tokens"] == 128
    assert list((root / "out" / "figures").glob("*.png"))


def test_an_image_predictor_is_refused_on_video(setup):
    root, model, _, image = setup
    with pytest.raises(ValueError, match="trained on 'image' prompts, this prompt is 'video'"):
        _run(root, model, image, "refused")
    res = _run(root, model, image, "overridden", allow_modality_mismatch=True)  # the explicit override
    assert res["results"]["predictor"]["0.5"]["n"] == 2
