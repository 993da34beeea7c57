"""eval.py end to end on a handful of scenes with a tiny random Qwen2-VL and a random predictor export."""
from __future__ import annotations

import json
import math

import pytest
import torch

from models import tiny_image, tiny_models  # noqa: F401  (fixture)
from predictor.adapters.attention import ATTN_IMPL
from predictor.export import save_predictor
from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor


def run_eval(**kw):
    """evaluation.run_eval with the settings as keywords (the keys of conf/eval.yaml)."""
    from evaluation import EvalSettings, run_eval as run

    return run(EvalSettings.from_dict(kw))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from reference_mllm.tiny_models import DEFAULT_WORDS, build_qwen2_vl

    root = tmp_path_factory.mktemp("eval")
    model_dir = build_qwen2_vl(root / "mllm", list(DEFAULT_WORDS))
    export = save_predictor(RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn", "coords"])),
                            root / "export")
    return root, model_dir, export


def test_run_eval_writes_results(setup, capsys):

    root, model_dir, export = setup
    out = root / "out"
    model = {"name": "tiny", "adapter": "qwen2_vl", "path": str(model_dir), "dtype": "float32", "device": "cpu",
             "attn_implementation": ATTN_IMPL}
    source = {"name": "synthetic_scenes", "num_items": 3, "split": "test", "sizes": [[112, 112]]}
    methods = ["predictor", "attention", "random", "downsample", "cluster"]
    res = run_eval(model=model, source=source, explainer={"name": "gae"}, predictor=str(export),
                           out=str(out), methods=methods, keeps=[1.0, 0.5, 0.25, 0.125], max_items=3,
                           max_new_tokens=3, correctness="none", figures=1, progress=False,
                           fidelity={"shards": None},
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
    # 4 keep ratios x (1x, 2x), and a row in each one's instruction-swap table
    assert (out / "results.md").read_text().count("| predictor |") == 8 + 2
    assert saved["swap"]["predictor"]["n"] == 3 and "downsample" not in saved["swap"]
    assert saved["generalisation"]["2x"]["swap"]["cluster"]["changed"] == 0.0  # k-means never reads the question
    assert (out / "retained.png").is_file() and (out / "retained-2x.png").is_file()
    assert list((out / "figures").glob("*.png"))
    md = (out / "results.md").read_text()
    assert "### tiny on synthetic_scenes (split test): 3 items" in md and "### generalisation 2x: sizes 112x224 px: 2 items" in md
    assert "Columns: " in md and "retained: acc / " in md and "{'sizes'" not in md
    *_, wrote, last = capsys.readouterr().out.strip().splitlines()
    assert wrote == (f"wrote {out}/: eval-settings.json, figures/, items-eval-2x.jsonl, items-eval.jsonl, results.json, "
                     f"results.md, retained-2x.png, retained.png")  # names everything in out/
    # then the headline: the predictor at the smallest keep ratio (2 of 16 tokens), beside layer-0 attention
    assert last == f"predictor keeps 100.0% of the accuracy at 12.5% of the tokens (layer-0 attention 100.0%) -> " \
                   f"{out}/results.md"


def test_headline_is_the_predictor_at_the_smallest_keep_beside_layer0_attention():
    from evaluation.aggregate import headline

    def rows(**retained):
        return {k: {"accuracy": 0.9 * r, "retained": r, "visual_fraction": float(k)} for k, r in retained.items()}

    results = {"predictor": rows(**{"1": 1.0, "0.5": 1.0, "0.125": 31 / 32}),
               "attention": rows(**{"1": 1.0, "0.5": 1.0, "0.125": 0.4771})}
    assert headline(results, ["predictor", "attention"]) == \
        "predictor keeps 96.9% of the accuracy at 12.5% of the tokens (layer-0 attention 47.7%)"
    assert headline({"random": results["attention"]}, ["random"]) == \
        "random keeps 47.7% of the accuracy at 12.5% of the tokens"
    assert headline({"random": rows(**{"1": 1.0})}, ["random"]).startswith("random: 90.0% accuracy unpruned")


def test_unknown_method_says_what_exists(setup):

    root, model_dir, export = setup
    with pytest.raises(KeyError, match="available"):
        run_eval(model={"adapter": "qwen2_vl", "path": str(model_dir)}, source={"name": "synthetic_scenes"},
                         explainer={"name": "gae"}, predictor=str(export), out=str(root / "x"),
                         methods=["nope"], keeps=[1.0])


class _Killed(BaseException):
    """A kill (like KeyboardInterrupt), not an error of one item: that would be recorded as skipped."""


class _Source:
    """Wraps a source: counts which items are drawn, and can die at one item (a kill mid-run)."""

    def __init__(self, inner, die_at: int | None = None):
        self.inner, self.die_at, self.drawn = inner, die_at, []

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        if i == self.die_at:
            raise _Killed(f"killed at item {i}")
        self.drawn.append(i)
        return self.inner[i]


def test_killed_evaluation_resumes_with_the_same_results(setup):
    import evaluation as eval_py
    from data_gen.build import build_adapter
    from data_gen.sources.synthetic_scenes import SyntheticScenes
    from predictor import load_predictor
    from predictor.runtime import make_method

    root, model_dir, export = setup
    adapter = build_adapter({"adapter": "qwen2_vl", "path": str(model_dir), "dtype": "float32", "device": "cpu",
                             "attn_implementation": ATTN_IMPL})
    scenes = SyntheticScenes(num_items=4, split="test", sizes=[[112, 112]])
    pred = load_predictor(export)
    names = ["predictor", "random", "cluster", "downsample"]

    def methods():
        return {m: make_method(m, predictor=pred, seed=0) for m in names}

    kw = dict(keeps=[1.0, 0.5, 0.25], max_items=4, progress=False,
              settings=eval_py.ItemSettings(max_new_tokens=3, correctness="exact", timing=False))
    whole = eval_py.evaluate_items(adapter, scenes, methods(), records=root / "whole.jsonl", **kw)

    records = root / "resumed.jsonl"
    with pytest.raises(_Killed):
        eval_py.evaluate_items(adapter, _Source(scenes, die_at=2), methods(), records=records, **kw)
    assert len(records.read_text().splitlines()) == 2  # items 0 and 1 were on disk before the kill
    with open(records, "a") as f:
        f.write('{"i": 2, "id": "cut sh')  # a line the kill cut short: ignored, item 2 runs again
    again = _Source(scenes)
    resumed = eval_py.evaluate_items(adapter, again, methods(), records=records, **kw)
    # finished items are not evaluated again: item 1 is drawn once only to check its id (the data may
    # have changed), and no line is added for it
    assert again.drawn == [1, 2, 3]
    assert [json.loads(line)["i"] for line in records.read_text().splitlines()] == [0, 1, 2, 3]
    # every answer of every method is the uninterrupted run's: random pruning draws per item, so the
    # order of work does not matter
    assert eval_py.read_records(records) == eval_py.read_records(root / "whole.jsonl")
    assert json.dumps(resumed, sort_keys=True) == json.dumps(whole, sort_keys=True)  # (NaN-safe compare)
    assert resumed["random"]["0.25"]["n"] == 4
    # other data under the same settings (a data file edited in place): refused, the records kept
    other = SyntheticScenes(num_items=4, split="test", sizes=[[112, 112]], seed=1)
    before = records.read_text()
    with pytest.raises(ValueError, match="made from other data.*item 3"):
        eval_py.evaluate_items(adapter, other, methods(), records=records, **kw)
    assert records.read_text() == before


def test_rerun_into_the_same_out_resumes_and_refuses_other_settings(setup):

    root, model_dir, export = setup
    out = root / "rerun"
    model = {"adapter": "qwen2_vl", "path": str(model_dir), "dtype": "float32", "device": "cpu",
             "attn_implementation": ATTN_IMPL}
    kw = dict(model=model, source={"name": "synthetic_scenes", "num_items": 3, "split": "test",
                                    "sizes": [[112, 112]]},
              explainer={"name": "gae"}, predictor=str(export), out=str(out), methods=["attention", "random"],
              max_new_tokens=2, correctness="none", figures=0, progress=False, fidelity={"shards": None},
              timing=False)
    first = run_eval(keeps=[1.0, 0.5], max_items=2, **kw)
    assert len((out / "items-eval.jsonl").read_text().splitlines()) == 2
    more = run_eval(keeps=[1.0, 0.5], max_items=3, **kw)  # a larger max_items extends the run
    assert len((out / "items-eval.jsonl").read_text().splitlines()) == 3
    assert more["results"]["random"]["0.5"]["n"] == 3 and first["results"]["random"]["0.5"]["n"] == 2
    saved = (out / "results.json").read_text()
    with pytest.raises(ValueError, match=r"keeps: \[0.5, 1.0\] there, \[0.25, 1.0\] now.*new folder"):
        run_eval(keeps=[1.0, 0.25], max_items=3, **kw)
    assert (out / "results.json").read_text() == saved  # the refused run touched nothing


def test_object_kept_counts_the_ground_truth_token(setup):
    """object_kept: the share of items whose most relevant token (synthetic scenes' gt_relevance)
    survives; a method keeping the first k tokens keeps it exactly when it lies among them."""
    import evaluation as eval_py
    from data_gen.build import build_adapter
    from data_gen.sources.synthetic_scenes import SyntheticScenes
    from predictor.runtime.scorers import ScoreMethod
    from predictor.targets import num_kept

    class FirstTokens(ScoreMethod):
        name = "first"

        def scores(self, ctx):
            return -torch.arange(ctx.prepared.num_visual, dtype=torch.float32)

    root, model_dir, _ = setup
    adapter = build_adapter({"adapter": "qwen2_vl", "path": str(model_dir), "dtype": "float32", "device": "cpu",
                             "attn_implementation": ATTN_IMPL})
    n = 9
    scenes = SyntheticScenes(num_items=n, split="test", sizes=[[112, 112]], num_objects=[3, 3])
    res = eval_py.evaluate_items(adapter, scenes, {"first": FirstTokens(), "downsample": None}, [1.0, 0.5, 0.25],
                                 max_items=n, progress=False,
                                 settings=eval_py.ItemSettings(max_new_tokens=2, correctness="none", timing=False))
    mains = [int(torch.tensor(scenes[i].extra["gt_relevance"]).argmax()) for i in range(n)]
    for keep in (0.5, 0.25):
        expect = sum(m < num_kept(16, keep) for m in mains) / n
        assert res["first"][f"{keep:g}"]["object_kept"] == pytest.approx(expect)
        assert res["downsample"][f"{keep:g}"]["object_kept"] is None
    assert 0 < res["first"]["0.5"]["object_kept"] < 1  # these scenes put the object in both halves
    assert res["first"]["1"]["object_kept"] == 1.0


def test_run_eval_on_llava_onevision_with_a_jsonl_source(tmp_path, tiny_models):
    """Any adapter and any source with reference answers: LLaVA-OneVision over a JSON-lines file of
    image paths. Ground truth is absent there, so object_kept is None throughout."""

    lines = []
    for i in range(2):
        tiny_image().save(tmp_path / f"img{i}.png")
        lines.append(json.dumps({"id": f"q{i}", "image": f"img{i}.png", "instruction": "What shape is the red object?",
                                 "answer": "circle"}))
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    export = save_predictor(RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn"])), tmp_path / "export")
    model = {"adapter": "llava_onevision", "path": str(tiny_models["llava_onevision"]), "dtype": "float32",
             "device": "cpu", "attn_implementation": ATTN_IMPL}
    methods = ["predictor", "oracle", "attention", "random", "downsample", "cluster"]
    res = run_eval(model=model, source={"name": "jsonl", "path": str(tmp_path / "items.jsonl")},
                           explainer={"name": "gae"}, predictor=str(export), out=str(tmp_path / "out"),
                           methods=methods, keeps=[1.0, 0.5, 0.25], max_items=2, max_new_tokens=2,
                           correctness="none", figures=1, progress=False, timing=False,
                           fidelity={"shards": None}, generalisation=None)
    full = res["results"]["attention"]["1"]["visual_tokens"]
    for m in methods:
        assert res["results"][m]["0.5"]["n"] == 2 and res["results"][m]["0.5"]["object_kept"] is None
        if m != "downsample":  # the processor decides how many tokens a smaller image gets
            assert res["results"][m]["0.25"]["visual_tokens"] == math.ceil(0.25 * full)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["source"]["name"] == "jsonl"


def test_run_eval_on_qwen3_vl_draws_scenes_in_its_32_px_cells(tmp_path, tiny_models):
    """Qwen3-VL (32 px tokens, DeepStack): synthetic scenes are drawn in the adapter's cells, so the ground
    truth has one entry per visual token and object_kept is measured; every method prunes and generates."""
    export = save_predictor(RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn", "coords"])),
                            tmp_path / "export")
    model = {"adapter": "qwen3_vl", "path": str(tiny_models["qwen3_vl"]), "dtype": "float32", "device": "cpu",
             "attn_implementation": ATTN_IMPL}
    methods = ["predictor", "oracle", "attention", "cluster", "downsample"]
    res = run_eval(model=model, source={"name": "synthetic_scenes", "split": "test", "sizes": [[128, 128]]},
                   explainer={"name": "gae"}, predictor=str(export), out=str(tmp_path / "out"), methods=methods,
                   keeps=[1.0, 0.25], max_items=2, max_new_tokens=2, correctness="none", figures=0,
                   progress=False, timing=False, fidelity={"shards": None}, generalisation=None)
    for m in methods:
        row = res["results"][m]["0.25"]
        assert row["n"] == 2
        if m != "downsample":
            assert row["visual_tokens"] == 4 and row["object_kept"] is not None  # 128 x 128 px: 4 x 4 tokens of 32 px
    assert res["results"]["attention"]["1"]["object_kept"] == 1.0


def test_instruction_swap_check_separates_blind_from_instruction_following_methods(setup):
    """The same image asked about two different objects (synthetic scenes' extra.swap): keeping fixed
    tokens scores 0, keeping the named object scores 1; downsampling has no kept tokens to compare."""
    import evaluation as eval_py
    from data_gen.build import build_adapter
    from data_gen.sources.synthetic_scenes import SyntheticScenes
    from predictor.runtime.scorers import ScoreMethod

    class FirstTokens(ScoreMethod):
        name = "first"

        def scores(self, ctx):
            return -torch.arange(ctx.prepared.num_visual, dtype=torch.float32)

    class NamedObject(ScoreMethod):  # reads the question's ground truth, which eval puts on the prompt
        name = "named"

        def scores(self, ctx):
            return ctx.prepared.ground_truth

    root, model_dir, _ = setup
    adapter = build_adapter({"adapter": "qwen2_vl", "path": str(model_dir), "dtype": "float32", "device": "cpu",
                             "attn_implementation": ATTN_IMPL})
    scenes = SyntheticScenes(num_items=4, split="test", sizes=[[112, 112]], num_objects=[4, 6])
    recs = eval_py.evaluate_records(adapter, scenes, {"first": FirstTokens(), "named": NamedObject(),
                                                      "downsample": None}, [1.0, 0.5], max_items=4,
                                    progress=False, settings=eval_py.ItemSettings(
                                        max_new_tokens=2, correctness="none", timing=False,
                                        swap_keep=1 / 16))  # 16 tokens: keep exactly one
    swap = eval_py.aggregate_swap(recs)
    assert set(swap) == {"first", "named"} and swap["named"]["n"] == 4
    assert swap["first"] == {"changed": 0.0, "own": 0.0, "swap": 0.0, "n": 4}
    assert swap["named"] == {"changed": 1.0, "own": 1.0, "swap": 1.0, "n": 4}
    assert "| named | 100.0% | 100.0% | 100.0% | 4 |" in eval_py.swap_table(swap, 1 / 16)
    off = eval_py.evaluate_records(adapter, scenes, {"named": NamedObject()}, [1.0], max_items=1, progress=False,
                                   settings=eval_py.ItemSettings(max_new_tokens=2, correctness="none", timing=False))
    assert eval_py.aggregate_swap(off) is None  # swap_keep=None: no check
