"""Small shims over transformers internals, in one place so they are easy to drop later.

Imported only by adapters and `data_gen.hf_build` (transformers is imported lazily inside).
"""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Iterator


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


@contextlib.contextmanager
def allow_missing_video_processor() -> Iterator[None]:
    """Let multimodal processors be built and loaded without a video processor.

    transformers 5.x checks every processor attribute's class, and the video processors (and their
    base class `VideoProcessorMixin`) exist only where torchvision is installed; without it even an
    image-only Qwen2-VL or LLaVA-OneVision processor cannot be built, saved or loaded. Inside this
    context processors have no `video_processor` attribute at all (building, `save_pretrained`,
    `from_pretrained`); images work, videos fail in the processor.
    Does nothing where torchvision is installed.
    """
    if torchvision_available():
        yield
        return
    from transformers import processing_utils as pu

    original = pu.ProcessorMixin.__dict__["get_attributes"]

    def get_attributes(cls):
        return [a for a in original.__func__(cls) if a != "video_processor"]

    pu.ProcessorMixin.get_attributes = classmethod(get_attributes)
    try:
        yield
    finally:
        pu.ProcessorMixin.get_attributes = original
