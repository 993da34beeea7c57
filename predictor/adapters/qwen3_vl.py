"""Qwen3-VL and Qwen3-VL-MoE (transformers' own classes; the MoE variant differs only in its MLPs).

What differs from Qwen2-VL where pruning is concerned:
- 16 px patches merged 2 x 2: one visual token per 32 x 32 px cell (`token_px`).
- Layer-0 attention applies per-head RMS norms to q and k before rotary (`layer0.decoder_qk` does).
- M-RoPE is interleaved over the rotary dims; `rotary_emb` returns the interleaved cos/sin, so the
  q/k path and pruning (which keeps each token's 3-D ids) need nothing else.
- A video is one frame group after another, each after a timestamp text ("<0.2 seconds>") inside its
  own vision start/end tokens: its visual tokens are not contiguous, and each frame group starts its
  temporal id where the text before it ends (the model's own `get_rope_index`).
- DeepStack: the vision tower also emits (L, N_v, D) features from inner blocks, which the LLM adds to
  the hidden states of the visual tokens after each of its first L layers. Layer 0's attention does not
  see them; every later layer does. Pruning keeps exactly the kept tokens' rows, in their order
  (`deepstack`, `deepstack_inputs`, `predictor.runtime.prune`).
"""
from __future__ import annotations

import contextlib

import torch

from predictor.adapters.base import ADAPTERS, DeepStack, Prepared, PromptCache
from predictor.adapters.qwen2_vl import Qwen2VLAdapter


@ADAPTERS.register("qwen3_vl")
class Qwen3VLAdapter(Qwen2VLAdapter):
    name = "qwen3_vl"
    MODEL_TYPES = {"qwen3_vl": "Qwen3VLForConditionalGeneration",
                   "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration"}

    def _visual_features(self, inputs: dict, cache: PromptCache) -> tuple[torch.Tensor, int]:
        """As Qwen2-VL's; the same tower pass leaves the DeepStack features on `cache.deepstack` (L, N_v, D)."""
        out, token = self._tower(inputs)
        cache.deepstack = torch.stack([torch.cat(list(f), dim=0) for f in out.deepstack_features])
        return torch.cat(list(out.pooler_output), dim=0), token

    def deepstack(self, prepared: Prepared) -> torch.Tensor:
        self.visual_features(prepared)
        return prepared.cache.deepstack

    @contextlib.contextmanager
    def deepstack_inputs(self, deepstack: DeepStack | None):
        """Hands `deepstack` to the language model's next forward over a sequence of visual_mask's shape
        (generation's prefill, the teacher-forced pass): the model's own `_deepstack_process` adds them.
        The model's forward would take them only from pixel inputs, which a pruned prompt no longer has."""
        if deepstack is None:
            raise ValueError("Qwen3-VL adds DeepStack features to the visual tokens after its first layers; without "
                             "them the answer is not the model's. Pass the kept tokens' features: "
                             "deepstack=predictor.runtime.deepstack_batch(pruned_prompts)")
        pending = [deepstack]

        def hook(module, args, kwargs):
            embeds = kwargs.get("inputs_embeds")
            if not pending or embeds is None or embeds.shape[:2] != pending[0].visual_mask.shape:
                return None
            ds = pending.pop()
            kwargs["visual_pos_masks"] = ds.visual_mask.to(embeds.device)
            kwargs["deepstack_visual_embeds"] = list(ds.features.to(embeds.device, embeds.dtype))
            return args, kwargs

        handle = self.language_model().register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
        if pending:
            raise RuntimeError(f"no forward over a {tuple(deepstack.visual_mask.shape)} prompt took the DeepStack "
                               f"features")
