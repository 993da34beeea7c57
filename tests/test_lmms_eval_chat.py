"""lmms-eval's `relevance_pruned` on local tasks beyond one image and one question: two images per document,
a multi-round conversation, and multiple choice by likelihood, with the committed reference MLLM, and the
same three on a tiny VILA1.5-layout folder (the authors' conversation template instead of a chat template)."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

INSTALL = 'pip install --no-deps "lmms-eval==0.7.3"  (README "Fresh machine"; its other needs are in requirements/lock.txt)'
if importlib.util.find_spec("lmms_eval") is None:
    if os.environ.get("CI"):
        raise ImportError(f"lmms-eval is not installed; .ci/run must install it: {INSTALL}")
    pytest.skip(f"lmms-eval is not installed: {INSTALL}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
MLLM, EXPORT = ROOT / "checkpoints" / "reference-qwen2vl", ROOT / "checkpoints" / "predictor-reference"
N = 4
SHAPES = ["circle", "square", "triangle", "cross", "diamond", "star"]

COMMON = """\
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
"""
TASKS = {
    "two_images": """\
output_type: generate_until
doc_to_visual: !function utils.two_images
doc_to_text: question
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
process_results: !function utils.answers
metric_list:
  - metric: seen
    aggregation: mean
""",
    "rounds": """\
output_type: generate_until_multi_round
doc_to_visual: !function utils.one_image
doc_to_text: !function utils.round_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
process_results: !function utils.answers
metric_list:
  - metric: seen
    aggregation: mean
""",
    "choice": """\
