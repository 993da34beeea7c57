"""The relevance predictor: a small fully-convolutional net over the visual tokens.

`RelevancePredictor` is the paper's model (Lei et al. 2506.01097): depthwise-separable 1-D
convolutions over the visual tokens in their sequence order, widths 32-64-128-256-512, then a
pointwise head to one score per token and a softmax over the valid tokens. `arch="conv2d"` is the
grid-aware variant: the same blocks as 2-D convolutions over each frame's (h, w) grid, so that a
token's neighbours above and below are neighbours to the net too. `arch="conv3d"` convolves the
whole (t, h, w) clip, so that the same place in the previous and next frames is a neighbour as well
(for video; on an image, t=1, it is conv2d with kernels whose outer temporal taps read zeros).

Convolutions see a token's neighbours; norm, activation and dropout see each valid token alone,
as a (M, C) matrix of the batch's M valid tokens. So `norm="batch"` takes its statistics (and its
running statistics) from the valid tokens of the whole batch only: padding, and how conv2d and
conv3d group samples by grid, change nothing.

Plain nn.Module: no Lightning, no transformers, no files. Everything needed to rebuild it is in
`predictor.config.PredictorConfig`; predictor.export writes and reads it with the weights, predictor.hub
loads an export by folder or hub repo id.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from predictor.config import PredictorConfig

DIMS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}  # convolution dims per arch (predictor.config.ARCHS)
ACTIVATION_MODULES = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}  # per predictor.config.ACTIVATIONS


class _ChannelNorm(nn.Module):
    """LayerNorm over the channels of (M, C) tokens (kept as a module for its `ln.` state-dict keys)."""

    def __init__(self, c: int):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x)


class _Conv3d(nn.Conv3d):
    """nn.Conv3d (same parameters and state-dict keys) that runs a one-frame clip, an image, as the Conv2d it
    equals: with "same" temporal padding only the middle temporal tap reads the frame. That is k_t times fewer
    FLOPs, and it sidesteps torch 2.14's CPU kernel for bf16 Conv3d with one input channel on one frame, which
    returns wrong values and sometimes NaN (tests/test_model.py::test_conv3d_on_one_frame_under_bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kt = self.kernel_size[0]
        if (x.shape[2] == 1 and self.padding_mode == "zeros" and self.padding[0] == kt // 2
                and self.stride[0] == 1 and self.dilation[0] == 1):
            y = F.conv2d(x[:, :, 0], self.weight[:, :, kt // 2], self.bias, self.stride[1:], self.padding[1:],
                         self.dilation[1:], self.groups)
            return y.unsqueeze(2)  # (B, C_out, 1, h, w)
        return super().forward(x)


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: _Conv3d}


def _norm(kind: str, c: int) -> nn.Module:
    """A norm over (M, C) tokens: the conv output flattened to channels, whatever the dimensionality."""
    if kind == "layer":
        return _ChannelNorm(c)
    if kind == "batch":
        return nn.BatchNorm1d(c)
    return nn.Identity()


class SeparableBlock(nn.Module):
    """depthwise conv (k) -> pointwise conv (1) -> norm -> activation -> dropout, in 1-D, 2-D or 3-D."""

    def __init__(self, c_in: int, c_out: int, cfg: PredictorConfig, dims: int):
        super().__init__()
        conv = _CONVS[dims]
        k = cfg.kernel_size
        self.depthwise = conv(c_in, c_in, k, padding=k // 2, groups=c_in)
        self.pointwise = conv(c_in, c_out, 1)
        self.norm = _norm(cfg.norm, c_out)
        self.act = ACTIVATION_MODULES[cfg.activation]()
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *spatial) -> (B, C_out, *spatial): the convolutions."""
        return self.pointwise(self.depthwise(x))

    def per_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M, C_out) valid tokens -> the same after norm, activation and dropout."""
        return self.drop(self.act(self.norm(tokens)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, *spatial), mask (B, *spatial) bool -> (B, C_out, *spatial), 0 where mask is False
        (so the next convolution reads zeros past each sample's end)."""
        h = self.mix(x).movedim(1, -1)  # (B, *spatial, C_out)
        tokens = self.per_token(h[mask])
        out = tokens.new_zeros(h.shape)  # the tokens' dtype: under autocast, norms may return float32
        out[mask] = tokens
        return out.movedim(-1, 1)


class RelevancePredictor(nn.Module):
    """forward(x, mask, grid=None) -> (B, N_v) probabilities.

    x:    (B, C, N_v) float, C = config.in_channels; padded positions may hold anything
    mask: (B, N_v) bool, True on valid tokens (every row needs at least one)
    grid: (B, 3) long (t, h, w) per sample, needed by arch conv2d and conv3d (t*h*w == valid count)
    spans: optional, per sample a list of (start, stop, (t, h, w)): the images or videos of a prompt with
          several. Such a sample is scored span by span on each span's grid (no convolution crosses a span
          boundary), with one softmax over all its tokens; a sample with one span is scored as before.
    Returns probabilities: 0 on padded positions, each row sums to 1 over its valid tokens.
    """

    modality: str | None = None  # "image" | "video" once loaded from an export (predictor.export); None: unknown
    export_config: dict | None = None  # the export's config.json once loaded (trained_on, metrics, training)

    def __init__(self, config: PredictorConfig):
        super().__init__()
        self.config = config
        dims = DIMS[config.arch]
        chans = [config.in_channels, *config.widths]
        self.blocks = nn.ModuleList(SeparableBlock(a, b, config, dims) for a, b in zip(chans[:-1], chans[1:]))
        self.head = _CONVS[dims](chans[-1], 1, 1)

    def logits(self, x: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor | None = None,
               spans: list | None = None) -> torch.Tensor:
        """(B, N_v) scores before the softmax; padded positions are -inf."""
        if spans is not None and any(len(sp) > 1 for sp in spans):
            return self._logits_spans(x, mask, grid, spans)
        if x.ndim != 3 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected x of shape (B, {self.config.in_channels}, N_v), got {tuple(x.shape)}")
        if mask.shape != (x.shape[0], x.shape[2]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match x {tuple(x.shape)}")
        mask = mask.bool()
        if self.config.arch == "conv1d":
            out = self._logits_1d(x, mask)
        else:
            if grid is None:
                raise ValueError(f"arch={self.config.arch!r} needs the (B, 3) visual grid (t, h, w) of each sample")
            out = self._logits_grid(x, mask, grid)
        return out.masked_fill(~mask, float("-inf"))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor | None = None,
                spans: list | None = None) -> torch.Tensor:
        return torch.softmax(self.logits(x, mask, grid, spans), dim=-1)

    def _logits_spans(self, x: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor | None,
                      spans: list) -> torch.Tensor:
        """Every span of every sample as a row of its own (batch norm sees the same valid tokens), scattered
        back into the samples' token order."""
        B, C, N = x.shape
        if len(spans) != B:
            raise ValueError(f"spans has {len(spans)} entries for a batch of {B}")
        rows, grids, where = [], [], []
        for b in range(B):
            sp = spans[b] if spans[b] else [(0, int(mask[b].sum()), tuple(int(v) for v in grid[b]) if grid is not None
                                             else (1, 1, int(mask[b].sum())))]
            for start, stop, g in sp:
                rows.append(x[b, :, start:stop])
                grids.append([int(v) for v in g])
                where.append((b, start, stop))
        n = max(r.shape[-1] for r in rows)
        xs = x.new_zeros(len(rows), C, n)
        ms = torch.zeros(len(rows), n, dtype=torch.bool, device=x.device)
        for r, row in enumerate(rows):
            xs[r, :, :row.shape[-1]] = row
            ms[r, :row.shape[-1]] = True
        part = self.logits(xs, ms, torch.tensor(grids, device=x.device))
        out = x.new_full((B, N), float("-inf"))
        for r, (b, start, stop) in enumerate(where):
            out[b, start:stop] = part[r, :stop - start].to(out.dtype)
        return out.masked_fill(~mask.bool(), float("-inf"))

    def _logits_1d(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = x * mask[:, None, :].to(x.dtype)  # (B, C, N), zeros past each sample's end
        for block in self.blocks:
            h = block(h, mask)
        return self.head(h)[:, 0]  # (B, N)

    def _logits_grid(self, x: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Each sample's valid tokens as (t, C, h, w) frames (conv2d) or one (C, t, h, w) clip (conv3d);
        samples with equal grids share a batch."""
        B, C, N = x.shape
        out = x.new_zeros(B, N)
        grid = torch.as_tensor(grid).long().reshape(B, 3)
        counts = mask.sum(-1)
        groups: dict[tuple[int, int, int], list[int]] = {}
        for b in range(B):
            t, h, w = (int(v) for v in grid[b])
            if t * h * w != int(counts[b]) or not bool(mask[b, : t * h * w].all()):
                raise ValueError(f"sample {b}: grid {(t, h, w)} does not match its {int(counts[b])} "
                                 "valid tokens (valid tokens must come first, in raster order)")
            groups.setdefault((t, h, w), []).append(b)
        hids = [x[idx, :, : t * h * w].reshape(len(idx), C, t, h, w) for (t, h, w), idx in groups.items()]
        if self.config.arch == "conv2d":  # (b * t, C, h, w) frames per grid; conv3d keeps (b, C, t, h, w)
            hids = [c.transpose(1, 2).reshape(-1, C, *c.shape[3:]) for c in hids]
        for block in self.blocks:
            mixed = [block.mix(hid) for hid in hids]
            # every valid token of every group in one (M, C) matrix: one set of batch-norm statistics
            tokens = [m.movedim(1, -1).reshape(-1, m.shape[1]) for m in mixed]
            tokens = torch.cat(tokens) if len(tokens) > 1 else tokens[0]
            tokens = block.per_token(tokens).split([m[:, 0].numel() for m in mixed])
            hids = [tk.reshape(m.shape[0], *m.shape[2:], -1).movedim(-1, 1) for tk, m in zip(tokens, mixed)]
        for ((t, h, w), idx), hid in zip(groups.items(), hids):
            s = self.head(hid).reshape(len(idx), t * h * w)  # (b*t, 1, h, w) or (b, 1, t, h, w) -> raster order
            out[idx, : t * h * w] = s.to(out.dtype)  # bf16 under autocast
        return out
