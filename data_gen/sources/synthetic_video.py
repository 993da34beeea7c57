"""`synthetic_video`: drawn clips whose answer is visible in only some frames (`data_gen.video_scenes`).

Item i is a pure function of (seed, split, i), like `synthetic_scenes` (same split streams); its
frames play at `FPS` (`Item.fps`). Its `extra` carries the ground truth, JSON-serialisable:
    gt_relevance: (t*h*w,) share of the named object's pixels in each video token (Qwen-VL layout:
                  frame pairs, `token_px` cells, t-major then row-major; sums to 1)
    grid:         [t, h, w] video tokens (t = num_frames / 2)
    target_frames: the frames the named object is visible in
    swap:         the same clip asked about the other named object (instruction-swap check)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data_gen import video_scenes
from data_gen.sources.base import SOURCES, Item, Source
from data_gen.sources.synthetic_scenes import SPLITS, STREAM_LENGTH, checked_sizes

_DEFAULT = video_scenes.ClipConfig()
FPS = 2.0  # the clips' nominal frame rate: 8 frames = 4 seconds


def _gt(clip: video_scenes.Clip, index: int) -> list[float]:
    return [round(float(v), 6) for v in video_scenes.object_relevance(clip, index)]


@SOURCES.register("synthetic_video")
class SyntheticVideo(Source):
    scale_options = ("sizes", "num_frames")  # larger frames or more of them: more visual tokens
    cell_sized = True  # draws per visual-token cell: data_gen/eval pass the adapter's token_px
    unique_ids = True

    def __init__(self, num_items: int = STREAM_LENGTH, seed: int = 0, split: str = "heldout",
                 sizes: Sequence[Sequence[int]] = ((112, 112),), num_frames: int = _DEFAULT.num_frames,
                 num_objects: Sequence[int] = _DEFAULT.num_objects, target_frames: int = _DEFAULT.target_frames,
                 radius: Sequence[int] = _DEFAULT.radius, token_px: int = video_scenes.TOKEN_PX):
        """sizes: [[height, width], ...] per frame in px, multiples of token_px; the rest is `ClipConfig`."""
        self.token_px = int(token_px)
        self.sizes = checked_sizes(split, sizes, self.token_px)
        self.num_items, self.seed, self.split = int(num_items), int(seed), split
        self.config = video_scenes.ClipConfig(num_frames=int(num_frames), num_objects=tuple(num_objects),
                                              target_frames=int(target_frames), radius=tuple(radius))

    def __len__(self) -> int:
        return self.num_items

    def clip(self, i: int) -> video_scenes.Clip:
        if not 0 <= i < self.num_items:
            raise IndexError(f"item {i} out of range for {self.num_items} synthetic clips")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], 1_000_003, i])  # not the image scenes' stream
        h, w = self.sizes[int(rng.integers(len(self.sizes)))]
        return video_scenes.make_clip(rng, h, w, self.config, self.token_px)

    def __getitem__(self, i: int) -> Item:
        c = self.clip(i)
        q, other = c.questions
        extra = {"gt_relevance": _gt(c, q.target), "grid": list(c.grid), "target": q.target,
                 "target_frames": list(q.frames), "objects": [o.to_dict() for o in c.objects],
                 "question_type": "shape", "image_size": [c.height, c.width],
                 "swap": {"instruction": other.text, "answer": other.answer, "target": other.target,
                          "question_type": "shape", "gt_relevance": _gt(c, other.target)}}
        return Item(id=f"video-{self.split}-s{self.seed}-{i:07d}", instruction=q.text, answer=q.answer,
                    video=c.frames, modality="video", fps=FPS, extra=extra)
