"""The committed reference MLLM loads like any Qwen2-VL checkpoint and answers at its recorded accuracy."""
import json
from pathlib import Path

import pytest

from data_gen.correctness import normalise
from data_gen.sources.synthetic_scenes import SyntheticScenes

REF = Path(__file__).resolve().parents[1] / "checkpoints" / "reference-qwen2vl"
MARGIN = 0.07  # about 2 of 32 scenes


@pytest.fixture(scope="module")
def record():
    return json.loads((REF / "training.json").read_text())


@pytest.fixture(scope="module")
def adapter():
    from predictor.adapters import load_adapter

    return load_adapter("qwen2_vl", str(REF))


def test_folder_is_a_small_documented_hf_checkpoint(record):
    files = {p.name for p in REF.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training.json"} <= files
    assert any(n.startswith(("processor_config", "preprocessor_config")) for n in files)
    size = sum(p.stat().st_size for p in REF.rglob("*") if p.is_file())
    assert size < 10 * 2**20, f"reference model folder is {size / 2**20:.1f} MiB, the limit is 10 MiB"
    card = (REF / "README.md").read_text()
    assert "not a general MLLM" in card and "python -m reference_mllm.train" in card
    assert record["heldout_accuracy"]["224x224"] >= 0.95
    assert min(record["heldout_accuracy"].values()) >= 0.93  # 2x and 4x the visual tokens too


def _heldout(record, size, n):
    """The first n scenes of the recorded evaluation set at `size`, drawn as in training (the source's `heldout`
    split is the stream the training evaluated), with their ground truth."""
    source = SyntheticScenes(num_items=n, seed=record["seed"], split="heldout", sizes=[size],
                             **record["config"]["scenes"])
    return [source[i] for i in range(n)]


def _accuracy(adapter, items):
    correct = 0
    for item in items:
        prepared = adapter.prepare(item.image, item.instruction)
        assert prepared.num_visual == item.extra["grid"][1] * item.extra["grid"][2]
        ids, text = adapter.generate(prepared, max_new_tokens=8)
        assert 1 <= ids.numel() <= 2, f"expected a one-word answer ended by <|im_end|>, got {text!r}"
        correct += normalise(text) == normalise(item.answer)
    return correct / len(items)


def test_answers_heldout_scenes_at_recorded_accuracy(adapter, record):
    items = _heldout(record, [224, 224], 32)
    acc = _accuracy(adapter, items)
    assert acc >= record["heldout_accuracy"]["224x224"] - MARGIN, acc


def test_answers_every_question_type_the_source_draws(adapter, record):
    """The source's defaults ask shape and colour questions; the model answers both (and the swap questions)."""
    items = _heldout(record, [224, 224], 24)
    kinds = {}
    for item in items:
        kinds.setdefault(item.extra["question_type"], []).append(item)
        swap = item.extra["swap"]  # a second question about another object of the same scene
        kinds.setdefault(swap["question_type"], []).append(
            type(item)(id=item.id, instruction=swap["instruction"], answer=swap["answer"], image=item.image,
                       extra=item.extra))
    assert set(kinds) == set(record["config"]["scenes"]["question_types"]) == {"shape", "colour"}
    for kind, group in kinds.items():
        assert _accuracy(adapter, group) >= record["heldout_accuracy"]["224x224"] - 2 * MARGIN, kind


def test_answers_with_twice_the_visual_tokens(adapter, record):
    items = _heldout(record, [224, 448], 16)
    acc = _accuracy(adapter, items)
    assert acc >= record["heldout_accuracy"]["224x448"] - 2 * MARGIN, acc


def test_answer_depends_on_the_image(adapter, record):
    """Asking about scene i while showing scene j (same question) must change many answers."""
    items = _heldout(record, [224, 224], 24)
    changed = 0
    for a, b in zip(items, items[1:] + items[:1]):
        _, own = adapter.generate(adapter.prepare(a.image, a.instruction), max_new_tokens=4)
        _, other = adapter.generate(adapter.prepare(b.image, a.instruction), max_new_tokens=4)
        changed += own != other
    assert changed >= len(items) // 2
