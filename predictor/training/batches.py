"""Batch building, the same for both data stores: a decoded sample -> an `Example` (predictor inputs built
once) -> padded batches with masks.

Batch (a dict, `collate`):
    x         (B, C, N) float32  predictor input (`predictor.features.build_features`), 0 on padding
    relevance (B, N) float32     oracle R_v, 0 on padding
    attn      (B, N) float32     raw layer-0 attention (for the attention-only reference), 0 on padding
    mask      (B, N) bool        True on each sample's N_v valid tokens (they come first)
    grid      (B, 3) long        (t, h, w) per sample, t*h*w == N_v
    spans     list[list]         per sample its images/videos (start, stop, (t, h, w)) (`predictor.schema.visual_spans`):
                                 one span unless the sample's prompt had several (meta.segments "visual")
    keys      list[str]          sample keys
N is the longest N_v in the batch. A figure batch (`figure_batch_of`) adds "thumbnails" (list[bytes | None])
and "instructions" (list[str]).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from predictor.features import build_segment_features
from predictor.schema import Sample, visual_spans


@dataclass
class Example:
    key: str
    x: torch.Tensor  # (C, N_v)
    relevance: torch.Tensor  # (N_v,)
    attn: torch.Tensor  # (N_v,)
    grid: tuple[int, int, int]
    spans: list = field(default_factory=list)
    thumbnail: bytes | None = None
    instruction: str = ""  # figure samples only (their figures show the question)


def make_example(sample: Sample, inputs: list[str], keep_thumbnail: bool = False) -> Example:
    """The predictor inputs `inputs` (C channels) of one sample; thumbnail and question only for figures."""
    spans = [(s.start, s.stop, s.grid) for s in visual_spans(sample.meta.get("segments"), sample.grid,
                                                             sample.num_visual)]
    x = torch.cat(build_segment_features(inputs, sample.attn, spans, sample.attn_heads), dim=-1)
    return Example(sample.key, x, sample.relevance, sample.attn, sample.grid, spans,
                   sample.thumbnail if keep_thumbnail else None,
                   str(sample.meta.get("instruction", "")) if keep_thumbnail else "")


def collate(items: list[Example]) -> dict[str, Any]:
    """Pad to the longest N_v of the batch; see the module docstring for the shapes."""
    assert items, "collate got an empty batch (neither epoch plan ever yields one)"
    B, C = len(items), items[0].x.shape[0]
    N = max(it.x.shape[1] for it in items)
    x = torch.zeros(B, C, N)
    rel = torch.zeros(B, N)
    attn = torch.zeros(B, N)
    mask = torch.zeros(B, N, dtype=torch.bool)
    for b, it in enumerate(items):
        n = it.x.shape[1]
        x[b, :, :n] = it.x
        rel[b, :n] = it.relevance
        attn[b, :n] = it.attn
        mask[b, :n] = True
    grid = torch.tensor([it.grid for it in items], dtype=torch.long)
    return {"x": x, "relevance": rel, "attn": attn, "mask": mask, "grid": grid, "keys": [it.key for it in items],
            "spans": [it.spans for it in items]}


def figure_batch_of(items: list[Example]) -> dict[str, Any]:
    """A padded batch of these examples with what the figures print beside them: thumbnails, questions."""
    batch = collate(items)
    batch["thumbnails"] = [it.thumbnail for it in items]
    batch["instructions"] = [it.instruction for it in items]
    return batch
