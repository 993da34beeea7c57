"""VILA1.5 (NVlabs/VILA), composed from transformers' own parts; no trust_remote_code, no VILA package.

A VILA1.5 checkpoint is a folder of pieces:
    config.json     model_type "llava_llama": mm_vision_select_layer, image_aspect_ratio, s2, ...
    llm/            a causal LM transformers has (Llama for the 3B / 8B / 13B) and its tokenizer
    vision_tower/   SiglipVisionModel and its image processor (preprocessor_config.json)
    mm_projector/   the authors' `MultimodalProjector`: config.json (mm_projector_type) + model.safetensors
`VilaModel` holds the three (transformers' LLM and SigLIP, our `VilaProjector`) and offers what the
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
              user turn "<image>\\n" per image or frame, then the question; the prompt is split at "<image>",
              each chunk tokenized alone (its BOS dropped after the first), and the visual tokens go
              between the chunks (the authors' IMAGE_TOKEN_INDEX, -200, is our placeholder id too)
    video     frames as a sequence of images (the source's num_frames; the released config says 8)
Visual order (`visual_positions`, `grid`): row-major over each image's merged grid, frame by frame, so
coordinates mean what they mean for the other families; the prompt indices are therefore not ascending
within an image. Positions are plain 1-D (0..S-1).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from predictor.adapters.attention import ATTN_IMPL, register
from predictor.adapters.base import ADAPTERS, Prepared, PromptCache, _strip_answer
from predictor.adapters.hf_adapter import DTYPES, HFAdapter

IMAGE_TOKEN_INDEX = -200  # the authors' placeholder id (llava/constants.py); never embedded
IMAGE_TAG = "<image>"


# ---- conversation templates (llava/conversation.py at the VILA1.5 release) --------------------------

@dataclass(frozen=True)
class Template:
    name: str
    system: str
    roles: tuple[str, str]
    style: str  # "two": vicuna's "ROLE: message" turns; "llama_3": header-wrapped turns
    sep: str
    sep2: str

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
        "llama_3", "<|eot_id|>", "<|end_of_text|>"),
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


# ---- the projector (llava/model/multimodal_projector/base_projector.py) ------------------------------

class Downsample2x2(nn.Module):
    """(n, p*p, c) patch tokens -> (n, ceil(p/2)^2, 4c): zero-pad the p x p map to even sides, concatenate each
    2 x 2 block as [(0,0), (0,1), (1,0), (1,1)], and flatten the merged grid column by column (as the
    VILA1.5 release's DownSampleBlock does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        side = int(round(length ** 0.5))
        if side * side != length:
            raise ValueError(f"mlp_downsample expects a square patch map, got {length} tokens")
        x = x.reshape(n, side, side, c)
        pad = side % 2
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, 1, 0, 1))  # one zero column right, one zero row below
        m = (side + pad) // 2
        x = x.reshape(n, m, 2, m, 2, c).permute(0, 3, 1, 2, 4, 5)  # (n, col, row, dy, dx, c)
        return x.reshape(n, m * m, 4 * c)


class VilaProjector(nn.Module):
    """The authors' MultimodalProjector: `layers` holds the same modules, so its state dict loads as is."""

    def __init__(self, kind: str, mm_hidden_size: int, hidden_size: int):
        super().__init__()
        self.kind = kind
        if kind == "mlp_downsample":
            self.layers = nn.Sequential(Downsample2x2(), nn.LayerNorm(4 * mm_hidden_size),
                                        nn.Linear(4 * mm_hidden_size, hidden_size), nn.GELU(),
                                        nn.Linear(hidden_size, hidden_size))
        elif kind == "linear":
            self.layers = nn.Linear(mm_hidden_size, hidden_size)
        elif re.fullmatch(r"mlp(\d+)x_gelu", kind):
            depth = int(kind[3:-6])
            mods: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
            for _ in range(1, depth):
                mods += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
            self.layers = nn.Sequential(*mods)
        else:
            raise ValueError(f"mm_projector_type={kind!r} is not supported (VILA1.5 uses mlp_downsample; linear and "
                             f"mlpNx_gelu also load); NVILA's mlp_downsample_3x3_fix and s2 projectors do not")

    @property
    def merge(self) -> int:
        """Side of the patch block one output token covers."""
        return 2 if self.kind == "mlp_downsample" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _Config:
    """`model.config` as the tests and tools read it: text_config, vision_config, and the top config's keys."""

    def __init__(self, top: dict, text_config: Any, vision_config: Any):
        self.__dict__.update(top)
        self.text_config, self.vision_config = text_config, vision_config

    def __getattr__(self, name: str) -> Any:  # anything else (e.g. _attn_implementation): the LLM's config
        if name.startswith("__") or name in ("text_config", "vision_config"):
            raise AttributeError(name)
        return getattr(self.text_config, name)


