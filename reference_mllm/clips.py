"""Procedurally drawn video clips where the answer is in only some frames (no model, no downloads).

A clip is `num_frames` frames over one static background. Distractor objects move from cell to cell
between frames; the named object (a colour no other object in the clip has) is visible in only
`target_frames` consecutive frames, standing still, and the question asks for its shape: "What
shape was the red object?". So a method that keeps tokens without reading the question, or keeps
the right place at the wrong time, drops it. A second named object, visible in other frames, gives
the instruction-swap question. Everything follows from one numpy Generator.

Visual tokens follow Qwen2-VL's video layout: frames are merged in pairs (temporal patch 2), each
pair into (h, w) cells of `token_px` (28 by default; the adapter's, e.g. 32 for Qwen3-VL), token order
t-major then row-major. The ground truth of a token
(t, y, x) is the share of the named object's pixels, over every frame it is visible in, that fall
in cell (y, x) of frames 2t and 2t + 1. Objects use `reference_mllm.drawing`'s shapes, colours, cell
placement and rasteriser, so the ground truth can be recomputed from the drawn frames.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from reference_mllm import drawing
from reference_mllm.drawing import COLOURS, SHAPES, TOKEN_PX, SceneObject

TEMPORAL_PATCH = 2  # Qwen2-VL / Qwen2.5-VL merge frames in pairs
FPS = 2.0  # the clips' nominal frame rate: 8 frames = 4 seconds


@dataclass(frozen=True)
class ClipConfig:
    """How clips are drawn (the `synthetic_video` source's options)."""

    num_frames: int = 8  # a multiple of TEMPORAL_PATCH
    num_objects: tuple[int, int] = (6, 10)  # [min, max] distractors plus the two named objects
    target_frames: int = 2  # frames in which each named object is visible (consecutive)
    radius: tuple[int, int] = drawing.CELL_RADIUS

    def __post_init__(self) -> None:
        for name in ("num_objects", "radius"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.num_frames < TEMPORAL_PATCH or self.num_frames % TEMPORAL_PATCH:
            raise ValueError(f"num_frames={self.num_frames}: expected a positive multiple of {TEMPORAL_PATCH} "
                             f"(Qwen2-VL merges frames in pairs)")
        if not 1 <= self.target_frames < self.num_frames:
            raise ValueError(f"target_frames={self.target_frames}: expected 1 <= target_frames < num_frames="
                             f"{self.num_frames}, so that the named object is absent from some frames")
        lo, hi = self.num_objects
        if not 2 <= lo <= hi:
            raise ValueError(f"num_objects={list(self.num_objects)}: expected [min, max] with 2 <= min <= max "
                             f"(two named objects)")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class ClipQuestion:
    target: int  # index into the clip's objects
    frames: tuple[int, ...]  # the frames it is visible in
    text: str
    answer: str


@dataclass
class Clip:
    height: int
    width: int
    frames: list[Image.Image]  # num_frames RGB frames
    objects: list[SceneObject]  # every object once, at its first position
    tracks: list[list[tuple[int, int] | None]]  # per object, per frame: its (cx, cy) or None (not visible)
    questions: list[ClipQuestion] = field(default_factory=list)  # [the item's, the swap check's]
    token_px: int = TOKEN_PX  # side of one visual token's cell

    @property
    def grid(self) -> tuple[int, int, int]:
        return len(self.frames) // TEMPORAL_PATCH, self.height // self.token_px, self.width // self.token_px


def _at(obj: SceneObject, cx: int, cy: int) -> SceneObject:
    return SceneObject(obj.shape, obj.colour, obj.fill, cx, cy, obj.r)


def object_relevance(clip: Clip, index: int) -> np.ndarray:
    """(t*h*w,) float32: the share of object `index`'s pixels, over the frames it is visible in, in each token."""
    t, h, w = clip.grid
    counts = np.zeros((t, h, w))
    obj = clip.objects[index]
    for f, pos in enumerate(clip.tracks[index]):
        if pos is not None:
            counts[f // TEMPORAL_PATCH] += drawing.cell_counts(
                drawing.object_mask(_at(obj, *pos), clip.height, clip.width), clip.token_px)
    counts = counts.reshape(-1)
    return (counts / max(counts.sum(), 1.0)).astype(np.float32)


def make_clip(rng: np.random.Generator, height: int = 112, width: int = 112, config: ClipConfig = ClipConfig(),
              token_px: int = TOKEN_PX) -> Clip:
    """Draw one clip and its questions (see the module docstring); token_px: the model's visual-token cell."""
    drawing.check_size(height, width, token_px)
    h, w = height // token_px, width // token_px
    lo, hi = config.num_objects
    n = min(int(rng.integers(lo, hi + 1)), h * w)
    if n < 2:
        raise ValueError(f"clip size {height}x{width} has {h * w} cell(s): two named objects need at least 2")
    colours = [str(c) for c in rng.choice(list(COLOURS), size=2, replace=False)]  # the named objects' own colours
    free = [c for c in COLOURS if c not in colours]
    colours += [free[int(rng.integers(len(free)))] for _ in range(n - 2)]
    shapes = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(n)]
    fills = drawing.fills(rng, colours)
    radii = [int(rng.integers(config.radius[0], config.radius[1] + 1)) for _ in range(n)]

    # the two named objects: one cell each, visible in their own runs of frames
    starts = [int(rng.integers(0, config.num_frames - config.target_frames + 1)) for _ in range(2)]
    visible = [set(range(s, s + config.target_frames)) for s in starts]
    home = [int(c) for c in rng.choice(h * w, size=2, replace=False)]
    tracks: list[list[tuple[int, int] | None]] = []
    for k in range(2):
        pos = drawing.cell_centre(rng, home[k], w, radii[k], token_px)
        tracks.append([pos if f in visible[k] else None for f in range(config.num_frames)])
    pairs = [{f // TEMPORAL_PATCH for f in v} for v in visible]
    # distractors: a free cell per frame (never a named object's cell in its frame pairs), so they move
    for k in range(2, n):
        track = []
        for f in range(config.num_frames):
            # a named object's cell stays clear in both frames of each pair it shows in: a video token
            # merges a frame pair, and a distractor there would mix two objects in the named one's token
            taken = ({home[j] for j in range(2) if f // TEMPORAL_PATCH in pairs[j]}
                     | set(_cells_at(tracks[2:k], f, w, token_px)))
            cells = [c for c in range(h * w) if c not in taken]
            track.append(drawing.cell_centre(rng, cells[int(rng.integers(len(cells)))], w, radii[k], token_px)
                         if cells else None)
        tracks.append(track)

    first = [next(p for p in tr if p is not None) for tr in tracks]
    objects = [SceneObject(shapes[k], colours[k], fills[k], *first[k], radii[k]) for k in range(n)]
    background = drawing.background(rng, height, width)
    frames = []
    for f in range(config.num_frames):
        img = Image.fromarray(background)
        draw = ImageDraw.Draw(img)
        for k in range(n):
            if tracks[k][f] is not None:
                drawing.draw_shape(draw, _at(objects[k], *tracks[k][f]), objects[k].fill)
        frames.append(img)
    questions = [ClipQuestion(k, tuple(sorted(visible[k])), f"What shape was the {colours[k]} object?", shapes[k])
                 for k in range(2)]
    return Clip(height, width, frames, objects, tracks, questions, token_px)


def _cells_at(tracks: list[list[tuple[int, int] | None]], f: int, w: int, px: int) -> list[int]:
    return [(p[1] // px) * w + p[0] // px for tr in tracks if (p := tr[f]) is not None]


def token_labels(clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    """Per video token (t, y, x), the colour and shape index of the object covering most of cell (y, x) in
    frame 2t or 2t + 1 (as `reference_mllm.scenes.token_labels` for one image; the reference model's auxiliary loss).

    -> (colour (t*h*w,) int64, shape (t*h*w,) int64); 0 = background, i+1 = COLOURS/SHAPES entry i.
    """
    t, h, w = clip.grid
    best = np.zeros((t, h * w))
    colour = np.zeros((t, h * w), dtype=np.int64)
    shape = np.zeros((t, h * w), dtype=np.int64)
    colour_ids = {c: i + 1 for i, c in enumerate(COLOURS)}
    shape_ids = {s: i + 1 for i, s in enumerate(SHAPES)}
    for obj, track in zip(clip.objects, clip.tracks):
        for f, pos in enumerate(track):
            if pos is None:
                continue
            share = drawing.cell_counts(drawing.object_mask(_at(obj, *pos), clip.height, clip.width), clip.token_px)
            share = share.reshape(-1) / clip.token_px ** 2
            pair = f // TEMPORAL_PATCH
            take = (share >= drawing.MIN_CELL_SHARE) & (share > best[pair])
            best[pair, take] = share[take]
            colour[pair, take] = colour_ids[obj.colour]
            shape[pair, take] = shape_ids[obj.shape]
    return colour.reshape(-1), shape.reshape(-1)
