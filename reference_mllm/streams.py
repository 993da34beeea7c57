"""Numbered streams of scenes and clips: item i of a split is a pure function of (seed, split, i).

Any process can draw any item, in any order. The splits are disjoint random streams: `train` trains the
reference MLLMs, `heldout` measures them (and is the default for label generation), `test` is left for
evaluation. The `synthetic_scenes` and `synthetic_video` sources (data_gen) are these streams as items.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from reference_mllm import clips, scenes
from reference_mllm.drawing import TOKEN_PX, check_size

SPLITS = {"train": 0, "heldout": 1, "test": 2}
CLIP_STREAM = 1_000_003  # clips draw from their own stream, never the image scenes'


def checked_sizes(split: str, sizes: Sequence[Sequence[int]], token_px: int = TOKEN_PX) -> list[tuple[int, int]]:
    """A stream's split and [[height, width], ...] checked (ValueError naming the source option)."""
    if split not in SPLITS:
        raise ValueError(f"source.split={split!r}: expected one of {', '.join(SPLITS)}")
    out = [tuple(int(v) for v in s) for s in sizes]
    if not out or any(len(s) != 2 for s in out):
        raise ValueError(f"source.sizes={sizes!r}: expected a non-empty list of [height, width]")
    for h, w in out:
        check_size(h, w, token_px)
    return out


class _Stream:
    """`num_items` items of one split; item i draws one of `sizes` ([[height, width], ...] px, multiples of
    token_px, the side of one visual token's cell) at random, then the item from the same Generator."""

    kind = "items"  # what the error messages call them
    salt: tuple[int, ...] = ()  # keeps one kind's stream apart from another's

    def __init__(self, num_items: int, seed: int, split: str, sizes: Sequence[Sequence[int]], config,
                 token_px: int = TOKEN_PX):
        self.token_px = int(token_px)
        self.sizes = checked_sizes(split, sizes, self.token_px)
        self.num_items, self.seed, self.split, self.config = int(num_items), int(seed), split, config

    def __len__(self) -> int:
        return self.num_items

    def _start(self, i: int) -> tuple[np.random.Generator, int, int]:
        """(the Generator of item i, its height, its width)."""
        if not 0 <= i < self.num_items:
            raise IndexError(f"item {i} out of range for {self.num_items} synthetic {self.kind}")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], *self.salt, i])
        h, w = self.sizes[int(rng.integers(len(self.sizes)))]
        return rng, h, w


class SceneStream(_Stream):
    """Scenes (`scenes.make_scene` with a `scenes.SceneConfig`)."""

    kind = "scenes"

    def scene(self, i: int) -> scenes.Scene:
        rng, h, w = self._start(i)
        return scenes.make_scene(rng, h, w, config=self.config, token_px=self.token_px)


class ClipStream(_Stream):
    """Clips (`clips.make_clip` with a `clips.ClipConfig`), from a stream of their own."""

    kind = "clips"
    salt = (CLIP_STREAM,)

    def clip(self, i: int) -> clips.Clip:
        rng, h, w = self._start(i)
        return clips.make_clip(rng, h, w, self.config, self.token_px)