class VilaModel(nn.Module):
    """LLM + vision tower + projector, with the surface the adapters' machinery uses."""

    def __init__(self, llm: nn.Module, vision_tower: nn.Module, mm_projector: VilaProjector, top: dict):
        super().__init__()
        self.llm, self.vision_tower, self.mm_projector = llm, vision_tower, mm_projector
        self.config = _Config(top, llm.config, vision_tower.config)
        self.select_layer = int(top.get("mm_vision_select_layer", -2))
        self.select_feature = top.get("mm_vision_select_feature", "cls_patch")

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    @property
    def lm_head(self) -> nn.Module:
        return self.llm.lm_head

    @property
    def generation_config(self):
        return self.llm.generation_config

    def generate(self, **kwargs):
        return self.llm.generate(**kwargs)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, tokens per image, D) projected visual tokens, in the projector's order."""
        dtype = next(self.vision_tower.parameters()).dtype
        out = self.vision_tower(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        feats = out.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            feats = feats[:, 1:]
        return self.mm_projector(feats.to(next(self.mm_projector.parameters()).dtype))

    def embed(self, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Token embeddings with `features` (M, D) written, in order, where input_ids is IMAGE_TOKEN_INDEX."""
        mask = input_ids == IMAGE_TOKEN_INDEX
        embeds = self.get_input_embeddings()(input_ids.masked_fill(mask, 0))
        if int(mask.sum()) != features.shape[0]:
            raise ValueError(f"the prompt has {int(mask.sum())} image-token slots for {features.shape[0]} visual tokens")
        return embeds.masked_scatter(mask[..., None].expand_as(embeds), features.to(embeds.dtype))

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """The LLM's attention (the tower keeps its own)."""
        self.llm.set_attn_implementation(attn_implementation)

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs):
        """The composed model's own forward (the tower runs on `pixel_values` every call): the LLM's output."""
        if inputs_embeds is None:
            feats = (self.encode_images(pixel_values).flatten(0, 1) if pixel_values is not None
                     else torch.zeros(0, self.llm.config.hidden_size, device=input_ids.device))
            inputs_embeds = self.embed(input_ids, feats)
        return self.llm(inputs_embeds=inputs_embeds, **kwargs)


# ---- loading -----------------------------------------------------------------------------------------

def _require(folder: Path, *names: str) -> None:
    for name in names:
        if not (folder / name).exists():
            raise FileNotFoundError(
                f"{folder.parent} is not a VILA1.5 checkpoint folder: {folder.name}/{name} is missing (expected "
                f"config.json, llm/, vision_tower/ and mm_projector/ as the released checkpoints have them)")


def read_layout(path: str | Path) -> dict:
    """The top config of a VILA1.5 folder, after checking every part is there; refuses what we do not run."""
    root = Path(path)
    if not (root / "config.json").exists():
        raise FileNotFoundError(f"{root} is not a VILA1.5 checkpoint folder: config.json is missing")
    top = json.loads((root / "config.json").read_text())
    if top.get("model_type") != "llava_llama":
        raise ValueError(f"adapter 'vila' expects a VILA checkpoint (model_type 'llava_llama'), but {root} has "
                         f"model_type={top.get('model_type')!r}; pick the matching model.adapter")
    for part, files in (("llm", ("config.json",)), ("vision_tower", ("config.json", "preprocessor_config.json")),
                        ("mm_projector", ("config.json", "model.safetensors"))):
        _require(root / part, *files)
    ratio = top.get("image_aspect_ratio", "resize")
    if top.get("s2") or top.get("dynamic_s2") or ratio not in ("resize", "pad"):
        raise ValueError(f"{root}: image_aspect_ratio={ratio!r}, s2={top.get('s2')!r}, "
                         f"dynamic_s2={top.get('dynamic_s2')!r}: only VILA1.5's single-tile images ('resize' or "
                         f"'pad', no S2) are supported; NVILA's dynamic S2 tiling is not")
    kind = json.loads((root / "mm_projector" / "config.json").read_text()).get("mm_projector_type")
    if kind not in ("mlp_downsample", "linear") and not re.fullmatch(r"mlp\d+x_gelu", str(kind)):
        raise ValueError(f"{root}/mm_projector: mm_projector_type={kind!r} is not supported (VILA1.5 uses "
                         f"mlp_downsample; linear and mlpNx_gelu also load); NVILA's 3 x 3 and S2 projectors do not")
    if top.get("mm_use_im_start_end") or top.get("mm_use_im_patch_token"):
        raise ValueError(f"{root}: mm_use_im_start_end / mm_use_im_patch_token are set; VILA1.5 checkpoints set "
                         f"neither, and the adapter writes no <im_start>/<im_patch> tokens")
    return top


def load_vila(path: str | Path, dtype: Any = torch.float32, device: str = "cpu",
              attn_implementation: str = ATTN_IMPL) -> VilaModel:
    import transformers as tf
    from safetensors.torch import load_file

    root = Path(path)
    top = read_layout(root)
    kw = dict(local_files_only=True, trust_remote_code=False)
    llm = tf.AutoModelForCausalLM.from_pretrained(root / "llm", dtype=dtype, attn_implementation=attn_implementation,
                                                  **kw)
    vcfg = tf.AutoConfig.from_pretrained(root / "vision_tower", **kw)
    if vcfg.model_type != "siglip_vision_model":
        raise ValueError(f"{root}/vision_tower is {vcfg.model_type!r}; the adapter runs SigLIP towers (VILA1.5-3B / "
                         f"8B / 13B); VILA1.5-40B's InternViT-6B has no transformers class")
    tower_attn = "sdpa" if attn_implementation == ATTN_IMPL else attn_implementation
    tower = tf.SiglipVisionModel.from_pretrained(root / "vision_tower", dtype=dtype, attn_implementation=tower_attn,
                                                 **kw)
    pcfg = json.loads((root / "mm_projector" / "config.json").read_text())
    projector = VilaProjector(pcfg.get("mm_projector_type", ""), int(top.get("mm_hidden_size", vcfg.hidden_size)),
                              int(llm.config.hidden_size))
    state = load_file(str(root / "mm_projector" / "model.safetensors"))
    try:
        projector.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{root}/mm_projector/model.safetensors does not match mm_projector_type "
                         f"{projector.kind!r}: {e}") from e
    first = next(llm.parameters())
    projector.to(dtype=first.dtype)
    return VilaModel(llm, tower, projector, top).to(device).eval()


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
            raise FileNotFoundError(f"model path {path!r} is not a local folder; set model.path=/path/to/VILA1.5-folder")
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
        eos = gc.eos_token_id if isinstance(gc.eos_token_id, list) else [] if gc.eos_token_id is None else [gc.eos_token_id]
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
        frames = [image] if video is None else _pil_frames(self.video_kwargs(video, fps)["videos"][0])
        parts = []
        for item in self._messages(instruction, modality)[-1]["content"]:
            if item["type"] == "text":
                parts.append(item["text"])
            else:
                parts.extend(frames)
        proc = self.processor
        text = proc.template.render([(proc.template.roles[0], user_message(parts)), (proc.template.roles[1], None)])
        start = text.find(instruction, text.rfind(IMAGE_TAG) + len(IMAGE_TAG))
        if start < 0:
            raise ValueError(
                f"adapter {self.name!r} ({self.model_id}): the conversation template's prompt does not contain the "
                f"instruction {instruction!r} verbatim, so its tokens cannot be found; prompt: {text[:300]!r}. Pass "
                f"the instruction as the template writes it, or fix the adapter's _messages")
        end = start + len(instruction)
        m = self._merged_side()
        per = m * m
        ids, spans, special = proc.encode(text)
        if ids.count(IMAGE_TOKEN_INDEX) != len(frames):
            raise ValueError(f"prompt has {ids.count(IMAGE_TOKEN_INDEX)} {IMAGE_TAG} placeholders for {len(frames)} "
                             f"images; an instruction must not contain {IMAGE_TAG!r}")
        # the model puts each image's `per` tokens where its placeholder is (prepare_inputs_labels_for_multimodal)
        expanded, instr = [], []
        for i, (a, b), s in zip(ids, spans, special):
            if a < end and b > start and b > a and not s:
                instr.append(len(expanded))
            expanded.extend([i] * (per if i == IMAGE_TOKEN_INDEX else 1))
        input_ids = torch.tensor([expanded], dtype=torch.long)
        pixel_values = torch.stack([proc.image(f) for f in frames])
        slots = (input_ids[0] == IMAGE_TOKEN_INDEX).nonzero().flatten()
        visual = slots
        if self.model.mm_projector.kind == "mlp_downsample":
            # it emits each image's tokens column by column; visual order is row-major
            visual = slots.view(len(frames), per)[:, torch.arange(per).view(m, m).t().reshape(-1)].reshape(-1)
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": torch.ones_like(input_ids).to(self.device),
                  "pixel_values": pixel_values.to(self.device)}
        segments = None
        if modality == "video":
            segments = [{"kind": "frame", "start": i * per, "grid": [1, m, m]} for i in range(len(frames))]
        return Prepared(inputs=inputs, visual_positions=visual, instruction_positions=torch.tensor(instr, dtype=torch.long),
                        grid=(len(frames), m, m), modality=modality, segments=segments, prompt_text=text)

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
