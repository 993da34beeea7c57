"""Ways to choose which visual tokens to keep, behind one interface, so evaluation can swap them.

A method is an object with `select(ctx, k) -> Selection`: given one prompt's context and a token
budget k (a count, from `generate.budget_for`), it marks the visual tokens to keep (and may replace
their embeddings, as cluster aggregation does). Score-based methods rank tokens and keep the top k
with `top_k` (ties broken by position, deterministic).

    random      uniform random scores (seeded)
    attention   layer-0 instruction-to-visual attention used directly (no predictor)
    oracle      a relevance explainer on a full pass (the paper's GAE): needs the unpruned answer
    predictor   an exported relevance predictor on layer-0 attention features
    cluster     k-means in pre-LLM embedding space, one mean token per cluster (baselines.py)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from predictor.adapters.layer0 import instruction_attention
from predictor.features import build_segment_features
from predictor.schema import meta_value, visual_spans
from predictor.targets import top_count_mask


@dataclass
class ScoreContext:
    """One prompt, embedded once and shared by every method that looks at it.

    embeds: (1, S, D); position_ids: (1, S) or (3, 1, S); answer_ids: the unpruned greedy answer
    (T,), needed by the oracle (computed on demand if absent); deepstack: (L, N_v, D) the adapter's
    DeepStack features (Qwen3-VL), None for families without.
    """

    adapter: Any
    prepared: Any
    embeds: torch.Tensor
    position_ids: torch.Tensor
    answer_ids: torch.Tensor | None = None
    deepstack: torch.Tensor | None = None
    item: int | None = None  # the item's index in its source: seeds per-item randomness (resumable runs)
    # scoring method object -> its (N_v,) scores; keyed by the object, not its class's `name`, so two
    # predictors (or two random seeds) scored on one context never read each other's scores
    cache: dict[Any, torch.Tensor] = field(default_factory=dict, repr=False)
    # layer0() once computed; None recomputes it (benchmarks reset it to time the scoring)
    layer0_cache: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def visual_embeds(self) -> torch.Tensor:
        """(N_v, D) projected visual tokens as the LLM receives them."""
        return self.embeds[0, self.prepared.visual_positions.to(self.embeds.device)]

    def layer0(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(heads (H, N_v), mean (N_v,)) layer-0 instruction-to-visual attention, computed once: the
        function data_gen labels with (`Adapter.layer0_attention`), on this context's embeddings."""
        if self.layer0_cache is None:
            p = self.prepared
            self.layer0_cache = instruction_attention(self.adapter, self.embeds, self.position_ids,
                                                  p.instruction_positions, p.visual_positions)
        return self.layer0_cache


@dataclass
class Selection:
    kept: torch.Tensor  # (N_v,) bool
    scores: torch.Tensor | None = None  # (N_v,) float, what the ranking used (for figures)
    replace: torch.Tensor | None = None  # (n_kept, D) embeddings for the kept slots, in order
    replace_deepstack: torch.Tensor | None = None  # (L, n_kept, D) with `replace`, for families with DeepStack


