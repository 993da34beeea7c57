import pytest
import torch

from data_gen.explainers import EXPLAINERS, get_explainer
from data_gen.explainers.ground_truth import attach_ground_truth
from data_gen.explainers.reference import reference_gae
from models import ADAPTER_OF, FAMILIES, interface_only, tiny_image, tiny_models  # noqa: F401
from predictor.adapters import load_adapter

ANSWER = torch.tensor([5, 7, 9, 11])


@pytest.fixture(scope="module")
def loaded(tiny_models):
    out = {}
    for family in FAMILIES:
        adapter = load_adapter(ADAPTER_OF[family], str(tiny_models[family]))
        prepared = adapter.prepare(tiny_image(), "What shape is the red object?")
        gt = torch.zeros(prepared.num_visual)
        gt[1] = 1.0  # what a synthetic scene's item carries (explainer=ground_truth reads it)
        attach_ground_truth(prepared, {"gt_relevance": gt.tolist()})
        out[family] = (adapter, prepared)
    return out


def _names():
    get_explainer("gae")  # imports the explainer modules
    return EXPLAINERS.names()


def test_registry_and_unknown_name():
    assert {"gae", "attention", "input_x_gradient", "integrated_gradients", "ground_truth"} <= set(_names())
    with pytest.raises(KeyError, match="available: attention, gae"):
        get_explainer("lrp")
    with pytest.raises(ValueError, match="score"):
        get_explainer("gae")(score="prob")
    with pytest.raises(ValueError, match="rule='negative'"):
        get_explainer("gae")(rule="negative")


@pytest.mark.parametrize("name", _names())
@pytest.mark.parametrize("family", FAMILIES)
def test_explainer_output_contract(name, family, loaded):
    adapter, p = loaded[family]
    options = {"n_steps": 4} if name == "integrated_gradients" else {}
    rel = get_explainer(name)(**options)(adapter, p, ANSWER)
    assert rel.shape == (p.num_visual,) and rel.dtype == torch.float32
    assert torch.isfinite(rel).all() and (rel >= 0).all() and rel.sum() > 0


@pytest.mark.parametrize("name", _names())
def test_explainers_use_only_the_adapter_interface(name, loaded):
    """Every explainer runs on what the `Adapter` base class declares (no private helpers, no keyword the
    base class does not take), with the same result as on the adapter itself."""
    adapter, p = loaded["qwen2_vl"]
    options = {"n_steps": 2} if name == "integrated_gradients" else {}
    ours = get_explainer(name)(**options)(interface_only(adapter), p, ANSWER)
    torch.testing.assert_close(ours, get_explainer(name)(**options)(adapter, p, ANSWER), atol=0, rtol=0)


@pytest.mark.parametrize("score,rule", [("logit", "positive"), ("logprob", "positive"), ("logit", "abs")])
@pytest.mark.parametrize("family", FAMILIES)
def test_gae_equals_full_matrix_reference(family, score, rule, loaded):
    adapter, p = loaded[family]
    ours = get_explainer("gae")(score=score, rule=rule)(adapter, p, ANSWER)
    ref = reference_gae(adapter, p, ANSWER, score=score, rule=rule)
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


def test_ground_truth_returns_the_items_relevance_and_refuses_items_without(loaded):
    from data_gen.sources.synthetic_scenes import SyntheticScenes

    adapter, p = loaded["qwen2_vl"]
    gt = get_explainer("ground_truth")()
    rel = gt(adapter, p, ANSWER)
    assert rel.dtype == torch.float32 and rel.argmax() == 1 and rel.sum() == 1.0
    bare = adapter.prepare(tiny_image(), "What shape is the red object?")
    with pytest.raises(ValueError, match="no ground-truth relevance.*synthetic_scenes"):
        gt(adapter, bare, ANSWER)
    attach_ground_truth(bare, {"gt_relevance": [1.0, 0.0]})
    with pytest.raises(ValueError, match=f"2 values but the prompt has {p.num_visual} visual tokens"):
        gt(adapter, bare, ANSWER)
    gt.check_source(SyntheticScenes(num_items=2))  # has it: accepted


def test_ground_truth_refuses_a_source_without_it_before_any_item(tmp_path, tiny_models):
    from data_gen.run import main

    tiny_image().save(tmp_path / "a.png")
    (tmp_path / "items.jsonl").write_text('{"id": "a", "image": "a.png", "instruction": "what?", "answer": "x"}\n')
    with pytest.raises(ValueError, match="first item \\('a'\\) has no ground-truth relevance"):
        main({"adapter": "qwen2_vl", "path": str(tiny_models["qwen2_vl"]), "device": "cpu"},
             {"name": "jsonl", "path": str(tmp_path / "items.jsonl")}, {"name": "ground_truth"},
             {"out": str(tmp_path / "out"), "progress": False})
    assert not (tmp_path / "out" / "labeller.json").exists()


def test_data_gen_with_ground_truth_labels_writes_the_scenes_relevance(tmp_path, tiny_models):
    import io

    import numpy as np

    from data_gen.run import main
    from predictor.training.shards import read_shards, resolve_shards

    main({"adapter": "qwen2_vl", "path": str(tiny_models["qwen2_vl"]), "device": "cpu"},
         {"name": "synthetic_scenes", "num_items": 3, "sizes": [[112, 112]], "num_objects": [3, 5]},
         {"name": "ground_truth"},
         {"out": str(tmp_path / "out"), "progress": False, "correctness": "none", "max_new_tokens": 2})
    samples, _ = read_shards(resolve_shards(str(tmp_path / "out")), progress=False)
    assert len(samples) == 3
    for s in samples:
        assert s.meta["explainer"] == "ground_truth"
        gt = np.load(io.BytesIO(s.extra_files["gt_rel.npy"]))
        np.testing.assert_allclose(s.relevance.numpy(), gt)
        assert gt.max() > 0.99  # each object lies inside one visual token (placement cell)


def test_gae_abs_rule_keeps_paths_the_positive_clamp_drops(loaded):
    """abs >= positive entrywise, so the abs relevance bounds the positive one from above, and differs from it
    when some grad x A is negative (on a random model, many are)."""
    adapter, p = loaded["qwen2_vl"]
    pos = get_explainer("gae")(rule="positive")(adapter, p, ANSWER)
    ab = get_explainer("gae")(rule="abs")(adapter, p, ANSWER)
    assert (ab >= pos - 1e-6).all() and not torch.allclose(ab, pos)


@pytest.mark.parametrize("family", FAMILIES)
def test_gae_holds_no_attention_sized_tensor_per_layer(family, loaded):
    """The memory claim of gae.py: the forward saves q, k, v per layer and nothing of (S, S) per layer
    (an additive (1, 1, S, S) fp32 mask saved by every layer would make backward memory grow with depth)."""
    adapter, p = loaded[family]
    n = p.seq_len + len(ANSWER)
    square: dict[int, int] = {}  # storage -> bytes, of every saved tensor whose last two dims are (S, S)

    def pack(t):
        if t.shape[-2:] == (n, n):
            square[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        get_explainer("gae")()(adapter, p, ANSWER)
    assert adapter.num_layers >= 2 and sum(square.values()) <= n * n  # at most one bool mask, shared
