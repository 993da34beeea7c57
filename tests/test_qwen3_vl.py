"""Qwen3-VL specifics: q/k-normed layer 0, DeepStack features through pruning, the MoE variant.

The family-wide behaviour (positions, grids, teacher-forced pass, explainers, eval) is covered by the
parametrized tests, whose FAMILIES include qwen3_vl.
"""
import pytest
import torch

from models import tiny_image, tiny_model_dir, tiny_models, tiny_video  # noqa: F401  (fixture)
from predictor.adapters import load_adapter
from predictor.runtime import (deepstack_batch, left_pad, make_context, make_method, prune_context,
                               pruned_generate)

INSTRUCTION = "What shape is the red object?"


@pytest.fixture(scope="module")
def qwen3(tiny_models):
    adapter = load_adapter("qwen3_vl", str(tiny_models["qwen3_vl"]))
    return adapter, adapter.prepare(tiny_image(), INSTRUCTION)


def _own_generate(adapter, prepared, n: int) -> list[int]:
    """The model's own generate from pixels (its tower, its DeepStack, its positions)."""
    with torch.no_grad():
        out = adapter.model.generate(**prepared.inputs, max_new_tokens=n, do_sample=False)
    return out[0, prepared.seq_len:].tolist()


def _assert_same_answer(adapter, out, ref: list[int], n: int) -> None:
    """`out` (answer without its stop token) is the model's own answer `ref`: the same tokens, stopped where it stopped."""
    k = out.answer_ids.numel()
    assert 0 < k and out.answer_ids.tolist() == ref[:k]
    assert k == n or ref[k] in adapter._stop_ids()


def _last_logits(adapter, embeds, mask, pos, deepstack) -> torch.Tensor:
    with torch.no_grad(), adapter.deepstack_inputs(deepstack):
        return adapter.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits[0, -1]


def test_layer0_needs_the_query_and_key_norms(qwen3):
    """The tiny model's q/k norm weights are not ones (as in a trained model): the q/k path equals the eager
    forward (tests/test_adapters.py), and leaving the norms out would change it."""
    adapter, p = qwen3
    heads, _ = adapter.layer0_attention(p)
    attn = adapter.language_model().layers[0].self_attn
    norms = attn.q_norm, attn.k_norm
    # the model is shared by the module: restore the submodules by hand (pytest 9.2's monkeypatch undo
    # deletes an attribute that lives in nn.Module._modules instead of restoring it)
    attn.q_norm = attn.k_norm = None
    try:
        unnormed, _ = adapter.layer0_attention(p)
    finally:
        attn.q_norm, attn.k_norm = norms
    assert (heads - unnormed).abs().max() > 1e-3
    assert torch.equal(adapter.layer0_attention(p)[0], heads)  # the shared model is whole again


@pytest.mark.parametrize("video", [False, True])
def test_keep_all_equals_the_models_own_generate(qwen3, video):
    adapter, p = qwen3
    if video:
        p = adapter.prepare(None, INSTRUCTION, video=tiny_video(), fps=2.0)
    out = pruned_generate(adapter, p, make_method("attention"), keep=1.0, max_new_tokens=5)[0]
    _assert_same_answer(adapter, out, _own_generate(adapter, p, 5), 5)
    assert out.num_kept == p.num_visual


def test_pruning_keeps_each_kept_tokens_deepstack_features(qwen3, monkeypatch):
    """The features the model adds after layers 0 and 1 are the kept tokens' own rows, at their slots."""
    adapter, p = qwen3
    ctx = make_context(adapter, p)
    assert ctx.deepstack.shape == (2, p.num_visual, ctx.embeds.shape[-1])
    seen = []
    lm = adapter.language_model()
    inner = lm._deepstack_process
    monkeypatch.setattr(lm, "_deepstack_process", lambda h, m, e: seen.append((m, e)) or inner(h, m, e))
    out = pruned_generate(adapter, p, make_method("attention"), keep=0.5, max_new_tokens=2)[0]
    kept = out.kept_visual
    assert len(seen) == 2  # prefill only: layers 0 and 1, none while decoding
    pp, _ = prune_context(ctx, make_method("attention"), keep=0.5)
    slots = pp.visual_slots.nonzero().flatten()
    for layer, (mask, feats) in enumerate(seen):
        assert mask.shape == (1, pp.seq_len) and torch.equal(mask[0].nonzero().flatten(), slots)
        torch.testing.assert_close(feats, ctx.deepstack[layer, kept], atol=0, rtol=0)
    # the kept visual slots carry the kept tokens' embeddings and original positions
    torch.testing.assert_close(pp.embeds[slots], ctx.visual_embeds[kept], atol=0, rtol=0)
    assert torch.equal(pp.position_ids[:, slots], ctx.position_ids[:, 0, p.visual_positions[kept]])


