"""`gae`: the paper's gradient-weighted attention rollout (Chefer et al. 2021), memory-efficient.

For each answer token y_t (predicted at position p_t = S - 1 + t):
    A_bar_l = mean_heads(clamp_min(dScore_t/dA_l * A_l, 0))      l = 0 .. L-1, (S', S')
    R = (I + A_bar_{L-1}) ... (I + A_bar_0)                     (R <- R + A_bar_l R, first layer first)
    r_t = R[p_t, visual columns]
R_v = mean_t r_t. Only row p_t of R is read, so we carry the row vector v = e_{p_t} through the
factors last layer first: v <- v + v A_bar_l, which is exactly the order in which the backward pass
reaches the layers. The attention function (adapters/attention.py, mode "recompute") saves only
q, k, v in the forward and hands (A_l, dScore/dA_l) to us per layer in the backward; nothing of size
L x H x S^2 is ever held. One forward, one backward per answer token (graph retained).

rule="abs" keeps |dScore_t/dA_l * A_l| instead of its positive part. Where a head's attention is
saturated (one key takes ~all of it) the product is the derivative of the score along that head's own
output, i.e. with respect to its magnitude; a model whose score peaks in that magnitude gives it
either sign, and the positive clamp then drops a path that carries the whole answer. On the
reference MLLM that happens on the guided lookup heads in about half of the scenes
(benchmarks/diagnose_gae.py: removing the path costs the answer's logit ~6, scaling it by 1.1
lowers it), and the object falls out of gae's top half; "abs" keeps it (BENCHMARKS.md).
"""
from __future__ import annotations

import torch

from data_gen.explainers._common import answer_scores, check_score, finish
from data_gen.explainers.base import EXPLAINERS
from predictor.adapters.attention import capture


RULES = ("positive", "abs")


class _RowRollout:
    """Backward callback: v <- v + v @ A_bar_l for the current answer token's row."""

    def __init__(self, num_layers: int, rule: str = "positive"):
        self.num_layers = num_layers
        self.rule = rule
        self.v: torch.Tensor | None = None
        self.next_layer = -1

    def start(self, position: int, seq_len: int, device) -> None:
        self.v = torch.zeros(position + 1, device=device)  # positions > p_t never reach p_t (causal)
        self.v[position] = 1.0
        self.next_layer = self.num_layers - 1

    def __call__(self, layer: int, probs: torch.Tensor, grad_probs: torch.Tensor) -> None:
        assert layer == self.next_layer, f"backward reached layer {layer}, expected {self.next_layer}"
        n = self.v.numel()
        prod = grad_probs[0, :, :n, :n] * probs[0, :, :n, :n]
        a_bar = (prod.clamp_min_(0) if self.rule == "positive" else prod.abs_()).mean(0)  # (n, n)
        self.v = self.v + self.v @ a_bar
        self.next_layer -= 1


class GAE:
    def __init__(self, score: str = "logit", rule: str = "abs"):
        if rule not in RULES:
            raise ValueError(f"gae rule={rule!r}; expected one of {RULES}")
        self.score, self.rule = check_score(score), rule

    def __call__(self, adapter, prepared, answer_ids: torch.Tensor) -> torch.Tensor:
        answer_ids = answer_ids.reshape(-1)
        if answer_ids.numel() == 0:
            raise ValueError("gae needs at least one answer token")
        s, n_t = prepared.seq_len, answer_ids.numel()
        rollout = _RowRollout(adapter.num_layers, self.rule)
        with torch.enable_grad():
            embeds = adapter.embed(prepared, answer_ids).detach().requires_grad_(True)  # (1, S+T, D)
            with capture(adapter.attention_layers(), mode="recompute", on_backward=rollout):
                out = adapter.teacher_forced(prepared, answer_ids, output_attentions=False, inputs_embeds=embeds,
                                             answer_logits_only=True)
                scores = answer_scores(out.logits, answer_ids, self.score)[0]  # (T,)
                visual = prepared.visual_positions.to(embeds.device)
                rel = torch.zeros(visual.numel(), device=embeds.device)
                for t in range(n_t):
                    rollout.start(s - 1 + t, s + n_t, embeds.device)
                    torch.autograd.grad(scores[t], embeds, retain_graph=t < n_t - 1)
                    assert rollout.next_layer == -1, "not every layer was reached by the backward pass"
                    rel += rollout.v[visual]
        return finish(rel / n_t)


@EXPLAINERS.register("gae")
def make_gae(score: str = "logit", rule: str = "abs") -> GAE:
    """score: "logit" (Chefer et al., default) or "logprob" of each answer token.
    rule: "abs" (default) keeps |grad x A|; "positive" keeps max(grad x A, 0) as Chefer et al. write it
    (see the module docstring for why the default differs)."""
    return GAE(score=score, rule=rule)
