"""Tiny random MLLM folders for tests, built once per test session (no downloads).

Use from a test module (pytest puts tests/ on sys.path):

    from models import FAMILIES, tiny_image, tiny_model_dir, tiny_models  # noqa: F401  (fixture)

    def test_x(tiny_models):                    # {family: Path} for every family in FAMILIES
        adapter = load_adapter(ADAPTER_OF["qwen2_vl"], str(tiny_models["qwen2_vl"]))

`tiny_model_dir(family, root)` builds (or reuses) one folder under `root`. Every folder is a normal
HF checkpoint saved with save_pretrained (config, safetensors weights, tokenizer, processor config).
`interface_only(adapter)` lets a caller reach only what the `Adapter` base class declares.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import transformers

from reference_mllm.tiny_models import (DEFAULT_WORDS, build_llava_onevision, build_llava_onevision1_5, build_qwen2_vl,
                                        build_qwen3_5, build_qwen3_vl, build_vila)

# family -> adapter name that loads it
ADAPTER_OF = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl",
              "llava_onevision": "llava_onevision", "qwen3_5": "qwen3_5", "vila": "vila"}
# families whose transformers class is newer than the declared floor: tested where the installed release has it
NEWER = {"llava_onevision1_5": ("LlavaOnevision15ForConditionalGeneration", "5.25")}
ADAPTER_OF.update({f: f for f, (cls, _) in NEWER.items() if hasattr(transformers, cls)})
FAMILIES = tuple(ADAPTER_OF)
WORDS = list(DEFAULT_WORDS)

_BUILT: dict[tuple[str, str], Path] = {}


def tiny_model_dir(family: str, root: Path) -> Path:
    """Folder of a tiny random model of `family` (2 text layers, hidden 64, 4 heads / 2 kv heads; Qwen3.5: 4
    layers, linear / softmax attention alternating)."""
    key = (family, str(root))
    if key not in _BUILT:
        out = Path(root) / family
        if not (out / "config.json").exists():
            if family == "llava_onevision":
                build_llava_onevision(out, WORDS, seed=0)
            elif family == "vila":  # a VILA1.5 folder: llm/, vision_tower/, mm_projector/, 3 x 3 tokens per image
                build_vila(out, WORDS, seed=0)
            elif family == "llava_onevision1_5":
                build_llava_onevision1_5(out, WORDS, seed=0)
            elif family == "qwen3_5":
                build_qwen3_5(out, WORDS, seed=0)
            elif family in ("qwen3_vl", "qwen3_vl_moe"):  # the MoE variant: built on demand, not in FAMILIES
                build_qwen3_vl(out, WORDS, moe=family == "qwen3_vl_moe", seed=0)
            else:
                build_qwen2_vl(out, WORDS, variant=family, seed=0)
        _BUILT[key] = out
    return _BUILT[key]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_mllms")
    return {family: tiny_model_dir(family, root) for family in FAMILIES}


def tiny_image(width: int = 112, height: int = 84, seed: int = 0) -> Image.Image:
    """A small image with a few coloured shapes (Qwen2-VL: 112x84 px -> 4x3 = 12 visual tokens)."""
    img = Image.new("RGB", (width, height), (40 + seed % 50, 60, 80))
    d = ImageDraw.Draw(img)
    d.ellipse([5, 5, 40, 40], fill=(220, 30, 30))
    d.rectangle([60, 30, 100, 70], fill=(30, 200, 40))
    return img


def tiny_video(frames: int = 8, width: int = 112, height: int = 84) -> list[Image.Image]:
    """`frames` PIL frames of a red circle moving right past a still green square (Qwen2-VL: 8 frames of
    112x84 px -> grid (4, 3, 4), 48 visual tokens; LLaVA-OneVision: 8 pooled 2x2 frames + 1 newline)."""
    out = []
    for i in range(frames):
        img = Image.new("RGB", (width, height), (40, 60, 80))
        d = ImageDraw.Draw(img)
        x = 5 + i * (width - 45) // max(frames - 1, 1)
        d.ellipse([x, 5, x + 35, 40], fill=(220, 30, 30))
        d.rectangle([60, 40, 100, 78], fill=(30, 200, 40))
        out.append(img)
    return out


class interface_only:  # noqa: N801  (reads as a function at the call site)
    """`adapter` as seen through the `Adapter` base class only: an attribute the base class does not
    declare (a private helper, a family's extra) and a keyword its method does not take raise, so a
    caller that works through this works with any adapter."""

    INSTANCE = ("model", "processor", "model_id")  # set by Adapter.__init__

    def __init__(self, adapter):
        self._adapter = adapter

    def __getattr__(self, name):
        from predictor.adapters import Adapter

        if name not in self.INSTANCE and (name.startswith("_") or not hasattr(Adapter, name)):
            raise AttributeError(f"{name!r} is not declared by the Adapter base class")
        value = getattr(self._adapter, name)
        declared = inspect.getattr_static(Adapter, name, None)
        if not callable(declared) or isinstance(declared, property):
            return value
        signature = inspect.signature(declared)

        def call(*args, **kwargs):
            signature.bind(self, *args, **kwargs)  # TypeError for a keyword the base class does not declare
            return value(*args, **kwargs)
        return call
