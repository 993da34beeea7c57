"""Procedurally drawn scenes with known answer-bearing regions (no model, no downloads).

A scene is many solid, non-overlapping objects (shape x colour) on a noisy grey-ish background
with grey clutter strokes, and questions that each name one object by an attribute no other object
in the scene has ("What shape is the red object?": the only red one; "What colour is the ring?":
the only ring) and ask for its other attribute. Other objects may repeat colours and shapes among
themselves. By default a 224 x 224 scene (64 visual tokens) holds 16-24 objects, more than the 16
or 8 tokens that pruning to 25% or 12.5% keeps: a method that keeps "the objects" without reading
the instruction cannot keep them all (`benchmarks/bench_scenes.py` measures how far that gets).

Each scene carries two questions about two different objects: the first is the item's question,
the second is for the instruction-swap check (same image, another object named).

By default (`placement="cell"`) each object lies inside one visual token's 28 x 28 px cell, at a
random offset and size within it; `placement="free"` puts objects anywhere, spanning several tokens
(and fits fewer of them). Why cells: the reference MLLM's from-scratch vision tower reads a shape
inside one cell within a few hundred steps, but a shape cut across cells it did not learn in the
minutes this machine has (BENCHMARKS.md). Everything drawn for a scene follows from one numpy
Generator, so a scene is a pure function of its seed. Objects use saturated colours, each object a
fill no other object in the scene has, and the background and clutter use low-saturation greys, so
an object's pixels are exactly the pixels of its fill: the ground truth can be recomputed from the
drawn image (tests do).

Visual tokens are `token_px` x `token_px` cells, in row-major order over the `(h, w)` grid, as the
Qwen-VL processors order them: `TOKEN_PX` = 28 by default (Qwen2-VL: patch 14 x spatial merge 2, what
the reference MLLMs use); the model's adapter gives its own (Qwen3-VL: 16 x 2 = 32), and data_gen and
eval pass it to the synthetic sources (`data_gen.build.build_source`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from reference_mllm.drawing import (CELL_RADIUS, COLOURS, MIN_CELL_SHARE, SHAPES, TOKEN_PX, SceneObject, background,
                                    cell_centre, cell_counts, check_size, draw_shape, fills, object_mask,
                                    relevance_from_mask)

# what a question asks for; the object is named by the other attribute
QUESTION_TYPES = ("shape", "colour")
QUESTIONS_PER_SCENE = 2  # the item's question and the instruction-swap check's


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn: the one set of defaults shared by `SyntheticScenes`, its Hydra config
    (conf/source/synthetic_scenes.yaml) and the reference MLLM's training (recorded in its
    training.json); a test checks that the three agree."""

    num_objects: tuple[int, int] = (16, 24)  # [min, max] per scene; 224x224 has 64 cells
    radius: tuple[int, int] = CELL_RADIUS  # object half-size in px (placement cell: at most 12)
    question_types: tuple[str, ...] = QUESTION_TYPES
    clutter: int = 6  # at most this many grey strokes / dots (distractors)
    placement: str = "cell"

    def __post_init__(self) -> None:
        for name in ("num_objects", "radius", "question_types"):  # lists from YAML / JSON -> tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        lo, hi = (int(v) for v in self.num_objects)
        if len(self.num_objects) != 2 or not 1 <= lo <= hi:
            raise ValueError(f"num_objects={list(self.num_objects)}: expected [min, max] with 1 <= min <= max")
        for q in self.question_types:
            if q not in QUESTION_TYPES:
                raise ValueError(f"unknown question type {q!r}; available: {', '.join(QUESTION_TYPES)}")
        if not self.question_types:
            raise ValueError(f"question_types is empty; available: {', '.join(QUESTION_TYPES)}")
        if self.placement not in ("cell", "free"):
            raise ValueError(f"placement={self.placement!r}: expected 'cell' (each object inside one visual "
                             f"token) or 'free'")
        if len(self.radius) != 2:
            raise ValueError(f"radius={list(self.radius)}: expected [min, max] half-size in px")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Question:
    target: int  # index into the scene's objects of the object it names
    kind: str  # what it asks for: "shape" (the object is named by its colour) or "colour" (by its shape)
    text: str
    answer: str

    @property
    def word(self) -> str:
        """The word that names the object ("red" in "What shape is the red object?")."""
        return self.text.rstrip("?").split()[-2 if self.kind == "shape" else -1]


@dataclass
class Scene:
    height: int
    width: int
    objects: list[SceneObject]
    image: Image.Image  # (height, width) RGB
    questions: list[Question] = field(default_factory=list)  # [the item's, the swap check's] (fewer objects: fewer)
    token_px: int = TOKEN_PX  # side of one visual token's cell

    @property
    def grid(self) -> tuple[int, int, int]:
        return 1, self.height // self.token_px, self.width // self.token_px

    # the item's question
    @property
    def question(self) -> str:
        return self.questions[0].text

    @property
    def answer(self) -> str:
        return self.questions[0].answer

    @property
    def question_type(self) -> str:
        return self.questions[0].kind

    @property
    def target(self) -> int:
        return self.questions[0].target


