"""Shared by the scene benchmarks: the test scenes the reference MLLM answers correctly, unpruned."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from data_gen.correctness import normalise
from data_gen.sources.synthetic_scenes import SyntheticScenes


def scene_source(model: str, n: int, seed: int = 0, split: str = "test", sizes: list | None = None) -> SyntheticScenes:
    """Scenes drawn as `model` was trained on (its training.json), enough to find n answered ones; sizes: the
    source's image sizes [[h, w], ...] (None: its default)."""
    record = Path(model) / "training.json"
    scene_kw = json.loads(record.read_text())["config"].get("scenes", {}) if record.is_file() else {}
    if sizes is not None:
        scene_kw["sizes"] = sizes
    return SyntheticScenes(num_items=20 * n, seed=seed, split=split, **scene_kw)


def answered(adapter, source: SyntheticScenes, n: int, max_new_tokens: int = 4) -> Iterator[tuple]:
    """Yield (index, item, scene, prepared prompt, answer ids) for the first n scenes answered correctly."""
    done = 0
    for i in range(len(source)):
        if done == n:
            return
        item = source[i]
        prepared = adapter.prepare(item.image, item.instruction)
        ids, text = adapter.generate(prepared, max_new_tokens=max_new_tokens)
        if normalise(text) != normalise(item.answer):
            continue
        done += 1
        yield i, item, source.scene(i), prepared, ids
