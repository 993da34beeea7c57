"""Procedurally drawn scenes with known answer-bearing regions (no model, no downloads).

A scene is a few solid, non-overlapping objects (shape x colour) on a noisy grey-ish background
with grey clutter strokes. By default (`placement="cell"`) each object lies inside one visual
token's 28 x 28 px cell, at a random offset and size within it; `placement="free"` puts objects
anywhere, spanning several tokens. Why cells: the reference MLLM's from-scratch vision tower reads
a shape inside one cell within a few hundred steps (per-token shape accuracy 98% after 400), but
a shape cut across cells it did not learn in the minutes this machine has (34% after 600 steps;
BENCHMARKS.md). Everything drawn for a scene follows from one numpy Generator, so a
scene is a pure function of its seed. Objects use saturated colours and the background and
clutter use low-saturation greys, so an object's pixels are exactly the pixels of its fill
colour: the ground truth can be recomputed from the drawn image (tests do).

Visual tokens are `TOKEN_PX` x `TOKEN_PX` cells (Qwen2-VL: patch 14 x spatial merge 2 = 28 px),
in row-major order over the `(h, w)` grid, as the Qwen2-VL processor orders them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

TOKEN_PX = 28  # Qwen2-VL: patch_size 14 * spatial_merge_size 2

COLOURS: dict[str, tuple[int, int, int]] = {  # saturated, so never confused with the grey background
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 75, 215),
    "yellow": (230, 205, 30),
    "purple": (145, 50, 190),
    "orange": (240, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
QUESTION_TYPES = ("shape", "colour")
COLOUR_JITTER = 12  # per-channel jitter of an object's fill; keeps fills saturated and distinct
MIN_CELL_SHARE = 0.1  # a token is labelled with an object if it covers >= 10% of the token


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    fill: tuple[int, int, int]  # the exact RGB drawn
    cx: int
    cy: int
    r: int  # half-size in pixels

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "fill": list(self.fill),
                "cx": self.cx, "cy": self.cy, "r": self.r}


@dataclass
class Scene:
    height: int
    width: int
    objects: list[SceneObject]
    image: Image.Image  # (height, width) RGB
    question: str
    answer: str
    question_type: str
    target: int  # index into objects of the answer-bearing object

    @property
    def grid(self) -> tuple[int, int, int]:
        return 1, self.height // TOKEN_PX, self.width // TOKEN_PX


def check_size(height: int, width: int) -> None:
    if height % TOKEN_PX or width % TOKEN_PX or height <= 0 or width <= 0:
        raise ValueError(
            f"scene size {height}x{width}: expected positive multiples of {TOKEN_PX} px (one Qwen2-VL "
            f"visual token per {TOKEN_PX}x{TOKEN_PX} cell, so the processor does not resize); set e.g. "
            f"source.sizes=[[224,224]]")


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, fill) -> None:
    x, y, r = obj.cx, obj.cy, obj.r
    if obj.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif obj.shape == "square":
        s = int(round(r * 0.85))  # a square looks larger than a circle of the same half-size
        draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)
    elif obj.shape == "cross":
        t = max(3, r // 3)
        draw.rectangle([x - r, y - t, x + r, y + t], fill=fill)
        draw.rectangle([x - t, y - r, x + t, y + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; available: {', '.join(SHAPES)}")


def object_mask(obj: SceneObject, height: int, width: int) -> np.ndarray:
    """(height, width) bool: the pixels `obj` paints (same rasteriser as the image)."""
    m = Image.new("L", (width, height), 0)
    _draw_shape(ImageDraw.Draw(m), obj, 255)
    return np.asarray(m) > 0


def cell_counts(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (h, w) number of mask pixels inside each visual token's cell."""
    h, w = mask.shape[0] // TOKEN_PX, mask.shape[1] // TOKEN_PX
    return mask.reshape(h, TOKEN_PX, w, TOKEN_PX).sum(axis=(1, 3))


