"""What scenes and clips are drawn with: the shapes and colours, the rasteriser, and the visual-token cells.

Visual tokens are `token_px` x `token_px` cells in row-major order, as the Qwen-VL processors order them.
Objects use saturated colours, each object a fill no other object has, and backgrounds are low-saturation
greys, so an object's pixels are exactly the pixels of its fill: `object_mask` redraws one object with the
same rasteriser, and the ground truth can be recomputed from the drawn image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

TOKEN_PX = 28  # the default cell: Qwen2-VL patch_size 14 * spatial_merge_size 2 (the reference MLLMs)

COLOURS: dict[str, tuple[int, int, int]] = {  # saturated, so never confused with the grey background
    "red": (215, 35, 35),
    "orange": (240, 130, 20),
    "yellow": (230, 205, 30),
    "lime": (140, 215, 30),
    "green": (30, 150, 60),
    "cyan": (25, 185, 205),
    "blue": (40, 75, 215),
    "purple": (140, 50, 195),
    "pink": (240, 90, 175),
    "brown": (135, 75, 25),
}
SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
COLOUR_JITTER = 12  # per-channel jitter of an object's fill; keeps fills saturated and distinct
MIN_CELL_SHARE = 0.1  # a token is labelled with an object if it covers >= 10% of the token
CELL_RADIUS = (8, 12)  # object half-sizes that fit inside one 28 px cell with room to move


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


def check_size(height: int, width: int, token_px: int = TOKEN_PX) -> None:
    if height % token_px or width % token_px or height <= 0 or width <= 0:
        raise ValueError(
            f"scene size {height}x{width}: expected positive multiples of {token_px} px (one visual token "
            f"per {token_px}x{token_px} cell, so the processor does not resize); set e.g. "
            f"source.sizes=[[{8 * token_px},{8 * token_px}]]")


def draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, fill) -> None:
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
    elif obj.shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    elif obj.shape == "ring":
        draw.ellipse([x - r, y - r, x + r, y + r], outline=fill, width=max(3, r // 3))
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; available: {', '.join(SHAPES)}")


def object_mask(obj: SceneObject, height: int, width: int) -> np.ndarray:
    """(height, width) bool: the pixels `obj` paints (same rasteriser as the image)."""
    m = Image.new("L", (width, height), 0)
    draw_shape(ImageDraw.Draw(m), obj, 255)
    return np.asarray(m) > 0


def cell_counts(mask: np.ndarray, token_px: int = TOKEN_PX) -> np.ndarray:
    """(H, W) bool -> (h, w) number of mask pixels inside each visual token's cell."""
    h, w = mask.shape[0] // token_px, mask.shape[1] // token_px
    return mask.reshape(h, token_px, w, token_px).sum(axis=(1, 3))


def relevance_from_mask(mask: np.ndarray, token_px: int = TOKEN_PX) -> np.ndarray:
    """(H, W) bool -> (h*w,) float32: fraction of the object's pixels inside each token; sums to 1."""
    counts = cell_counts(mask, token_px).astype(np.float64).reshape(-1)
    return (counts / max(counts.sum(), 1.0)).astype(np.float32)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 low-saturation background: a grey gradient, a slight tint, noise."""
    a, b = rng.uniform(40, 215, size=2)
    if rng.random() < 0.5:
        ramp = np.linspace(a, b, width)[None, :].repeat(height, 0)
    else:
        ramp = np.linspace(a, b, height)[:, None].repeat(width, 1)
    tint = rng.uniform(-10, 10, size=3)  # channels stay within 20 of each other: grey-ish
    img = ramp[..., None] + tint + rng.normal(0, 5, size=(height, width, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def cell_centre(rng: np.random.Generator, cell: int, w: int, r: int, px: int) -> tuple[int, int]:
    """(cx, cy) of an object of radius r in raster cell `cell` of a grid w cells wide, jittered within it."""
    slack = px // 2 - 1 - r  # the centre may move this far from the cell's centre
    return (int(cell % w) * px + px // 2 + int(rng.integers(-slack, slack + 1)),
            int(cell // w) * px + px // 2 + int(rng.integers(-slack, slack + 1)))


def fills(rng: np.random.Generator, colours: list[str]) -> list[tuple[int, int, int]]:
    """A jittered fill per object, no two alike (so each object's pixels are exactly its fill's)."""
    fills: list[tuple[int, int, int]] = []
    for c in colours:
        while True:
            base = np.array(COLOURS[c])
            fill = tuple(int(v) for v in np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255))
            if fill not in fills:
                break
        fills.append(fill)
    return fills

