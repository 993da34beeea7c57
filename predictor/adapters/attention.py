"""An attention function for transformers' AttentionInterface that can expose its probabilities.

Adapters load models with `attn_implementation=ATTN_IMPL`. Outside a `capture(...)` context the
function is plain SDPA (fast inference, generation). Inside one, the decoder layers named in the
capture compute their scores and softmax in fp32 (bf16 q.k overflows in Qwen2 models) and:

    mode="record"     keep each layer's probabilities (B, H, Q, K) in `cap.probs[layer]`, in the
                      autograd graph (`stop_after=l` ends the forward after layer l: the tests'
                      layer-0 oracle; the predictor's input comes from q/k, `layer0.py`)
    mode="recompute"  keep nothing: a custom autograd function saves only q, k, v (and the mask it was
                      given, one tensor shared by all layers) and recomputes the probabilities in
                      backward. With `rule` set, it also threads the row-rollout carrier (gae.py):
                      `cap.carry` (B, K) enters layer 0 and leaves layer L-1; in the backward, a row
                      vector g arriving at layer l's output leaves its input as g + g @ A_bar_l with
                      A_bar_l = mean_heads(rule(dScore/dA_l * A_l)). Only torch ops act on the
                      gradients, so `torch.autograd.grad(..., is_grads_batched=True)` carries many
                      row vectors (one per answer token) through one backward pass.

transformers is imported lazily (inside `register`).
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Iterator

import torch

ATTN_IMPL = "fp32_capture"
RULES = ("positive", "abs")  # what gae keeps of dScore/dA * A


class StopForward(Exception):
    """Raised inside a forward to end it early (after `Capture.stop_after`)."""


@dataclass
class Capture:
    layers: dict[int, int]  # id(attention module) -> decoder layer index; other modules run plain SDPA
    mode: str = "record"  # "record" | "recompute"
    rule: str | None = None  # recompute mode: "positive" | "abs" threads `carry` through the layers
    carry: torch.Tensor | None = None  # (B, K): the input of the next captured layer's rollout carrier
    carried: list[int] = field(default_factory=list)  # layers the carrier went through, in forward order
    stop_after: int | None = None
    probs: dict[int, torch.Tensor] = field(default_factory=dict)


_ACTIVE: contextvars.ContextVar[Capture | None] = contextvars.ContextVar("attention_capture", default=None)


@contextlib.contextmanager
def capture(layers: dict[int, int], mode: str = "record", rule: str | None = None, carry: torch.Tensor | None = None,
            stop_after: int | None = None) -> Iterator[Capture]:
    if mode not in ("record", "recompute"):
        raise ValueError(f"capture mode must be 'record' or 'recompute', got {mode!r}")
    if (rule is None) != (carry is None) or rule not in (None, *RULES) or (rule and mode != "recompute"):
        raise ValueError(f"capture: rule {rule!r} (one of {RULES}) and carry go together, in recompute mode")
    cap = Capture(layers=layers, mode=mode, rule=rule, carry=carry, stop_after=stop_after)
    token = _ACTIVE.set(cap)
    try:
        yield cap
    except StopForward:
        pass
    finally:
        _ACTIVE.reset(token)


def _additive_mask(mask: torch.Tensor | None, q_len: int, k_len: int, device) -> torch.Tensor:
    """fp32 additive mask broadcastable to (B, H, Q, K). None means causal, the queries being the
    last q_len of k_len positions (that is what SDPA's is_causal skip leaves us)."""
    neg = torch.finfo(torch.float32).min
    if mask is None:
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        allowed = torch.arange(k_len, device=device)[None, :] <= q_pos
        return torch.where(allowed, 0.0, neg)[None, None]
    if mask.dtype == torch.bool:
        return torch.where(mask, 0.0, neg).to(device)
    return mask.float().clamp_min(neg)[..., :k_len]


def _probs(q: torch.Tensor, k: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    mask = _additive_mask(attention_mask, q.shape[2], k.shape[2], q.device)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling + mask  # (B, H, Q, K)
    return torch.softmax(scores, dim=-1)


class _RecomputedAttention(torch.autograd.Function):
    """softmax(q k^T * s + mask) v in fp32 that saves q, k, v and the caller's mask only, and passes the
    rollout carrier (B, K) through (a copy; None when no rule is set).

    The fp32 additive mask is rebuilt in backward, not saved: each layer would hold its own 4 S^2 bytes.
    The caller's mask (None when causal, else the one bool (B, 1, Q, K) tensor transformers hands to
    every layer) is saved by reference: S^2 bytes in all (benchmarks/bench_datagen.py --saved).
    Under is_grads_batched the backward runs on batched gradients (vmap), hence no in-place op on a
    tensor that is not itself a gradient."""

    @staticmethod
    def forward(ctx, q, k, v, attention_mask, carry, scaling, rule):
        assert carry is None or q.shape[2] == k.shape[2] == carry.shape[-1], "the carrier needs the full sequence"
        probs = _probs(q, k, attention_mask, scaling)
        ctx.save_for_backward(q, k, v, attention_mask)
        ctx.scaling, ctx.rule = scaling, rule
        out = torch.matmul(probs, v.float()).to(v.dtype)
        return out, None if carry is None else carry.clone()

    @staticmethod
    def backward(ctx, grad_out, grad_carry):
        q, k, v, attention_mask = ctx.saved_tensors
        probs = _probs(q, k, attention_mask, ctx.scaling)
        go = grad_out.float()
        grad_probs = torch.matmul(go, v.float().transpose(-1, -2))  # (B, H, Q, K) = dScore/dA
        grad_carry_in = None
        if ctx.rule is not None:
            prod = grad_probs * probs
            a_bar = (prod.clamp_min(0) if ctx.rule == "positive" else prod.abs()).mean(1)  # (B, Q, K)
            del prod
            grad_carry_in = grad_carry + torch.matmul(grad_carry[:, None], a_bar)[:, 0]
        grad_v = torch.matmul(probs.transpose(-1, -2), go)
        # softmax backward, in place to keep one (B, H, Q, K) buffer alive
        grad_probs -= (grad_probs * probs).sum(-1, keepdim=True)
        grad_scores = grad_probs.mul_(probs).mul_(ctx.scaling)
        grad_q = torch.matmul(grad_scores, k.float())
        grad_k = torch.matmul(grad_scores.transpose(-1, -2), q.float())
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, grad_carry_in, None, None


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)  # head h reads kv head h // n_rep


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface signature: query (B, H, Q, d), key/value (B, H_kv, K, d) ->
    (output (B, Q, H, d), probabilities (B, H, Q, K) or None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cap = _ACTIVE.get()
    layer = cap.layers.get(id(module)) if cap is not None else None
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    n_rep = query.shape[1] // key.shape[1]
    k, v = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    if cap.mode == "recompute":
        out, carry = _RecomputedAttention.apply(query, k, v, attention_mask, cap.carry, scaling, cap.rule)
        probs = None
        if carry is not None:
            cap.carry = carry
            cap.carried.append(layer)
    else:
        probs = _probs(query, k, attention_mask, scaling)
        cap.probs[layer] = probs
        out = torch.matmul(probs, v.float()).to(value.dtype)
    if cap.stop_after is not None and layer >= cap.stop_after:
        raise StopForward
    return out.transpose(1, 2).contiguous(), probs


_REGISTERED = False


def register() -> str:
    """Register ATTN_IMPL with transformers (attention + SDPA-style masks); returns its name."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTN_IMPL, attention_forward)
        AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)
        _REGISTERED = True
    return ATTN_IMPL
