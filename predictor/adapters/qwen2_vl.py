"""Qwen2-VL and Qwen2.5-VL (transformers' own classes).

Visual tokens: one `<|image_pad|>` per merged 2x2 patch group, in row-major order over the merged
grid (t, h, w) = image_grid_thw / (1, merge, merge). A video: one `<|video_pad|>` per token of
video_grid_thw / (1, merge, merge), frame group by frame group (t = frames / temporal_patch_size,
2 frames per step). Positions: 3-D M-RoPE from the model's own `get_rope_index` (text tokens advance
all three axes together; Qwen2.5-VL spaces video steps by seconds, from `prepare(fps=...)`).
"""
from __future__ import annotations

from typing import Any

import torch

from predictor.adapters.base import ADAPTERS, Prepared, PromptCache
from predictor.adapters.hf_adapter import HFAdapter


@ADAPTERS.register("qwen2_vl")
class Qwen2VLAdapter(HFAdapter):
    name = "qwen2_vl"
    cell_grid = True
    MODEL_TYPES = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
                   "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    @property
    def token_px(self) -> int:
        """28 for Qwen2-VL and Qwen2.5-VL: 14 px patches, merged 2 x 2 into one visual token."""
        return int(self.model.config.vision_config.patch_size) * self.merge_size

    def _processor_kwargs(self) -> dict:
        if self.max_pixels is None:
            return {}
        size = dict(self.processor.image_processor.size)
        size["longest_edge"] = int(self.max_pixels)
        return {"images_kwargs": {"size": size}}

    def _media_layout(self, inputs: dict, kind: str, index: int):
        """The item's merged grid: its row of image_grid_thw / video_grid_thw divided by (1, merge, merge)."""
        thw = inputs["image_grid_thw" if kind == "image" else "video_grid_thw"][index].tolist()
        return (int(thw[0]), int(thw[1]) // self.merge_size, int(thw[2]) // self.merge_size), None

    def position_ids(self, prepared: Prepared, answer_len: int = 0) -> torch.Tensor:
        """(3, 1, S + answer_len) M-RoPE ids; answer tokens continue after the last prompt token's id, as the
        model's own forward and generate place them (not after the largest id: at a low fps Qwen2.5-VL's
        last frame has a temporal id beyond the text that follows it)."""
        inputs = prepared.inputs
        ids = inputs["input_ids"]
        kw = {"image_grid_thw": inputs.get("image_grid_thw"), "video_grid_thw": inputs.get("video_grid_thw")}
        if "second_per_grid_ts" in inputs:  # Qwen2.5-VL video timing
            kw["second_per_grid_ts"] = inputs["second_per_grid_ts"]
        mm = inputs["mm_token_type_ids"]  # each token's modality, from the processor (transformers >= 5.23)
        pos, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=mm, **kw)  # (3, 1, S)
        if answer_len:
            nxt = pos[..., -1].amax() + 1  # the last prompt token is text: its three ids are equal
            extra = torch.arange(answer_len, device=pos.device) + nxt
            pos = torch.cat([pos, extra.view(1, 1, -1).expand(3, 1, -1)], dim=-1)
        return pos

    def _visual_features(self, inputs: dict, cache: PromptCache) -> tuple[torch.Tensor, int]:
        out, token = self._tower(inputs)
        return torch.cat(list(out.pooler_output), dim=0), token

    def _tower(self, inputs: dict) -> tuple[Any, int]:
        """The vision tower's output for the prompt's image or video, and that modality's token id."""
        if "pixel_values" in inputs:
            return self.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]), \
                self.image_token_id
        return self.model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"]), \
            self.video_token_id
