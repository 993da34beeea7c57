"""Every pruning method keeps exactly the token budget it is given, on degenerate inputs too: methods are
compared at equal budgets, so one that keeps fewer tokens would look better or worse for the wrong reason."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from predictor.config import PredictorConfig

from predictor.model import RelevancePredictor
from predictor.runtime import METHODS, ScoreContext, make_method

N, D, HEADS = 64, 8, 2  # an 8 x 8 grid of visual tokens


def _embeds(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "identical":
        return torch.ones(N, D)
    if kind == "48 identical + 16 distinct":  # cluster must not keep 17 of 32 here
        return torch.cat([torch.ones(48, D), torch.randn(16, D, generator=g)])
    if kind == "two values":  # every token ties with half the others
        return torch.cat([torch.zeros(N // 2, D), torch.ones(N // 2, D)])
    return torch.randn(N, D, generator=g)


def _attention(kind: str) -> torch.Tensor:
    if kind == "zero":
        return torch.zeros(HEADS, N)
    if kind == "ties":
        return torch.tensor([0.0, 1.0]).repeat(N // 2).expand(HEADS, N).clone()
    return torch.rand(HEADS, N, generator=torch.Generator().manual_seed(1))


def _context(embeds: torch.Tensor, heads: torch.Tensor) -> ScoreContext:
    """A prompt of 3 text tokens, the N visual tokens, 2 text tokens; layer 0 given, no model needed."""
    seq = torch.cat([torch.zeros(3, D), embeds, torch.zeros(2, D)])[None]
    prepared = SimpleNamespace(visual_positions=torch.arange(3, 3 + N), instruction_positions=torch.tensor([N + 3]),
                               num_visual=N, grid=(1, 8, 8), modality="image")
    return ScoreContext(adapter=None, prepared=prepared, embeds=seq, position_ids=torch.arange(seq.shape[1])[None],
                        answer_ids=torch.tensor([1]), item=0, layer0_cache=(heads, heads.mean(0)))


def _methods(oracle_relevance: torch.Tensor):
    predictor = RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn", "coords"]))
    explainer = lambda adapter, prepared, answer_ids: oracle_relevance  # noqa: E731 (the oracle's scores)
    for name in METHODS:  # every registered method, so a new one is checked too
        method = make_method(name, predictor=predictor, explainer=explainer, seed=0)
        if method is not None:  # downsample re-prepares a smaller image: the processor sets its token count
            yield name, method


@pytest.mark.parametrize("embeds", ["identical", "48 identical + 16 distinct", "two values", "random"])
@pytest.mark.parametrize("attention", ["zero", "ties", "random"])
def test_every_method_keeps_exactly_the_budget(embeds, attention):
    heads = _attention(attention)
    names = []
    for name, method in _methods(oracle_relevance=heads.mean(0)):
        for k in (1, 2, 17, 32, N - 1, N):
            ctx = _context(_embeds(embeds), heads)
            sel = method.select(ctx, k)
            assert int(sel.kept.sum()) == k, f"{name} kept {int(sel.kept.sum())} of k={k} ({embeds}, {attention})"
            if sel.replace is not None:  # one embedding per kept slot
                assert sel.replace.shape == (k, D), name
        names.append(name)
    assert {"cluster", "attention", "random", "predictor", "oracle"} <= set(names)


def test_cluster_keeps_the_budget_with_deepstack():
    ctx = _context(_embeds("48 identical + 16 distinct"), _attention("zero"))
    ctx.deepstack = torch.randn(3, N, D)
    sel = make_method("cluster").select(ctx, 32)
    assert int(sel.kept.sum()) == 32 and sel.replace.shape == (32, D) and sel.replace_deepstack.shape == (3, 32, D)
