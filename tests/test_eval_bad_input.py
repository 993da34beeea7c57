"""eval.py on the inputs a user gets wrong: a non-scene source, bad items and image paths, a failed
first start, images larger than data_gen's pixel cap. A tiny random Qwen2-VL and predictor export."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from models import tiny_image, tiny_model_dir
from predictor.adapters.attention import ATTN_IMPL
from predictor.export import save_predictor
from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(explainer={"name": "gae"}, methods=["attention", "random"], keeps=[1.0, 0.5], max_new_tokens=2,
            correctness="none", figures=0, progress=False, timing=False, fidelity={"shards": None})


def run_eval(**kw):
    """evaluation.run_eval with the settings as keywords (the keys of conf/eval.yaml)."""
    from evaluation import EvalSettings, run_eval as run

    return run(EvalSettings.from_dict(kw))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_bad")
    model_dir = tiny_model_dir("qwen2_vl", root)
    export = save_predictor(RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn"])), root / "export")
    model = {"adapter": "qwen2_vl", "path": str(model_dir), "dtype": "float32", "device": "cpu",
             "attn_implementation": ATTN_IMPL}
    return model, str(export)


def _jsonl(folder: Path, images: list[str], extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps({"id": f"q{i}", "image": p, "instruction": "What shape is the red object?",
                         "answer": "circle"}) for i, p in enumerate(images)]
    path = folder / "items.jsonl"
    path.write_text("\n".join(lines + list(extra_lines)) + "\n")
    return path


def test_readme_command_on_a_jsonl_source(setup, tmp_path):
    """`python eval.py predictor=<export> source=jsonl source.path=<file> out=<dir>`: synthetic scenes'
    split and num_items are not merged into the jsonl source, and the generalisation check, which
    needs a source that can draw larger images, is skipped with the reason in the results."""
    from hydra import compose, initialize_config_dir

    model, export = setup
    (tmp_path / "data").mkdir()
    tiny_image().save(tmp_path / "data" / "a.png")
    items = _jsonl(tmp_path / "data", ["a.png", "a.png"])
    cmd = [sys.executable, str(ROOT / "eval.py"), f"predictor={export}", "source=jsonl", f"source.path={items}",
           f"out={tmp_path / 'out'}", f"model.path={model['path']}", "model.device=cpu", "max_items=2",
           "max_new_tokens=2", "methods=[predictor,random]", "keeps=[1.0,0.5]", "timing=false", "figures=0",
           "fidelity.shards=null", "progress=false", "correctness=none"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["results"]["predictor"]["0.5"]["n"] == 2 and "generalisation" not in res
    assert "source jsonl cannot draw its items with more visual tokens" in res["generalisation_skipped"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "generalisation to more visual tokens: skipped, source jsonl" in md
    # synthetic scenes keep their evaluation split and scales
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        scenes = compose("eval")
    assert scenes.source.split == "test" and "num_items" not in scenes.source and scenes.max_items == 200
    assert set(scenes.generalisation.scales) == {"2x", "4x"}


def test_generalisation_runs_only_where_the_source_scales(tmp_path):
    import evaluation as eval_py
    from data_gen.sources.jsonl import JsonlSource
    from data_gen.sources.synthetic_scenes import SyntheticScenes

    scales = {"scales": {"2x": {"sizes": [[224, 448]]}}}
    (tmp_path / "items.jsonl").write_text("")
    assert eval_py.generalisation_scales(JsonlSource(str(tmp_path / "items.jsonl")), "jsonl", scales)[0] == {}
    scenes = SyntheticScenes(num_items=1)
    assert eval_py.generalisation_scales(scenes, "synthetic_scenes", scales) == (scales["scales"], None)
    assert eval_py.generalisation_scales(scenes, "synthetic_scenes", {"scales": None})[1] == \
        "generalisation.scales is empty"
    with pytest.raises(ValueError, match=r"overrides \['size'\].*scales by \['sizes'\]"):
        eval_py.generalisation_scales(scenes, "synthetic_scenes", {"scales": {"2x": {"size": [[224, 448]]}}})


def test_a_first_start_that_fails_leaves_nothing_that_refuses_the_fix(setup, tmp_path, monkeypatch):
    import evaluation.run as eval_py

    model, export = setup
    tiny_image().save(tmp_path / "a.png")
    items = _jsonl(tmp_path, ["a.png"])
    out = tmp_path / "out"
    kw = dict(model=model, predictor=export, out=str(out), max_items=1, **FAST)
    with pytest.raises(FileNotFoundError, match="source.path"):  # a typo in source.path
        run_eval(source={"name": "jsonl", "path": str(tmp_path / "itms.jsonl")}, **kw)
    with monkeypatch.context() as m:  # a failure past the settings check, before any item is on disk
        m.setattr(eval_py, "evaluate_records", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("died")))
        with pytest.raises(RuntimeError, match="died"):
            run_eval(source={"name": "jsonl", "path": str(items), "image_root": str(tmp_path)}, **kw)
    assert not (out / "eval-settings.json").exists()
    res = run_eval(source={"name": "jsonl", "path": str(items)}, **kw)  # the corrected command runs
    assert res["results"]["random"]["0.5"]["n"] == 1
    with monkeypatch.context() as m:  # items on disk: their settings stay, so a resume is still checked
        m.setattr(eval_py, "aggregate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("died")))
        with pytest.raises(RuntimeError):
            run_eval(source={"name": "jsonl", "path": str(items)}, **kw)
    assert (out / "eval-settings.json").exists()


def test_bad_items_are_skipped_with_their_reason_and_counted(setup, tmp_path):
    """A missing image, a file that is not an image and a line that is not JSON are skipped, as
    data_gen skips them; the results count them by reason; the resumed run does not stop on them."""

    model, export = setup
    tiny_image().save(tmp_path / "a.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    items = _jsonl(tmp_path, ["a.png", "nope.png", "junk.png", "a.png"], extra_lines=("{not json",))
    kw = dict(model=model, source={"name": "jsonl", "path": str(items)}, predictor=export,
              out=str(tmp_path / "out"), max_items=5, **FAST)
    res = run_eval(**kw)
    assert res["results"]["random"]["0.5"]["n"] == 2
    assert res["skipped"]["reasons"] == {"missing_image": 1, "unreadable_image": 1, "bad_item": 1}
    assert [(s["i"], s["id"]) for s in res["skipped"]["items"]] == [(1, "q1"), (2, "q2"), (4, "index-000000004")]
    assert "line 5 is not valid JSON" in res["skipped"]["items"][2]["detail"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "skipped 3 of 5 items (bad_item 1, missing_image 1, unreadable_image 1)" in md
    records = (tmp_path / "out" / "items-eval.jsonl").read_text()
    again = run_eval(**kw)  # resumed: nothing is evaluated again, nothing stops it
    assert (tmp_path / "out" / "items-eval.jsonl").read_text() == records
    assert again["skipped"] == res["skipped"] and again["results"] == res["results"]
    all_bad = _jsonl(tmp_path, ["nope.png"])
    with pytest.raises(ValueError, match="no item could be evaluated: all 1 were skipped.*missing_image"):
        run_eval(**{**kw, "source": {"name": "jsonl", "path": str(all_bad)}, "out": str(tmp_path / "o2")})


def test_image_paths_outside_the_image_root_are_skipped(setup, tmp_path):

    model, export = setup
    (tmp_path / "data").mkdir()
    tiny_image().save(tmp_path / "data" / "a.png")
    tiny_image(seed=1).save(tmp_path / "outside.png")
    items = _jsonl(tmp_path / "data", ["a.png", "../outside.png", str(tmp_path / "outside.png")])
    kw = dict(model=model, predictor=export, max_items=3, **FAST)
    res = run_eval(source={"name": "jsonl", "path": str(items)}, out=str(tmp_path / "out"), **kw)
    assert res["skipped"]["reasons"] == {"image_outside_root": 2} and res["results"]["random"]["1"]["n"] == 1
    assert "allow_outside_root=true" in res["skipped"]["items"][0]["detail"]
    opened = run_eval(source={"name": "jsonl", "path": str(items), "allow_outside_root": True},
                              out=str(tmp_path / "out2"), **kw)
    assert opened["skipped"]["n"] == 0 and opened["results"]["random"]["1"]["n"] == 3


def test_eval_caps_pixels_as_data_gen_does(setup, tmp_path):
    """An image over the pixel cap is downscaled as data_gen downscales it, so eval prunes at the
    token count the labels were made at; the cap is data_gen's by default and recorded."""
    import evaluation as eval_py
    from predictor.media import cap_pixels, load_image
    from data_gen.build import build_adapter
    from data_gen.config import DataGenConfig

    model, export = setup
    Image.new("RGB", (224, 224), (200, 30, 30)).save(tmp_path / "big.png")  # 64 tokens uncapped
    items = _jsonl(tmp_path, ["big.png"])
    cap = 112 * 112
    res = run_eval(model=model, source={"name": "jsonl", "path": str(items)}, predictor=export,
                   out=str(tmp_path / "out"), max_items=1, max_pixels=cap, **FAST)
    labelled = build_adapter(model).prepare(cap_pixels(load_image(str(tmp_path / "big.png")), cap), "q").num_visual
    assert res["results"]["attention"]["1"]["visual_tokens"] == labelled == 16
    assert json.loads((tmp_path / "out" / "eval-settings.json").read_text())["max_pixels"] == cap
    default = eval_py.EvalSettings.__dataclass_fields__["max_pixels"].default
    assert default == DataGenConfig().max_pixels
    conf = {n: yaml.safe_load((ROOT / "conf" / f"{n}.yaml").read_text()) for n in ("eval", "data_gen")}
    assert conf["eval"]["max_pixels"] == conf["data_gen"]["max_pixels"] == default


