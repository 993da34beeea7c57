"""`synthetic_scenes`: drawn scenes whose answer-bearing object, hence true relevance, is known.

Item i is a pure function of (seed, split, i): any rank can draw any item, in any order. The
splits are disjoint random streams: `train` trains the reference MLLM, `heldout` measures it
(and is the default for label generation), `test` is left for evaluation.

Each item's `extra` carries the ground truth (JSON-serialisable, goes into shard metadata):
    gt_relevance: (h*w,) fraction of the answer-bearing object's pixels inside each visual token
                  (row-major over the grid; sums to 1)
    grid:         [1, h, w] visual tokens after Qwen2-VL's 2x2 merge (28 px per token side)
    objects, target, question_type: the scene description
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data_gen import scenes
from data_gen.sources.base import SOURCES, Item, Source

SPLITS = {"train": 0, "heldout": 1, "test": 2}


@SOURCES.register("synthetic_scenes")
class SyntheticScenes(Source):
    def __init__(self, num_items: int = 4000, seed: int = 0, split: str = "heldout",
                 sizes: Sequence[Sequence[int]] = ((224, 224),), num_objects: Sequence[int] = (3, 4),
                 radius: Sequence[int] = scenes.CELL_RADIUS, question_types: Sequence[str] = scenes.QUESTION_TYPES,
                 clutter: int = 6, placement: str = "cell"):
        """sizes: [[height, width], ...] in px, multiples of 28; item i draws one of them at random.
        placement: "cell" (each object inside one visual token's cell) or "free" (see data_gen.scenes)."""
        if split not in SPLITS:
            raise ValueError(f"source.split={split!r}: expected one of {', '.join(SPLITS)}")
        if num_items < 0:
            raise ValueError(f"source.num_items={num_items}: expected >= 0")
        self.sizes = [tuple(int(v) for v in s) for s in sizes]
        if not self.sizes or any(len(s) != 2 for s in self.sizes):
            raise ValueError(f"source.sizes={sizes!r}: expected a non-empty list of [height, width]")
        for h, w in self.sizes:
            scenes.check_size(h, w)
        self.num_items, self.seed, self.split = int(num_items), int(seed), split
        self.kwargs = dict(num_objects=tuple(num_objects), radius=tuple(radius),
                           question_types=tuple(question_types), clutter=int(clutter), placement=str(placement))
        scenes.make_scene(np.random.default_rng(0), *self.sizes[0], **self.kwargs)  # bad settings fail here, not mid-run

    def __len__(self) -> int:
        return self.num_items

    def scene(self, i: int) -> scenes.Scene:
        if not 0 <= i < self.num_items:
            raise IndexError(f"item {i} out of range for {self.num_items} synthetic scenes")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], i])
        h, w = self.sizes[int(rng.integers(len(self.sizes)))]
        return scenes.make_scene(rng, h, w, **self.kwargs)

    def __getitem__(self, i: int) -> Item:
        s = self.scene(i)
        target = s.objects[s.target]
        relevance = scenes.relevance_from_mask(scenes.object_mask(target, s.height, s.width))
        return Item(
            id=f"scenes-{self.split}-s{self.seed}-{i:07d}",
            instruction=s.question,
            answer=s.answer,
            image=s.image,
            extra={
                "gt_relevance": [round(float(v), 6) for v in relevance],
                "grid": list(s.grid),
                "objects": [o.to_dict() for o in s.objects],
                "target": s.target,
                "question_type": s.question_type,
                "image_size": [s.height, s.width],
            },
        )