output_type: multiple_choice
doc_to_visual: !function utils.one_image
doc_to_text: question
doc_to_choice: !function utils.choices
doc_to_target: !function utils.target
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
}
UTILS = f"""\
SHAPES = {SHAPES!r}


def one_image(doc):
    return [doc["image"].convert("RGB")]


def two_images(doc):
    return [doc["image"].convert("RGB"), doc["other"].convert("RGB")]


def round_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None, previous_round_info=None):
    if round_idx is None:  # the task's context: the first question
        return doc["question"]
    done = round_idx >= 2
    return None, doc["second"], done, [[o] for o in previous_output], None


def answers(doc, results):
    return {{"seen": float(len(results) > 0)}}


def choices(doc):
    return [doc["answer"]] + [s for s in SHAPES if s != doc["answer"]][:2] if doc["answer"] in SHAPES else \\
        [doc["answer"], "circle", "square"]


def target(doc):
    return 0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    import datasets

    from data_gen.sources.synthetic_scenes import SyntheticScenes

    root = tmp_path_factory.mktemp("lmms_chat")
    source = SyntheticScenes(split="test")
    items = [source[i] for i in range(N + 1)]
    ds = datasets.Dataset.from_dict(
        {"image": [it.image for it in items[:N]], "other": [it.image for it in items[1:]],
         "question": [it.instruction for it in items[:N]], "second": [it.instruction for it in items[1:]],
         "answer": [it.answer for it in items[:N]]},
        features=datasets.Features({"image": datasets.Image(), "other": datasets.Image(),
                                    "question": datasets.Value("string"), "second": datasets.Value("string"),
                                    "answer": datasets.Value("string")}))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(root / "data"))
    (root / "task").mkdir()
    for name, body in TASKS.items():
        (root / "task" / f"{name}.yaml").write_text(f"task: {name}\n" + COMMON.format(data=root / "data") + body)
    (root / "task" / "utils.py").write_text(UTILS)
    return root, items


def run(task_dir, task: str, **kw):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    model_args = ",".join(f"{k}={v}" for k, v in {"model": "qwen2_vl", "model_path": MLLM, "predictor": EXPORT,
                                                   **kw}.items() if v is not None)
    lm = get_model("relevance_pruned").create_from_arg_string(model_args, {"batch_size": 4, "device": "cpu"})
    out = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager("ERROR", str(task_dir / "task"),
                                                                           include_defaults=False),
                          limit=N, log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    return lm, out


@pytest.fixture(scope="module")
def adapter():
    from predictor.adapters import load_adapter

    return load_adapter("qwen2_vl", str(MLLM))


def _two(it, other, question):
    return [{"role": "user", "content": [{"type": "image", "image": it.image.convert("RGB")},
                                         {"type": "image", "image": other.image.convert("RGB")},
                                         {"type": "text", "text": question}]}]


def test_two_images_per_document(task_dir, adapter):
    root, items = task_dir
    lm, out = run(root, "two_images", keep=1.0)
    answers = {s["doc_id"]: s["resps"][0][0] for s in out["samples"]["two_images"]}
    for i in range(N):  # keep=1: the model's own answer on the two-image prompt
        expect = adapter.generate(adapter.prepare_messages(_two(items[i], items[i + 1], items[i].instruction)), 8)[1]
        assert answers[i] == expect
    assert {(r["num_visual"], r["num_kept"]) for r in lm.records} == {(128, 128)}  # two 8 x 8 token images
    lm, _ = run(root, "two_images", keep=0.25, min_per_segment=8)
    assert {(r["num_visual"], r["num_kept"]) for r in lm.records} == {(128, 32)}


def test_multi_round_is_a_conversation_pruned_per_question(task_dir, adapter):
    root, items = task_dir
    lm, out = run(root, "rounds", keep=1.0)
    got = {s["doc_id"]: s["resps"][0][0] for s in out["samples"]["rounds"]}  # [request][repeat]: the rounds
    for i in range(N):
        image = items[i].image.convert("RGB")
        first = adapter.generate(adapter.prepare(image, items[i].instruction), 8)[1]
        chat = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": items[i].instruction}]},
                {"role": "assistant", "content": first},
                {"role": "user", "content": [{"type": "text", "text": items[i + 1].instruction}]}]
        second = adapter.generate(adapter.prepare_messages(chat), 8)[1]
        assert got[i] == [first, second]
    assert sorted(r["round"] for r in lm.records) == [0] * N + [1] * N
    lm, _ = run(root, "rounds", keep=0.25)
    assert {(r["num_visual"], r["num_kept"]) for r in lm.records} == {(64, 16)}


def test_multiple_choice_by_likelihood(task_dir, adapter, monkeypatch):
    import predictor.runtime.generate as gen

    root, items = task_dir
    calls = []
    real = gen.prune_context
    monkeypatch.setattr(gen, "prune_context", lambda *a, **k: calls.append(1) or real(*a, **k))
    lm, out = run(root, "choice", keep=1.0)
    assert len(calls) == N  # one pruning per document, three choices scored on it
    acc = out["results"]["choice"]["acc,none"]
    losses = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in out["samples"]["choice"]}  # [choice][repeat]
    p = adapter.prepare(items[0].image.convert("RGB"), items[0].instruction)
    ids = adapter.tokenizer(" " + items[0].answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    logits = adapter.teacher_forced(p, ids, output_attentions=False, answer_logits_only=True).logits[0]
    expect = float(torch.log_softmax(logits.float(), -1).gather(-1, ids[:, None]).sum())
    # keep=1: the unpruned model's log-likelihood, as lmms-eval's loss (mean negative log-likelihood per token)
    assert losses[0][0] == pytest.approx(-expect / ids.numel(), abs=1e-4)
    assert acc >= 0.75  # the reference MLLM names these scenes' shapes and colours
    lm, out = run(root, "choice", keep=0.25)
    assert out["results"]["choice"]["acc,none"] >= 0.5


@pytest.fixture(scope="module")
def vila(tmp_path_factory):
    from models import tiny_model_dir
    from predictor.adapters import load_adapter

    path = tiny_model_dir("vila", tmp_path_factory.mktemp("vila"))
    return path, load_adapter("vila", str(path))


def test_vila_two_images_rounds_and_likelihood(task_dir, vila):
    """keep=1 is the VILA model's own answer on the message-form prompt; its images are 3 x 3 tokens each."""
    root, items = task_dir
    path, vila_adapter = vila
    kw = {"model": "vila", "model_path": path, "predictor": None, "method": "attention"}
    lm, out = run(root, "two_images", keep=1.0, **kw)
    answers = {s["doc_id"]: s["resps"][0][0] for s in out["samples"]["two_images"]}
    for i in range(N):
        prompt = vila_adapter.prepare_messages(_two(items[i], items[i + 1], items[i].instruction))
        assert prompt.prompt_text.count("<image>\n") == 2 and answers[i] == vila_adapter.generate(prompt, 8)[1]
    assert {(r["num_visual"], r["num_kept"]) for r in lm.records} == {(18, 18)}
    lm, _ = run(root, "two_images", keep=0.5, min_per_segment=2, **kw)
    assert {(r["num_visual"], r["num_kept"]) for r in lm.records} == {(18, 9)}

    lm, out = run(root, "rounds", keep=1.0, **kw)
    got = {s["doc_id"]: s["resps"][0][0] for s in out["samples"]["rounds"]}
    for i in range(N):
        image = items[i].image.convert("RGB")
        first = vila_adapter.generate(vila_adapter.prepare(image, items[i].instruction), 8)[1]
        chat = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": items[i].instruction}]},
                {"role": "assistant", "content": first},
                {"role": "user", "content": [{"type": "text", "text": items[i + 1].instruction}]}]
        prompt = vila_adapter.prepare_messages(chat)
        assert f"ASSISTANT: {first}</s>USER: {items[i + 1].instruction} ASSISTANT:" in prompt.prompt_text
        assert got[i] == [first, vila_adapter.generate(prompt, 8)[1]]

    _, out = run(root, "choice", keep=1.0, **kw)
    losses = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in out["samples"]["choice"]}
    p = vila_adapter.prepare(items[0].image.convert("RGB"), items[0].instruction)
    ids = vila_adapter.tokenizer(" " + items[0].answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    logits = vila_adapter.teacher_forced(p, ids, output_attentions=False, answer_logits_only=True).logits[0]
    expect = float(torch.log_softmax(logits.float(), -1).gather(-1, ids[:, None]).sum())
    assert losses[0][0] == pytest.approx(-expect / ids.numel(), abs=1e-4)
