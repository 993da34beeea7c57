"""VILA1.5 (NVlabs/VILA), composed from transformers' own parts; no trust_remote_code, no VILA package.

A VILA1.5 checkpoint is a folder of pieces:
    config.json     model_type "llava_llama": mm_vision_select_layer, image_aspect_ratio, s2, ...
    llm/            a causal LM transformers has (Llama for the 3B / 8B / 13B) and its tokenizer
    vision_tower/   SiglipVisionModel and its image processor (preprocessor_config.json)
    mm_projector/   the authors' `MultimodalProjector`: config.json (mm_projector_type) + model.safetensors
`VilaModel` (vila_model.py) holds the three (transformers' LLM and SigLIP, our `VilaProjector`) and offers what the
adapters' shared machinery uses (`get_input_embeddings`, `lm_head`, `generate(inputs_embeds=...)`,
`generation_config`); the decoder stack is `model.llm.model`.

Inference as the authors' code at the VILA1.5 release (NVlabs/VILA, llava/mm_utils.py,
llava/model/multimodal_projector/base_projector.py, llava/conversation.py, llava/eval/run_vila.py):
    image     RGB; image_aspect_ratio "resize": PIL-resized to the tower's size, "pad": expand2square with
              the image mean, then the tower's image processor (resize, rescale, normalise)
    tower     hidden_states[mm_vision_select_layer] (-2), every token ("cls_patch"; SigLIP has no CLS)
    projector mlp_downsample: the p x p patch map padded with zeros to even sides, each 2 x 2 block
              concatenated (4 x channels), LayerNorm, Linear, GELU, Linear. Its tokens leave in
              column-major order over the merged grid (the release's `flat_square` has no final permute;
              NVILA's code later added one)
    prompt    conversation template (vicuna_v1 for VILA1.5-3B / 13B, llama_3 for Llama-3-VILA1.5-8B), the
              user turn "<image>\\n" per image or frame, then the question (`prepare_messages`: each image's
              "<image>\\n" where the messages put it, earlier turns as Conversation.get_prompt writes
              them); the prompt is split at "<image>",
              each chunk tokenized alone (its BOS dropped after the first), and the visual tokens go
              between the chunks (the authors' IMAGE_TOKEN_INDEX, -200, is our placeholder id too)
    video     frames as a sequence of images (the source's num_frames; the released config says 8)
Visual order (`visual_positions`, `grid`): row-major over each image's merged grid, frame by frame, so
coordinates mean what they mean for the other families; the prompt indices are therefore not ascending
within an image. Positions are plain 1-D (0..S-1).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from predictor.adapters.attention import ATTN_IMPL, register
from predictor.adapters.base import ADAPTERS, Prepared, PromptCache, _strip_answer
from predictor.adapters.hf_adapter import DTYPES, HFAdapter
from predictor.adapters.messages import Chat, MediaItem, instruction_spans
from predictor.adapters.vila_model import IMAGE_TOKEN_INDEX, load_vila, read_layout

IMAGE_TAG = "<image>"
_FRAME = object()  # an image or video frame among a turn's parts (`user_message`)


# ---- conversation templates (llava/conversation.py at the VILA1.5 release) --------------------------

@dataclass(frozen=True)
class Template:
    name: str
    system: str
    roles: tuple[str, str]
    style: str  # "two": vicuna's "ROLE: message" turns; "llama_3": header-wrapped turns
    sep: str
    sep2: str
    head: str = ""  # what precedes the system text in `system` (a system message replaces only the text)

    @property
    def stop(self) -> str:
        """The text that ends an answer (run_vila's stop_str)."""
        return self.sep2 if self.style == "two" else self.sep

    def render(self, turns: list[tuple[str, str | None]]) -> str:
        """[(role, message or None for the turn to generate)] -> prompt text (Conversation.get_prompt)."""
        if self.style == "two":
            seps, out = (self.sep, self.sep2), self.system + self.sep
            for i, (role, msg) in enumerate(turns):
                out += f"{role}: {msg}{seps[i % 2]}" if msg else f"{role}:"
            return out
        out = self.system + self.sep
        for i, (role, msg) in enumerate(turns):
            out += role + msg + (self.sep if i < len(turns) - 1 else self.sep2) if msg else role
        return out


TEMPLATES = {
    "vicuna_v1": Template(
        "vicuna_v1", "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions.", ("USER", "ASSISTANT"), "two", " ", "</s>"),
    "llama_3": Template(
        "llama_3", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and "
        "vision assistant. You are able to understand the visual content that the user provides, and assist the "
        "user with a variety of tasks using natural language.",
        ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        "llama_3", "<|eot_id|>", "<|end_of_text|>", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"),
}


def user_message(parts: list[Any]) -> str:
    """The user's turn from its parts in order: a str is text, anything else an image (or one video frame),
    written as VILA's "<image>\\n" (run_vila puts one per image before the question)."""
    return "".join(p if isinstance(p, str) else IMAGE_TAG + "\n" for p in parts)


def pick_template(conv_mode: str, tokenizer: Any) -> Template:
    """conv_mode "auto": llama_3 when the LLM's tokenizer has Llama 3's <|eot_id|>, else vicuna_v1 (the
    authors' README runs Llama-3-VILA1.5-8B with llama_3 and VILA1.5-3B with vicuna_v1)."""
    if conv_mode == "auto":
        conv_mode = "llama_3" if "<|eot_id|>" in tokenizer.get_vocab() else "vicuna_v1"
    if conv_mode not in TEMPLATES:
        raise ValueError(f"model.conv_mode={conv_mode!r} is not one of {['auto', *TEMPLATES]} (VILA1.5-40B's "
                         f"hermes-2 is not supported: its InternViT-6B tower has no transformers class)")
    return TEMPLATES[conv_mode]


class VilaProcessor:
    """The LLM's tokenizer, the tower's image processor and the conversation template."""

    def __init__(self, tokenizer: Any, image_processor: Any, template: Template, image_aspect_ratio: str):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.template, self.image_aspect_ratio = template, image_aspect_ratio

    def image(self, image: Any) -> torch.Tensor:
        """One PIL image -> (3, H, W) pixels, as llava/mm_utils.process_image."""
        from PIL import Image

        ip = self.image_processor
        image = image.convert("RGB")
        size = ip.size if "height" in (ip.size or {}) else ip.crop_size
        if self.image_aspect_ratio == "resize":
            image = image.resize((size["height"], size["width"]))  # PIL's default resampling, as the authors'
        else:  # "pad": expand2square with the image mean
            w, h = image.size
            if w != h:
                fill = tuple(int(m * 255) for m in ip.image_mean)
                square = Image.new(image.mode, (max(w, h),) * 2, fill)
                square.paste(image, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
                image = square
        return ip(image, return_tensors="pt")["pixel_values"][0]

    def encode(self, prompt: str) -> tuple[list[int], list[tuple[int, int]], list[bool]]:
        """llava/mm_utils.tokenizer_image_token: split at "<image>", tokenize each chunk alone, keep the first
        chunk's BOS only, IMAGE_TOKEN_INDEX between chunks. Returns ids, each id's character span in
        `prompt` ((0, 0) for the placeholder and special tokens) and whether it is a special token."""
        tok = self.tokenizer
        special = set(tok.all_special_ids)
        ids, spans, flags = [], [], []
        start = 0
        for c, chunk in enumerate(prompt.split(IMAGE_TAG)):
            if c:
                ids.append(IMAGE_TOKEN_INDEX), spans.append((0, 0)), flags.append(True)
            enc = tok(chunk, return_offsets_mapping=True)
            chunk_ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
            bos = tok.bos_token_id is not None and chunk_ids[:1] == [tok.bos_token_id]
            if bos and c:  # the authors' offset: later chunks lose their first token (BOS)
                chunk_ids, offsets = chunk_ids[1:], offsets[1:]
            for i, (a, b) in zip(chunk_ids, offsets):
                ids.append(i), spans.append((start + a, start + b)), flags.append(i in special)
            start += len(chunk) + len(IMAGE_TAG)
        return ids, spans, flags


# ---- the adapter ---------------------------------------------------------------------------------------

@ADAPTERS.register("vila")
class VilaAdapter(HFAdapter):
    name = "vila"

    @classmethod
    def load(cls, path: str, dtype: str = "auto", device: str = "cpu", attn_implementation: str = ATTN_IMPL,
             trust_remote_code: bool = False, max_pixels: int | None = None, conv_mode: str = "auto") -> "VilaAdapter":
        """A VILA1.5 folder (config.json, llm/, vision_tower/, mm_projector/). trust_remote_code must stay False:
        every part loads through transformers' own classes or ours. max_pixels: ignored (VILA resizes every
        image to the tower's size). conv_mode: "auto" (from the LLM's tokenizer), "vicuna_v1" or "llama_3"."""
        import transformers as tf

        if trust_remote_code:
            raise ValueError("adapter 'vila' never runs remote code: set model.trust_remote_code=false")
        if dtype not in DTYPES:
            raise ValueError(f"model.dtype={dtype!r} is not one of {sorted(DTYPES)}")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model path {path!r} is not a local folder; set "
                                    f"model.path=/path/to/VILA1.5-folder")
        if attn_implementation == ATTN_IMPL:
            register()
        top = read_layout(path)
        torch_dtype = DTYPES[dtype]
        if torch_dtype == "auto":
            torch_dtype = {"torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}.get(
                top.get("model_dtype"), torch.float32)
        model = load_vila(path, torch_dtype, device, attn_implementation)
        tokenizer = tf.AutoTokenizer.from_pretrained(Path(path) / "llm", local_files_only=True)
        image_processor = tf.SiglipImageProcessorPil.from_pretrained(Path(path) / "vision_tower", local_files_only=True)
        template = pick_template(conv_mode, tokenizer)
        stop = tokenizer.convert_tokens_to_ids(template.stop)
        gc = model.generation_config
        eos = gc.eos_token_id if isinstance(gc.eos_token_id, list) else [] if gc.eos_token_id is None else \
            [gc.eos_token_id]
        if isinstance(stop, int) and stop != tokenizer.unk_token_id and stop not in eos:
            gc.eos_token_id = [*eos, stop]  # run_vila stops at the template's stop string
        processor = VilaProcessor(tokenizer, image_processor, template, top.get("image_aspect_ratio", "resize"))
        return cls(model, processor, model_id=str(path), max_pixels=max_pixels)

    @property
    def image_token_id(self) -> int:
        return IMAGE_TOKEN_INDEX

    @property
    def video_token_id(self) -> int:
        return IMAGE_TOKEN_INDEX  # a video is its frames, each an image

    @property
    def token_px(self) -> int:
        """28 for VILA1.5: 14 px SigLIP patches of the image resized to the tower's size, merged 2 x 2."""
        return int(self.model.config.vision_config.patch_size) * self.model.mm_projector.merge

    def language_model(self) -> nn.Module:
        return self.model.llm.model

    def position_ids(self, prepared: Prepared, answer_len: int = 0) -> torch.Tensor:
        """(1, S + answer_len): 0, 1, 2, ..."""
        return torch.arange(prepared.seq_len + answer_len, device=self.device)[None]

    def _merged_side(self) -> int:
        vcfg = self.model.config.vision_config
        side = vcfg.image_size // vcfg.patch_size
        merge = self.model.mm_projector.merge
        return -(-side // merge)

    def prepare(self, image: Any, instruction: str, video: Any = None, fps: float | None = None) -> Prepared:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"empty instruction {instruction!r}: every item needs a non-empty instruction")
        if (image is None) == (video is None):
            raise ValueError("prepare() takes exactly one of image= or video=")
        if video is None and fps is not None:
            raise ValueError(f"fps={fps} was given with an image; fps describes video frames: pass video= or drop fps")
        modality = "image" if video is None else "video"
        media = [MediaItem("image", image)] if video is None else [MediaItem("video", video, fps)]
        return self._prepare(self._messages(instruction, modality), media, [(instruction, True)], instruction)

    def prepare_messages(self, messages: list[dict], instruction: str = "last") -> Prepared:
        """See `Adapter.prepare_messages`. The authors' conversation renders the turns (`Template.render`),
        each image as "<image>\\n" where the messages put it, each video as "<image>\\n" per frame; a system
        message replaces the template's system text."""
        chat = Chat.parse(messages, None, instruction)
        return self._prepare(chat.template, chat.media, chat.texts, chat.instruction)

    def _render(self, template: list[dict], frames: list[list]) -> str:
        """The messages (parts without pixels) -> the authors' prompt text; frames: each media item's images."""
        tpl, turns, media = self.processor.template, [], iter(frames)
        if template and template[0]["role"] == "system":
            content = template[0]["content"]
            text = content if isinstance(content, str) else "".join(p["text"] for p in content)
            tpl, template = replace(tpl, system=tpl.head + text), template[1:]
        for i, msg in enumerate(template):
            role = ("user", "assistant")[i % 2]
            if msg["role"] != role:
                raise ValueError(f"adapter {self.name!r}: message {i} (after any system message) is {msg['role']!r}, "
                                 f"expected {role!r}: VILA's conversation alternates user and assistant turns, "
                                 f"starting with the user; merge consecutive turns of one role into one message")
            content = msg["content"]
            parts = [content] if isinstance(content, str) else []
            for part in [] if isinstance(content, str) else content:
                parts.extend([part["text"]] if part["type"] == "text" else next(media))  # a video: its frames
            turns.append((tpl.roles[i % 2], user_message(parts)))
        return tpl.render([*turns, (tpl.roles[1], None)])

    def _prepare(self, template: list[dict], media: list[MediaItem], texts: list[tuple[str, bool]],
                 instruction: str) -> Prepared:
        """template: the messages without pixels; media: images and videos in prompt order (a video is its
        frames, each an image, so both mix); texts: every text part in prompt order, (text, is_instruction)."""
        for part, _ in texts:
            if IMAGE_TAG in part:
                raise ValueError(f"text {part[:120]!r} contains {IMAGE_TAG!r}, VILA's image placeholder: put images in "
                                 f"the messages as {{'type': 'image', 'image': ...}} parts and drop the tag")
        frames = [[m.data] if m.kind == "image" else _pil_frames(self.video_kwargs(m.data, m.fps)["videos"][0])
                  for m in media]
        # the text needs only how many images each item is: one stand-in (not a str) per image or frame
        text = self._render(template, [[_FRAME] * len(f) for f in frames])
        spans = instruction_spans(text, texts, f"adapter {self.name!r} ({self.model_id})")
        proc, m = self.processor, self._merged_side()
        per, counts = m * m, [len(f) for f in frames]
        ids, offsets, special = proc.encode(text)
        if ids.count(IMAGE_TOKEN_INDEX) != sum(counts):
            raise ValueError(f"prompt has {ids.count(IMAGE_TOKEN_INDEX)} {IMAGE_TAG} placeholders for {sum(counts)} "
                             f"images and frames: {text[:300]!r}")
        # the model puts each image's `per` tokens where its placeholder is (prepare_inputs_labels_for_multimodal)
        expanded, instr = [], []
        for i, (a, b), s in zip(ids, offsets, special):
            if b > a and not s and any(a < e and b > st for st, e in spans):
                instr.append(len(expanded))
            expanded.extend([i] * (per if i == IMAGE_TOKEN_INDEX else 1))
        input_ids = torch.tensor([expanded], dtype=torch.long)
        pixel_values = torch.stack([proc.image(f) for item in frames for f in item])
        visual = (input_ids[0] == IMAGE_TOKEN_INDEX).nonzero().flatten()
        if self.model.mm_projector.kind == "mlp_downsample":
            # it emits each image's tokens column by column; visual order is row-major
            visual = visual.view(-1, per)[:, torch.arange(per).view(m, m).t().reshape(-1)].reshape(-1)
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": torch.ones_like(input_ids).to(self.device),
                  "pixel_values": pixel_values.to(self.device)}
        kinds = {item.kind for item in media}
        modality = "video" if "video" in kinds else "image"
        if len(media) == 1:  # the short form's layout, as it always was
            grid, segments = (counts[0], m, m), None
            if modality == "video":
                segments = [{"kind": "frame", "start": i * per, "grid": [1, m, m]} for i in range(counts[0])]
        else:  # one segment per image or video ("frames": a video's frames, frame by frame, row-major)
            grid, segments, start = (1, 1, int(visual.numel())), [], 0
            for j, (item, n) in enumerate(zip(media, counts)):
                kind = "image" if item.kind == "image" else "frames"
                segments.append({"kind": kind, "start": start, "grid": [n, m, m], "visual": j})
                start += n * per
        return Prepared(inputs=inputs, visual_positions=visual,
                        instruction_positions=torch.tensor(instr, dtype=torch.long), grid=grid, modality=modality,
                        segments=segments, prompt_text=text, instruction=instruction)

    def _messages(self, instruction: str, modality: str) -> list[dict]:
        """The conversation as message parts (the template supplies the system prompt)."""
        return [{"role": "user", "content": [{"type": modality}, {"type": "text", "text": instruction}]}]

    def _visual_features(self, inputs: dict, cache: PromptCache) -> tuple[torch.Tensor, int]:
        """(N_v, D) in sequence order (each image's tokens as the projector emits them)."""
        return self.model.encode_images(inputs["pixel_values"]).flatten(0, 1), IMAGE_TOKEN_INDEX

    def embed(self, prepared: Prepared, answer_ids: torch.Tensor | None = None) -> torch.Tensor:
        ids = torch.cat([prepared.inputs["input_ids"], self._answer_ids(answer_ids)[None]], dim=1)
        feats, _ = self.visual_features(prepared)
        return self.model.embed(ids, feats)

    def generate(self, prepared: Prepared, max_new_tokens: int = 32) -> tuple[torch.Tensor, str]:
        with torch.no_grad():
            out = self.model.generate(inputs_embeds=self.embed(prepared),
                                      attention_mask=prepared.inputs["attention_mask"],
                                      max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        ids = _strip_answer(out[0].cpu(), self._stop_ids())
        return ids, self.decode_answer(ids)


def _pil_frames(video: Any) -> list:
    """Frames as PIL images (a (T, H, W, C) array or tensor, HWC arrays, or PIL images)."""
    import numpy as np
    from PIL import Image

    out = []
    for f in video:
        if hasattr(f, "convert"):
            out.append(f.convert("RGB"))
            continue
        arr = f.cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):  # CHW
            arr = arr.transpose(1, 2, 0)
        out.append(Image.fromarray(arr.astype(np.uint8).squeeze()).convert("RGB"))
    return out
