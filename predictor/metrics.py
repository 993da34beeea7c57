"""Fidelity of a predicted relevance to the oracle: pure tensor functions over padded batches.

All take `(B, N)` tensors and a `(B, N)` bool mask of valid tokens and return `(B,)` per-sample
values (average them yourself), so that training, evaluation and benchmarks report the same thing.
"""
from __future__ import annotations

import torch

from predictor.targets import topk_mask

RETENTIONS = (0.5, 0.25, 0.125)


def kl_div(target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """KL(target || pred) per sample; both are distributions over the valid tokens."""
    mask = mask.bool()
    t = target.float() * mask
    p = pred.float().clamp_min(eps)
    terms = torch.where(t > 0, t * (torch.log(t.clamp_min(eps)) - torch.log(p)), torch.zeros_like(t))
    return terms.sum(-1)


def _ranks(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank) of the valid entries; padded entries -> 0."""
    B, N = x.shape
    out = torch.zeros(B, N, dtype=torch.float64, device=x.device)
    for b in range(B):
        v = x[b][mask[b]].double()
        if v.numel() == 0:
            continue
        uniq, inv, counts = torch.unique(v, return_inverse=True, return_counts=True)
        first = torch.cumsum(counts, 0) - counts  # rank (0-based) of each unique value's first entry
        avg = first.double() + (counts.double() - 1) / 2
        out[b, mask[b]] = avg[inv]
    return out


def spearman(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per sample over the valid tokens (0 where either side is constant)."""
    mask = mask.bool()
    ra, rb = _ranks(a, mask), _ranks(b, mask)
    n = mask.sum(-1).double().clamp_min(1)
    ma = ra.sum(-1) / n
    mb = rb.sum(-1) / n
    da = (ra - ma[:, None]) * mask
    db = (rb - mb[:, None]) * mask
    cov = (da * db).sum(-1)
    var = (da * da).sum(-1).sqrt() * (db * db).sum(-1).sqrt()
    return torch.where(var > 0, cov / var.clamp_min(1e-30), torch.zeros_like(cov)).float()


def topk_recall(pred: torch.Tensor, oracle: torch.Tensor, mask: torch.Tensor, keep: float) -> torch.Tensor:
    """Share of the oracle's top ceil(keep*n) tokens that are also in the prediction's top ceil(keep*n).

    Chance level (random scores) is `keep` in expectation.
    """
    p = topk_mask(pred, mask, keep)
    o = topk_mask(oracle, mask, keep)
    return (p & o).sum(-1).float() / o.sum(-1).clamp_min(1).float()


def relevance_metrics(pred: torch.Tensor, oracle: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The standard set, per sample: kl (vs the training target), spearman and recall@{50,25,12.5}%."""
    out = {"kl": kl_div(target, pred, mask), "spearman": spearman(pred, oracle, mask)}
    for r in RETENTIONS:
        out[f"recall@{r * 100:g}"] = topk_recall(pred, oracle, mask, r)
    return out


def instruction_swap(kept_a: torch.Tensor, kept_b: torch.Tensor, object_a: torch.Tensor,
                     object_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The instruction-swap check: one image asked about two different objects, a and b.

    kept_a, kept_b: (B, N) bool, the tokens a method keeps for the question about a and for the one
    about b; object_a, object_b: (B,) long, each object's main token. Returns (B,) bool:
        changed  the kept sets differ
        own      each question keeps its own object
        swap     both: the selection follows the instruction. A method blind to the instruction keeps
                 the same set for both questions and scores 0, however many objects it keeps.
    """
    rows = torch.arange(kept_a.shape[0], device=kept_a.device)
    changed = (kept_a.bool() != kept_b.bool()).any(-1)
    own = kept_a.bool()[rows, object_a] & kept_b.bool()[rows, object_b]
    return {"changed": changed, "own": own, "swap": changed & own}
