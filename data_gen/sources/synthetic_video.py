"""`synthetic_video`: drawn clips whose answer is visible in only some frames (`reference_mllm.clips`).

Item i is a pure function of (seed, split, i), like `synthetic_scenes` (same split streams); its
frames play at `reference_mllm.clips.FPS` (`Item.fps`). Its `extra` carries the ground truth, JSON-serialisable:
    gt_relevance: (t*h*w,) share of the named object's pixels in each video token (Qwen-VL layout:
                  frame pairs, `token_px` cells, t-major then row-major; sums to 1)
    grid:         [t, h, w] video tokens (t = num_frames / 2)
    target_frames: the frames the named object is visible in
    swap:         the same clip asked about the other named object (instruction-swap check)
"""
from __future__ import annotations

from typing import Sequence

from data_gen.sources.base import SOURCES, Item, Source
from data_gen.sources.synthetic_scenes import STREAM_LENGTH
from reference_mllm import clips
from reference_mllm.clips import FPS
from reference_mllm.streams import ClipStream

_DEFAULT = clips.ClipConfig()


def _gt(clip: clips.Clip, index: int) -> list[float]:
    return [round(float(v), 6) for v in clips.object_relevance(clip, index)]


@SOURCES.register("synthetic_video")
class SyntheticVideo(ClipStream, Source):
    scale_options = ("sizes", "num_frames")  # larger frames or more of them: more visual tokens
    cell_sized = True  # draws per visual-token cell: data_gen/eval pass the adapter's token_px
    unique_ids = True

    def __init__(self, num_items: int = STREAM_LENGTH, seed: int = 0, split: str = "heldout",
                 sizes: Sequence[Sequence[int]] = ((112, 112),), num_frames: int = _DEFAULT.num_frames,
                 num_objects: Sequence[int] = _DEFAULT.num_objects, target_frames: int = _DEFAULT.target_frames,
                 radius: Sequence[int] = _DEFAULT.radius, token_px: int = clips.TOKEN_PX):
        """sizes: [[height, width], ...] per frame in px, multiples of token_px; the rest is `ClipConfig`."""
        config = clips.ClipConfig(num_frames=int(num_frames), num_objects=tuple(num_objects),
                                         target_frames=int(target_frames), radius=tuple(radius))
        ClipStream.__init__(self, num_items, seed, split, sizes, config, token_px)

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
