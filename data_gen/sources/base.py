from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from predictor.registry import Registry

SOURCES: Registry[type["Source"]] = Registry("source", modules=(
    "data_gen.sources.jsonl", "data_gen.sources.llava_json", "data_gen.sources.hf_dataset",
    "data_gen.sources.synthetic_scenes", "data_gen.sources.synthetic_video"))


def get_source(name: str) -> type["Source"]:
    return SOURCES.get(name)


@dataclass
class Item:
    """One (visual input, instruction, reference answer).

    id: stable across runs (same source + same item -> same id); becomes the shard `__key__`
    image: a path, or a PIL image for generated sources; loading is deferred to `load_image` so
           that a bad file fails inside the per-item error handling, not while listing the source
    video: the frames (paths, PIL images, arrays, tensors) or a `predictor.media.VideoFile` decoded in the loop
    fps: frames per second of `video` as given (after the source's frame sampling): the processor
         times the frames with it; None: unknown, or read from the file when a VideoFile is decoded
    extra: source-specific data carried into metadata (e.g. ground-truth relevance of scenes)
    answers: every reference answer where the source has several (VQA sets: ten annotators'), `answer`
             being the first; empty: `answer` is the only one. Correctness reads `references`.
    messages: a chat instead of (image, instruction): several images, text between them, earlier turns
              (`predictor.adapters.messages`), ending with the user turn `answer` answers; image parts hold
              a path or a PIL image, loaded in the loop. `instruction` is then that last turn's text and
              `image` the first image (thumbnail).
    """

    id: str
    instruction: str
    answer: str
    image: Any = None
    video: Any = None
    modality: str = "image"  # "video" when `video` is set
    extra: dict[str, Any] = field(default_factory=dict)
    fps: float | None = None
    answers: list[str] = field(default_factory=list)
    messages: list[dict] | None = None

    @property
    def references(self) -> list[str]:
        """The reference answers correctness compares with: `answers`, or just `answer`."""
        return self.answers or [self.answer]


class Source(ABC):
    """Random access, so that every torchrun rank can take its own disjoint slice by index.

    scale_options: constructor options that change how many visual tokens an item has; eval's
    generalisation check draws the items again with these overridden (none: it is skipped).
    unique_ids: True where ids cannot repeat by construction; otherwise data_gen reads every id
    (`item_id`) first, so that a repeated one is skipped the same way on every rank.
    """

    scale_options: tuple[str, ...] = ()
    unique_ids: bool = False

    def item_id(self, i: int) -> str:
        """Item i's id; sources where building an item costs more than reading its id override this."""
        return self[i].id

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, i: int) -> Item: ...
