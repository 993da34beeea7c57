"""`attention`: the same rollout without gradients (the paper's ablation): A_bar_l = mean over
heads of A_l, R = (I + A_bar_{L-1}) ... (I + A_bar_0), rows of the positions predicting the answer
tokens, visual columns, mean over answer tokens.

Keeps one (S, S) head-mean per layer (not (H, S, S)), then carries the T rows read through the
factors last layer first, (T, S) at a time.
"""
from __future__ import annotations

import torch

from data_gen.explainers._common import finish
from data_gen.explainers.base import EXPLAINERS
from predictor.adapters.attention import capture


class AttentionRollout:
    def __call__(self, adapter, prepared, answer_ids: torch.Tensor) -> torch.Tensor:
        answer_ids = answer_ids.reshape(-1)
        if answer_ids.numel() == 0:
            raise ValueError("attention rollout needs at least one answer token")
        s, n_t = prepared.seq_len, answer_ids.numel()
        means: dict[int, torch.Tensor] = {}

        class _HeadMean(dict):  # capture stores each layer's probs here: keep only the head mean
            def __setitem__(self, layer, probs):
                means[layer] = probs[0].mean(0)  # (S+T, S+T)

        with torch.no_grad(), capture(adapter.attention_layers(), mode="record") as cap:
            cap.probs = _HeadMean()
            adapter.teacher_forced(prepared, answer_ids, output_attentions=False, answer_logits_only=True)
        n = s + n_t
        rows = torch.zeros(n_t, n, device=next(iter(means.values())).device)
        rows[torch.arange(n_t), s - 1 + torch.arange(n_t)] = 1.0
        for layer in sorted(means, reverse=True):  # softmax layers; a hybrid's linear layers pass as I
            rows = rows + rows @ means[layer]
        visual = prepared.visual_positions.to(rows.device)
        return finish(rows[:, visual].mean(0))


@EXPLAINERS.register("attention")
def make_attention() -> AttentionRollout:
    return AttentionRollout()