def visual_spans_of(prepared: Any) -> list:
    """The prompt's images and videos as `predictor.schema.VisualSpan`s (one span for a one-media prompt)."""
    return visual_spans(getattr(prepared, "segments", None), prepared.grid, prepared.num_visual)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores (N,) -> (N,) bool, True on the min(k, N) highest; ties go to the lower position
    (`predictor.targets.top_count_mask`, as in training). By count: a count turned back into a ratio
    does not survive float32 (k / N * N rounds up to k + 1 for e.g. N=83, k=42)."""
    if k < 1:
        raise ValueError(f"k={k}: expected at least 1 visual token to keep")
    return top_count_mask(scores[None], torch.ones(1, scores.shape[-1], dtype=torch.bool, device=scores.device),
                          torch.tensor([k]))[0]


def top_k_segments(scores: torch.Tensor, k: int, spans: list, min_per_segment: int = 0) -> torch.Tensor:
    """The k highest of all visual tokens (`top_k`: the budget is global), first taking the
    min(min_per_segment, n_j) highest of each span (image or video) so that none is dropped whole."""
    if min_per_segment < 0 or min_per_segment != int(min_per_segment):
        raise ValueError(f"min_per_segment={min_per_segment}: expected a whole number of tokens >= 0")
    if not min_per_segment or len(spans) < 2:
        return top_k(scores, k)
    floors = [min(int(min_per_segment), s.stop - s.start) for s in spans]
    if sum(floors) > k:
        raise ValueError(f"min_per_segment={min_per_segment} over {len(spans)} images/videos needs {sum(floors)} tokens, "
                         f"more than the budget k={k}: lower min_per_segment or raise the budget")
    kept = torch.zeros_like(scores, dtype=torch.bool)
    for s, m in zip(spans, floors):
        kept[s.start:s.stop] = top_k(scores[s.start:s.stop], m)
    rest = k - sum(floors)
    if rest:
        kept |= top_k(scores.masked_fill(kept, float("-inf")), rest)
    return kept


def segment_budgets(sizes: list[int], k: int, min_per_segment: int = 0) -> list[int]:
    """k split over segments of `sizes` tokens: min(min_per_segment, n_j) each, the rest in proportion to
    the sizes (largest remainders first, ties to the earlier segment), never more than n_j. Sums to
    min(k, sum(sizes)). For methods that work per segment instead of ranking (cluster aggregation)."""
    k = min(k, sum(sizes))
    floors = [min(int(min_per_segment), n) for n in sizes]
    if sum(floors) > k:
        raise ValueError(f"min_per_segment={min_per_segment} over {len(sizes)} images/videos needs {sum(floors)} tokens, "
                         f"more than the budget k={k}: lower min_per_segment or raise the budget")
    out = list(floors)
    while sum(out) < k:
        left = k - sum(out)
        room = [n - o for n, o in zip(sizes, out)]
        total = sum(room)
        share = [left * r / total for r in room]
        add = [min(int(s), r) for s, r in zip(share, room)]
        if sum(add) == 0:  # hand out the remainder one by one, largest fraction first
            order = sorted(range(len(sizes)), key=lambda j: (-(share[j] - int(share[j])), j))
            for j in order[:left]:
                if room[j] > 0:
                    add[j] = 1
        out = [o + a for o, a in zip(out, add)]
    return out


class ScoreMethod:
    """Rank by `scores(ctx) -> (N_v,)` (comparable across the prompt's images) and keep the top k of
    all visual tokens, or with min_per_segment at least that many of each image or video."""

    name = ""

    def scores(self, ctx: ScoreContext) -> torch.Tensor:
        raise NotImplementedError

    def select(self, ctx: ScoreContext, k: int, min_per_segment: int = 0) -> Selection:
        if self not in ctx.cache:  # one scoring serves every keep ratio of this prompt
            ctx.cache[self] = self.scores(ctx).float().reshape(-1)
        s = ctx.cache[self]
        return Selection(kept=top_k_segments(s, k, visual_spans_of(ctx.prepared), min_per_segment), scores=s)


class RandomScores(ScoreMethod):
    """Uniform scores. With `ctx.item` set, drawn from (seed, item) alone, so an item's draw does not
    depend on which items ran before it (a resumed evaluation gives the uninterrupted run's numbers);
    without it, from one generator that advances per call."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)

    def scores(self, ctx: ScoreContext) -> torch.Tensor:
        gen = self.gen if ctx.item is None else torch.Generator().manual_seed(self.seed * 1_000_003 + ctx.item)
        return torch.rand(ctx.prepared.num_visual, generator=gen)


class AttentionScores(ScoreMethod):
    name = "attention"

    def scores(self, ctx: ScoreContext) -> torch.Tensor:
        return ctx.layer0()[1]


class PredictorScores(ScoreMethod):
    """An export from `predictor.load_predictor`, fed exactly the features it was trained on. A prompt of
    the other modality than the export's (`model.modality`) is refused: a predictor is per modality (the
    paper's method), and an image net on video tokens ranks them without error, only badly.
    allow_modality_mismatch=True scores it anyway (e.g. to measure that transfer)."""

    name = "predictor"

    def __init__(self, model: torch.nn.Module, allow_modality_mismatch: bool = False):
        self.model = model.eval()
        self.allow_modality_mismatch = allow_modality_mismatch

    def check_modality(self, prompt_modality: str) -> None:
        trained = getattr(self.model, "modality", None)  # None: built in code, not loaded from an export
        if trained is not None and prompt_modality != trained and not self.allow_modality_mismatch:
            raise ValueError(f"the predictor was trained on {trained!r} prompts, this prompt is {prompt_modality!r}: "
                             f"use a predictor trained on {prompt_modality} shards (python train.py "
                             f"data.modality={prompt_modality}), or score anyway with "
                             "make_method('predictor', ..., allow_modality_mismatch=True)")

    def check_probe_layer(self, adapter: Any) -> None:
        """The export's features came from one decoder layer (trained_on.probe_layer; absent: 0, every
        export made before hybrid decoders); scoring with another layer's attention is refused."""
        config = getattr(self.model, "export_config", None)
        if config is None:  # built in code, not loaded from an export
            return
        trained = meta_value(config.get("trained_on") or {}, "probe_layer")
        probe = adapter.probe_layer
        if trained != probe:
            raise ValueError(f"the predictor was trained on the attention of decoder layer {trained!r} "
                             f"(trained_on.probe_layer), but adapter {adapter.name!r} ({adapter.model_id}) reads "
                             f"layer {probe}: its features would come from another layer. Use a predictor trained "
                             f"on this model's shards (python -m data_gen, then python train.py)")

    @torch.no_grad()
    def scores(self, ctx: ScoreContext) -> torch.Tensor:
        """One softmax over all visual tokens of logits computed image by image (video by video), each on
        its own grid: no convolution crosses an image boundary (`features.build_segment_features`)."""
        self.check_modality(getattr(ctx.prepared, "modality", "image"))
        self.check_probe_layer(ctx.adapter)
        heads, mean = ctx.layer0()
        spans = [(s.start, s.stop, s.grid) for s in visual_spans_of(ctx.prepared)]
        cfg = self.model.config
        xs = build_segment_features(cfg.inputs, mean.cpu(), spans, heads.cpu() if "attn_heads" in cfg.inputs else None)
        dev = next(self.model.parameters()).device
        x = torch.cat(xs, dim=-1)[None].to(dev)
        mask = torch.ones(1, x.shape[-1], dtype=torch.bool, device=dev)
        grid = torch.tensor([tuple(int(g) for g in ctx.prepared.grid)], device=dev)
        return self.model(x, mask, grid, spans=[spans])[0]


class OracleScores(ScoreMethod):
    """A relevance explainer `(adapter, prepared, answer_ids) -> (N_v,)` on the full, unpruned
    prompt (e.g. data_gen's `gae`). An upper reference, not a deployable method: it needs a full
    generation plus a backward pass per answer token."""

    name = "oracle"

    def __init__(self, explainer: Callable[..., torch.Tensor], max_new_tokens: int = 32):
        self.explainer = explainer
        self.max_new_tokens = max_new_tokens

    def scores(self, ctx: ScoreContext) -> torch.Tensor:
        if ctx.answer_ids is None:
            ctx.answer_ids = ctx.adapter.generate(ctx.prepared, max_new_tokens=self.max_new_tokens)[0]
        with torch.enable_grad():
            return self.explainer(ctx.adapter, ctx.prepared, ctx.answer_ids).detach().float()
