"""The options of one `python -m data_gen` run: the non-group keys of conf/data_gen.yaml, checked."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_gen.correctness import MODES
from predictor.media import DEFAULT_MAX_PIXELS


@dataclass
class DataGenConfig:
    """Options of one run (the non-group keys of conf/data_gen.yaml)."""

    out: str = "data/shards/reference"
    max_items: int | None = None  # use the first N source items (None: all); counts items, not written samples
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # images are downscaled to at most this many pixels
    max_video_pixels: int | None = 2 * DEFAULT_MAX_PIXELS  # a clip's frames together (see conf/data_gen.yaml)
    max_seq_len: int = 8192  # prompt + answer tokens; longer items are skipped (reason too_long)
    max_new_tokens: int = 16
    shard_size: int = 500
    save_heads: bool = True  # also store per-head layer-0 attention (H, N_v): the default predictor reads it
    thumbnails: bool = True
    thumbnail_size: int = 96
    correctness: str = "auto"  # see data_gen/correctness.py
    keep_wrong: bool = False  # write wrong answers too, with meta.correct = false
    max_failure_rate: float = 0.5
    min_items_for_failure_rate: int = 50
    retry_errors: bool = False  # redo items skipped earlier because of an exception (e.g. CUDA OOM)
    allow_version_change: bool = False  # resume a folder labelled under another torch/transformers version
    progress: bool = True

    def __post_init__(self) -> None:
        if self.correctness not in MODES:
            raise ValueError(f"correctness={self.correctness!r}: expected one of {', '.join(MODES)}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError(f"max_failure_rate={self.max_failure_rate}: expected a fraction in [0, 1]")


def config_from_options(options: dict[str, Any]) -> DataGenConfig:
    """The config of the command line's options; KeyError naming the options it does not have."""
    known = set(DataGenConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise KeyError(f"unknown data_gen option(s) {unknown}; available: {', '.join(sorted(known))}")
    return DataGenConfig(**options)
