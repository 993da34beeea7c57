import pytest
import torch

from data_gen.explainers import EXPLAINERS, get_explainer
from data_gen.explainers.reference import reference_gae
from models import ADAPTER_OF, FAMILIES, tiny_image, tiny_models  # noqa: F401
from predictor.adapters import load_adapter

ANSWER = torch.tensor([5, 7, 9, 11])


@pytest.fixture(scope="module")
def loaded(tiny_models):
    out = {}
    for family in FAMILIES:
        adapter = load_adapter(ADAPTER_OF[family], str(tiny_models[family]))
        out[family] = (adapter, adapter.prepare(tiny_image(), "What shape is the red object?"))
    return out


def _names():
    get_explainer("gae")  # imports the explainer modules
    return EXPLAINERS.names()


def test_registry_and_unknown_name():
    assert {"gae", "attention", "input_x_gradient", "integrated_gradients"} <= set(_names())
    with pytest.raises(KeyError, match="available: attention, gae"):
        get_explainer("lrp")
    with pytest.raises(ValueError, match="score"):
        get_explainer("gae")(score="prob")


@pytest.mark.parametrize("name", _names())
@pytest.mark.parametrize("family", FAMILIES)
def test_explainer_output_contract(name, family, loaded):
    adapter, p = loaded[family]
    options = {"n_steps": 4} if name == "integrated_gradients" else {}
    rel = get_explainer(name)(**options)(adapter, p, ANSWER)
    assert rel.shape == (p.num_visual,) and rel.dtype == torch.float32
    assert torch.isfinite(rel).all() and (rel >= 0).all() and rel.sum() > 0


@pytest.mark.parametrize("score", ["logit", "logprob"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gae_equals_full_matrix_reference(family, score, loaded):
    adapter, p = loaded[family]
    ours = get_explainer("gae")(score=score)(adapter, p, ANSWER)
    ref = reference_gae(adapter, p, ANSWER, score=score)
    assert ref.max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.max()))


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_rollout_equals_reference(family, loaded):
    adapter, p = loaded[family]
    ours = get_explainer("attention")()(adapter, p, ANSWER)
    ref = reference_gae(adapter, p, ANSWER, gradient=False)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.max()))


def test_gae_depends_on_the_answer(loaded):
    adapter, p = loaded["qwen2_vl"]
    gae = get_explainer("gae")()
    assert not torch.allclose(gae(adapter, p, ANSWER[:1]), gae(adapter, p, torch.tensor([20])))
