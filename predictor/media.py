"""The pixel cap that every path applies to an image before the adapter's processor sees it.

data_gen labels images at the size `cap_pixels` gives them; eval, the lmms-eval model and the demo must
hand the model the same size, or the predictor prunes at another token count than its labels were made
at. A processor's own cap (its `max_pixels`) rounds differently (at 1920x1080 Qwen2-VL gives 1008
tokens through it, 1032 after `cap_pixels`), so no path caps through the processor instead.
"""
from __future__ import annotations

import math

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
