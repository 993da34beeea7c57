"""Physical removal of visual tokens and left-padded batching of the shortened prompts.

Removal keeps every kept token's original rotary position (1-D, or Qwen2-VL's 3-D M-RoPE
(t, h, w) ids), so the LLM sees the kept tokens exactly where they were: pruning changes which
tokens are attended to, never where a token is. Text after the image keeps its original
positions too, so generation continues from the unpruned prompt's last position + 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrunedPrompt:
    """One shortened prompt.

    embeds: (S', D); position_ids: (S',) or (3, S') original positions of the kept tokens;
    kept_visual: (N_v,) bool over the original visual tokens (True = kept or cluster slot).
    """

    embeds: torch.Tensor
    position_ids: torch.Tensor
    kept_visual: torch.Tensor

    @property
    def seq_len(self) -> int:
        return int(self.embeds.shape[0])


def prune_prompt(embeds: torch.Tensor, position_ids: torch.Tensor, visual_positions: torch.Tensor,
                 kept_visual: torch.Tensor, replace: torch.Tensor | None = None) -> PrunedPrompt:
    """Drop the visual tokens where `kept_visual` is False.

    embeds: (1, S, D); position_ids: (1, S) or (3, 1, S); visual_positions: (N_v,) prompt indices;
    kept_visual: (N_v,) bool; replace: optional (N_kept, D) embeddings written into the kept visual
    slots in order (cluster aggregation puts each cluster's mean there).
    """
    S = embeds.shape[1]
    vis = visual_positions.to(embeds.device).long()
    kept_visual = kept_visual.to(embeds.device).bool()
    if kept_visual.shape != vis.shape:
        raise ValueError(f"kept_visual has shape {tuple(kept_visual.shape)}, expected ({vis.numel()},)")
    keep = torch.ones(S, dtype=torch.bool, device=embeds.device)
    keep[vis[~kept_visual]] = False
    e = embeds[0]
    if replace is not None:
        e = e.clone()
        e[vis[kept_visual]] = replace.to(e.dtype)
    pos = position_ids[..., 0, :] if position_ids.ndim == 3 else position_ids[0]  # (3, S) or (S,)
    return PrunedPrompt(embeds=e[keep], position_ids=pos[..., keep], kept_visual=kept_visual)


def left_pad(prompts: list[PrunedPrompt]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch prompts of different lengths with left padding (generation appends on the right).

    Returns embeds (B, S, D), attention_mask (B, S) long with 0 on padding, and position_ids
    (B, S) or (3, B, S); padded slots hold zeros and position 0 (masked, never attended to).
    """
    B, S = len(prompts), max(p.seq_len for p in prompts)
    first = prompts[0]
    D = first.embeds.shape[-1]
    embeds = first.embeds.new_zeros(B, S, D)
    mask = torch.zeros(B, S, dtype=torch.long, device=first.embeds.device)
    three_d = first.position_ids.ndim == 2
    pos = first.position_ids.new_zeros((3, B, S) if three_d else (B, S))
    for b, p in enumerate(prompts):
        n = p.seq_len
        embeds[b, S - n:] = p.embeds
        mask[b, S - n:] = 1
        if three_d:
            pos[:, b, S - n:] = p.position_ids
        else:
            pos[b, S - n:] = p.position_ids
    return embeds, mask, pos
