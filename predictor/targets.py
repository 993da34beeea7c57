"""Oracle relevance -> the paper's training target.

Keep the top `keep` fraction of R_v, zero the rest, renormalise to sum 1 (R_v*). The predictor is
trained with KL(R_v* || prediction), so it spends no capacity ranking tokens that pruning drops.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch


def num_kept(n_valid: int | torch.Tensor, keep: float) -> torch.Tensor | int:
    """Tokens kept at ratio `keep` of n: ceil(keep * n), at least 1. The one place a keep ratio becomes
    a count (training targets, metrics and the runtime's `budget_for`). The ratio is taken as the decimal
    it is written as (0.1 is 1/10), so the product is exact: in floats 30 * 0.1 is 3.0000000000000004,
    whose ceiling would keep 4, and float32 is off more often."""
    r = Fraction(repr(float(keep)))
    if isinstance(n_valid, torch.Tensor):  # integer ceil(n * p / q)
        return torch.clamp((n_valid.long() * r.numerator + r.denominator - 1) // r.denominator, min=1)
    return max(1, math.ceil(r * n_valid))


def topk_mask(scores: torch.Tensor, mask: torch.Tensor, keep: float) -> torch.Tensor:
    """(B, N) bool: True on each row's top ceil(keep * n_valid) valid tokens by `scores`.

    Ties are broken by position (lower index first), so the result is deterministic.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep}")
    return top_count_mask(scores, mask, num_kept(mask.bool().sum(-1), keep))


def top_count_mask(scores: torch.Tensor, mask: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: True on each row's top k[b] valid tokens by `scores`, ties to the lower position."""
    mask = mask.bool()
    s = scores.float().masked_fill(~mask, float("-inf"))
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(s.shape[-1], device=s.device).expand_as(order))
    return (rank < k.to(rank.device)[:, None]) & mask


def make_target(relevance: torch.Tensor, mask: torch.Tensor, keep: float = 0.5) -> torch.Tensor:
    """relevance: (B, N) >= 0, mask: (B, N) bool -> (B, N) target summing to 1 over valid tokens.

    A row whose kept relevance sums to 0 (an all-zero oracle) becomes uniform over its kept tokens.
    """
    kept = topk_mask(relevance, mask, keep)
    t = relevance.float().clamp_min(0) * kept
    total = t.sum(-1, keepdim=True)
    uniform = kept.float() / kept.sum(-1, keepdim=True).clamp_min(1)
    return torch.where(total > 0, t / total.clamp_min(1e-30), uniform)
