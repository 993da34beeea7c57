"""LLaVA-OneVision (transformers' LlavaOnevisionForConditionalGeneration: SigLIP + Qwen2).

Visual tokens of one image ("anyres"), in sequence order:
    base   the whole image resized to the tower's size: s x s tokens, row-major (s = image_size / patch)
    crops  the high-resolution crops stitched into one unpadded h' x w' map, row-major, with one
           `image_newline` token after each row: h' rows of (w' + 1) tokens
Visual tokens of one video (`<video>`), in sequence order (transformers' `get_video_features`):
    frames   each frame through the tower alone, its s x s map pooled bilinearly to ceil(s/2) x
             ceil(s/2): t x p x p tokens, frame by frame, row-major within a frame
    newline  one `image_newline` token after the last frame
These are written into `segments` (schema meta.segments); since the parts do not form one grid,
`grid` is (1, 1, N_v) for images and videos alike. Positions are plain 1-D (0..S-1).
"""
from __future__ import annotations

import math

import torch

from predictor.adapters.base import ADAPTERS, Prepared, PromptCache
from predictor.adapters.hf_adapter import HFAdapter


@ADAPTERS.register("llava_onevision")
class LlavaOnevisionAdapter(HFAdapter):
    name = "llava_onevision"
    MODEL_TYPES = {"llava_onevision": "LlavaOnevisionForConditionalGeneration"}

    @property
    def token_px(self) -> int:
        """The tower's patch size (14 for SigLIP): a base-image token is one patch of the image resized to
        the tower's image_size (crops start the same; anyres_max may pool them further)."""
        return int(self.model.config.vision_config.patch_size)

    def _media_layout(self, inputs: dict, kind: str, index: int):
        """(1, 1, n) and the item's parts (base / crops / newline, or frames / newline). An image among
        several gets no crops: the processor and the model take the base image and its newline only."""
        from transformers.image_processing_utils import select_best_resolution

        vcfg = self.model.config.vision_config
        s = vcfg.image_size // vcfg.patch_size
        if kind == "video":
            t, p = int(inputs["pixel_values_videos"][index].shape[0]), math.ceil(s / 2)  # the model's apply_pooling
            parts = [{"kind": "frames", "start": 0, "grid": [t, p, p]},
                     {"kind": "newline", "start": t * p * p, "grid": [1, 1, 1]}]
        else:
            several = len(inputs["image_sizes"]) > 1
            if several or int((inputs["input_ids"] == self.image_token_id).sum()) == s * s + 1:
                # no crops: base then one newline token
                parts = [{"kind": "base", "start": 0, "grid": [1, s, s]},
                         {"kind": "newline", "start": s * s, "grid": [1, 1, 1]}]
            else:
                orig_h, orig_w = (int(v) for v in inputs["image_sizes"][index].tolist())
                height, width = inputs["pixel_values"].shape[-2:]
                best_h, best_w = select_best_resolution([orig_h, orig_w],
                                                        self.processor.image_processor.image_grid_pinpoints)
                unpadded, rows = self.processor._get_unpadded_features(orig_h, orig_w, s, s, best_h // height,
                                                                        best_w // width)
                parts = [{"kind": "base", "start": 0, "grid": [1, s, s]},
                         {"kind": "crops_with_newline", "start": s * s, "grid": [1, rows, unpadded // rows + 1],
                          "newline_column": True}]
        n = sum(math.prod(part["grid"]) for part in parts)
        return (1, 1, n), parts

    def position_ids(self, prepared: Prepared, answer_len: int = 0) -> torch.Tensor:
        """(1, S + answer_len): 0, 1, 2, ..."""
        return torch.arange(prepared.seq_len + answer_len, device=self.device)[None]

    def _visual_features(self, inputs: dict, cache: PromptCache) -> tuple[torch.Tensor, int]:
        cfg = self.model.config
        if "pixel_values" not in inputs:
            feats = self.model.model.get_video_features(
                pixel_values_videos=inputs["pixel_values_videos"], vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy)
            return feats.pooler_output.flatten(0, 1), self.video_token_id
        feats = self.model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            vision_aspect_ratio=cfg.vision_aspect_ratio,
            batch_num_images=inputs.get("batch_num_images"))
        return torch.cat(list(feats.pooler_output), dim=0), self.image_token_id
