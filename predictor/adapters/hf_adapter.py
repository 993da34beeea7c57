"""What the transformers-based families share: loading, chat prompt, instruction positions,
generation and the teacher-forced forward (the predictor's input is `Adapter.layer0_attention`).

A family subclass (`qwen2_vl.py`, `llava_onevision.py`) provides: `MODEL_TYPES` (config model_type
-> transformers class name), `image_token_id`, `language_model()`, `position_ids(prepared, answer_len)`,
`embed(...)` and `_visual_layout(...)`. transformers is imported lazily, inside methods.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from predictor.adapters.attention import ATTN_IMPL, capture, register
from predictor.adapters.base import Adapter, DeepStack, Prepared, PromptCache, _strip_answer

DTYPES = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class TeacherForced:
    logits: torch.Tensor  # (B, S+T, V), or (B, T, V) with answer_logits_only: row t predicts answer token t
    attentions: tuple[torch.Tensor | None, ...] | None  # L x (B, H, S+T, S+T) fp32 (None: linear attention)


class HFAdapter(Adapter):
    MODEL_TYPES: dict[str, str] = {}  # config.model_type -> transformers model class name
    system_prompt: str | None = None  # None: the chat template's default

    def __init__(self, model: Any, processor: Any, model_id: str, max_pixels: int | None = None):
        super().__init__(model, processor, model_id)
        self.max_pixels = max_pixels
        for p in model.parameters():  # explainers differentiate w.r.t. activations, never weights
            p.requires_grad_(False)

    # ---- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str, dtype: str = "auto", device: str = "cpu", attn_implementation: str = ATTN_IMPL,
             trust_remote_code: bool = False, max_pixels: int | None = None) -> "HFAdapter":
        """Model + processor from a local folder or a repo id already in the local HF cache.

        attn_implementation: ATTN_IMPL (default) is SDPA that can also expose fp32 attention maps
        for labels; "sdpa"/"eager"/"flash_attention_2" load as usual (then no maps can be captured).
        """
        import transformers as tf

        if dtype not in DTYPES:
            raise ValueError(f"model.dtype={dtype!r} is not one of {sorted(DTYPES)}")
        if attn_implementation == ATTN_IMPL:
            register()
        if not Path(path).is_dir() and not _in_hf_cache(path):
            raise FileNotFoundError(
                f"model path {path!r} is neither a local folder nor a repo id in the local HF cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); set model.path=/path/to/checkpoint")
        kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
        config = tf.AutoConfig.from_pretrained(path, **kw)
        if config.model_type not in cls.MODEL_TYPES:
            raise ValueError(f"adapter {cls.name!r} expects a model of type {sorted(cls.MODEL_TYPES)}, but "
                             f"{path} has model_type={config.model_type!r}; pick the matching model.adapter")
        model_cls = getattr(tf, cls.MODEL_TYPES[config.model_type])
        model = model_cls.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation=attn_implementation,
                                          **kw).to(device).eval()
        processor = tf.AutoProcessor.from_pretrained(path, **kw)
        return cls(model, processor, model_id=str(path), max_pixels=max_pixels)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def video_token_id(self) -> int:
        return int(self.model.config.video_token_id)

    # ---- family hooks --------------------------------------------------------------------------

    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    def position_ids(self, prepared: Prepared, answer_len: int = 0) -> torch.Tensor:
        """Rotary position ids of prompt (+ answer_len more tokens): (1, S+T) or (3, 1, S+T)."""
        raise NotImplementedError

    def _visual_layout(self, inputs: dict, visual_positions: torch.Tensor) -> tuple[tuple[int, int, int], list | None]:
        """(grid (t, h, w) with t*h*w == N_v, segments or None) of the processed image."""
        raise NotImplementedError

    def _processor_kwargs(self) -> dict:
        return {}

    # ---- prompt ---------------------------------------------------------------------------------

    def _messages(self, instruction: str, modality: str) -> list[dict]:
        msgs = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        return msgs + [{"role": "user", "content": [{"type": modality}, {"type": "text", "text": instruction}]}]

    def prepare(self, image: Any, instruction: str, video: Any = None, fps: float | None = None) -> Prepared:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"empty instruction {instruction!r}: every item needs a non-empty instruction")
        if (image is None) == (video is None):
            raise ValueError("prepare() takes exactly one of image= or video=")
        modality = "image" if video is None else "video"
        text = self.processor.apply_chat_template(self._messages(instruction, modality), add_generation_prompt=True,
                                                  tokenize=False)
        if video is None and fps is not None:
            raise ValueError(f"fps={fps} was given with an image; fps describes video frames: pass video= or drop fps")
        media = {"images": [image]} if video is None else self.video_kwargs(video, fps)
        inputs = self.processor(text=[text], return_tensors="pt", **media, **self._processor_kwargs())
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        ids = inputs["input_ids"][0].cpu()
        token_id = self.image_token_id if video is None else self.video_token_id
        visual = (ids == token_id).nonzero().flatten()
        instr = self._instruction_positions(text, instruction, ids, token_id, modality)
        grid, segments = self._visual_layout(inputs, visual)
        return Prepared(inputs=inputs, visual_positions=visual, instruction_positions=instr, grid=grid,
                        modality=modality, segments=segments, prompt_text=text)

    @staticmethod
    def video_kwargs(video: Any, fps: float | None) -> dict:
        """Processor arguments for one clip of already sampled frames: the processor samples none
        (frame sampling is the source's job), and the true fps travels as video metadata, which is
        where Qwen2.5-VL reads its frame timing (second_per_grid_ts) from. Public: the reference MLLMs
        train on exactly these inputs (reference_mllm.train)."""
        if isinstance(video, (str, os.PathLike)):  # the metadata below would count characters, not frames
            raise ValueError(f"video={str(video)!r} is a path; prepare() takes decoded frames: decode and sample "
                             f"the file first (the video sources do, with torchcodec)")
        if isinstance(video, (list, tuple)) and all(hasattr(f, "convert") for f in video):  # PIL frames
            # transformers takes a grayscale or RGBA frame for something to decode (and asks for torchcodec)
            video = [f.convert("RGB") for f in video]
            sizes = sorted({f.size for f in video})
            if len(sizes) > 1:
                raise ValueError(f"video frames differ in size: (width, height) {sizes}; resize every frame of a "
                                 f"clip to one size before prepare()")
        n = len(video) if hasattr(video, "__len__") else 0
        if n == 0:
            raise ValueError(f"video has no frames ({type(video).__name__} of length 0); pass a list of PIL "
                             f"images, HWC arrays or a (T, H, W, C) array with at least one frame")
        if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
            raise ValueError(f"fps={fps!r}: expected the frames' rate in frames per second, a number > 0")
        meta = {"total_num_frames": n, "fps": fps, "frames_indices": list(range(n))}
        return {"videos": [video], "videos_kwargs": {"do_sample_frames": False, "video_metadata": [meta]}}

    def _instruction_positions(self, text: str, instruction: str, ids: torch.Tensor, token_id: int,
                               modality: str) -> torch.Tensor:
        """Indices in the expanded prompt of the tokens overlapping the instruction's characters in the
        templated text (never the system prompt or template tokens). The processor expands the one
        placeholder token into N_v copies; we tokenize the unexpanded text with offsets and shift."""
        placeholder = self.tokenizer.convert_ids_to_tokens(token_id)
        start = text.find(instruction, text.rfind(placeholder) + len(placeholder))
        if start < 0:  # instruction placed before the media
            start = text.find(instruction)
        if start < 0:  # a -1 start would make the system prompt's first tokens the "instruction" features
            raise ValueError(
                f"adapter {self.name!r} ({self.model_id}): the chat template's prompt does not contain the "
                f"instruction {instruction!r} verbatim (the template rewrote it, e.g. trimmed or escaped it), so "
                f"its tokens cannot be found; prompt: {text[:300]!r}. Pass the instruction as the template "
                f"writes it (e.g. stripped), or fix the template or the adapter's _messages")
        end = start + len(instruction)
        enc = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        raw = torch.tensor(enc["input_ids"])
        n_media = int((ids == token_id).sum())
        where = (raw == token_id).nonzero().flatten()
        # the processor expands the placeholder only: into N_v tokens, or (Qwen3-VL video) into frames
        # separated by timestamp text; the text after it is unchanged, just shifted
        shift = ids.numel() - raw.numel()
        if where.numel() != 1 or shift < n_media - 1 or not torch.equal(ids[where.item() + 1 + shift:],
                                                                        raw[where.item() + 1:]):
            raise ValueError(f"prompt has {where.numel()} {modality} placeholders and length {raw.numel()}; expected "
                             f"one, expanding to {ids.numel()} tokens with {n_media} visual tokens")
        special = set(self.tokenizer.all_special_ids)
        keep = [i for i, (a, b) in enumerate(enc["offset_mapping"])
                if a < end and b > start and b > a and enc["input_ids"][i] not in special]
        pos = torch.tensor([i + shift if i > where.item() else i for i in keep], dtype=torch.long)
        expanded = ids[pos]
        assert torch.equal(expanded, raw[keep]), "instruction token positions do not line up with the prompt"
        return pos

    # ---- forward passes ----------------------------------------------------------------------------

    def _answer_ids(self, answer_ids: torch.Tensor | None) -> torch.Tensor:
        if answer_ids is None:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        return answer_ids.reshape(-1).to(self.device, torch.long)

    def _visual_features(self, inputs: dict, cache: PromptCache) -> tuple[torch.Tensor, int]:
        """-> ((N_v, D) projected visual tokens in sequence order, the placeholder token id they replace).
        Other outputs of the same tower pass that a family needs later go into `cache` (Qwen3-VL: DeepStack)."""
        raise NotImplementedError

    def visual_features(self, prepared: Prepared) -> tuple[torch.Tensor, int]:
        """The vision tower's output for this prompt, computed once and kept on `prepared.cache`: label
        generation embeds each prompt several times (layer-0 attention, the explainer's pass). No
        gradient flows into it: the tower is frozen, and the explainers attribute to the LLM's input
        embeddings."""
        cache = prepared.cache
        if cache.visual_features is None:
            with torch.no_grad():
                cache.visual_features = self._visual_features(prepared.inputs, cache)
        return cache.visual_features

    def embed(self, prepared: Prepared, answer_ids: torch.Tensor | None = None) -> torch.Tensor:
        inputs = prepared.inputs
        ids = torch.cat([inputs["input_ids"], self._answer_ids(answer_ids)[None]], dim=1)
        embeds = self.model.get_input_embeddings()(ids)  # (1, S+T, D)
        feats, token = self.visual_features(prepared)
        mask = (ids == token)[..., None].expand_as(embeds)
        return embeds.masked_scatter(mask, feats.to(embeds.dtype))

    def generate(self, prepared: Prepared, max_new_tokens: int = 32) -> tuple[torch.Tensor, str]:
        # From the cached visual features (no pixels: the tower runs once per prompt, see `visual_features`);
        # input_ids and the grids still go in, for the model's own positions (M-RoPE).
        inputs = {k: v for k, v in prepared.inputs.items() if not k.startswith("pixel_values")}
        with torch.no_grad(), self.deepstack_inputs(self._prompt_deepstack(prepared, 1, prepared.seq_len)):
            out = self.model.generate(**inputs, inputs_embeds=self.embed(prepared), max_new_tokens=max_new_tokens,
                                      do_sample=False, num_beams=1)
        ids = _strip_answer(out[0, prepared.seq_len:].cpu(), self._stop_ids())
        return ids, self.decode_answer(ids)

    def _prompt_deepstack(self, prepared: Prepared, batch: int, length: int) -> DeepStack | None:
        """The prompt's DeepStack features (None without) for `batch` rows of this prompt (+ answer) of
        `length` tokens."""
        features = self.deepstack(prepared)
        if features is None:
            return None
        mask = torch.zeros(batch, length, dtype=torch.bool, device=features.device)
        mask[:, prepared.visual_positions.to(mask.device)] = True
        return DeepStack(mask, features.repeat(1, batch, 1))

    def teacher_forced(self, prepared: Prepared, answer_ids: torch.Tensor, output_attentions: bool = True,
                       inputs_embeds: torch.Tensor | None = None, answer_logits_only: bool = False) -> TeacherForced:
        """Prompt + answer forward (gradients flow to `inputs_embeds`, (B, S+T, D), when given).

        output_attentions: record every layer's fp32 probabilities (full (H, S+T, S+T) per layer: for
        the reference and small models). Otherwise whatever `capture` context is active applies.
        answer_logits_only: logits only at the T positions that predict the answer (saves S x V).
        """
        answer_ids = self._answer_ids(answer_ids)
        if inputs_embeds is None:
            inputs_embeds = self.embed(prepared, answer_ids)
        b, n = inputs_embeds.shape[:2]
        pos = self.position_ids(prepared, n - prepared.seq_len)
        pos = pos.expand(*pos.shape[:-2], b, n) if b > 1 else pos
        ctx = capture(self.attention_layers(), mode="record") if output_attentions else _nullcapture()
        with ctx as cap, self.deepstack_inputs(self._prompt_deepstack(prepared, b, n)):
            hidden = self.language_model()(inputs_embeds=inputs_embeds, position_ids=pos, use_cache=False,
                                           attention_mask=None).last_hidden_state
        if answer_logits_only:
            s, t = prepared.seq_len, n - prepared.seq_len
            hidden = hidden[:, s - 1:s - 1 + t]
        logits = self.model.lm_head(hidden)
        atts = tuple(cap.probs.get(i) for i in range(self.num_layers)) if output_attentions else None
        return TeacherForced(logits=logits, attentions=atts)


class _nullcapture:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _in_hf_cache(repo_id: str) -> bool:
    """Whether `repo_id` (e.g. Qwen/Qwen2-VL-7B-Instruct) has a config in the local HF cache."""
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".")):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # no huggingface_hub or malformed id: not in the cache
        return False
