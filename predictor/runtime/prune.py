"""Physical removal of visual tokens and left-padded batching of the shortened prompts.

Removal keeps every kept token's original rotary position (1-D, or Qwen2-VL's 3-D M-RoPE
(t, h, w) ids), so the LLM sees the kept tokens exactly where they were: pruning changes which
tokens are attended to, never where a token is. Text after the image keeps its original
positions too, so generation continues from the unpruned prompt's last position + 1.

A family with DeepStack features (Qwen3-VL: added to the visual tokens' hidden states after the first
LLM layers) keeps the rows of the kept tokens, in their order, so each kept token gets its own; a
cluster slot gets the mean of its members', as its embedding is their mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from predictor.adapters.base import DeepStack


@dataclass
class PrunedPrompt:
    """One shortened prompt.

    embeds: (S', D); position_ids: (S',) or (3, S') original positions of the kept tokens;
    kept_visual: (N_v,) bool over the original visual tokens (True = kept or cluster slot);
    visual_slots: (S',) bool, where the kept visual tokens sit; deepstack: (L, N_kept, D) their DeepStack
    features in sequence order, or None (the family has none).
    """

    embeds: torch.Tensor
    position_ids: torch.Tensor
    kept_visual: torch.Tensor
    visual_slots: torch.Tensor
    deepstack: torch.Tensor | None = None

    @property
    def seq_len(self) -> int:
        return int(self.embeds.shape[0])


def prune_prompt(embeds: torch.Tensor, position_ids: torch.Tensor, visual_positions: torch.Tensor,
                 kept_visual: torch.Tensor, replace: torch.Tensor | None = None,
                 deepstack: torch.Tensor | None = None, replace_deepstack: torch.Tensor | None = None,
                 ) -> PrunedPrompt:
    """Drop the visual tokens where `kept_visual` is False.

    embeds: (1, S, D); position_ids: (1, S) or (3, 1, S); visual_positions: (N_v,) prompt indices;
    kept_visual: (N_v,) bool; replace: optional (N_kept, D) embeddings written into the kept visual
    slots in order (cluster aggregation puts each cluster's mean there). deepstack: (L, N_v, D) the
    adapter's DeepStack features in visual order, or None; replace_deepstack: (L, N_kept, D) with `replace`.
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
    slots = torch.zeros(S, dtype=torch.bool, device=embeds.device)
    slots[vis[kept_visual]] = True
    if deepstack is not None:
        if deepstack.shape[1] != vis.numel():
            raise ValueError(f"deepstack has {deepstack.shape[1]} rows, expected one per visual token ({vis.numel()})")
        # rows in visual order, which is sequence order: the model reads them slot by slot
        deepstack = deepstack[:, kept_visual.to(deepstack.device)] if replace_deepstack is None else replace_deepstack
    return PrunedPrompt(embeds=e[keep], position_ids=pos[..., keep], kept_visual=kept_visual,
                        visual_slots=slots[keep], deepstack=deepstack)


def deepstack_batch(prompts: list[PrunedPrompt]) -> DeepStack | None:
    """The DeepStack features of `left_pad(prompts)`: visual mask (B, S) and features (L, M, D), or None
    when the family has none."""
    if prompts[0].deepstack is None:
        return None
    S = max(p.seq_len for p in prompts)
    mask = torch.zeros(len(prompts), S, dtype=torch.bool, device=prompts[0].embeds.device)
    for b, p in enumerate(prompts):
        mask[b, S - p.seq_len:] = p.visual_slots
    return DeepStack(visual_mask=mask, features=torch.cat([p.deepstack for p in prompts], dim=1))


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
