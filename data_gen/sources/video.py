"""Video items: a list of frames or a video file, which of its frames are used, and loading them.

A source's `"video"` value is either a list of frames (paths kept inside the image root like images;
generated sources may also give PIL images, (H, W, C) arrays or (C, H, W) tensors, or one (T, ...)
array) or the path of a video file. Frame lists are sampled by the source (cheap: no file is read);
a file becomes a `VideoFile` that `load_video` decodes in the data_gen loop, so that a bad file skips
its item, not the run. Decoding needs torchcodec (`pip install torchcodec`, which loads FFmpeg's
libraries); frame lists need no decoder.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from data_gen.images import ImageError, cap_pixels, image_path, load_image


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a clip are used: `num_frames` spread evenly over it, or one every 1/`fps` s
    (never more than the clip has); both None: every frame (data_gen's max_video_pixels still caps
    the clip's total size). default_fps: the rate of a frame list whose record gives none."""

    num_frames: int | None = 8
    fps: float | None = None
    default_fps: float = 1.0

    def __post_init__(self) -> None:
        if self.num_frames is not None and self.fps is not None:
            raise ValueError(f"source.num_frames={self.num_frames} and source.fps={self.fps} are both set; frames "
                             f"are sampled one way: set source.num_frames=null to sample at source.fps, or "
                             f"source.fps=null")
        n = self.num_frames
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n) or n < 1):
            raise ValueError(f"source.num_frames={n!r}: expected a whole number >= 1, or null")
        for name in ("fps", "default_fps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf):
                raise ValueError(f"source.{name}={v!r}: expected a positive number of frames per second")

    def indices(self, n: int, fps: float) -> tuple[list[int], float]:
        """The frames to keep of a clip of `n` frames at `fps` -> (their indices, their rate in frames
        per second: what a processor needs to time them, e.g. Qwen2.5-VL's second_per_grid_ts)."""
        if self.fps is not None and self.fps < fps:
            step = fps / self.fps
            return [int(i * step) for i in range(int((n - 1) // step) + 1 if n else 0)], self.fps
        if self.num_frames is not None and self.num_frames < n:
            idx = np.linspace(0, n - 1, int(self.num_frames)).round().astype(int).tolist()
            span = idx[-1] - idx[0]
            return idx, (fps * (len(idx) - 1) / span if span else fps)
        return list(range(n)), fps


@dataclass(frozen=True)
class VideoFile:
    """A video file to decode in the loop; `path` may be the ImageError of a path outside the root."""

    path: str | ImageError
    sampling: FrameSampling


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


def load_video(video: Any, fps: float | None = None, max_pixels: int | None = None,
               max_video_pixels: int | None = None) -> tuple[list[Image.Image], float | None]:
    """An item's video (frames or VideoFile) and rate -> (RGB frames, their rate; None if unknown).
    Each frame is downscaled to at most max_pixels, and the clip to max_video_pixels in all. Raises
    ImageError: missing_video (no frames, no file), missing_video_decoder, unreadable_video, or a
    frame's own reason (missing_image, unreadable_image, image_outside_root) naming the frame."""
    if isinstance(video, str):  # a duck-typed source's bare file path
        video = VideoFile(video, FrameSampling())
    if isinstance(video, VideoFile):
        frames, fps = _decode(video)
    else:
        frames = list(video) if video is not None else []
    if not frames:
        raise ImageError("missing_video", "the item's video has no frames")
    cap = max_pixels
    if max_video_pixels:
        cap = min(cap or max_video_pixels, max(1, max_video_pixels // len(frames)))
    out = []
    for t, frame in enumerate(frames):
        try:
            out.append(cap_pixels(load_image(frame), cap))
        except ImageError as e:
            raise ImageError(e.reason, f"video frame {t} of {len(frames)}: {e.detail}") from e
    return out, fps


def _decode(video: VideoFile) -> tuple[list, float]:
    """The sampled frames of a video file as (C, H, W) uint8 tensors, and their rate."""
    if isinstance(video.path, ImageError):
        raise ImageError(video.path.reason, video.path.detail)
    path = video.path
    if not os.path.isfile(path):
        raise ImageError("missing_video", f"no file {path}")
    try:  # lazily: only video files need it, and it loads FFmpeg's shared libraries
        from torchcodec.decoders import VideoDecoder
    except Exception as e:  # not installed (ImportError), or FFmpeg's libraries missing (RuntimeError)
        raise ImageError("missing_video_decoder", f"{path} is a video file, and decoding it needs torchcodec "
                         f"({type(e).__name__}: {str(e)[:200]}): pip install torchcodec (it also needs FFmpeg's "
                         f"libraries, e.g. apt-get install ffmpeg); or give the video as a list of frame "
                         f"image paths") from e
    try:
        decoder = VideoDecoder(path)
        n, file_fps = decoder.metadata.num_frames, decoder.metadata.average_fps
        if not n:
            raise ValueError(f"no frame count in its metadata ({n!r})")
        idx, fps = video.sampling.indices(int(n), float(file_fps or video.sampling.default_fps))
        return list(decoder.get_frames_at(indices=idx).data), fps
    except Exception as e:
        raise ImageError("unreadable_video", f"{path}: {type(e).__name__}: {e}") from e
