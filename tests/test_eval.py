"""eval.py end to end on a handful of scenes with a tiny random Qwen2-VL and a random predictor export."""
from __future__ import annotations

import json
import math

import pytest

from predictor.adapters.attention import ATTN_IMPL
from predictor.export import save_predictor
from predictor.model import PredictorConfig, RelevancePredictor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from data_gen.hf_build import DEFAULT_WORDS, build_qwen2_vl

    root = tmp_path_factory.mktemp("eval")
    model_dir = build_qwen2_vl(root / "mllm", list(DEFAULT_WORDS))
    export = save_predictor(RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn", "coords"])),
                            root / "export")
    return root, model_dir, export


def test_run_eval_writes_results(setup):
    import eval as eval_py

    root, model_dir, export = setup
    out = root / "out"
    model = {"name": "tiny", "adapter": "qwen2_vl", "path": str(model_dir), "dtype": "float32", "device": "cpu",
             "attn_implementation": ATTN_IMPL}
    source = {"name": "synthetic_scenes", "num_items": 3, "split": "test", "sizes": [[112, 112]]}
    methods = ["predictor", "attention", "random", "downsample", "cluster"]
    res = eval_py.run_eval(model=model, source=source, explainer={"name": "gae"}, predictor=str(export),
                           out=str(out), methods=methods, keeps=[1.0, 0.5, 0.25, 0.125], max_items=3,
                           max_new_tokens=3, correctness="none", figures=1, progress=False,
                           fidelity_cfg={"shards": None},
                           generalisation={"max_items": 2, "scales": {"2x": {"sizes": [[112, 224]]}}})
    saved = json.loads((out / "results.json").read_text())
    for r in (saved["results"], saved["generalisation"]["2x"]["results"]):
        assert set(r) == set(methods)
        for m in methods:
            assert set(r[m]) == {"1", "0.5", "0.25", "0.125"}
            for keep, row in r[m].items():
                assert row["retained"] == pytest.approx(1.0)  # correctness=none: every answer counts
                assert row["prefill_ms"] > 0 and row["kv_cache_kib"] > 0
    full = saved["results"]["attention"]["1"]["visual_tokens"]
    assert full == 16  # 112 x 112 px = 4 x 4 tokens of 28 px
    assert saved["results"]["attention"]["0.25"]["visual_tokens"] == math.ceil(0.25 * full)
    assert saved["generalisation"]["2x"]["results"]["attention"]["1"]["visual_tokens"] == 2 * full
    assert saved["results"]["cluster"]["0.25"]["kv_cache_kib"] < saved["results"]["cluster"]["1"]["kv_cache_kib"]
    assert (out / "results.md").read_text().count("| predictor |") == 8
    assert (out / "retained.png").is_file() and (out / "retained-2x.png").is_file()
    assert list((out / "figures").glob("*.png"))


def test_unknown_method_says_what_exists(setup):
    import eval as eval_py

    root, model_dir, export = setup
    with pytest.raises(KeyError, match="available"):
        eval_py.run_eval(model={"adapter": "qwen2_vl", "path": str(model_dir)}, source={"name": "synthetic_scenes"},
                         explainer={"name": "gae"}, predictor=str(export), out=str(root / "x"),
                         methods=["nope"], keeps=[1.0])
