"""LLaVA-OneVision-1.5 (transformers' `LlavaOnevision15ForConditionalGeneration`, transformers >= 5.25).

What differs from Qwen2-VL where pruning is concerned:
- The vision tower (RICE-ViT: native resolution, 2-D RoPE, a CLS token per image, dropped before the
  merger) emits one visual token per 2 x 2 patches of 14 px (`token_px` 28), one `<|image_pad|>` each,
  row-major, as Qwen2-VL's; a video is Qwen2-VL-processed without temporal patches (one frame per step).
- The LLM is Qwen3 (q/k RMS norms before rotary, which `layer0.decoder_qk` applies) with plain 1-D
  positions: `position_ids` is 0..S-1, and pruning keeps each kept token's original index.
"""
from __future__ import annotations

import torch

from predictor.adapters.base import ADAPTERS, Prepared
from predictor.adapters.qwen2_vl import Qwen2VLAdapter

FIRST_RELEASE = (5, 25)  # the first transformers release with the family


@ADAPTERS.register("llava_onevision1_5")
class LlavaOnevision15Adapter(Qwen2VLAdapter):
    name = "llava_onevision1_5"
    MODEL_TYPES = {"llava_onevision1_5": "LlavaOnevision15ForConditionalGeneration"}

    @classmethod
    def load(cls, path: str, *args, **kwargs) -> "LlavaOnevision15Adapter":
        import transformers as tf

        if tuple(int(v) for v in tf.__version__.split(".")[:2]) < FIRST_RELEASE:
            need = ".".join(map(str, FIRST_RELEASE))
            raise ImportError(f"adapter 'llava_onevision1_5' needs transformers >= {need} (the first release with "
                              f"LLaVA-OneVision-1.5); this is {tf.__version__}: pip install 'transformers>={need},<5.26'")
        return super().load(path, *args, **kwargs)

    def position_ids(self, prepared: Prepared, answer_len: int = 0) -> torch.Tensor:
        """(1, S + answer_len): the model numbers every token in order, visual or not."""
        return torch.arange(prepared.seq_len + answer_len, device=self.device)[None]
