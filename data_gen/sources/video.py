"""Video items of a source record: a list of frames or a video file, and which of its frames are used.

A source's `"video"` value is either a list of frames (paths kept inside the image root like images;
generated sources may also give PIL images, (H, W, C) arrays or (C, H, W) tensors, or one (T, ...)
array) or the path of a video file. Frame lists are sampled by the source (cheap: no file is read);
a file becomes a `predictor.media.VideoFile` that `predictor.media.load_video` decodes in the data_gen
loop, so that a bad file skips its item, not the run.
"""
from __future__ import annotations

import math
from typing import Any

from data_gen.images import image_path
from predictor.media import FrameSampling, VideoFile


def check_video(raw: Any, fps: Any, where: str) -> None:
    """ValueError naming `where` unless `raw` is a file path or a list of frame paths and `fps` a rate or None."""
    if not isinstance(raw, str) and not (isinstance(raw, list) and all(isinstance(p, str) for p in raw)):
        raise ValueError(f"{where}: 'video' must be a video file path or a list of frame paths, found "
                         f"{type(raw).__name__} {str(raw)[:80]}")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf):
        raise ValueError(f"{where}: 'fps' must be a positive number (frames per second of the frame list), "
                         f"found {fps!r}")


def video_value(raw: Any, root: str, allow_outside: bool, sampling: FrameSampling, fps: Any,
                where: str) -> tuple[list | VideoFile, float | None]:
    """A record's video (a file path, or a list of frame paths) and its `fps` field (None: absent) ->
    (Item.video, Item.fps). ValueError naming `where` (file and line or record) for other values."""
    check_video(raw, fps, where)
    if isinstance(raw, str):
        return VideoFile(image_path(raw, root, allow_outside), sampling), None  # the file says its fps
    idx, fps = sampling.indices(len(raw), float(sampling.default_fps if fps is None else fps))
    return [image_path(raw[i], root, allow_outside) for i in idx], fps
