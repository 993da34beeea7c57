"""Image loading with a pixel cap, image paths kept inside their root folder, and thumbnails for figures.

Everything that can go wrong with an image file raises `ImageError` with a short reason, so that the
generation loop can skip the item and record why (a bad file never stops a run).
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import numpy as np
from PIL import Image

from predictor.media import DEFAULT_MAX_PIXELS, cap_pixels  # noqa: F401  (the one cap; callers import it from here too)


class ImageError(ValueError):
    """An item's image cannot be used. `reason` is the short tag counted in the run summary."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def image_path(path: str, root: str, allow_outside: bool = False) -> str | ImageError:
    """A source's image path -> the file to read, relative paths taken from `root`. Unless
    `allow_outside`, a path that leads outside `root` (absolute, `..`, or a symlink out of it) comes
    back as an ImageError (reason `image_outside_root`) rather than raised, so that the source still
    lists the item and `load_image` raises it inside the per-item handling (the item is skipped)."""
    full = os.path.join(root, path)  # an absolute `path` replaces root
    if allow_outside:
        return full
    real, real_root = os.path.realpath(full), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        return ImageError("image_outside_root", f"{path!r} leads to {real}, outside the image root {root} "
                                                f"(source.image_root); move the file under it, or set "
                                                f"source.allow_outside_root=true")
    return full


def load_image(image: Any, root: str | None = None) -> Image.Image:
    """A path (relative to `root` if given), raw bytes, a {"bytes"|"path": ...} dict (HF datasets),
    a PIL image, or an array (see `from_array`) -> fully decoded RGB PIL image. An ImageError as the
    value (see `image_path`) is raised."""
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


def thumbnail_png(img: Image.Image, max_side: int = 96) -> bytes:
    """Small PNG of the image (longest side `max_side`) for figures."""
    thumb = img.copy()
    thumb.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
