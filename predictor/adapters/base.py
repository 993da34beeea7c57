"""The adapter interface. See `qwen2_vl.py` and `llava_onevision.py` for the families.

Conventions (batch size 1 unless a method says otherwise):
    S    prompt length in tokens (system prompt + template + visual tokens + instruction)
    N_v  number of visual tokens, N_i number of user-instruction tokens
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from predictor.adapters.layer0 import decoder_qk, instruction_attention
from predictor.registry import Registry
from predictor.schema import VisualSpan, visual_spans

# one module per family, imported on first lookup so that `import predictor.adapters` stays light
ADAPTERS: Registry[type["Adapter"]] = Registry(
    "adapter", modules=("predictor.adapters.qwen2_vl", "predictor.adapters.qwen3_vl",
                        "predictor.adapters.llava_onevision", "predictor.adapters.vila",
                        "predictor.adapters.qwen3_5", "predictor.adapters.llava_onevision1_5"))


def get_adapter(name: str) -> type["Adapter"]:
    return ADAPTERS.get(name)


def load_adapter(name: str, path: str, **kwargs: Any) -> "Adapter":
    """Load model + processor from a local folder (or the local HF cache) through adapter `name`."""
    return get_adapter(name).load(path, **kwargs)


@dataclass
class PromptCache:
    """What the vision tower's pass over one prompt leaves for later calls on the same prompt: label
    generation embeds each prompt several times (layer-0 attention, the explainer's pass)."""

    visual_features: tuple[torch.Tensor, int] | None = None  # (N_v, D) projected visual tokens, placeholder id
    deepstack: torch.Tensor | None = None  # (L, N_v, D) Qwen3-VL's DeepStack features of the same pass


@dataclass
class Prepared:
    """One prompt (an image or video and an instruction, or a chat of several: `Adapter.prepare_messages`),
    ready for the model.

    inputs: processor outputs for the prompt (input_ids (1, S), attention_mask, pixel_values, grid...)
    visual_positions: (N_v,) long, indices into the prompt of the visual tokens, in visual order
    instruction_positions: (N_i,) long, indices of the user-instruction tokens (no template tokens)
    grid: (t, h, w) of the visual tokens after merging, t*h*w == N_v
    segments: optional description of visual-token parts (schema `meta.segments`); a prompt with several
        images or videos has one or more per item, each with "visual": the item's index in prompt order,
        and then grid is (1, 1, N_v) (`visual_spans` gives each item's tokens and grid)
    prompt_text: the chat-templated prompt the processor tokenised
    instruction: the text the instruction positions cover (several parts joined by newlines)
    ground_truth: (N_v,) the source's own relevance, for explainer=ground_truth (`attach_ground_truth`)
    cache: the vision tower's outputs for this prompt (`PromptCache`)
    """

    inputs: dict[str, torch.Tensor]
    visual_positions: torch.Tensor
    instruction_positions: torch.Tensor
    grid: tuple[int, int, int]
    modality: str = "image"
    segments: list[dict] | None = None
    prompt_text: str | None = None
    instruction: str | None = None
    ground_truth: torch.Tensor | None = None
    cache: PromptCache = field(default_factory=PromptCache)

    @property
    def num_visual(self) -> int:
        return int(self.visual_positions.numel())

    @property
    def seq_len(self) -> int:
        return int(self.inputs["input_ids"].shape[-1])

    def visual_spans(self) -> list[VisualSpan]:
        """One span per image or video of the prompt, in order (`predictor.schema.visual_spans`)."""
        return visual_spans(self.segments, self.grid, self.num_visual)


@dataclass
class DeepStack:
    """Visual features that a family adds to the decoder's hidden states at the visual tokens after each
    of its first L layers (Qwen3-VL's DeepStack), for one (possibly pruned, left-padded) batch.

    visual_mask: (B, S) bool, the visual tokens' slots; features: (L, M, D), M = visual_mask.sum(), one
    row per True slot in row-major order (batch row by batch row, left to right), as the model reads them.
    """

    visual_mask: torch.Tensor
    features: torch.Tensor


class Adapter(ABC):
    """Wraps a loaded HF model + processor of one family."""

    name: str = ""  # registry name, written into shard metadata
    # visual tokens tile the image in token_px cells, row-major: synthetic sources then draw in those cells
    cell_grid: bool = False

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
    def prepare(self, image: Any, instruction: str, video: Any = None, fps: float | None = None) -> Prepared:
        """Apply the chat template and processor to one image (PIL) or video (frames: PIL images, HWC
        arrays or tensors, already sampled). fps: the frames' rate (sampled frames per second of the
        clip) where the family's positions depend on time (Qwen2.5-VL); None lets the processor assume
        its default (24 fps)."""

    def prepare_messages(self, messages: list[dict], instruction: str = "last") -> Prepared:
        """Apply the chat template and processor to a chat (`predictor.adapters.messages`): roles, and
        text, image and video parts in any order, ending with the user turn being answered. Each image or
        video is one segment of the visual tokens (`Prepared.visual_spans`). instruction: "last" takes the
        text of the last user turn (the question being answered) as the instruction, "all" the text of
        every user turn. `prepare(image, instruction)` equals it on [user: image, instruction]."""
        raise NotImplementedError(f"adapter {self.name!r} prepares one image or video per prompt only (prepare)")

    @abstractmethod
    def generate(self, prepared: Prepared, max_new_tokens: int = 32) -> tuple[torch.Tensor, str]:
        """Greedy answer: (answer token ids (T,) without EOS, decoded text)."""

    @abstractmethod
    def teacher_forced(self, prepared: Prepared, answer_ids: torch.Tensor, output_attentions: bool = True,
                       inputs_embeds: torch.Tensor | None = None, answer_logits_only: bool = False) -> Any:
        """Forward over prompt + answer with gradients flowing: returns an object with `.logits`
        (B, S+T, V) and `.attentions`, with output_attentions every layer's fp32 probabilities (tuple of
        L tensors (B, H, S+T, S+T); None at a hybrid decoder's linear-attention layers), else None (then a `capture` over `attention_layers()` sees them).
        inputs_embeds: (B, S+T, D) replaces the embedded sequence (gradient attributions on the visual
        token embeddings). answer_logits_only: logits (B, T, V) at the positions predicting the answer."""

    @abstractmethod
    def embed(self, prepared: Prepared, answer_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(1, S[+T], D) input embeddings with the visual features merged in."""

    def layer0_attention(self, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """The predictor's input for one prompt, as data_gen labels it: probe-layer (`probe_layer`) attention
        of the instruction tokens over the visual tokens (`layer0.instruction_attention`, the function the
        runtime scores with) -> (per_head (H, N_v) mean over instruction rows, mean (N_v,) also over
        heads), float32 on CPU."""
        with torch.no_grad():
            heads, mean = instruction_attention(self, self.embed(prepared), self.position_ids(prepared),
                                                prepared.instruction_positions, prepared.visual_positions)
        return heads.float().cpu(), mean.float().cpu()

    @property
    def token_px(self) -> int:
        """Side in pixels of the image square one visual token covers (figures draw the grid with it)."""
        raise NotImplementedError(f"adapter {self.name!r} does not declare its visual token size (token_px)")

    # ---- the decoder stack (layer-0 input, explainers' attention capture, pruned inference).
    # Llama-style defaults; a family overrides `language_model` and `position_ids`, and whatever
    # else differs. ----

    def language_model(self) -> torch.nn.Module:
        """The decoder stack: `.layers[0].input_layernorm`, `.layers[0].self_attn.{q,k}_proj`, `.rotary_emb`."""
        raise NotImplementedError(f"adapter {self.name!r} does not expose its language model for pruned inference")

    def attention_layers(self) -> dict[int, int]:
        """id(attention module) -> decoder layer index of every softmax-attention layer, what
        `attention.capture` records or recomputes (a hybrid decoder's linear-attention layers have none)."""
        return {id(layer.self_attn): i for i, layer in enumerate(self.language_model().layers)
                if getattr(layer, "self_attn", None) is not None}

    @property
    def probe_layer(self) -> int:
        """The decoder layer whose instruction-to-visual attention is the predictor's input: the first
        softmax-attention layer, from the config's `layer_types` (0 without one, or where layer 0 attends
        with softmax: every family but a hybrid one such as Qwen3.5). Shards and exports record it."""
        types = getattr(self.language_model().config, "layer_types", None) or []
        return next((i for i, t in enumerate(types) if t != "linear_attention"), 0)

    @property
    def num_layers(self) -> int:
        return len(self.language_model().layers)

    def position_ids(self, prepared: Prepared) -> torch.Tensor:
        """Rotary position ids of the prompt, in the shape the model's forward takes:
        (1, S) for 1-D RoPE, (3, 1, S) for Qwen2-VL's M-RoPE. Sequence is always the last dim."""
        raise NotImplementedError(f"adapter {self.name!r} does not provide position ids for pruned inference")

    def layer0_qk(self, embeds: torch.Tensor, position_ids: torch.Tensor,
                  query_positions: torch.Tensor, key_len: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Probe-layer (`probe_layer`, layer 0 but for hybrid decoders) queries of `query_positions` and keys
        of positions [0, key_len), rotary applied in fp32, key heads repeated for grouped-query attention
        (precision and the layers before the probe: see `layer0.py`).

        embeds: (1, S, D); position_ids as returned by `position_ids`.
        Returns q (H, N_q, d), k (H, key_len, d) fp32 and the softmax scale.
        Only what the probe layer needs for these rows and columns is computed: no values, no S x S scores.
        """
        return decoder_qk(self.language_model(), embeds, position_ids, query_positions, key_len,
                          layer=self.probe_layer)

    def deepstack(self, prepared: Prepared) -> torch.Tensor | None:
        """(L, N_v, D) features the family adds to the hidden states of the visual tokens after decoder
        layers 0..L-1, in visual order (Qwen3-VL's DeepStack), or None: the family has none. Pruning keeps
        the rows of the kept tokens (`predictor.runtime.prune`)."""
        return None

    @contextlib.contextmanager
    def deepstack_inputs(self, deepstack: DeepStack | None):
        """Within: the model's next forward over a prompt of deepstack.visual_mask's shape adds these
        features (a family with DeepStack overrides this; the others take none)."""
        if deepstack is not None:
            raise ValueError(f"adapter {self.name!r} has no DeepStack features; pass deepstack=None")
        yield

    def generate_from_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor,
                             position_ids: torch.Tensor, max_new_tokens: int = 32,
                             deepstack: DeepStack | None = None) -> list[torch.Tensor]:
        """Greedy answers from (possibly pruned, left-padded) prompt embeddings with explicit positions.

        embeds (B, S, D), attention_mask (B, S) with 0 on left padding, position_ids as from
        `position_ids` with batch B; deepstack: the kept visual tokens' DeepStack features
        (`predictor.runtime.deepstack_batch`) for families that have them. Runs the model's own attention
        (whatever it was loaded with). Returns B answer id tensors (T_b,) without EOS or padding.
        """
        if position_ids.ndim == 3 and hasattr(getattr(self.model, "model", None), "rope_deltas"):
            # M-RoPE models cache rope_deltas (next position = cache length + delta). Generation
            # extends the explicit position_ids we pass, but keep the cached deltas consistent with the
            # pruned prompt too: delta = (last original position + 1) - (unpadded pruned length).
            last = position_ids.amax(dim=(0, 2))  # (B,)
            self.model.model.rope_deltas = (last + 1 - attention_mask.sum(-1)).long()[:, None]
        with self.deepstack_inputs(deepstack):
            out = self.model.generate(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                      max_new_tokens=max_new_tokens, do_sample=False)
        return [_strip_answer(row, self._stop_ids()) for row in out]

    def _stop_ids(self) -> set[int]:
        gc = getattr(self.model, "generation_config", None)
        ids = set()
        for v in (getattr(gc, "eos_token_id", None), getattr(gc, "pad_token_id", None)):
            ids |= set(v if isinstance(v, (list, tuple)) else [] if v is None else [v])
        return ids

    def decode_answer(self, answer_ids: torch.Tensor) -> str:
        tok = getattr(self.processor, "tokenizer", self.processor)
        return tok.decode(answer_ids.tolist(), skip_special_tokens=True).strip()


def _strip_answer(row: torch.Tensor, stop_ids: set[int]) -> torch.Tensor:
    """Generated ids up to the first EOS/pad."""
    ids = row.tolist()
    for i, t in enumerate(ids):
        if t in stop_ids:
            return row[:i]
    return row