def object_relevance(scene: Scene, index: int) -> np.ndarray:
    """(h*w,) float32 ground-truth relevance of object `index`: the share of its pixels in each token."""
    return relevance_from_mask(object_mask(scene.objects[index], scene.height, scene.width), scene.token_px)


def main_token(scene: Scene, index: int) -> int:
    """The visual token holding most of object `index`'s pixels."""
    return int(object_relevance(scene, index).argmax())


def _place_in_cells(rng: np.random.Generator, n: int, height: int, width: int, r_range: tuple[int, int],
                    token_px: int = TOKEN_PX) -> list[tuple[int, int, int]]:
    """n (cx, cy, r), each inside its own visual-token cell (distinct cells), jittered within it."""
    lo, hi = r_range
    if not 1 <= lo <= hi <= token_px // 2 - 2:
        raise ValueError(f"radius={list(r_range)} with placement='cell': an object must fit inside one "
                         f"{token_px} px cell, so expected 1 <= min <= max <= {token_px // 2 - 2}; use e.g. "
                         f"radius={list(CELL_RADIUS)}, or placement='free' for larger objects")
    h, w = height // token_px, width // token_px
    cells = rng.choice(h * w, size=min(n, h * w), replace=False)
    placed = []
    for c in cells:
        r = int(rng.integers(lo, hi + 1))
        placed.append((*cell_centre(rng, int(c), w, r, token_px), r))
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


def _attributes(rng: np.random.Generator, n: int, named: list[int], kinds: list[str],
                ) -> tuple[list[str], list[str]]:
    """Colours and shapes of n objects such that each named object's naming attribute (its colour
    for a "shape" question, its shape for a "colour" question) is unique in the scene; every other
    attribute is drawn uniformly from the values no named object reserves."""
    colours: list[str | None] = [None] * n
    shapes: list[str | None] = [None] * n
    for i, kind in zip(named, kinds):
        if kind == "shape":
            colours[i] = str(rng.choice([c for c in COLOURS if c not in colours]))
        else:
            shapes[i] = str(rng.choice([s for s in SHAPES if s not in shapes]))
    free_c = [c for c in COLOURS if c not in colours]
    free_s = [s for s in SHAPES if s not in shapes]
    colours = [c or free_c[int(rng.integers(len(free_c)))] for c in colours]
    shapes = [s or free_s[int(rng.integers(len(free_s)))] for s in shapes]
    return colours, shapes


def ask(obj: SceneObject, target: int, kind: str) -> Question:
    """The question of `kind` about `obj` (which must be unique by the other attribute)."""
    if kind == "shape":
        return Question(target, kind, f"What shape is the {obj.colour} object?", obj.shape)
    return Question(target, kind, f"What colour is the {obj.shape}?", obj.colour)


def make_scene(rng: np.random.Generator, height: int = 224, width: int = 224,
               config: SceneConfig = SceneConfig(), token_px: int = TOKEN_PX) -> Scene:
    """Draw one scene and its questions (see the module docstring); token_px: the model's visual-token cell."""
    check_size(height, width, token_px)
    lo, hi = config.num_objects
    n = int(rng.integers(lo, hi + 1))
    if config.placement == "cell":
        spots = _place_in_cells(rng, n, height, width, tuple(config.radius), token_px)
    else:
        spots = _place(rng, n, height, width, tuple(config.radius))
    n = len(spots)  # fewer than asked when the image has too few cells / too little room
    named = [int(i) for i in rng.choice(n, size=min(QUESTIONS_PER_SCENE, n), replace=False)]
    kinds = [str(config.question_types[int(rng.integers(len(config.question_types)))]) for _ in named]
    colours, shapes = _attributes(rng, n, named, kinds)
    objects = [SceneObject(s, c, f, cx, cy, r)
               for (cx, cy, r), c, s, f in zip(spots, colours, shapes, fills(rng, colours))]

    img = Image.fromarray(background(rng, height, width))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, config.clutter + 1))):  # grey strokes and dots: visual distractors
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
        draw_shape(draw, obj, obj.fill)
    questions = [ask(objects[i], i, kind) for i, kind in zip(named, kinds)]
    return Scene(height, width, objects, img, questions, token_px)


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
        share = cell_counts(object_mask(obj, scene.height, scene.width), scene.token_px).reshape(-1)
        share = share / scene.token_px ** 2
        take = (share >= MIN_CELL_SHARE) & (share > best)
        best[take] = share[take]
        colour[take] = colour_ids[obj.colour]
        shape[take] = shape_ids[obj.shape]
    return colour, shape


def scene_words() -> list[str]:
    """Every word the questions and answers use (the reference model's vocabulary)."""
    words = ["What", "shape", "is", "the", "object", "colour", "?"]
    return words + list(COLOURS) + list(SHAPES)


def video_words() -> list[str]:
    """The video reference model's vocabulary: `scene_words` and the clips' past tense ("What shape was ...").
    A separate list, so that the image model's tokenizer, and with it its weights, stay as trained."""
    return scene_words() + ["was"]
