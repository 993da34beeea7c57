"""Planted-pattern shards for tests and benchmarks, written through `predictor.schema.encode`
and webdataset's ShardWriter, exactly as `data_gen` writes real ones. A test fixture, not part of the
library: tests import it as `synthetic_shards` (pytest puts tests/ on sys.path), benchmarks through
benchmarks/_planted.py.

The pattern: on a (1, h, w) grid the oracle relevance is a sharp blob at a random place; the
"layer-0 attention" holds a weaker, blurred copy of that blob under a strong bias towards the end
of the sequence plus noise (early-layer attention is position-biased). A predictor that learns
to undo the bias and sharpen the blob beats using the attention directly; random scores reach
recall@k == k.

The temporal pattern (`temporal=True`, for video grids, t > 1): the object is in only a few
consecutive frames (t // 4, at least 1) while a distractor that layer 0 sees just as strongly
drifts through every frame. Relevance is the object's frames only; telling it from the
distractor needs the neighbouring frames, which a 1-D net over raster order cannot see.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from predictor.schema import EXT_REL, Sample, _npy_bytes, _npy_load, encode, make_meta


def planted_sample(key: str, grid: tuple[int, int, int], rng: np.random.Generator,
                   signal: float = 1.0, num_heads: int = 0) -> Sample:
    t, h, w = grid
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cy, cx = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    rel = np.exp(-d2 / (2 * 1.0**2)) + 0.01 * rng.random((h, w))  # sharp object
    blur = np.exp(-d2 / (2 * 2.0**2))  # what layer 0 sees of it
    pos = np.linspace(0, 1, h * w).reshape(h, w)
    attn = np.exp(2.0 * pos) * (1 + 0.3 * rng.standard_normal((h, w))).clip(0.1) + signal * 3 * blur
    rel = np.tile(rel.reshape(-1), t).astype(np.float32)
    attn = np.tile(attn.reshape(-1), t)
    attn = (attn / attn.sum()).astype(np.float32)
    heads = None
    if num_heads:
        heads = torch.from_numpy(np.stack([attn * rng.uniform(0.5, 1.5, attn.shape) for _ in range(num_heads)]))
    meta = make_meta(model_id="synthetic/planted", adapter="synthetic", explainer="planted",
                     modality="image" if t == 1 else "video", grid=list(grid),
                     instruction="where is the object?", reference_answer="here", generated_answer="here",
                     correct=True, answer_tokens=1)
    return Sample(key=key, attn=torch.from_numpy(attn), relevance=torch.from_numpy(rel), meta=meta,
                  attn_heads=heads)


def planted_clip(key: str, grid: tuple[int, int, int], rng: np.random.Generator,
                 signal: float = 1.0, num_heads: int = 0) -> Sample:
    """The temporal pattern on a (t, h, w) grid (see the module docstring)."""
    t, h, w = grid
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")

    def blob(cy: float, cx: float, width: float) -> np.ndarray:  # (h, w)
        return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))

    k = max(1, t // 4)
    first = int(rng.integers(0, t - k + 1))
    oy, ox = rng.uniform(0, h - 1), rng.uniform(0, w - 1)  # the object stays put while it is there
    dy, dx = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
    vy, vx = rng.uniform(-1, 1, 2)  # the distractor moves up to one token per frame
    rel = 0.01 * rng.random((t, h, w))
    seen = np.zeros((t, h, w))
    for f in range(t):
        y, x = np.clip(dy + vy * f, 0, h - 1), np.clip(dx + vx * f, 0, w - 1)
        seen[f] += blob(y, x, 2.0)
        if first <= f < first + k:
            rel[f] += blob(oy, ox, 1.0)
            seen[f] += blob(oy, ox, 2.0)
    pos = np.linspace(0, 1, t * h * w).reshape(t, h, w)
    attn = np.exp(2.0 * pos) * (1 + 0.3 * rng.standard_normal((t, h, w))).clip(0.1) + signal * 3 * seen
    attn = (attn / attn.sum()).reshape(-1).astype(np.float32)
    heads = None
    if num_heads:
        heads = torch.from_numpy(np.stack([attn * rng.uniform(0.5, 1.5, attn.shape) for _ in range(num_heads)]))
    meta = make_meta(model_id="synthetic/planted", adapter="synthetic", explainer="planted", modality="video",
                     grid=list(grid), instruction="where was the object?", reference_answer="here",
                     generated_answer="here", correct=True, answer_tokens=1)
    return Sample(key=key, attn=torch.from_numpy(attn), relevance=torch.from_numpy(rel.reshape(-1).astype(np.float32)),
                  meta=meta, attn_heads=heads)


def write_synthetic_shards(out: str | Path, num_samples: int, grids: list[tuple[int, int, int]] | None = None,
                           samples_per_shard: int = 256, seed: int = 0, num_heads: int = 0,
                           prefix: str = "synthetic", temporal: bool = False, invalid_every: int = 0) -> list[Path]:
    """Write `num_samples` planted samples to `out/<prefix>-%06d.tar`; returns the shard paths.

    grids: the (t, h, w) choices, drawn uniformly per sample (default: 8x8 = 64 tokens); t > 1 makes
    video samples. temporal: the object in a few frames only (`planted_clip`; every grid needs t > 1).
    invalid_every: n > 0 makes every n-th sample undecodable (`with_nan_relevance`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grids = grids or [(1, 8, 8)]
    if temporal and any(g[0] < 2 for g in grids):
        raise ValueError(f"temporal=True needs video grids (t >= 2 frames), found grids={grids}")
    make = planted_clip if temporal else planted_sample
    rng = np.random.default_rng(seed)
    pattern = str(out / f"{prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=samples_per_shard, verbose=0) as sink:
        for i in range(num_samples):
            grid = tuple(grids[rng.integers(len(grids))])
            sample = encode(make(f"{prefix}{seed}_{i:07d}", grid, rng, num_heads=num_heads))
            sink.write(with_nan_relevance(sample) if invalid_every and i % invalid_every == invalid_every - 1
                       else sample)
    return sorted(out.glob(f"{prefix}-*.tar"))


def with_nan_relevance(encoded: dict) -> dict:
    """An encoded sample whose relevance is NaN: its meta.json reads (an index counts it), decoding rejects it."""
    rel = _npy_load(encoded["__key__"], EXT_REL, encoded[EXT_REL])
    return {**encoded, EXT_REL: _npy_bytes(np.full_like(rel, np.nan))}


def write_damaged_shards(out: str | Path) -> None:
    """The bad-input case of the data modules: a.tar (10 good samples), b.tar (5 good + "badsample", whose
    relevance is NaN) and c.tar (5 good, truncated mid-file)."""
    out = Path(out)
    rng = np.random.default_rng(0)
    good = [encode(planted_sample(f"good{i}", (1, 4, 4), rng)) for i in range(20)]
    bad = with_nan_relevance(encode(planted_sample("badsample", (1, 4, 4), rng)))
    for name, samples in (("a", good[:10]), ("b", good[10:15] + [bad]), ("c", good[15:])):
        with wds.TarWriter(str(out / f"{name}.tar")) as w:
            for s in samples:
                w.write(s)
    data = (out / "c.tar").read_bytes()
    (out / "c.tar").write_bytes(data[: len(data) // 2 + 100])