def test_pruned_prompt_equals_masking_the_dropped_tokens(qwen3):
    """Independent check of the alignment: the pruned prompt's next-token logits equal the full prompt's with
    the dropped visual tokens masked out of attention (every token then keeps its own DeepStack row and its
    position by construction), and misaligned or unpruned DeepStack features give other logits."""
    from predictor.adapters import DeepStack

    adapter, p = qwen3
    ctx = make_context(adapter, p)
    pp, sel = prune_context(ctx, make_method("attention"), keep=0.5)
    embeds, mask, pos = left_pad([pp])
    ours = _last_logits(adapter, embeds, mask, pos, deepstack_batch([pp]))

    full_mask = torch.ones(1, p.seq_len, dtype=torch.long)
    full_mask[0, p.visual_positions[~sel.kept]] = 0
    visual = torch.zeros(1, p.seq_len, dtype=torch.bool)
    visual[0, p.visual_positions] = True
    ref = _last_logits(adapter, ctx.embeds, full_mask, ctx.position_ids, DeepStack(visual, ctx.deepstack))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)

    right = deepstack_batch([pp])
    k = int(sel.kept.sum())
    wrong = {"shifted": right.features.roll(1, dims=1),
             "first k rows": ctx.deepstack[:, :k],
             "none": torch.zeros_like(right.features)}
    for name, feats in wrong.items():
        other = _last_logits(adapter, embeds, mask, pos, DeepStack(right.visual_mask, feats))
        assert (other - ours).abs().max() > 1e-3, name


def test_generation_without_deepstack_features_is_refused(qwen3):
    adapter, p = qwen3
    pp, _ = prune_context(make_context(adapter, p), make_method("attention"), keep=0.5)
    with pytest.raises(ValueError, match="DeepStack"):
        adapter.generate_from_embeds(*left_pad([pp]), max_new_tokens=2)


def test_cluster_slots_take_their_members_mean_deepstack(qwen3):
    """A cluster's token is its members' mean embedding; its DeepStack rows are their mean too."""
    from predictor.runtime import kmeans

    adapter, p = qwen3
    ctx = make_context(adapter, p)
    pp, sel = prune_context(ctx, make_method("cluster"), keep=0.25)
    assign, _ = kmeans(ctx.visual_embeds, int(sel.kept.sum()))  # the method's own seed and iterations
    kept = sel.kept.nonzero().flatten()
    assert pp.deepstack.shape == (2, kept.numel(), ctx.deepstack.shape[-1])
    for j, t in enumerate(kept):
        members = assign == assign[t]
        torch.testing.assert_close(pp.deepstack[:, j], ctx.deepstack[:, members].mean(1), atol=1e-6, rtol=1e-5)


def test_moe_variant_loads_and_prunes(tmp_path):
    """Qwen3-VL-MoE shares the code path (only its MLPs differ): same adapter, layer 0 equals the eager
    forward, keep 1.0 equals the model's own answer."""
    path = str(tiny_model_dir("qwen3_vl_moe", tmp_path))
    adapter = load_adapter("qwen3_vl", path)
    assert type(adapter.model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    p = adapter.prepare(tiny_image(), INSTRUCTION)
    heads, _ = adapter.layer0_attention(p)
    eager = load_adapter("qwen3_vl", path, attn_implementation="eager")
    with torch.no_grad():
        att = eager.model(**p.inputs, output_attentions=True).attentions[0][0]  # (H, S, S)
    torch.testing.assert_close(heads, att[:, p.instruction_positions][:, :, p.visual_positions].mean(1),
                               atol=1e-6, rtol=1e-5)
    out = pruned_generate(adapter, p, make_method("attention"), keep=1.0, max_new_tokens=4)[0]
    _assert_same_answer(adapter, out, _own_generate(adapter, p, 4), 4)
