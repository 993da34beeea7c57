"""Qwen3.5 (transformers' `Qwen3_5ForConditionalGeneration`): a hybrid decoder.

What differs from Qwen3-VL where pruning is concerned:
- The decoder mixes Gated DeltaNet linear-attention layers with gated softmax-attention layers
  (config `layer_types`; by default three linear layers, then one softmax layer: layer 3 is the first
  with attention probabilities). The predictor's input is read there (`probe_layer`); the layers before
  it run in full over the prompt (`layer0.decoder_qk`). The softmax layers' q_proj also emits a
  per-head output gate (applied after the softmax: it does not change the probabilities).
- Rotary is interleaved M-RoPE on a quarter of the head dims (partial_rotary_factor 0.25); the q/k
  path rotates only those dims. Pruning keeps each kept token's 3-D ids, as for Qwen3-VL.
- The linear layers carry a recurrent state (and a short causal convolution) instead of keys and
  values. They read no positions, only order: a pruned prompt is a shorter sequence for them, which is
  what pruning means for such a layer; generation's cache holds both kinds of state.
- No DeepStack. Processor, 32 px visual tokens and video timestamps are Qwen3-VL's.
"""
from __future__ import annotations

from predictor.adapters.base import ADAPTERS
from predictor.adapters.qwen2_vl import Qwen2VLAdapter


@ADAPTERS.register("qwen3_5")
class Qwen3_5Adapter(Qwen2VLAdapter):  # noqa: N801  (transformers' spelling of the family)
    name = "qwen3_5"
    MODEL_TYPES = {"qwen3_5": "Qwen3_5ForConditionalGeneration"}
