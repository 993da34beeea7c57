"""What the transformers-based families share: loading, chat prompt, instruction positions,
generation and the teacher-forced forward (the predictor's input is `Adapter.layer0_attention`).

A family subclass (`qwen2_vl.py`, `llava_onevision.py`) provides: `MODEL_TYPES` (config model_type
-> transformers class name), `image_token_id`, `language_model()`, `position_ids(prepared, answer_len)`,
`embed(...)` and `_visual_layout(...)`. transformers is imported lazily, inside methods.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from predictor.adapters.attention import ATTN_IMPL, capture, register
from predictor.adapters.base import Adapter, DeepStack, Prepared, PromptCache, _strip_answer
from predictor.adapters.messages import Chat, MediaItem, instruction_spans

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
        """(grid (t, h, w) with t*h*w == N_v, segments or None) of a prompt's one image or video. The hook
        of single-media families; a family that overrides `_media_layout` instead needs none."""
        raise NotImplementedError

    def _media_layout(self, inputs: dict, kind: str, index: int) -> tuple[tuple[int, int, int], list | None]:
        """(grid (t, h, w), parts or None) of the prompt's `index`-th `kind` ("image" | "video") item, in the
        order the processor took them: t*h*w is its visual-token count; parts: its sub-segments
        ({kind, start, grid}, start relative to the item's first token; LLaVA-OneVision's base/crops), or
        None. Prompts with several images or videos need it; the default serves one-media prompts through
        `_visual_layout`."""
        raise NotImplementedError(f"adapter {self.name!r} lays out one image or video per prompt only "
                                  f"(_visual_layout); implement _media_layout(inputs, kind, index) for several")

    def _processor_kwargs(self) -> dict:
        return {}

    # ---- prompt ---------------------------------------------------------------------------------

    def _messages(self, instruction: str, modality: str) -> list[dict]:
        """The short form's chat: (system prompt,) one user turn of the media then the instruction."""
        msgs = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        return msgs + [{"role": "user", "content": [{"type": modality}, {"type": "text", "text": instruction}]}]

    def prepare(self, image: Any, instruction: str, video: Any = None, fps: float | None = None) -> Prepared:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"empty instruction {instruction!r}: every item needs a non-empty instruction")
        if (image is None) == (video is None):
            raise ValueError("prepare() takes exactly one of image= or video=")
        modality = "image" if video is None else "video"
        if video is None and fps is not None:
            raise ValueError(f"fps={fps} was given with an image; fps describes video frames: pass video= or drop fps")
        media = [MediaItem("image", image)] if video is None else [MediaItem("video", video, fps)]
        return self._prepare(self._messages(instruction, modality), media, [(instruction, True)], instruction)

    def prepare_messages(self, messages: list[dict], instruction: str = "last") -> Prepared:
        """See `Adapter.prepare_messages`: the chat template renders the messages, the processor expands
        every image and video, and each becomes one segment of the visual tokens."""
        chat = Chat.parse(messages, self.system_prompt, instruction)
        return self._prepare(chat.template, chat.media, chat.texts, chat.instruction)

    def _prepare(self, template: list[dict], media: list[MediaItem], texts: list[tuple[str, bool]],
                 instruction: str) -> Prepared:
        """template: the messages as the chat template takes them (parts without pixels); media: the images
        and videos in prompt order; texts: every text part in prompt order with whether it is instruction."""
        text = self.processor.apply_chat_template(template, add_generation_prompt=True, tokenize=False)
        images = [m.data for m in media if m.kind == "image"]
        videos = [m for m in media if m.kind == "video"]
        # several images go in as one sample's list (LLaVA-OneVision lays out an image among several differently)
        kw = {} if not images else {"images": images if len(images) == 1 else [images]}
        if videos:
            kw.update(self.videos_kwargs([m.data for m in videos], [m.fps for m in videos]))
        inputs = self.processor(text=[text], return_tensors="pt", **kw, **self._processor_kwargs())
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        ids = inputs["input_ids"][0].cpu()
        kinds = sorted({m.kind for m in media})
        if len(kinds) > 1:
            raise ValueError("the messages mix images and videos; one prompt takes images or videos, not both yet: "
                             "pass the video's frames as images, or ask about them in separate prompts")
        tokens = {"image": self.image_token_id, "video": self.video_token_id}
        visual = torch.isin(ids, torch.tensor([tokens[k] for k in kinds])).nonzero().flatten()
        layouts = self._layouts(inputs, media, visual)
        counts = [math.prod(g) for g, _ in layouts]
        if sum(counts) != visual.numel():
            raise ValueError(f"adapter {self.name!r}: the media's layouts {[g for g, _ in layouts]} count {sum(counts)} "
                             f"visual tokens, the prompt has {visual.numel()}")
        instr = self._instruction_positions(text, texts, ids, [tokens[m.kind] for m in media], counts, visual)
        if len(media) == 1:  # the short form's layout, as it always was
            grid, segments = layouts[0]
        else:
            grid, segments, start = (1, 1, int(visual.numel())), [], 0
            for j, (m, (g, parts)) in enumerate(zip(media, layouts)):
                for part in parts or [{"kind": m.kind, "start": 0, "grid": list(g)}]:
                    segments.append({**part, "start": start + part["start"], "visual": j})
                start += counts[j]
        modality = kinds[0]
        return Prepared(inputs=inputs, visual_positions=visual, instruction_positions=instr, grid=tuple(grid),
                        modality=modality, segments=segments, prompt_text=text, instruction=instruction)

    def _layouts(self, inputs: dict, media: list[MediaItem], visual: torch.Tensor) -> list:
        """(grid, parts) per media item in prompt order (`_media_layout`; one-media prompts may use the
        family's `_visual_layout`)."""
        if len(media) == 1 and type(self)._media_layout is HFAdapter._media_layout:
            return [self._visual_layout(inputs, visual)]
        seen = {"image": 0, "video": 0}
        out = []
        for m in media:
            out.append(self._media_layout(inputs, m.kind, seen[m.kind]))
            seen[m.kind] += 1
        return out

    @classmethod
    def video_kwargs(cls, video: Any, fps: float | None) -> dict:
        """Processor arguments for one clip of already sampled frames: the processor samples none
        (frame sampling is the source's job), and the true fps travels as video metadata, which is
        where Qwen2.5-VL reads its frame timing (second_per_grid_ts) from. Public: the reference MLLMs
        train on exactly these inputs (reference_mllm.train)."""
        return cls.videos_kwargs([video], [fps])

    @staticmethod
    def videos_kwargs(videos: list, fps: list[float | None]) -> dict:
        """`video_kwargs` for several clips (in prompt order), one fps each."""
        clips, metas = [], []
        for video, rate in zip(videos, fps):
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
            if rate is not None and not (isinstance(rate, (int, float)) and rate > 0):
                raise ValueError(f"fps={rate!r}: expected the frames' rate in frames per second, a number > 0")
            clips.append(video)
            metas.append({"total_num_frames": n, "fps": rate, "frames_indices": list(range(n))})
        return {"videos": clips, "videos_kwargs": {"do_sample_frames": False, "video_metadata": metas}}

    def _instruction_positions(self, text: str, texts: list[tuple[str, bool]], ids: torch.Tensor,
                               media_tokens: list[int], counts: list[int], visual: torch.Tensor) -> torch.Tensor:
        """Indices in the expanded prompt of the tokens overlapping the instruction's characters in the
        templated text (never the system prompt or template tokens).

        texts: every text part of the chat in prompt order, (text, is_instruction); they are found from
        the end of the prompt backwards, each before the next, so a phrase that also occurs in the system
        prompt or an earlier turn is taken where its turn has it. The processor expands each media
        placeholder into its visual tokens (Qwen3-VL videos: frames separated by timestamp text); the text
        between placeholders is unchanged, just shifted: we tokenise the unexpanded text with offsets and
        find each stretch of text tokens in the expanded ids."""
        spans = instruction_spans(text, texts, f"adapter {self.name!r} ({self.model_id})")
        enc = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        raw = torch.tensor(enc["input_ids"])
        where = torch.isin(raw, torch.tensor(sorted(set(media_tokens)))).nonzero().flatten().tolist()
        if len(where) != len(media_tokens) or any(int(raw[w]) != t for w, t in zip(where, media_tokens)):
            raise ValueError(f"prompt has {len(where)} media placeholders, expected {len(media_tokens)} (one per "
                             f"image or video, in the messages' order): {text[:300]!r}")
        shift = self._text_shifts(raw, ids, where, counts, visual)
        special = set(self.tokenizer.all_special_ids)
        keep = [i for i, (a, b) in enumerate(enc["offset_mapping"])
                if any(a < e and b > s for s, e in spans) and b > a and enc["input_ids"][i] not in special]
        pos = torch.tensor([i + shift[i] for i in keep], dtype=torch.long)
        assert torch.equal(ids[pos], raw[keep]), "instruction token positions do not line up with the prompt"
        return pos

    def _text_shifts(self, raw: torch.Tensor, ids: torch.Tensor, where: list[int], counts: list[int],
                     visual: torch.Tensor) -> list[int]:
        """Per unexpanded token: how far the processor's expansion moved it. The text before the first
        placeholder stays; the text after the last one ends the prompt; a stretch between two placeholders
        is found after the visual tokens of the media before it. Special tokens next to a placeholder may
        be rewritten by the expansion (Qwen3-VL's video frames: timestamp, vision start) and are not
        matched; they are never instruction tokens."""
        special = set(self.tokenizer.all_special_ids)
        shift = [0] * raw.numel()
        bounds = [-1] + where + [raw.numel()]
        ends = torch.tensor(counts).cumsum(0).tolist()
        last = len(bounds) - 2
        for j in range(last + 1):
            lo, hi = bounds[j] + 1, bounds[j + 1]
            if j > 0:  # after a placeholder
                while lo < hi and int(raw[lo]) in special:
                    lo += 1
            if j < last:  # before a placeholder
                while hi > lo and int(raw[hi - 1]) in special:
                    hi -= 1
            stretch = raw[lo:hi]
            if j == 0:
                at = lo
            elif j == last:
                at = ids.numel() - stretch.numel()
            else:
                at, first = int(visual[ends[j - 1] - 1]) + 1, int(visual[ends[j - 1]])
                while at + stretch.numel() <= first and not torch.equal(ids[at:at + stretch.numel()], stretch):
                    at += 1
            if not torch.equal(ids[at:at + stretch.numel()], stretch):
                raise ValueError(f"the processor changed the prompt's text between media placeholders {j - 1} and "
                                 f"{j} (expected {stretch.numel()} unchanged tokens); cannot place the instruction")
            for i in range(lo, hi):
                shift[i] = at - lo
        return shift

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
