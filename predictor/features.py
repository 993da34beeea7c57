"""Predictor input channels from layer-0 attention: the one place training and inference share.

Layer-0 attention of the instruction over N_v visual tokens has mean 1/N_v, so its scale depends on
the token count. We divide by the mean before anything else, so that a predictor trained at one
N_v sees inputs of the same scale at 4x more tokens (the paper's generalisation claim).
"""
from __future__ import annotations

import torch

INPUTS = ("attn", "attn_heads", "coords")
EPS = 1e-3


def num_channels(inputs: list[str] | tuple[str, ...], num_heads: int = 0) -> int:
    """Channel count of `build_features` for these inputs (`num_heads` needed for attn_heads)."""
    unknown = [i for i in inputs if i not in INPUTS]
    if unknown:
        raise ValueError(f"unknown predictor inputs {unknown}; available: {list(INPUTS)}")
    if "attn_heads" in inputs and num_heads <= 0:
        raise ValueError("inputs include 'attn_heads' but num_heads is not set in the predictor config")
    return ("attn" in inputs) + ("attn_heads" in inputs) * num_heads + ("coords" in inputs) * 3


def normalise_attention(a: torch.Tensor) -> torch.Tensor:
    """(..., N_v) non-negative attention -> log of attention relative to its mean over the tokens."""
    a = a.float().clamp_min(0)
    mean = a.mean(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.log(a / mean + EPS)


def grid_coords(grid: tuple[int, int, int]) -> torch.Tensor:
    """(3, t*h*w) normalised (t, y, x) coordinates in [0, 1], raster order (t slowest)."""
    t, h, w = grid
    axes = [torch.linspace(0, 1, n) if n > 1 else torch.zeros(1) for n in (t, h, w)]
    tt, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([tt.reshape(-1), yy.reshape(-1), xx.reshape(-1)])


def build_features(
    inputs: list[str] | tuple[str, ...],
    attn: torch.Tensor,
    grid: tuple[int, int, int],
    attn_heads: torch.Tensor | None = None,
) -> torch.Tensor:
    """One sample's predictor input.

    attn: (N_v,) mean layer-0 attention; attn_heads: (H, N_v) or None; grid: (t, h, w), t*h*w == N_v.
    Returns (C, N_v) float32 with C = num_channels(inputs, H).
    """
    n_v = attn.shape[-1]
    chans = []
    if "attn" in inputs:
        chans.append(normalise_attention(attn)[None])
    if "attn_heads" in inputs:
        if attn_heads is None:
            raise ValueError("predictor input 'attn_heads' requested but the sample has no per-head "
                             "attention; generate shards with data_gen's save_heads=true or drop the input")
        chans.append(normalise_attention(attn_heads))
    if "coords" in inputs:
        if grid[0] * grid[1] * grid[2] != n_v:
            raise ValueError(f"grid {tuple(grid)} does not multiply to N_v={n_v}")
        chans.append(grid_coords(grid))
    return torch.cat(chans, dim=0)


def build_segment_features(
    inputs: list[str] | tuple[str, ...],
    attn: torch.Tensor,
    spans: list[tuple[int, int, tuple[int, int, int]]],
    attn_heads: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """The predictor's input for a prompt of several images or videos: one (C, n_j) per span
    (start, stop, grid) of the visual tokens. Attention is normalised by its mean over ALL the prompt's
    visual tokens, so an image the instruction attends to more keeps its higher values and scores stay
    comparable across spans; coordinates are each span's own grid. With one span this is
    `build_features` exactly."""
    if len(spans) == 1:
        return [build_features(inputs, attn, spans[0][2], attn_heads)]
    n_v = attn.shape[-1]
    whole = build_features([i for i in inputs if i != "coords"], attn, (1, 1, n_v), attn_heads) \
        if any(i != "coords" for i in inputs) else attn.new_zeros(0, n_v)
    out = []
    for start, stop, grid in spans:
        x = whole[:, start:stop]
        if "coords" in inputs:
            if grid[0] * grid[1] * grid[2] != stop - start:
                raise ValueError(f"span [{start}, {stop}) has grid {tuple(grid)}, which does not multiply to {stop - start}")
            x = torch.cat([x, grid_coords(grid)], dim=0)
        out.append(x)
    return out
