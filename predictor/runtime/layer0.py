"""Layer-0 instruction-to-visual attention from queries and keys only.

The full layer-0 attention costs S x S scores (and values, and the output projection). The
predictor needs only the rows of the instruction tokens and the columns of the visual tokens, so
we project queries for the N_i instruction rows and keys for the positions those rows can see,
and take one softmax per row over exactly the keys it attends to causally. The result equals the
corresponding entries of the model's own layer-0 attention probabilities (tested against an eager
forward), at the cost of N_i x K scores instead of S x S.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def layer0_attention(adapter, embeds: torch.Tensor, position_ids: torch.Tensor,
                     instruction_positions: torch.Tensor, visual_positions: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-0 attention of the instruction rows over the visual columns.

    embeds: (1, S, D) prompt embeddings (visual features merged in); position_ids: the adapter's
    (1, S) or (3, 1, S); instruction_positions (N_i,), visual_positions (N_v,) long prompt indices.
    Returns (heads (H, N_v), mean (N_v,)) float32: per head averaged over the instruction rows, and
    that averaged over heads (the paper's predictor input).
    """
    if instruction_positions.numel() == 0:
        raise ValueError("the prompt has no instruction tokens: layer-0 instruction attention is undefined")
    rows = instruction_positions.to(embeds.device).long()
    cols = visual_positions.to(embeds.device).long()
    key_len = int(rows.max()) + 1  # the last instruction row sees keys [0, key_len)
    q, k, scale = adapter.layer0_qk(embeds, position_ids, rows, key_len)  # (H, N_i, d), (H, K, d)
    scores = torch.matmul(q, k.transpose(1, 2)) * scale  # (H, N_i, K)
    causal = torch.arange(key_len, device=scores.device)[None, :] > rows[:, None]  # (N_i, K)
    probs = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
    heads = probs[:, :, cols].mean(dim=1)  # (H, N_v)
    return heads, heads.mean(dim=0)
