"""Pieces the explainers share: the differentiated score of each answer token."""
from __future__ import annotations

import torch

SCORES = ("logit", "logprob")


def check_score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"explainer score={score!r}; expected one of {SCORES}")
    return score


def answer_scores(logits: torch.Tensor, answer_ids: torch.Tensor, score: str) -> torch.Tensor:
    """logits (B, T, V) at the positions predicting the answer -> (B, T) score of each answer token:
    its logit (Chefer et al.) or its log-probability."""
    logits = logits.float()
    if score == "logprob":
        logits = torch.log_softmax(logits, dim=-1)
    idx = answer_ids.reshape(1, -1, 1).to(logits.device).expand(logits.shape[0], -1, 1)
    return logits.gather(-1, idx)[..., 0]


def finish(rel: torch.Tensor) -> torch.Tensor:
    """(N_v,) float32 on CPU, >= 0 (rounding can leave -1e-9 where the rule gives 0)."""
    return rel.detach().float().cpu().clamp_min(0.0)
