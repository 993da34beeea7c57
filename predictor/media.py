"""Media as the model sees them: images and video frames loaded, decoded and capped in pixels.

Every path that hands the adapter's processor an image (data_gen labelling, eval, the lmms-eval model, the
demo) loads it here, so that the predictor prunes at the token count its labels were made at. A processor's
own cap (its `max_pixels`) rounds differently (at 1920x1080 Qwen2-VL gives 1008 tokens through it, 1032
after `cap_pixels`), so no path caps through the processor instead.

Everything that can go wrong with a file raises `ImageError` with a short reason, so that a loop can skip
the item and record why (a bad file never stops a run). A video is a list of frames, or a `VideoFile`
that `load_video` decodes; decoding needs torchcodec (`pip install torchcodec`, which loads FFmpeg's
libraries), imported only then: frame lists need no decoder.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# 1024 visual tokens of 28x28 px (Qwen2-VL's): data_gen's, eval's, lmms-eval's and the demo's default
DEFAULT_MAX_PIXELS = 1024 * 28 * 28


def cap_pixels(img: Image.Image, max_pixels: int | None) -> Image.Image:
    """Downscale (keeping the aspect ratio) so that width * height <= max_pixels; None: no cap."""
    if not max_pixels or img.width * img.height <= max_pixels:
        return img
    scale = math.sqrt(max_pixels / (img.width * img.height))
    size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC)


class ImageError(ValueError):
    """An item's image cannot be used. `reason` is the short tag counted in the run summary."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def load_image(image: Any, root: str | None = None) -> Image.Image:
    """A path (relative to `root` if given), raw bytes, a {"bytes"|"path": ...} dict (HF datasets),
    a PIL image, or an array (see `from_array`) -> fully decoded RGB PIL image. An ImageError as the
    value (data_gen's sources give one for a path outside their root) is raised."""
    if isinstance(image, ImageError):
        raise ImageError(image.reason, image.detail)
    if isinstance(image, dict):  # datasets' Image feature without decoding
        image = image.get("bytes") or image.get("path")
    if image is None:
        raise ImageError("missing_image", "the item has no image")
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, (bytes, bytearray)):
        img = _open(io.BytesIO(image), "<bytes>")
    elif hasattr(image, "__array__"):  # numpy, torch (video frames of generated sources, decoders)
        return from_array(image)
    elif isinstance(image, (str, os.PathLike)):
        path = os.path.join(root, image) if root and not os.path.isabs(image) else str(image)
        if not os.path.isfile(path):
            raise ImageError("missing_image", f"no file {path}")
        img = _open(path, path)
    else:
        raise ImageError("unreadable_image", f"unsupported image value of type {type(image).__name__}")
    try:
        with _whole_files_only():
            img.load()  # decode now: truncated files fail here, not inside the processor
        return img.convert("RGB")
    except Exception as e:
        raise ImageError("unreadable_image", f"{type(e).__name__}: {e}") from e


@contextlib.contextmanager
def _whole_files_only():
    """PIL's process-wide LOAD_TRUNCATED_IMAGES off while decoding: other libraries turn it on when imported
    (lmms-eval does), and a half-decoded image would then be labelled as if it were whole."""
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def from_array(a: Any) -> Image.Image:
    """A frame as a numpy array (H, W[, C]) (PIL's layout) or a torch tensor (C, H, W) (torchvision's
    and torchcodec's), C in {1, 3, 4}, uint8 or float in [0, 1] -> RGB PIL image."""
    is_torch = type(a).__module__.startswith("torch")
    arr = np.asarray(a.detach().cpu() if is_torch else a)
    if is_torch and arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    ok_shape = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))
    if ok_shape and arr.dtype.kind == "f" and arr.size and np.isfinite(arr).all() and 0 <= arr.min() <= arr.max() <= 1:
        arr = (arr * 255).round().astype(np.uint8)
    if not ok_shape or arr.dtype != np.uint8:
        layout = "(C, H, W) tensor" if is_torch else "(H, W, C) array"
        raise ImageError("unreadable_image", f"{type(a).__name__} of shape {tuple(np.shape(a))} dtype {arr.dtype}: "
                                             f"expected a {layout} with C in 1, 3, 4 (or (H, W)), uint8 or float "
                                             f"in [0, 1]")
    return Image.fromarray(arr).convert("RGB")


def _open(fp: Any, name: str) -> Image.Image:
    try:
        return Image.open(fp)
    except Exception as e:
        raise ImageError("unreadable_image", f"{name}: {type(e).__name__}: {e}") from e


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
