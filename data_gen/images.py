"""data_gen's own image policy: a source's image paths kept inside its root folder, and shard thumbnails.

Loading and the pixel cap are the library's (`predictor.media`): eval, the runtime and lmms-eval load
images the same way, and none of them has a source root or writes thumbnails.
"""
from __future__ import annotations

import io
import os

from PIL import Image

from predictor.media import ImageError


def image_path(path: str, root: str, allow_outside: bool = False) -> str | ImageError:
    """A source's image path -> the file to read, relative paths taken from `root`. Unless
    `allow_outside`, a path that leads outside `root` (absolute, `..`, or a symlink out of it) comes
    back as an ImageError (reason `image_outside_root`) rather than raised, so that the source still
    lists the item and `predictor.media.load_image` raises it inside the per-item handling (the item is skipped)."""
    full = os.path.join(root, path)  # an absolute `path` replaces root
    if allow_outside:
        return full
    real, real_root = os.path.realpath(full), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        return ImageError("image_outside_root", f"{path!r} leads to {real}, outside the image root {root} "
                                                f"(source.image_root); move the file under it, or set "
                                                f"source.allow_outside_root=true")
    return full


def thumbnail_png(img: Image.Image, max_side: int = 96) -> bytes:
    """Small PNG of the image (longest side `max_side`) for figures."""
    thumb = img.copy()
    thumb.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
