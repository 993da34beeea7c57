from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from predictor.registry import Registry

SOURCES: Registry[type["Source"]] = Registry("source")
_MODULES = ("data_gen.sources.jsonl", "data_gen.sources.llava_json", "data_gen.sources.hf_dataset",
            "data_gen.sources.synthetic_scenes")


def get_source(name: str) -> type["Source"]:
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    return SOURCES.get(name)


@dataclass
class Item:
    """One (visual input, instruction, reference answer).

    id: stable across runs (same source + same item -> same id); becomes the shard `__key__`
    image: a path, or a PIL image for generated sources; loading is deferred to `load_image` so
           that a bad file fails inside the per-item error handling, not while listing the source
    extra: source-specific data carried into metadata (e.g. ground-truth relevance of scenes)
    """

    id: str
    instruction: str
    answer: str
    image: Any = None
    video: Any = None  # list of frame paths or PIL frames
    modality: str = "image"
    extra: dict[str, Any] = field(default_factory=dict)


class Source(ABC):
    """Random access, so that every torchrun rank can take its own disjoint slice by index."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, i: int) -> Item: ...
