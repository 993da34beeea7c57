"""The implicit attention of a Gated DeltaNet layer (Qwen3.5's linear attention), for gae's rollout.

transformers' gated delta rule (`torch_recurrent_gated_delta_rule`, per value head, state S of (d_k, d_v),
q and k l2-normalised, q scaled by d_k ** -0.5, g <= 0, beta in (0, 1)):
    S_t = M_t S_{t-1} + beta_t k_t v_t^T,   M_t = exp(g_t) (I - beta_t k_t k_t^T),   o_t = S_t^T q_t
Unrolled from S_0 = 0:
    o_t = sum_{s <= t} A[t, s] v_s,   A[t, s] = beta_s q_t^T M_t M_{t-1} ... M_{s+1} k_s
(the decay of step s acts on S_{s-1}, before k_s v_s is written, so token s's own gate is not in its term).
The core output (before the gated RMSNorm and out_proj) is linear in v given q, k, g, beta, so A is the
layer's attention matrix from values to outputs, causal and per value head; it is not a softmax (rows do
not sum to 1, entries can be negative). `implicit_attention` computes it with transformers' own chunked
kernel on an identity value matrix (value dim = S: o_t = A[t, :]); tests/test_linear_attention.py checks
it against the unrolled product above and A @ v against the layer's core output (fp32, 1e-5).

The short causal depthwise conv1d (kernel 4, then SiLU) before q, k, v is not in A: A maps the convolved
values v_s to the outputs. Each v_s mixes the projections of tokens s-3 .. s, per channel and through a
SiLU, so it is no single token-mixing matrix; like the q/k paths of a softmax layer in gae, it is left out
(the rollout's A for the layer is A itself, its residual path I beside it).

`implicit_layers(adapter, cap)` swaps the forward of every linear-attention layer, for the duration of the
context, for one that computes the same output (the same ops as transformers' prefill path without a cache)
and threads gae's rollout carrier through it as `attention._RecomputedAttention` does for a softmax layer: a
row vector g arriving at the layer's output leaves its input as g + g @ A_bar, A_bar = mean_heads(rule(dScore/dA
* A)), dScore/dA[h, t, s] = dScore/do_t . v_s. A is recomputed in the backward from the saved q, k, g, beta
(nothing of size H x S^2 is held between the forward and the backward).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F


def linear_attention_layers(adapter) -> dict[int, torch.nn.Module]:
    """decoder layer index -> Gated DeltaNet module of every linear-attention layer (empty for other families)."""
    return {i: layer.linear_attn for i, layer in enumerate(adapter.language_model().layers)
            if getattr(layer, "linear_attn", None) is not None}


def _kernel():
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule
    return torch_chunk_gated_delta_rule


def implicit_attention(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """q, k (B, S, H_k, d_k) as the layer hands them to the kernel (not yet normalised), g, beta (B, S, H_v)
    -> A (B, H_v, S, S) fp32 with core_out[:, t, h] = sum_s A[:, h, t, s] v[:, s, h]."""
    b, s, h_v = g.shape
    eye = torch.eye(s, dtype=torch.float32, device=q.device).expand(b, h_v, s, s).transpose(1, 2)  # (B, S, H_v, S)
    out, _ = _kernel()(q.float(), k.float(), eye, g=g.float(), beta=beta.float(), use_qk_l2norm_in_kernel=True)
    return out.transpose(1, 2)  # (B, H_v, S_t, S_s)


def gated_delta_inputs(module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """q, k, v (B, S, H, d), z (B, S, H_v, d_v), g, beta (B, S, H_v) of a Gated DeltaNet layer, computed as its
    forward does without a cache (causal depthwise conv1d + SiLU on the q/k/v projection)."""
    if attention_mask is not None and attention_mask.dim() == 2:  # padding tokens zeroed, as transformers does
        hidden_states = (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)
    bsz, n, _ = hidden_states.shape
    mixed = module.in_proj_qkv(hidden_states).transpose(1, 2)
    mixed = F.silu(module.conv1d(mixed)[..., :n]).transpose(1, 2)
    q, k, v = torch.split(mixed, [module.key_dim, module.key_dim, module.value_dim], dim=-1)
    q = q.reshape(bsz, n, -1, module.head_k_dim)
    k = k.reshape(bsz, n, -1, module.head_k_dim)
    v = v.reshape(bsz, n, -1, module.head_v_dim)
    z = module.in_proj_z(hidden_states).reshape(bsz, n, -1, module.head_v_dim)
    beta = module.in_proj_b(hidden_states).sigmoid()
    g = -module.A_log.float().exp() * F.softplus(module.in_proj_a(hidden_states).float() + module.dt_bias)
    return q, k, v, z, g, beta


class _ImplicitCarrier(torch.autograd.Function):
    """Identity on the layer's core output; passes the rollout carrier (B, S) through with g + g @ A_bar in
    the backward. Only torch ops act on the gradients (is_grads_batched runs this under vmap)."""

    @staticmethod
    def forward(ctx, core, v, q, k, g, beta, carry, rule):
        ctx.save_for_backward(v, q, k, g, beta)
        ctx.rule = rule
        return core.clone(), carry.clone()

    @staticmethod
    def backward(ctx, grad_core, grad_carry):
        v, q, k, g, beta = ctx.saved_tensors
        with torch.no_grad():
            a = implicit_attention(q, k, g, beta)  # (B, H, S, S)
        # dScore/dA[h, t, s] = grad_core[:, t, h] . v[:, s, h]
        grad_a = torch.matmul(grad_core.float().transpose(1, 2), v.float().transpose(1, 2).transpose(-1, -2))
        prod = grad_a * a
        a_bar = (prod.clamp_min(0) if ctx.rule == "positive" else prod.abs()).mean(1)  # (B, S, S)
        grad_carry_in = grad_carry + torch.matmul(grad_carry[:, None], a_bar)[:, 0]
        return grad_core, None, None, None, None, None, grad_carry_in, None


def _carrier_forward(module, layer: int, cap):
    def forward(hidden_states, cache=None, cache_params=None, attention_mask=None, **kwargs):
        if cache is not None or cache_params is not None:
            raise RuntimeError("gae linear_layers=implicit runs a full forward without a cache (use_cache=False)")
        bsz, n, _ = hidden_states.shape
        q, k, v, z, g, beta = gated_delta_inputs(module, hidden_states, attention_mask)
        core, _ = _kernel()(q, k, v, g=g, beta=beta, use_qk_l2norm_in_kernel=True)
        assert cap.carry.shape[-1] == n, "the carrier needs the full sequence"
        core, cap.carry = _ImplicitCarrier.apply(core, v.detach(), q.detach(), k.detach(), g.detach(),
                                                 beta.detach(), cap.carry, cap.rule)
        cap.carried.append(layer)
        core = module.norm(core.reshape(-1, module.head_v_dim), z.reshape(-1, module.head_v_dim))
        return module.out_proj(core.reshape(bsz, n, -1))
    return forward


@contextlib.contextmanager
def implicit_layers(adapter, cap) -> Iterator[list[int]]:
    """Within the context, each linear-attention layer threads `cap.carry` through its implicit attention
    (`cap` from `attention.capture(..., rule=..., carry=...)`); yields the layers' indices."""
    layers = linear_attention_layers(adapter)
    try:
        for i, module in layers.items():
            module.forward = _carrier_forward(module, i, cap)  # instance attribute: shadows the class's forward
        yield sorted(layers)
    finally:
        for module in layers.values():
            module.__dict__.pop("forward", None)