def test_a_second_evaluation_on_one_out_is_refused(setup, tmp_path):
    """Two evaluations appending to one items-eval.jsonl: the second stops, naming the first; nothing of the
    first one's is touched."""
    from data_gen.lock import FolderInUse, WriterLock

    model, export = setup
    (tmp_path / "data").mkdir()
    tiny_image().save(tmp_path / "data" / "a.png")
    items = _jsonl(tmp_path / "data", ["a.png"])
    out = tmp_path / "out"
    out.mkdir()
    held = WriterLock(str(out / ".lock"), str(out)).acquire()  # as another live evaluation holds it
    kw = dict(FAST, model=model, predictor=export, source={"name": "jsonl", "path": str(items)}, out=str(out),
              max_items=1)
    with pytest.raises(FolderInUse, match=f"pid {os.getpid()}"):
        run_eval(**kw)
    assert not (out / "items-eval.jsonl").exists()
    held.release()
    assert run_eval(**kw)["results"]["random"]["1"]["n"] == 1


def test_unknown_correctness_mode_is_refused_before_any_item(setup, tmp_path):

    model, export = setup
    with pytest.raises(ValueError, match="correctness='fuzzy': expected one of auto"):
        run_eval(**{**FAST, "correctness": "fuzzy"}, model=model, predictor=export,
                         source={"name": "jsonl", "path": str(tmp_path / "none.jsonl")}, out=str(tmp_path / "o"))


