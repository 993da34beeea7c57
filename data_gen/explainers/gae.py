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
"""
from __future__ import annotations

import torch

from data_gen.explainers._common import answer_scores, check_score, finish
from data_gen.explainers.base import EXPLAINERS
from predictor.adapters.attention import capture


class _RowRollout:
    """Backward callback: v <- v + v @ A_bar_l for the current answer token's row."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.v: torch.Tensor | None = None
        self.next_layer = -1

    def start(self, position: int, seq_len: int, device) -> None:
        self.v = torch.zeros(position + 1, device=device)  # positions > p_t never reach p_t (causal)
        self.v[position] = 1.0
        self.next_layer = self.num_layers - 1

    def __call__(self, layer: int, probs: torch.Tensor, grad_probs: torch.Tensor) -> None:
        assert layer == self.next_layer, f"backward reached layer {layer}, expected {self.next_layer}"
        n = self.v.numel()
        a_bar = (grad_probs[0, :, :n, :n] * probs[0, :, :n, :n]).clamp_min_(0).mean(0)  # (n, n)
        self.v = self.v + self.v @ a_bar
        self.next_layer -= 1


class GAE:
    def __init__(self, score: str = "logit"):
        self.score = check_score(score)

    def __call__(self, adapter, prepared, answer_ids: torch.Tensor) -> torch.Tensor:
        answer_ids = answer_ids.reshape(-1)
        if answer_ids.numel() == 0:
            raise ValueError("gae needs at least one answer token")
        s, n_t = prepared.seq_len, answer_ids.numel()
        rollout = _RowRollout(adapter.num_layers)
        with torch.enable_grad():
            embeds = adapter.embed(prepared, answer_ids).detach().requires_grad_(True)  # (1, S+T, D)
            with capture(adapter._attention_layers(), mode="recompute", on_backward=rollout):
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
def make_gae(score: str = "logit") -> GAE:
    """score: "logit" (Chefer et al., default) or "logprob" of each answer token."""
    return GAE(score=score)
