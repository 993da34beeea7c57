"""`gae`: the paper's gradient-weighted attention rollout (Chefer et al. 2021), memory-efficient.

For each answer token y_t (predicted at position p_t = S - 1 + t):
    A_bar_l = mean_heads(clamp_min(dScore_t/dA_l * A_l, 0))      l = 0 .. L-1, (S', S')
    R = (I + A_bar_{L-1}) ... (I + A_bar_0)                     (R <- R + A_bar_l R, first layer first)
    r_t = R[p_t, visual columns]
R_v = mean_t r_t. Only row p_t of R is read, so we carry the row vector v = e_{p_t} through the
factors last layer first: v <- v + v A_bar_l, which is exactly the order in which the backward pass
reaches the layers. The attention function (adapters/attention.py, mode "recompute") saves only
q, k, v in the forward and recomputes A_l in the backward; nothing of size L x H x S^2 is ever held.
The row vector travels as the gradient of a carrier tensor threaded through the attention layers
(`capture(rule=..., carry=...)`): the gradient of the carrier before layer 0 is r_t.

A hybrid decoder (Qwen3.5) has linear-attention layers without attention probabilities. linear_layers=
"residual" (default) runs the rollout over its softmax-attention layers (`Adapter.attention_layers`) and
passes a linear layer by its residual path alone (its factor is I); "implicit" gives each linear layer the
factor I + A_bar too, A being the implicit attention of its gated delta rule (linear_attention.py: the
matrix that maps the layer's values to its core output), weighted by its gradient as a softmax layer's.

One forward; the T backward passes go `chunk` tokens at a time through one batched backward
(`torch.autograd.grad(..., is_grads_batched=True)`: each token's score gradient and its e_{p_t} as
one batch row). A chunk holds about chunk x (H, S', S') fp32 tensors in each layer's backward
(3.1 GB per tensor at Qwen2-VL-7B, S' = 1300, chunk 16), so `chunk` bounds the memory of long answers.

rule="abs" keeps |dScore_t/dA_l * A_l| instead of its positive part. Where a head's attention is
saturated (one key takes ~all of it) the product is the derivative of the score along that head's own
output, i.e. with respect to its magnitude; a model whose score peaks in that magnitude gives it
either sign, and the positive clamp then drops a path that carries the whole answer. On the
reference MLLM that happens on the guided lookup heads in about half of the scenes
(benchmarks/diagnose_gae.py: removing the path costs the answer's logit ~6, scaling it by 1.1
lowers it), and the object falls out of gae's top half; "abs" keeps it (BENCHMARKS.md).
"""
from __future__ import annotations

import contextlib

import torch

from data_gen.explainers._common import answer_scores, check_score, finish
from data_gen.explainers.base import EXPLAINERS
from data_gen.explainers.linear_attention import implicit_layers
from predictor.adapters.attention import RULES, capture


LINEAR_LAYERS = ("residual", "implicit")


class GAE:
    def __init__(self, score: str = "logit", rule: str = "abs", chunk: int = 16, linear_layers: str = "residual"):
        if linear_layers not in LINEAR_LAYERS:
            raise ValueError(f"gae linear_layers={linear_layers!r}; expected one of {LINEAR_LAYERS} (how the rollout "
                             f"passes a hybrid decoder's linear-attention layers)")
        if rule not in RULES:
            raise ValueError(f"gae rule={rule!r}; expected one of {RULES}")
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"gae chunk={chunk!r}; expected a whole number >= 1 of answer tokens per backward pass "
                             f"(1: one pass per token, the least memory)")
        self.score, self.rule, self.chunk = check_score(score), rule, chunk
        self.linear_layers = linear_layers

    def __call__(self, adapter, prepared, answer_ids: torch.Tensor) -> torch.Tensor:
        answer_ids = answer_ids.reshape(-1)
        if answer_ids.numel() == 0:
            raise ValueError("gae needs at least one answer token")
        s, n_t = prepared.seq_len, answer_ids.numel()
        with torch.enable_grad():
            embeds = adapter.embed(prepared, answer_ids).detach()  # (1, S+T, D); the graph starts at `carry`
            carry = torch.zeros(1, s + n_t, device=embeds.device, requires_grad=True)
            with contextlib.ExitStack() as stack:
                cap = stack.enter_context(capture(adapter.attention_layers(), mode="recompute", rule=self.rule,
                                                  carry=carry))
                linear = stack.enter_context(implicit_layers(adapter, cap)) if self.linear_layers == "implicit" else []
                out = adapter.teacher_forced(prepared, answer_ids, output_attentions=False, inputs_embeds=embeds,
                                             answer_logits_only=True)
                scores = answer_scores(out.logits, answer_ids, self.score)[0]  # (T,)
            expected = sorted([*adapter.attention_layers().values(), *linear])
            assert cap.carried == expected, f"carrier went through layers {cap.carried}, expected {expected}"
            eye = torch.eye(n_t, device=embeds.device)
            rows = torch.zeros(n_t, 1, s + n_t, device=embeds.device)
            rows[torch.arange(n_t), 0, s - 1 + torch.arange(n_t)] = 1.0  # e_{p_t}
            visual = prepared.visual_positions.to(embeds.device)
            rel = torch.zeros(visual.numel(), device=embeds.device)
            for a in range(0, n_t, self.chunk):
                b = min(a + self.chunk, n_t)
                if b - a == 1:  # a plain backward: no vmap overhead
                    (r,) = torch.autograd.grad((scores, cap.carry), carry, (eye[a], rows[a]), retain_graph=b < n_t)
                else:
                    (r,) = torch.autograd.grad((scores, cap.carry), carry, (eye[a:b], rows[a:b]),
                                               retain_graph=b < n_t, is_grads_batched=True)
                rel += r.reshape(-1, s + n_t)[:, visual].sum(0)
        return finish(rel / n_t)


@EXPLAINERS.register("gae")
def make_gae(score: str = "logit", rule: str = "abs", chunk: int = 16, linear_layers: str = "residual") -> GAE:
    """score: "logit" (Chefer et al., default) or "logprob" of each answer token.
    rule: "abs" (default) keeps |grad x A|; "positive" keeps max(grad x A, 0) as Chefer et al. write it
    (see the module docstring for why the default differs).
    chunk: answer tokens per backward pass (memory grows with it; 1 is the per-token loop).
    linear_layers: "residual" (default) passes a hybrid decoder's linear-attention layers by their residual
    path; "implicit" rolls out through their implicit attention as well (linear_attention.py)."""
    return GAE(score=score, rule=rule, chunk=chunk, linear_layers=linear_layers)