def test_jsonl_evaluation_with_no_shards_present_writes_its_results(setup, tmp_path, monkeypatch, capsys):
    """The README's real-model command on a fresh clone: conf/eval.yaml's fidelity defaults and no shards on
    the machine (the export records shards it was trained on elsewhere). The results are written, the
    fidelity check is skipped with one line saying why, and the last line printed is the headline."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from evaluation import EvalSettings, run_eval as run

    model, _ = setup
    monkeypatch.chdir(tmp_path)  # no data/shards/ here
    tiny_image().save(tmp_path / "a.png")
    items = _jsonl(tmp_path, ["a.png"])
    export = save_predictor(RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn"])), tmp_path / "export",
                            trained_on={"shards": "/data/shards/mine", "val_shards": None, "val_fraction": 0.1})
    out = tmp_path / "out"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("eval", overrides=[f"predictor={export}", "source=jsonl", f"source.path={items}", f"out={out}",
                                         f"model.path={model['path']}", "model.device=cpu", "max_items=1",
                                         "max_new_tokens=2", "methods=[predictor,attention]", "keeps=[1.0,0.5]",
                                         "timing=false", "figures=0", "progress=false", "correctness=none"])
    run(EvalSettings.from_dict(OmegaConf.to_container(cfg, resolve=True)))
    res = json.loads((out / "results.json").read_text())
    assert res["results"]["predictor"]["0.5"]["n"] == 1 and "fidelity" not in res
    why = res["fidelity_skipped"]
    assert "held-out shards recorded in" in why and "/data/shards/mine" in why and "data.shards" not in why
    assert f"fidelity to the oracle: skipped, {why}" in (out / "results.md").read_text()
    # 12 visual tokens, 6 kept at 0.5; correctness=none: every answer counts
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"predictor keeps 100.0% of the accuracy at 50.0% of the tokens (layer-0 attention 100.0%) -> " \
                   f"{out}/results.md"


def test_fidelity_settings_fail_before_any_item_and_its_failure_never_loses_the_results(setup, tmp_path):
    model, export = setup
    tiny_image().save(tmp_path / "a.png")
    items = _jsonl(tmp_path, ["a.png"])
    kw = dict(model=model, source={"name": "jsonl", "path": str(items)}, predictor=export, max_items=1,
              **{**FAST, "methods": ["predictor", "random"]})
    kw.pop("fidelity")
    # shards named explicitly that are not there: refused at the start, naming fidelity.shards
    with pytest.raises(FileNotFoundError, match="fidelity.shards"):
        run_eval(**kw, out=str(tmp_path / "a"), fidelity={"shards": str(tmp_path / "none"), "val_fraction": 0.1})
    assert not (tmp_path / "a" / "items-eval.jsonl").exists()
    # shards that exist but hold no readable sample: found only after every item; the results stay
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "shard-0.tar").write_bytes(b"not a tar")
    res = run_eval(**kw, out=str(tmp_path / "b"), fidelity={"shards": str(tmp_path / "junk"), "val_fraction": 0.1})
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved == json.loads(json.dumps(res)) and saved["results"]["predictor"]["0.5"]["n"] == 1
    assert saved["fidelity_skipped"].startswith("failed: no held-out samples in fidelity.shards=")
    assert "fidelity to the oracle: skipped, failed: " in (tmp_path / "b" / "results.md").read_text()
