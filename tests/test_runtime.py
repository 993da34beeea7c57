"""predictor.runtime on tiny random models of each family, loaded through the adapters as real
checkpoints are: layer-0 scores equal the eager attention, keep=1 is exactly the unpruned model,
positions survive pruning, batches of different sizes, every selection method."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from predictor.adapters.attention import ATTN_IMPL
from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor
from predictor.runtime import (METHODS, ClusterAggregation, budget_for, deepstack_batch, instruction_attention, kmeans, left_pad,
                               make_context, make_method, prefill, prune_context, prune_prompt, pruned_generate)

from models import ADAPTER_OF, FAMILIES, tiny_model_dir


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request, tmp_path_factory):
    from predictor.adapters import get_adapter

    out = tiny_model_dir(request.param, tmp_path_factory.mktemp(request.param))
    # the adapter's default attention: SDPA, with fp32 maps only inside an explainer's capture
    return get_adapter(ADAPTER_OF[request.param]).load(str(out), dtype="float32", device="cpu")


def _video(frames: int, h: int, w: int, seed: int = 0) -> list[Image.Image]:
    return [_image(h, w, seed * 100 + i) for i in range(frames)]


def _attn_impl(adapter) -> str:
    return adapter.model.config._attn_implementation


def test_layer0_matches_full_eager_attention(adapter):
    p = adapter.prepare(_image(112, 168), "what shape is the red object")
    ctx = make_context(adapter, p)
    heads, mean = instruction_attention(adapter, ctx.embeds, ctx.position_ids, p.instruction_positions,
                                        p.visual_positions)
    model = adapter.model  # reference: the model's own eager layer-0 probabilities over the full sequence
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(inputs_embeds=ctx.embeds, position_ids=ctx.position_ids, output_attentions=True)
    finally:
        model.set_attn_implementation(ATTN_IMPL)
    full = out.attentions[0][0].float()  # (H, S, S): the model returns softmax layers only, the first is the probe
    ref = full[:, p.instruction_positions][:, :, p.visual_positions].mean(1)
    assert heads.shape == ref.shape == (full.shape[0], p.num_visual)
    torch.testing.assert_close(heads, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mean, ref.mean(0), rtol=1e-4, atol=1e-6)
    assert _attn_impl(adapter) == ATTN_IMPL  # the reference pass did not leave the model on eager


def test_keep_one_is_exactly_unpruned(adapter):
    p = adapter.prepare(_image(112, 112, 1), "what colour is the circle")
    full_ids, _ = adapter.generate(p, max_new_tokens=8)
    for name in ("attention", "cluster"):  # cluster too: at keep 1 nothing is merged
        outs = pruned_generate(adapter, p, make_method(name), keep=1.0, max_new_tokens=8)
        assert outs[0].num_kept == outs[0].num_visual == p.num_visual
        assert outs[0].answer_ids.tolist() == full_ids.tolist()
    assert _attn_impl(adapter) == ATTN_IMPL


def test_kept_tokens_keep_their_original_positions(adapter):
    p = adapter.prepare(_image(112, 168, 2), "what shape is the blue object")
    ctx = make_context(adapter, p)
    pos = ctx.position_ids
    pp, sel = prune_context(ctx, make_method("random", seed=3), keep=0.25)
    assert int(sel.kept.sum()) == budget_for(p.num_visual, 0.25, None)
    keep = torch.ones(p.seq_len, dtype=torch.bool)
    keep[p.visual_positions[~sel.kept]] = False
    orig = pos[..., 0, :] if pos.ndim == 3 else pos[0]
    assert torch.equal(pp.position_ids, orig[..., keep])  # every kept token (text and visual) at its place
    assert pp.seq_len == p.seq_len - p.num_visual + int(sel.kept.sum())
    torch.testing.assert_close(pp.embeds, ctx.embeds[0, keep])


def test_batch_of_two_sizes_matches_one_by_one(adapter):
    ps = [adapter.prepare(_image(112, 168, 3), "what shape is the red object"),
          adapter.prepare(_image(56, 56, 4), "how many objects")]
    method = make_method("attention")
    batch = pruned_generate(adapter, ps, method, keep=0.5, max_new_tokens=6)
    single = [pruned_generate(adapter, p, method, keep=0.5, max_new_tokens=6)[0] for p in ps]
    assert batch[0].seq_len != batch[1].seq_len
    for b, s in zip(batch, single):
        assert b.answer_ids.tolist() == s.answer_ids.tolist()
        assert torch.equal(b.kept_visual, s.kept_visual)


@pytest.mark.parametrize("name", [m for m in METHODS if m != "downsample"])
def test_each_method_prunes_and_generates(adapter, name):
    predictor = RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn", "coords"]))
    explainer = None
    if name == "oracle":
        from data_gen.explainers import get_explainer

        explainer = get_explainer("gae")()
    method = make_method(name, predictor=predictor, explainer=explainer, seed=0, max_new_tokens=4)
    p = adapter.prepare(_image(112, 112, 5), "what colour is the square")
    outs = pruned_generate(adapter, p, method, keep=0.25, max_new_tokens=4)
    k = budget_for(p.num_visual, 0.25, None)
    assert outs[0].num_kept == k  # every method at the same budget (tests/test_method_budgets.py: degenerate inputs)
    assert outs[0].seq_len == p.seq_len - p.num_visual + outs[0].num_kept
    if outs[0].scores is not None:
        assert outs[0].scores.shape == (p.num_visual,) and torch.isfinite(outs[0].scores).all()
        top = outs[0].scores.topk(k).indices  # the kept tokens are exactly the top-k scores (no ties here)
        if outs[0].scores.unique().numel() == p.num_visual:
            assert set(top.tolist()) == set(outs[0].kept_visual.nonzero().squeeze(-1).tolist())


def test_prefill_is_shorter_and_cache_smaller_when_pruned(adapter):
    p = adapter.prepare(_image(112, 168, 6), "what shape is the red object")
    ctx = make_context(adapter, p)
    full, _ = prune_context(ctx, None, keep=1.0)
    quarter, _ = prune_context(ctx, make_method("random"), keep=0.25)
    _, kv_full = prefill(adapter, full)
    _, kv_q = prefill(adapter, quarter)
    assert kv_q / kv_full == pytest.approx(quarter.seq_len / full.seq_len)


def test_kmeans_and_cluster_positions():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(5, 2) for c in centres])
    assign, c = kmeans(x, 3)
    assert len(set(assign[:5].tolist())) == len(set(assign[5:10].tolist())) == len(set(assign[10:].tolist())) == 1
    assert assign.unique().numel() == 3

    class Ctx:  # the part of ScoreContext cluster aggregation reads
        visual_embeds = x
        deepstack = None

    sel = ClusterAggregation().select(Ctx(), 3)
    slots = sel.kept.nonzero().squeeze(-1)
    assert slots.numel() == 3
    for slot, mean in zip(slots.tolist(), sel.replace):  # each slot: nearest member of its own cluster
        members = (assign == assign[slot]).nonzero().squeeze(-1)
        torch.testing.assert_close(mean, x[members].mean(0))
        assert slot == int(members[(x[members] - mean).norm(dim=-1).argmin()])


def test_prune_and_pad_shapes_3d_positions():
    embeds = torch.arange(6 * 2, dtype=torch.float32).view(1, 6, 2)
    pos = torch.stack([torch.arange(6), torch.arange(6) + 10, torch.arange(6) + 20])[:, None]  # (3, 1, 6)
    pp = prune_prompt(embeds, pos, torch.tensor([1, 2, 3]), torch.tensor([True, False, True]))
    assert pp.position_ids.tolist() == [[0, 1, 3, 4, 5], [10, 11, 13, 14, 15], [20, 21, 23, 24, 25]]
    pp2 = prune_prompt(embeds[:, :3], pos[..., :3], torch.tensor([1, 2]), torch.tensor([False, False]))
    e, m, p = left_pad([pp, pp2])
    assert e.shape == (2, 5, 2) and m.tolist() == [[1] * 5, [0, 0, 0, 0, 1]] and p.shape == (3, 2, 5)
    assert p[:, 1, -1].tolist() == [0, 10, 20]


def test_budget_errors():
    assert budget_for(64, 0.125, None) == 8 and budget_for(64, None, 100) == 64
    with pytest.raises(ValueError, match="exactly one"):
        budget_for(64, 0.5, 3)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        budget_for(64, 1.5, None)
    with pytest.raises(KeyError, match="available"):
        make_method("nope")


RATIOS = [0.5, 0.25, 0.125, 1 / 3, 0.1]


def _scores_context(n: int, seed: int = 0):
    from types import SimpleNamespace

    from predictor.runtime import ScoreContext

    return ScoreContext(adapter=None, prepared=SimpleNamespace(num_visual=n, grid=(1, 1, n)),
                        embeds=torch.zeros(1, n, 2), position_ids=torch.arange(n)[None], item=seed)


def test_keep_ratio_becomes_a_count_once_and_exactly_that_many_are_kept():
    """Issue 12 item 7: select() turned the count back into k / n and topk_mask into a count again in
    float32, so e.g. N_v=83 at keep=0.5 kept 43 tokens while the budget was 42."""
    import math

    from predictor.runtime import RandomScores

    method = RandomScores(seed=0)
    for n in range(1, 301):
        ctx = _scores_context(n)
        for r in RATIOS:
            k = budget_for(n, r, None)
            assert k == max(1, math.ceil(n * r - 1e-6)), (n, r)  # the counts the epsilon formula gave
            assert int(method.select(ctx, k).kept.sum()) == k, (n, r, k)
        for k in (1, n // 2 + 1, n):  # a budget= count is kept as given
            assert int(method.select(ctx, budget_for(n, None, k)).kept.sum()) == k, (n, k)
    assert budget_for(30, 0.1, None) == 3 and budget_for(30, 0.3, None) == 9  # 30 * 0.1 == 3.0000000000000004


def test_selection_by_count_keeps_the_highest_scores_ties_to_the_lower_position():
    from predictor.runtime.scorers import ScoreMethod

    class Fixed(ScoreMethod):
        def scores(self, ctx):
            return torch.tensor([0.1, 0.5, 0.5, 0.9, 0.5, 0.0])

    ctx = _scores_context(6)
    assert Fixed().select(ctx, 3).kept.tolist() == [False, True, True, True, False, False]
    assert Fixed().select(ctx, 9).kept.all()
    with pytest.raises(ValueError, match="k=0"):
        Fixed().select(ctx, 0)
    with pytest.raises(ValueError, match="budget=2.5"):
        budget_for(6, None, 2.5)


def test_rope_deltas_consistent_after_pruning(adapter):
    p = adapter.prepare(_image(112, 168, 7), "what shape is the red object")
    ctx = make_context(adapter, p)
    pp, _ = prune_context(ctx, make_method("attention"), keep=0.25)
    e, m, pos = left_pad([pp])
    ids = adapter.generate_from_embeds(e, m, pos, max_new_tokens=2, deepstack=deepstack_batch([pp]))
    if pos.ndim == 3:  # Qwen2-VL family: cache length + delta = the unpruned prompt's next position
        full_pos = ctx.position_ids
        assert int(adapter.model.model.rope_deltas[0]) + pp.seq_len == int(full_pos.max()) + 1
    assert len(ids) == 1


def test_two_predictors_on_one_context_keep_their_own_scores():
    from types import SimpleNamespace

    from predictor.runtime import PredictorScores, RandomScores, ScoreContext

    grid, n = (1, 3, 4), 12
    mean = torch.softmax(torch.randn(n, generator=torch.Generator().manual_seed(0)), 0)
    ctx = ScoreContext(adapter=None, prepared=SimpleNamespace(grid=grid, num_visual=n),
                       embeds=torch.zeros(1, n, 2), position_ids=torch.arange(n)[None], item=0)
    ctx.layer0_cache = (mean[None], mean)  # what instruction_attention would return; no MLLM needed
    methods = []
    for seed in (1, 2):  # two predictors with different weights, one class and one `name`
        torch.manual_seed(seed)
        methods.append(PredictorScores(RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn", "coords"]))))
    methods += [RandomScores(seed=1), RandomScores(seed=2)]
    for m in methods:  # all on the same context, as eval.py scores several methods per prompt
        sel = m.select(ctx, 4)
        torch.testing.assert_close(sel.scores, m.scores(ctx).float())
    assert not torch.allclose(methods[0].select(ctx, 4).scores, methods[1].select(ctx, 4).scores)


# ---- video: the same guarantees as images, M-RoPE's temporal axis included ----

def test_video_layer0_matches_full_eager_attention(adapter):
    p = adapter.prepare(None, "what shape is the red object", video=_video(4, 56, 84, 8), fps=2.0)
    ctx = make_context(adapter, p)
    heads, _ = instruction_attention(adapter, ctx.embeds, ctx.position_ids, p.instruction_positions,
                                     p.visual_positions)
    adapter.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = adapter.model(inputs_embeds=ctx.embeds, position_ids=ctx.position_ids, output_attentions=True)
    finally:
        adapter.model.set_attn_implementation(ATTN_IMPL)
    ref = out.attentions[0][0].float()[:, p.instruction_positions][:, :, p.visual_positions].mean(1)
    torch.testing.assert_close(heads, ref, rtol=1e-4, atol=1e-6)


def test_video_keep_one_is_exactly_unpruned(adapter):
    # 0.25 fps: Qwen2.5-VL's last frame sits on a temporal id beyond the text after it
    p = adapter.prepare(None, "what colour is the circle", video=_video(4, 56, 56, 9), fps=0.25)
    full_ids, _ = adapter.generate(p, max_new_tokens=8)
    for name in ("attention", "random"):
        outs = pruned_generate(adapter, p, make_method(name), keep=1.0, max_new_tokens=8)
        assert outs[0].num_kept == outs[0].num_visual == p.num_visual
        assert outs[0].answer_ids.tolist() == full_ids.tolist()


def test_kept_video_tokens_keep_their_original_positions(adapter):
    p = adapter.prepare(None, "what shape is the blue object", video=_video(6, 56, 84, 10), fps=1.0)
    ctx = make_context(adapter, p)
    pp, sel = prune_context(ctx, make_method("random", seed=3), keep=0.25)
    keep = torch.ones(p.seq_len, dtype=torch.bool)
    keep[p.visual_positions[~sel.kept]] = False
    pos = ctx.position_ids
    orig = pos[..., 0, :] if pos.ndim == 3 else pos[0]
    assert torch.equal(pp.position_ids, orig[..., keep])
    if pos.ndim == 3:  # M-RoPE: the kept video tokens sit on several frames' temporal ids, unchanged
        kept_pos = orig[:, p.visual_positions[sel.kept]]  # (3, n_kept)
        assert kept_pos[0].unique().numel() > 1
        assert torch.equal(pp.position_ids[:, keep[:].cumsum(0)[p.visual_positions[sel.kept]] - 1], kept_pos)
    # the pruned prompt generates as that prompt would: keep=0.25 with a fixed selection, run twice
    e, m, ps = left_pad([pp])
    ds = deepstack_batch([pp])
    assert adapter.generate_from_embeds(e, m, ps, max_new_tokens=3, deepstack=ds)[0].tolist() == \
        adapter.generate_from_embeds(e, m, ps, max_new_tokens=3, deepstack=ds)[0].tolist()


def test_mixed_image_and_video_batch_matches_one_by_one(adapter):
    ps = [adapter.prepare(None, "what shape is the red object", video=_video(4, 84, 112, 11), fps=2.0),
          adapter.prepare(_image(56, 56, 12), "how many objects"),
          adapter.prepare(None, "what colour is the circle", video=_video(2, 56, 56, 13))]
    assert [p.modality for p in ps] == ["video", "image", "video"]
    for keep in (1.0, 0.5):
        method = make_method("attention")
        batch = pruned_generate(adapter, ps, method, keep=keep, max_new_tokens=6)
        single = [pruned_generate(adapter, p, method, keep=keep, max_new_tokens=6)[0] for p in ps]
        assert len({b.seq_len for b in batch}) == 3
        for b, s in zip(batch, single):
            assert b.answer_ids.tolist() == s.answer_ids.tolist()
            assert torch.equal(b.kept_visual, s.kept_visual)
    unpruned = [adapter.generate(p, max_new_tokens=6)[0].tolist() for p in ps]
    assert [b.answer_ids.tolist() for b in pruned_generate(adapter, ps, method, keep=1.0, max_new_tokens=6)] == unpruned


def test_answer_positions_survive_pruning_the_last_frames(adapter, monkeypatch):
    """Generation continues from the last prompt token's position whichever video tokens are dropped (the
    last frame's, holding Qwen2.5-VL's largest temporal id at 0.25 fps, included), as in the unpruned model."""
    from predictor.runtime.scorers import Selection

    class FirstHalf:
        def select(self, ctx, k):
            kept = torch.zeros(ctx.prepared.num_visual, dtype=torch.bool)
            kept[:k] = True
            return Selection(kept=kept)

    p = adapter.prepare(None, "what shape is the red object", video=_video(4, 56, 56, 14), fps=0.25)
    rotary = adapter.language_model().rotary_emb
    seen = []
    inner = rotary.forward

    def spy(x, pos=None, position_ids=None):  # Llama passes position_ids by keyword
        pos = pos if pos is not None else position_ids
        return seen.append(pos[..., -1].flatten().tolist()) or inner(x, pos)
    monkeypatch.setattr(rotary, "forward", spy)
    adapter.generate(p, max_new_tokens=4)
    unpruned, seen[:] = list(seen), []
    out = pruned_generate(adapter, p, FirstHalf(), keep=0.5, max_new_tokens=4)[0]
    assert out.num_kept < out.num_visual
    steps = min(len(unpruned), len(seen))
    assert steps > 1 and seen[:steps] == unpruned[:steps]  # prefill's last token, then each decoding step
