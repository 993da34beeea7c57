"""lmms-eval's `relevance_pruned` model on a local task over synthetic test scenes, run through lmms-eval's
own registry and `simple_evaluate` with the committed reference MLLM and export, against eval.py's code."""
import importlib.util
import os
from pathlib import Path

import pytest

INSTALL = 'pip install --no-deps "lmms-eval==0.7.3"  (README "Fresh machine"; its other needs are in requirements/lock.txt)'
if importlib.util.find_spec("lmms_eval") is None:
    if os.environ.get("CI"):  # CI installs it (.ci/run): missing there is a broken install, not a skip
        raise ImportError(f"lmms-eval is not installed; .ci/run must install it: {INSTALL}")
    pytest.skip(f"lmms-eval is not installed: {INSTALL}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
MLLM, EXPORT = ROOT / "checkpoints" / "reference-qwen2vl", ROOT / "checkpoints" / "predictor-reference"
N_ITEMS, TASK = 16, "scenes_local"

TASK_YAML = f"""\
task: {TASK}
dataset_path: {{data}}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: image
doc_to_text: question
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 16
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""
# scored with eval.py's correctness rule, so the two accuracies are comparable item by item
TASK_UTILS = """\
from data_gen.correctness import is_correct


def process_results(doc, results):
    return {"accuracy": float(is_correct(results[0], doc["answer"]))}
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A local lmms-eval task: the first N_ITEMS synthetic test scenes saved with `datasets`."""
    import datasets

    from data_gen.sources.synthetic_scenes import SyntheticScenes

    root = tmp_path_factory.mktemp("lmms")
    items = [SyntheticScenes(split="test")[i] for i in range(N_ITEMS)]
    ds = datasets.Dataset.from_dict(
        {"id": [it.id for it in items], "image": [it.image for it in items],
         "question": [it.instruction for it in items], "answer": [it.answer for it in items]},
        features=datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                    "question": datasets.Value("string"), "answer": datasets.Value("string")}))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(root / "data"))
    (root / "task").mkdir()
    (root / "task" / f"{TASK}.yaml").write_text(TASK_YAML.format(data=root / "data"))
    (root / "task" / "utils.py").write_text(TASK_UTILS)
    return root


def run_lmms(task_dir, model_args: str, limit: int = N_ITEMS):
    """-> (the lmms model, accuracy, answers in doc order) on the first `limit` docs, the model resolved by
    name as lmms-eval's CLI resolves it."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    lm = get_model("relevance_pruned").create_from_arg_string(model_args, {"batch_size": 8, "device": "cpu"})
    out = simple_evaluate(model=lm, tasks=[TASK], task_manager=TaskManager("ERROR", str(task_dir / "task"),
                                                                            include_defaults=False),
                          limit=limit, log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    answers = {s["doc_id"]: s["filtered_resps"][0] for s in out["samples"][TASK]}
    return lm, out["results"][TASK]["accuracy,none"], [answers[i] for i in range(limit)]


@pytest.fixture(scope="module")
def eval_records():
    """eval.py's per-item rows on the same scenes (the unpruned answer and the predictor's at keep 0.25), and
    the adapter's own unpruned generation (transformers' generate on the full prompt)."""
    from data_gen.sources.synthetic_scenes import SyntheticScenes
    from evaluation import ItemSettings, evaluate_records
    from predictor import load_predictor
    from predictor.adapters import load_adapter
    from predictor.runtime import make_method

    adapter = load_adapter("qwen2_vl", str(MLLM))
    source = SyntheticScenes(split="test")
    plain = [adapter.generate(adapter.prepare(source[i].image, source[i].instruction), 16)[1] for i in range(N_ITEMS)]
    method = make_method("predictor", predictor=load_predictor(str(EXPORT)))
    recs = evaluate_records(adapter, source, {"predictor": method}, [1.0, 0.25], N_ITEMS,
                            ItemSettings(timing=False), progress=False)
    return [r["rows"]["predictor"] for r in recs], plain


def args(**kw) -> str:
    base = {"model": "qwen2_vl", "model_path": MLLM, "predictor": EXPORT}  # max_new_tokens: the task's 16
    return ",".join(f"{k}={v}" for k, v in {**base, **kw}.items())


def test_keep_1_is_the_unpruned_model_and_eval_py_accuracy(task_dir, eval_records):
    eval_records, plain = eval_records
    lm, acc, answers = run_lmms(task_dir, args(keep=1.0))
    assert answers == plain
    assert answers == [r["1"]["answer"] for r in eval_records]
    assert acc == pytest.approx(sum(r["1"]["correct"] for r in eval_records) / N_ITEMS)
    assert acc > 0.8  # the reference MLLM answers ~97% of test scenes: the task really reached it
    assert {(r["num_kept"], r["num_visual"]) for r in lm.records} == {(64, 64)}


def test_keep_025_prunes_with_the_predictor(task_dir, eval_records):
    eval_records, _ = eval_records
    lm, acc, answers = run_lmms(task_dir, args(keep=0.25))
    assert {(r["num_kept"], r["num_visual"]) for r in lm.records} == {(16, 64)}
    assert answers == [r["0.25"]["answer"] for r in eval_records]  # batched here, one by one in eval.py
    assert acc == pytest.approx(sum(r["0.25"]["correct"] for r in eval_records) / N_ITEMS)


def test_budget_and_bad_arguments(task_dir):
    from lmms_eval.models import get_model

    cls = get_model("relevance_pruned")
    lm, _, _ = run_lmms(task_dir, args(budget=8, method="random"), limit=4)
    assert [r["num_kept"] for r in lm.records] == [8] * 4
    with pytest.raises(ValueError, match="exactly one of keep="):
        cls.create_from_arg_string(args(keep=0.5, budget=8))
    with pytest.raises(ValueError, match="method='downsample'.*predictor, attention, random, cluster"):
        cls.create_from_arg_string(args(keep=0.5, method="downsample"))
    assert cls.create_from_arg_string(args(keep=0.5)).loglikelihood([]) == []  # tests/test_lmms_eval_chat.py scores


def test_vila_through_lmms_eval_keeps_its_unpruned_answers_at_keep_1(task_dir, tmp_path):
    """A VILA1.5 folder through the same lmms-eval model: keep 1.0 answers as the adapter's own generation,
    keep 0.5 keeps ceil(0.5 * 9) of its 3 x 3 tokens."""
    from models import tiny_model_dir
    from predictor.adapters import load_adapter
    from predictor.config import PredictorConfig
    from predictor.export import save_predictor
    from predictor.media import DEFAULT_MAX_PIXELS, cap_pixels
    from predictor.model import RelevancePredictor
    from data_gen.sources.synthetic_scenes import SyntheticScenes

    path = tiny_model_dir("vila", tmp_path)
    export = save_predictor(RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn", "coords"])),
                            tmp_path / "export")
    vila = f"model=vila,model_path={path},predictor={export}"
    lm, _, answers = run_lmms(task_dir, f"{vila},keep=1.0", limit=3)
    adapter, source = load_adapter("vila", str(path)), SyntheticScenes(split="test")
    plain = [adapter.generate(adapter.prepare(cap_pixels(source[i].image, DEFAULT_MAX_PIXELS), source[i].instruction),
                              16)[1] for i in range(3)]
    assert answers == plain and {(r["num_kept"], r["num_visual"]) for r in lm.records} == {(9, 9)}
    lm, _, _ = run_lmms(task_dir, f"{vila},keep=0.5", limit=3)
    assert {(r["num_kept"], r["num_visual"]) for r in lm.records} == {(5, 9)}


def test_hybrid_qwen3_5_prunes_through_lmms_eval(task_dir, tmp_path):
    """A tiny random Qwen3.5 (linear attention before its probe layer) through lmms-eval with an export that
    records its probe layer: the scenes' 224 px images are 7 x 7 tokens of 32 px, a quarter kept."""
    from models import tiny_model_dir
    from predictor.config import PredictorConfig
    from predictor.export import save_predictor
    from predictor.model import RelevancePredictor

    mllm = tiny_model_dir("qwen3_5", tmp_path)
    export = save_predictor(RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn", "coords"])),
                            tmp_path / "export", trained_on={"modality": "image", "probe_layer": 1})
    lm, _, answers = run_lmms(task_dir, f"model=qwen3_5,model_path={mllm},predictor={export},keep=0.25", limit=2)
    assert len(answers) == 2 and {(r["num_kept"], r["num_visual"]) for r in lm.records} == {(13, 49)}
