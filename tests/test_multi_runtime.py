"""Pruning prompts of several images: the predictor scores image by image on each image's grid, scores
are comparable across images, the budget is global (or at least m tokens per image), every method keeps
the same budget, and pruned generation batches chats with single-image prompts."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from models import ADAPTER_OF, FAMILIES, tiny_image, tiny_models  # noqa: F401
from predictor.adapters import load_adapter
from predictor.config import PredictorConfig
from predictor.features import build_features, build_segment_features
from predictor.model import RelevancePredictor
from predictor.runtime import METHODS, ScoreContext, budget_for, make_context, make_method, pruned_generate
from predictor.runtime.scorers import PredictorScores, segment_budgets, top_k_segments
from predictor.schema import VisualSpan, visual_spans

SEGMENTS = [{"kind": "image", "start": 0, "grid": [1, 3, 4], "visual": 0},
            {"kind": "image", "start": 12, "grid": [1, 2, 2], "visual": 1}]


def _ctx(mean: torch.Tensor, segments=SEGMENTS) -> ScoreContext:
    n = mean.numel()
    prepared = SimpleNamespace(grid=(1, 1, n), num_visual=n, segments=segments, modality="image")
    ctx = ScoreContext(adapter=None, prepared=prepared, embeds=torch.zeros(1, n, 2), position_ids=torch.arange(n)[None])
    ctx.layer0_cache = (mean[None], mean)
    return ctx


def _predictor(arch="conv2d", seed=0):
    torch.manual_seed(seed)
    return RelevancePredictor(PredictorConfig(arch=arch, widths=[4, 8], inputs=["attn", "coords"])).eval()


@pytest.mark.parametrize("arch", ["conv2d", "conv1d"])
def test_predictor_scores_each_image_on_its_own_grid(arch):
    model = _predictor(arch)
    mean = torch.softmax(torch.randn(16, generator=torch.Generator().manual_seed(1)), 0)
    scores = PredictorScores(model).scores(_ctx(mean))
    # by hand: attention normalised over all 16 tokens, coordinates per image, logits per image, one softmax
    x = build_features(["attn"], mean, (1, 1, 16))
    logits = []
    for start, stop, grid in [(0, 12, (1, 3, 4)), (12, 16, (1, 2, 2))]:
        xj = torch.cat([x[:, start:stop], build_features(["coords"], mean[start:stop], grid)])
        logits.append(model.logits(xj[None], torch.ones(1, stop - start, dtype=torch.bool), torch.tensor([grid]))[0])
    torch.testing.assert_close(scores, torch.softmax(torch.cat(logits), 0))
    # no convolution across the boundary: the second image's attention moves none of the first image's logits
    # relative to each other (the global normaliser shifts them all by one constant)
    other = mean.clone()
    other[12:] = other[12:].flip(0)
    again = PredictorScores(model).scores(_ctx(other))
    torch.testing.assert_close((scores[:12] / again[:12]), (scores[0] / again[0]).expand(12))


def test_one_image_scores_are_the_predictor_on_the_whole_grid():
    model = _predictor()
    mean = torch.softmax(torch.randn(12, generator=torch.Generator().manual_seed(2)), 0)
    scores = PredictorScores(model).scores(_single(mean))
    x = build_features(["attn", "coords"], mean, (1, 3, 4))
    torch.testing.assert_close(scores, model(x[None], torch.ones(1, 12, dtype=torch.bool), torch.tensor([[1, 3, 4]]))[0])
    assert len(build_segment_features(["attn", "coords"], mean, [(0, 12, (1, 3, 4))])) == 1


def _single(mean):
    n = mean.numel()
    prepared = SimpleNamespace(grid=(1, 3, 4), num_visual=n, segments=None, modality="image")
    ctx = ScoreContext(adapter=None, prepared=prepared, embeds=torch.zeros(1, n, 2), position_ids=torch.arange(n)[None])
    ctx.layer0_cache = (mean[None], mean)
    return ctx


def test_global_budget_and_per_image_minimum():
    spans = visual_spans(SEGMENTS, (1, 1, 16), 16)
    assert spans == [VisualSpan(0, 12, (1, 3, 4)), VisualSpan(12, 16, (1, 2, 2))]
    scores = torch.cat([torch.arange(12, 0, -1).float() + 10, torch.arange(4).float()])  # image 1 outranks image 2
    kept = top_k_segments(scores, 6, spans)
    assert kept[:12].sum() == 6 and kept[12:].sum() == 0  # global: the top 6 of all tokens
    kept = top_k_segments(scores, 6, spans, min_per_segment=2)
    assert kept.sum() == 6 and kept[12:].tolist() == [False, False, True, True] and kept[:4].all()
    whole = [VisualSpan(0, 16, (1, 1, 16))]  # one image: the minimum changes nothing
    assert torch.equal(top_k_segments(scores, 6, whole, min_per_segment=2), top_k_segments(scores, 6, spans))
    with pytest.raises(ValueError, match="min_per_segment=4 over 2 images/videos needs 8 tokens"):
        top_k_segments(scores, 6, spans, min_per_segment=4)
    assert segment_budgets([12, 4], 6) == [5, 1] and segment_budgets([12, 4], 6, 3) == [3, 3]
    assert segment_budgets([12, 4], 16) == [12, 4] and segment_budgets([3, 3, 3], 4) == [2, 1, 1]
    assert sum(segment_budgets([7, 5, 2], 9, 1)) == 9


@pytest.fixture(scope="module", params=[f for f in FAMILIES if f != "qwen2_5_vl"])  # Qwen2.5-VL: Qwen2-VL's adapter
def chat(request, tiny_models):
    family = request.param
    adapter = load_adapter(ADAPTER_OF[family], str(tiny_models[family]))
    msgs = [{"role": "user", "content": [{"type": "image", "image": tiny_image()}, {"type": "image", "image": tiny_image(56, 56, 3)},
                                         {"type": "text", "text": "is the red circle in the left image?"}]},
            {"role": "assistant", "content": "yes"},
            {"role": "user", "content": [{"type": "text", "text": "what shape is above it?"}]}]
    return adapter, adapter.prepare_messages(msgs), adapter.prepare(tiny_image(84, 112, 4), "what colour is the square?")


@pytest.mark.parametrize("name", [m for m in METHODS if m != "downsample"])
def test_every_method_honours_the_budget_and_images(chat, name):
    adapter, p, _ = chat
    explainer = None
    if name == "oracle":
        from data_gen.explainers import get_explainer

        explainer = get_explainer("gae")()
    method = make_method(name, predictor=_predictor(), explainer=explainer, seed=0, max_new_tokens=3)
    spans = p.visual_spans()
    k = budget_for(p.num_visual, 0.25, None)
    ctx = make_context(adapter, p)
    for m in (0, 2):
        out = pruned_generate(adapter, p, method, keep=0.25, max_new_tokens=3, contexts=[ctx], min_per_segment=m)[0]
        assert out.num_kept == k and out.seq_len == p.seq_len - p.num_visual + k
        per_image = [int(out.kept_visual[s.start:s.stop].sum()) for s in spans]
        assert sum(per_image) == k and (m == 0 or min(per_image) >= m), per_image


def test_batched_chat_and_single_image_match_one_by_one(chat):
    adapter, p, single = chat
    method = make_method("predictor", predictor=_predictor())
    batch = pruned_generate(adapter, [p, single], method, keep=0.5, max_new_tokens=5, min_per_segment=2)
    alone = [pruned_generate(adapter, q, method, keep=0.5, max_new_tokens=5, min_per_segment=2)[0] for q in (p, single)]
    for b, a in zip(batch, alone):
        assert b.answer_ids.tolist() == a.answer_ids.tolist() and torch.equal(b.kept_visual, a.kept_visual)


def test_loglikelihood_unpruned_is_the_model_and_batches_do_not_change_it(chat):
    from predictor.runtime import pruned_loglikelihood

    adapter, p, _ = chat
    conts = [torch.tensor([5, 7, 9]), torch.tensor([11]), torch.tensor([6, 6])]
    method = make_method("attention")
    full = pruned_loglikelihood(adapter, p, conts, method, keep=1.0)
    for c, (ll, greedy) in zip(conts, full):  # keep=1: the model's own teacher-forced log-probabilities
        logits = adapter.teacher_forced(p, c, output_attentions=False, answer_logits_only=True).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        assert ll == pytest.approx(float(logp.gather(-1, c[:, None]).sum()), abs=1e-4)
        assert greedy == bool((logp.argmax(-1) == c).all())
    pruned = pruned_loglikelihood(adapter, p, conts, method, keep=0.5, min_per_segment=2)
    alone = [pruned_loglikelihood(adapter, p, [c], method, keep=0.5, min_per_segment=2, batch_size=1)[0] for c in conts]
    for (a, ga), (b, gb) in zip(pruned, alone):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    assert [ll for ll, _ in pruned] != pytest.approx([ll for ll, _ in full], abs=1e-6)  # the prompt was pruned
    with pytest.raises(ValueError, match="at least one token"):
        pruned_loglikelihood(adapter, p, [torch.tensor([], dtype=torch.long)], method, keep=0.5)
