"""Gradient attributions on the visual token embeddings through captum, for comparison.

The attributed function is the summed score of the answer tokens (logit or log-probability,
teacher-forced) as a function of the N_v visual token embeddings (the merged vision features that
enter the LLM); everything else in the sequence is held fixed. captum returns (N_v, D) attributions;
the per-token relevance is reduced over the embedding dim, by default as |sum_d attr| (the token's
total first-order contribution, either sign), or with reduce="l2" (norm over d) or "positive"
(max(sum_d attr, 0)). Outputs are float32, >= 0.

    input_x_gradient      x * dScore/dx
    integrated_gradients  (x - 0) * mean_alpha dScore/dx(alpha x), zero baseline, `n_steps` points
"""
from __future__ import annotations

import torch

from data_gen.explainers._common import answer_scores, check_score, finish
from data_gen.explainers.base import EXPLAINERS

REDUCTIONS = ("abs_sum", "l2", "positive")


def _reduce(attr: torch.Tensor, how: str) -> torch.Tensor:
    """(N_v, D) -> (N_v,)"""
    if how == "abs_sum":
        return attr.sum(-1).abs()
    if how == "l2":
        return attr.norm(dim=-1)
    return attr.sum(-1).clamp_min(0)


class _CaptumExplainer:
    def __init__(self, method: str, score: str = "logit", reduce: str = "abs_sum", **method_kwargs):
        if reduce not in REDUCTIONS:
            raise ValueError(f"captum explainer reduce={reduce!r}; expected one of {REDUCTIONS}")
        self.method, self.score, self.reduce = method, check_score(score), reduce
        self.method_kwargs = method_kwargs

    def __call__(self, adapter, prepared, answer_ids: torch.Tensor) -> torch.Tensor:
        import captum.attr  # lazily: only these explainers need captum

        answer_ids = answer_ids.reshape(-1)
        if answer_ids.numel() == 0:
            raise ValueError(f"{self.method} needs at least one answer token")
        with torch.no_grad():
            base = adapter.embed(prepared, answer_ids)  # (1, S+T, D)
        visual = prepared.visual_positions.to(base.device)

        def forward(vis: torch.Tensor) -> torch.Tensor:  # (B, N_v, D) -> (B,) summed answer score
            embeds = base.expand(vis.shape[0], -1, -1).clone()
            embeds[:, visual] = vis.to(embeds.dtype)
            out = adapter.teacher_forced(prepared, answer_ids, output_attentions=False, inputs_embeds=embeds,
                                         answer_logits_only=True)
            return answer_scores(out.logits, answer_ids, self.score).sum(-1)

        x = base[:, visual].detach().float().requires_grad_(True)  # (1, N_v, D)
        with torch.enable_grad():
            if self.method == "input_x_gradient":
                attr = captum.attr.InputXGradient(forward).attribute(x)
            else:
                attr = captum.attr.IntegratedGradients(forward).attribute(
                    x, baselines=torch.zeros_like(x), **self.method_kwargs)
        return finish(_reduce(attr[0].float(), self.reduce))


@EXPLAINERS.register("input_x_gradient")
def make_input_x_gradient(score: str = "logit", reduce: str = "abs_sum") -> _CaptumExplainer:
    return _CaptumExplainer("input_x_gradient", score=score, reduce=reduce)


@EXPLAINERS.register("integrated_gradients")
def make_integrated_gradients(score: str = "logit", reduce: str = "abs_sum", n_steps: int = 16,
                              internal_batch_size: int = 4) -> _CaptumExplainer:
    """n_steps: points on the straight path from the zero baseline; internal_batch_size: how many
    of them go through the model at once (memory)."""
    return _CaptumExplainer("integrated_gradients", score=score, reduce=reduce, n_steps=n_steps,
                            internal_batch_size=internal_batch_size)
