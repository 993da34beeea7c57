"""Baselines that are not rankings: cluster aggregation and image downsampling.

Cluster aggregation (Omri, Shroff, Tambe, arXiv 2504.17892): k-means over the projected visual
tokens (the LLM's input embeddings), each cluster replaced by the mean of its members. Training-free
and instruction-agnostic. Exactly k clusters, so exactly k tokens, as every other method keeps: with
fewer distinct tokens than k (a plain background) clusters of identical tokens are split.
Positions: each cluster's mean token takes the sequence slot and the original rotary position
ids (1-D, or Qwen2-VL's 3-D (t, h, w)) of the member nearest to the cluster centroid, so every
aggregated token sits at a real grid location and the sequence stays in raster order.

Downsampling: resize the image so that the model's own preprocessing yields about `keep` times
the visual tokens, then run the model unpruned. The model sees the whole image at lower detail;
the number of tokens actually produced is reported, since the processor rounds sizes.
"""
from __future__ import annotations

import math

import torch

from predictor.runtime.scorers import ScoreContext, Selection, segment_budgets, visual_spans_of
from predictor.schema import VisualSpan


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding. x: (N, D) -> (assign (N,) long, centroids (k, D)) float32.
    Every one of the min(k, N) clusters has a member, even with fewer distinct points than k (see `_fill_empty`)."""
    x = x.float()
    n = x.shape[0]
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    idx = [int(torch.randint(n, (1,), generator=g))]
    d2 = ((x - x[idx[0]]) ** 2).sum(-1)
    for _ in range(1, k):
        if float(d2.sum()) <= 0:  # fewer distinct points than k: take the next unused ones
            rest = [i for i in range(n) if i not in set(idx)]
            idx.append(rest[0])
        else:
            idx.append(int(torch.multinomial((d2 / d2.sum()).cpu(), 1, generator=g)))
        d2 = torch.minimum(d2, ((x - x[idx[-1]]) ** 2).sum(-1))
    c = x[idx].clone()
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(-1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        new = new / counts.clamp_min(1)[:, None]
        new[empty] = c[empty]  # an empty cluster keeps its centroid (and gets a point below if still empty)
        if torch.allclose(new, c):
            break
        c = new
    return _fill_empty(x, torch.cdist(x, c).argmin(-1), c, k)


def _fill_empty(x: torch.Tensor, assign: torch.Tensor, c: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a point into each empty cluster: the one farthest from its own centroid, from a cluster that keeps
    a member (as scikit-learn relocates empty clusters; ties: the lowest index). Identical points (a plain
    background) make clusters with equal centroids, whose nearest-centroid assignment leaves all but one
    empty; the baseline keeps one token per cluster, so an empty cluster would keep fewer than the budget."""
    assign, c = assign.clone(), c.clone()
    counts = torch.bincount(assign, minlength=k)
    spread = (x - c[assign]).norm(dim=-1)  # the centroids of non-empty clusters do not move here
    for e in (counts == 0).nonzero().flatten().tolist():
        i = int(spread.masked_fill(counts[assign] < 2, -1.0).argmax())  # a cluster's last member stays; ties: first
        counts[assign[i]] -= 1
        assign[i], counts[e], c[e], spread[i] = e, 1, x[i], 0.0
    return assign, c


class ClusterAggregation:
    name = "cluster"

    def __init__(self, iters: int = 25, seed: int = 0):
        self.iters, self.seed = iters, seed

    @torch.no_grad()
    def select(self, ctx: ScoreContext, k: int, min_per_segment: int = 0) -> Selection:
        """k clusters in all, made image by image (video by video): a cluster never mixes two images. Each
        image gets a share of k in proportion to its tokens, at least min(min_per_segment, its tokens)
        (`segment_budgets`)."""
        v = ctx.visual_embeds  # (N_v, D)
        n = v.shape[0]
        prepared = getattr(ctx, "prepared", None)
        spans = [VisualSpan(0, n, (1, 1, n))] if prepared is None else visual_spans_of(prepared)
        budgets = segment_budgets([sp.stop - sp.start for sp in spans], k, min_per_segment)
        kept = torch.zeros(n, dtype=torch.bool, device=v.device)
        ds = ctx.deepstack  # (L, N_v, D): a cluster's DeepStack features are its members' mean too
        slots, means, ds_means = [], [], []
        for sp, k_j in zip(spans, budgets):
            if k_j == 0:
                continue
            assign, _ = kmeans(v[sp.start:sp.stop], k_j, self.iters, self.seed)
            for c in assign.unique():
                members = (assign == c).nonzero().squeeze(-1) + sp.start
                mean = v[members].float().mean(0)
                slot = members[(v[members].float() - mean).norm(dim=-1).argmin()]
                slots.append(int(slot))
                means.append(mean)
                if ds is not None:
                    ds_means.append(ds[:, members.to(ds.device)].float().mean(1))
        order = torch.tensor(slots).argsort()
        kept[torch.tensor(slots, device=v.device)] = True
        replace = torch.stack(means)[order].to(v.dtype)  # kept slots are filled in sequence order
        replace_ds = None if ds is None else torch.stack(ds_means, dim=1)[:, order].to(ds.dtype)
        return Selection(kept=kept, replace=replace, replace_deepstack=replace_ds)


def downsample_size(width: int, height: int, keep: float) -> tuple[int, int]:
    """Image size with about `keep` times the pixels (hence visual tokens), aspect ratio kept."""
    s = math.sqrt(keep)
    return max(1, round(width * s)), max(1, round(height * s))


def downsample_image(image, keep: float):
    """PIL image resized to about `keep` times its area (bicubic); keep=1 returns it unchanged."""
    if keep >= 1:
        return image
    from PIL import Image

    return image.resize(downsample_size(*image.size, keep), Image.BICUBIC)


def downsample_video(frames: list, fps: float | None, keep: float, temporal_patch: int = 2) -> tuple[list, float | None]:
    """A clip with about `keep` times the visual tokens, fewer frames first, then smaller ones: (frames, fps).

    Time: every k-th frame, keeping at least one frame group (`temporal_patch` frames, as Qwen2-VL merges
    frame pairs), so that the kept frames still span the clip and their rate is fps / k. Space: whatever
    ratio time cannot reach, each remaining frame takes as `downsample_image` does.
    """
    if keep >= 1:
        return list(frames), fps
    groups = max(1, len(frames) // temporal_patch)
    keep_groups = max(1, min(groups, round(groups * keep)))
    step = groups / keep_groups
    picked = [frames[min(len(frames) - 1, int((g + 0.5) * step) * temporal_patch + j)]  # centred in each stretch
              for g in range(keep_groups) for j in range(temporal_patch)]
    space = keep * groups / keep_groups
    return ([downsample_image(f, space) for f in picked] if space < 1 else picked,
            fps / step if fps is not None else None)