def relevance_from_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (h*w,) float32: fraction of the object's pixels inside each token; sums to 1."""
    counts = cell_counts(mask).astype(np.float64).reshape(-1)
    return (counts / max(counts.sum(), 1.0)).astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 low-saturation background: a grey gradient, a slight tint, noise."""
    a, b = rng.uniform(40, 215, size=2)
    if rng.random() < 0.5:
        ramp = np.linspace(a, b, width)[None, :].repeat(height, 0)
    else:
        ramp = np.linspace(a, b, height)[:, None].repeat(width, 1)
    tint = rng.uniform(-10, 10, size=3)  # channels stay within 20 of each other: grey-ish
    img = ramp[..., None] + tint + rng.normal(0, 5, size=(height, width, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


CELL_RADIUS = (8, 12)  # object half-sizes that fit inside one 28 px cell with room to move


def _place_in_cells(rng: np.random.Generator, n: int, height: int, width: int, r_range: tuple[int, int],
                    ) -> list[tuple[int, int, int]]:
    """n (cx, cy, r), each inside its own visual-token cell (distinct cells), jittered within it."""
    lo, hi = r_range
    if not 1 <= lo <= hi <= TOKEN_PX // 2 - 2:
        raise ValueError(f"radius={list(r_range)} with placement='cell': an object must fit inside one "
                         f"{TOKEN_PX} px cell, so expected 1 <= min <= max <= {TOKEN_PX // 2 - 2}; use e.g. "
                         f"radius={list(CELL_RADIUS)}, or placement='free' for larger objects")
    h, w = height // TOKEN_PX, width // TOKEN_PX
    cells = rng.choice(h * w, size=min(n, h * w), replace=False)
    placed = []
    for c in cells:
        r = int(rng.integers(lo, hi + 1))
        slack = TOKEN_PX // 2 - 1 - r  # the centre may move this far from the cell's centre
        cx = int(c % w) * TOKEN_PX + TOKEN_PX // 2 + int(rng.integers(-slack, slack + 1))
        cy = int(c // w) * TOKEN_PX + TOKEN_PX // 2 + int(rng.integers(-slack, slack + 1))
        placed.append((cx, cy, r))
    return placed


def _place(rng: np.random.Generator, n: int, height: int, width: int, r_range: tuple[int, int],
           ) -> list[tuple[int, int, int]]:
    """n non-overlapping (cx, cy, r) anywhere inside the image; fewer if the image is too crowded."""
    placed: list[tuple[int, int, int]] = []
    for _ in range(200 * n):
        if len(placed) == n:
            break
        r = int(rng.integers(r_range[0], r_range[1] + 1))
        cx = int(rng.integers(r + 2, width - r - 2))
        cy = int(rng.integers(r + 2, height - r - 2))
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 6) ** 2 for x, y, q in placed):
            placed.append((cx, cy, r))
    return placed


def make_scene(rng: np.random.Generator, height: int = 224, width: int = 224,
               num_objects: tuple[int, int] = (3, 4), radius: tuple[int, int] = CELL_RADIUS,
               question_types: tuple[str, ...] = QUESTION_TYPES, clutter: int = 6,
               placement: str = "cell") -> Scene:
    """Draw one scene and one question about one of its objects.

    Colours within a scene are distinct, and so are shapes (there are few shapes, so at most
    len(SHAPES) objects): "the red object" and "the triangle" each name exactly one object.
    """
    check_size(height, width)
    for q in question_types:
        if q not in QUESTION_TYPES:
            raise ValueError(f"unknown question type {q!r}; available: {', '.join(QUESTION_TYPES)}")
    if placement not in ("cell", "free"):
        raise ValueError(f"placement={placement!r}: expected 'cell' (each object inside one visual token) or 'free'")
    lo, hi = num_objects
    n = int(rng.integers(lo, min(hi, len(SHAPES)) + 1))
    spots = (_place_in_cells if placement == "cell" else _place)(rng, n, height, width, tuple(radius))
    colours = rng.choice(list(COLOURS), size=len(spots), replace=False)
    shapes = rng.choice(SHAPES, size=len(spots), replace=False)
    objects = []
    for (cx, cy, r), c, s in zip(spots, colours, shapes):
        base = np.array(COLOURS[str(c)])
        fill = tuple(int(v) for v in np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255))
        objects.append(SceneObject(str(s), str(c), fill, cx, cy, r))

    img = Image.fromarray(_background(rng, height, width))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, clutter + 1))):  # grey strokes and dots: visual distractors
        g = int(rng.integers(30, 226))
        grey = (g, g, g)
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            x1, y1 = x0 + int(rng.integers(-60, 61)), y0 + int(rng.integers(-60, 61))
            draw.line([(x0, y0), (x1, y1)], fill=grey, width=int(rng.integers(1, 4)))
        else:
            d = int(rng.integers(2, 7))
            draw.ellipse([x0 - d, y0 - d, x0 + d, y0 + d], fill=grey)
    for obj in objects:  # objects last and apart: none occludes another, none is occluded
        _draw_shape(draw, obj, obj.fill)

    target = int(rng.integers(len(objects)))
    qtype = str(question_types[int(rng.integers(len(question_types)))])
    t = objects[target]
    if qtype == "shape":
        question, answer = f"What shape is the {t.colour} object?", t.shape
    else:
        question, answer = f"What colour is the {t.shape}?", t.colour
    return Scene(height, width, objects, img, question, answer, qtype, target)


def token_labels(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per visual token, the colour and shape index of the object covering most of it.

    -> (colour (h*w,) int64, shape (h*w,) int64); 0 = background, i+1 = COLOURS/SHAPES entry i.
    Used by the reference model's auxiliary training loss.
    """
    _, h, w = scene.grid
    best = np.zeros(h * w)
    colour = np.zeros(h * w, dtype=np.int64)
    shape = np.zeros(h * w, dtype=np.int64)
    colour_ids = {c: i + 1 for i, c in enumerate(COLOURS)}
    shape_ids = {s: i + 1 for i, s in enumerate(SHAPES)}
    for obj in scene.objects:
        share = cell_counts(object_mask(obj, scene.height, scene.width)).reshape(-1) / TOKEN_PX ** 2
        take = (share >= MIN_CELL_SHARE) & (share > best)
        best[take] = share[take]
        colour[take] = colour_ids[obj.colour]
        shape[take] = shape_ids[obj.shape]
    return colour, shape


def scene_words() -> list[str]:
    """Every word the questions and answers use (the reference model's vocabulary)."""
    words = ["What", "shape", "is", "the", "object", "colour", "?"]
    return words + list(COLOURS) + list(SHAPES)
