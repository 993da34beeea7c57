"""gae's per-token backward passes batched, and label generation running the vision tower once
per item."""
import pytest
import torch

from data_gen.explainers import get_explainer
from models import ADAPTER_OF, tiny_image, tiny_models  # noqa: F401
from predictor.adapters import load_adapter

ANSWER = torch.tensor([5, 7, 9, 11, 13, 6, 8])
FAMILIES = ("qwen2_vl", "llava_onevision")


@pytest.fixture(scope="module")
def loaded(tiny_models):
    out = {}
    for family in FAMILIES:
        adapter = load_adapter(ADAPTER_OF[family], str(tiny_models[family]))
        out[family] = (adapter, adapter.prepare(tiny_image(), "What shape is the red object?"))
    return out


@pytest.mark.parametrize("rule", ["abs", "positive"])
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_backward_equals_the_per_token_loop(family, rule, loaded):
    """chunk=1 is the old loop (one backward per answer token); 3 leaves a partial last chunk; 16 takes all."""
    adapter, p = loaded[family]
    loop = get_explainer("gae")(rule=rule, chunk=1)(adapter, p, ANSWER)
    assert loop.max() > 0
    for chunk in (3, 16):
        batched = get_explainer("gae")(rule=rule, chunk=chunk)(adapter, p, ANSWER)
        torch.testing.assert_close(batched, loop, rtol=1e-6, atol=1e-6 * float(loop.max()))


def test_chunk_sets_the_number_of_backward_passes(loaded, monkeypatch):
    adapter, p = loaded["qwen2_vl"]
    calls = []
    grad = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    get_explainer("gae")(chunk=3)(adapter, p, ANSWER)  # 7 tokens: 3 + 3 + 1
    assert calls == [True, True, False]


def test_chunk_must_be_positive():
    with pytest.raises(ValueError, match="chunk=0"):
        get_explainer("gae")(chunk=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_label_generation_runs_the_vision_tower_once_per_item(family, loaded):
    """data_gen's per-item work (generate, gae, layer-0 attention) runs the tower once, and generate's answer
    from the cached features equals the model's own generate from pixels."""
    from data_gen.config import DataGenConfig
    from data_gen.item import process_item
    from data_gen.sources.base import Item

    adapter, _ = loaded[family]
    tower = adapter.model.model.visual if family == "qwen2_vl" else adapter.model.model.vision_tower
    calls = []
    handle = tower.register_forward_hook(lambda *a: calls.append(1))
    try:
        p = adapter.prepare(tiny_image(seed=3), "What shape is the red object?")
        with torch.no_grad():
            own = adapter.model.generate(**p.inputs, max_new_tokens=6, do_sample=False, num_beams=1)
        calls.clear()
        ids, text = adapter.generate(p, max_new_tokens=6)
        assert len(calls) == 1
        assert torch.equal(ids, own[0, p.seq_len:p.seq_len + ids.numel()].cpu()) and ids.numel() > 0
        calls.clear()
        item = Item(id="a", image=tiny_image(seed=3), instruction="What shape is the red object?", answer=text)
        cfg = DataGenConfig(correctness="none", thumbnails=False, max_new_tokens=6)
        process_item(item, "a", adapter, get_explainer("gae")(), "gae", cfg, {"prompt": [], "visual": [], "answer": []})
        assert len(calls) == 1
    finally:
        handle.remove()


def test_chunk_is_not_a_label_setting(tmp_path):
    """Resuming with another chunk is allowed: it changes memory, not labels."""
    from data_gen.config import DataGenConfig
    from data_gen.labeller import labeller_settings

    (tmp_path / "config.json").write_text("{}")
    model, cfg = {"path": str(tmp_path)}, DataGenConfig(out=str(tmp_path / "out"))
    one, many = ({"name": "gae", "rule": "abs", "chunk": c} for c in (1, 16))
    assert labeller_settings(model, str(tmp_path), "qwen2_vl", one, cfg) == \
        labeller_settings(model, str(tmp_path), "qwen2_vl", many, cfg)
    assert labeller_settings(model, str(tmp_path), "qwen2_vl", one, cfg)["explainer"] == {"name": "gae", "rule": "abs"}
