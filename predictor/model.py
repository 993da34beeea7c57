"""The relevance predictor: a small fully-convolutional net over the visual tokens.

`RelevancePredictor` is the paper's model (Lei et al. 2506.01097): depthwise-separable 1-D
convolutions over the visual tokens in their sequence order, widths 32-64-128-256-512, then a
pointwise head to one score per token and a softmax over the valid tokens. `arch="conv2d"` is the
grid-aware variant: the same blocks as 2-D convolutions over each frame's (h, w) grid, so that a
token's neighbours above and below are neighbours to the net too.

Plain nn.Module: no Lightning, no transformers. Everything needed to rebuild it is in
`PredictorConfig`, which the export stores as config.json.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn

from predictor.features import num_channels

ARCHS = ("conv1d", "conv2d")
NORMS = ("none", "layer", "batch")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


@dataclass
class PredictorConfig:
    arch: str = "conv1d"
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # depth = len(widths)
    kernel_size: int = 5  # odd; the paper does not publish it
    norm: str = "layer"  # "layer" normalises each token over channels: padding-safe, batch-size free
    activation: str = "gelu"
    inputs: list[str] = field(default_factory=lambda: ["attn"])  # see predictor.features.INPUTS
    num_heads: int = 0  # H of the per-head attention, needed only when "attn_heads" is an input
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown predictor arch {self.arch!r}; available: {list(ARCHS)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; available: {list(NORMS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; available: {list(ACTIVATIONS)}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {self.kernel_size}")
        if not self.widths:
            raise ValueError("widths must list at least one layer width")
        self.widths = [int(w) for w in self.widths]
        self.inputs = list(self.inputs)
        num_channels(self.inputs, self.num_heads)  # raises on unknown inputs

    @property
    def in_channels(self) -> int:
        return num_channels(self.inputs, self.num_heads)

    @property
    def needs_grid(self) -> bool:
        return self.arch == "conv2d" or "coords" in self.inputs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PredictorConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown predictor config keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


class _ChannelNorm(nn.Module):
    """LayerNorm over channels of (B, C, *spatial): each token on its own, so padding cannot leak."""

    def __init__(self, c: int):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.movedim(1, -1)).movedim(-1, 1)


def _norm(kind: str, c: int, dims: int) -> nn.Module:
    if kind == "layer":
        return _ChannelNorm(c)
    if kind == "batch":
        return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(c)
    return nn.Identity()


class SeparableBlock(nn.Module):
    """depthwise conv (k) -> pointwise conv (1) -> norm -> activation, in 1-D or 2-D."""

    def __init__(self, c_in: int, c_out: int, cfg: PredictorConfig, dims: int):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        k = cfg.kernel_size
        self.depthwise = conv(c_in, c_in, k, padding=k // 2, groups=c_in)
        self.pointwise = conv(c_in, c_out, 1)
        self.norm = _norm(cfg.norm, c_out, dims)
        self.act = ACTIVATIONS[cfg.activation]()
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.norm(self.pointwise(self.depthwise(x)))))


class RelevancePredictor(nn.Module):
    """forward(x, mask, grid=None) -> (B, N_v) probabilities.

    x:    (B, C, N_v) float, C = config.in_channels; padded positions may hold anything
    mask: (B, N_v) bool, True on valid tokens (every row needs at least one)
    grid: (B, 3) long (t, h, w) per sample, needed by arch="conv2d" (t*h*w == valid count)
    Returns probabilities: 0 on padded positions, each row sums to 1 over its valid tokens.
    """

    def __init__(self, config: PredictorConfig):
        super().__init__()
        self.config = config
        dims = 1 if config.arch == "conv1d" else 2
        chans = [config.in_channels, *config.widths]
        self.blocks = nn.ModuleList(SeparableBlock(a, b, config, dims) for a, b in zip(chans[:-1], chans[1:]))
        self.head = (nn.Conv1d if dims == 1 else nn.Conv2d)(chans[-1], 1, 1)

    def logits(self, x: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N_v) scores before the softmax; padded positions are -inf."""
        if x.ndim != 3 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected x of shape (B, {self.config.in_channels}, N_v), got {tuple(x.shape)}")
        if mask.shape != (x.shape[0], x.shape[2]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match x {tuple(x.shape)}")
        mask = mask.bool()
        if self.config.arch == "conv1d":
            out = self._logits_1d(x, mask)
        else:
            if grid is None:
                raise ValueError("arch='conv2d' needs the (B, 3) visual grid (t, h, w) of each sample")
            out = self._logits_2d(x, mask, grid)
        return out.masked_fill(~mask, float("-inf"))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self.logits(x, mask, grid), dim=-1)

    def _logits_1d(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None, :].to(x.dtype)  # (B, 1, N)
        h = x * m
        for block in self.blocks:
            h = block(h) * m  # re-zero padding so the next conv reads zeros past each sample's end
        return self.head(h)[:, 0]  # (B, N)

    def _logits_2d(self, x: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Each sample's valid tokens as (t, C, h, w) frames; samples with equal grids share a batch."""
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
        for (t, h, w), idx in groups.items():
            n = t * h * w
            frames = x[idx, :, :n].reshape(len(idx), C, t, h, w).permute(0, 2, 1, 3, 4)
            hid = frames.reshape(len(idx) * t, C, h, w)
            for block in self.blocks:
                hid = block(hid)
            s = self.head(hid).reshape(len(idx), t * h * w)  # (b, t, 1, h, w) -> raster order
            out[idx, :n] = s
        return out
