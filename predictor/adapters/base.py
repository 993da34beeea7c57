"""The adapter interface. See `qwen2_vl.py` and `llava_onevision.py` for the families.

Conventions (batch size 1 unless a method says otherwise):
    S    prompt length in tokens (system prompt + template + visual tokens + instruction)
    N_v  number of visual tokens, N_i number of user-instruction tokens
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from predictor.registry import Registry

ADAPTERS: Registry[type["Adapter"]] = Registry("adapter")

# family modules, imported on first lookup so that `import predictor.adapters` stays light
_FAMILY_MODULES = ("predictor.adapters.qwen2_vl", "predictor.adapters.llava_onevision")


def _import_families() -> None:
    for mod in _FAMILY_MODULES:
        importlib.import_module(mod)


def get_adapter(name: str) -> type["Adapter"]:
    _import_families()
    return ADAPTERS.get(name)


def load_adapter(name: str, path: str, **kwargs: Any) -> "Adapter":
    """Load model + processor from a local folder (or the local HF cache) through adapter `name`."""
    return get_adapter(name).load(path, **kwargs)


@dataclass
class Prepared:
    """One (image or video, instruction) prompt, ready for the model.

    inputs: processor outputs for the prompt (input_ids (1, S), attention_mask, pixel_values, grid...)
    visual_positions: (N_v,) long, indices into the prompt of the visual tokens, in visual order
    instruction_positions: (N_i,) long, indices of the user-instruction tokens (no template tokens)
    grid: (t, h, w) of the visual tokens after merging, t*h*w == N_v
    segments: optional description of visual-token parts (schema `meta.segments`)
    """

    inputs: dict[str, torch.Tensor]
    visual_positions: torch.Tensor
    instruction_positions: torch.Tensor
    grid: tuple[int, int, int]
    modality: str = "image"
    segments: list[dict] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_visual(self) -> int:
        return int(self.visual_positions.numel())

    @property
    def seq_len(self) -> int:
        return int(self.inputs["input_ids"].shape[-1])


class Adapter(ABC):
    """Wraps a loaded HF model + processor of one family."""

    name: str = ""  # registry name, written into shard metadata

    def __init__(self, model: Any, processor: Any, model_id: str):
        self.model = model
        self.processor = processor
        self.model_id = model_id

    @classmethod
    @abstractmethod
    def load(cls, path: str, dtype: str = "auto", device: str = "cpu",
             attn_implementation: str = "sdpa", trust_remote_code: bool = False) -> "Adapter":
        """Model and processor from a local folder through transformers' own classes."""

    @abstractmethod
    def prepare(self, image: Any, instruction: str, video: Any = None) -> Prepared:
        """Apply the chat template and processor to one image (PIL) or video (list of PIL frames)."""

    @abstractmethod
    def generate(self, prepared: Prepared, max_new_tokens: int = 32) -> tuple[torch.Tensor, str]:
        """Greedy answer: (answer token ids (T,) without EOS, decoded text)."""

    @abstractmethod
    def teacher_forced(self, prepared: Prepared, answer_ids: torch.Tensor,
                       output_attentions: bool = True, inputs_embeds: torch.Tensor | None = None) -> Any:
        """Forward over prompt + answer with gradients flowing and (fp32-scored, eager) attention
        probabilities per layer: returns an object with `.logits (1, S+T, V)` and `.attentions`
        (tuple of L tensors (1, H, S+T, S+T)). `inputs_embeds` replaces the embedded sequence
        (for gradient attributions on the visual token embeddings)."""

    @abstractmethod
    def embed(self, prepared: Prepared, answer_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(1, S[+T], D) input embeddings with the visual features merged in."""
