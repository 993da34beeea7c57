"""`synthetic_scenes`: drawn scenes whose answer-bearing object, hence true relevance, is known.

Item i is a pure function of (seed, split, i) (`reference_mllm.streams`): any rank can draw any item, in any
order. The splits are disjoint random streams: `train` trains the reference MLLM, `heldout` measures it
(and is the default for label generation), `test` is left for evaluation. The scene defaults
(`reference_mllm.scenes.SceneConfig`) are the ones the committed reference MLLM was trained on.

Each item's `extra` carries the ground truth (JSON-serialisable, goes into shard metadata):
    gt_relevance: (h*w,) fraction of the answer-bearing object's pixels inside each visual token
                  (row-major over the grid; sums to 1)
    grid:         [1, h, w] visual tokens of `token_px` px (28: Qwen2-VL's 14 px patches merged 2x2; data_gen and
                  eval set the model's own, e.g. 32 for Qwen3-VL)
    objects, target, question_type: the scene description
    swap:         a second question about another object of the same image, for the instruction-swap
                  check: {instruction, answer, target, question_type, gt_relevance}

`mode` (default "single": the above) draws prompts of the other kinds as `Item.messages`:
    two_images   scene i and another scene of the stream (the first after i that has no object with the
                 word naming i's target, so the question has one answer across both), in an order that
                 alternates with i: the named object is in the first or the second image. gt_relevance covers
                 both images' tokens (zeros on the other one); extra.target_image says which.
    multi_turn   scene i's two questions as a conversation: the first with its answer, then the second,
                 which is the item's question; gt_relevance is the second question's object and
                 extra.previous {instruction, answer, gt_relevance} the first's (the swap check across turns:
                 the kept tokens must follow the current question).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data_gen.sources.base import SOURCES, Item, Source
from reference_mllm import prompts, scenes
from reference_mllm.streams import SceneStream

_DEFAULT = scenes.SceneConfig()


def _gt(scene: scenes.Scene, index: int) -> list[float]:
    return [round(float(v), 6) for v in scenes.object_relevance(scene, index)]


# Items are drawn on demand, so the stream is long: a run takes its first `max_items` (data_gen's and
# eval's one knob for how many items to use); num_items only matters to code that wants a short stream.
STREAM_LENGTH = 1_000_000
MODES = ("single", "two_images", "multi_turn")


@SOURCES.register("synthetic_scenes")
class SyntheticScenes(SceneStream, Source):
    scale_options = ("sizes",)  # larger images, more cells: more visual tokens
    cell_sized = True  # draws per visual-token cell: data_gen/eval pass the adapter's token_px
    unique_ids = True  # ids are (split, seed, index): data_gen need not draw every scene to look for repeats

    def __init__(self, num_items: int = STREAM_LENGTH, seed: int = 0, split: str = "heldout",
                 sizes: Sequence[Sequence[int]] = ((224, 224),),
                 num_objects: Sequence[int] = _DEFAULT.num_objects, radius: Sequence[int] = _DEFAULT.radius,
                 question_types: Sequence[str] = _DEFAULT.question_types, clutter: int = _DEFAULT.clutter,
                 placement: str = _DEFAULT.placement, token_px: int = scenes.TOKEN_PX, mode: str = "single"):
        """sizes: [[height, width], ...] in px, multiples of token_px (the side of one visual token's cell);
        item i draws one of them at random. The rest is `reference_mllm.scenes.SceneConfig` (objects per scene,
        their size, question types, clutter, placement)."""
        if num_items < 0:
            raise ValueError(f"source.num_items={num_items}: expected >= 0")
        config = scenes.SceneConfig(num_objects=tuple(num_objects), radius=tuple(radius),
                                    question_types=tuple(question_types), clutter=int(clutter),
                                    placement=str(placement))
        if mode not in MODES:
            raise ValueError(f"source.mode={mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        SceneStream.__init__(self, num_items, seed, split, sizes, config, token_px)
        scenes.make_scene(np.random.default_rng(0), *self.sizes[0], config=self.config,
                          token_px=self.token_px)  # bad settings fail here

    def __getitem__(self, i: int) -> Item:
        if self.mode == "two_images":
            return self._two_images(i)
        if self.mode == "multi_turn":
            return self._multi_turn(i)
        s = self.scene(i)
        extra = {
            "gt_relevance": _gt(s, s.target),
            "grid": list(s.grid),
            "objects": [o.to_dict() for o in s.objects],
            "target": s.target,
            "question_type": s.question_type,
            "image_size": [s.height, s.width],
        }
        if len(s.questions) > 1:
            q = s.questions[1]
            extra["swap"] = {"instruction": q.text, "answer": q.answer, "target": q.target,
                             "question_type": q.kind, "gt_relevance": _gt(s, q.target)}
        return Item(id=f"scenes-{self.split}-s{self.seed}-{i:07d}", instruction=s.question, answer=s.answer,
                    image=s.image, extra=extra)

    def _two_images(self, i: int) -> Item:
        c = prompts.two_images(self, i)
        q = c.question
        extra = {"gt_relevance": [round(float(v), 6) for v in c.relevance()], "target_image": c.target_image,
                 "partner": c.partner, "question_type": q.kind, "grids": [list(p.grid) for p in c.drawn]}
        return Item(id=f"scenes2-{self.split}-s{self.seed}-{i:07d}", instruction=q.text, answer=q.answer,
                    image=c.images[0], messages=c.messages, extra=extra)

    def _multi_turn(self, i: int) -> Item:
        s = self.scene(i)
        if len(s.questions) < 2:
            raise ValueError(f"scene {i} has {len(s.objects)} object(s): a conversation needs two questions")
        c = prompts.multi_turn(s)
        q0, q1 = c.previous, c.question
        extra = {"gt_relevance": _gt(s, q1.target), "grid": list(s.grid), "question_type": q1.kind,
                 "previous": {"instruction": q0.text, "answer": q0.answer, "gt_relevance": _gt(s, q0.target)}}
        return Item(id=f"scenesmt-{self.split}-s{self.seed}-{i:07d}", instruction=q1.text, answer=q1.answer,
                    image=s.image, messages=c.messages, extra=extra)
