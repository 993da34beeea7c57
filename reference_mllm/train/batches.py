"""Training and evaluation scenes (or video clips) as model inputs: chat prompts, teacher-forcing batches, and
the per-step stream of training batches (a pure function of the seed)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reference_mllm import clips, prompts, scenes
from reference_mllm.clips import FPS
from reference_mllm.streams import ClipStream, SceneStream


def chat_prompt(processor: Any, instruction: str | list[dict], modality: str = "image") -> str:
    """The chat-template prompt for one image (or video) + instruction, or for a chat (`instruction` a list of
    messages, `reference_mllm.prompts`), ending with the assistant header."""
    if isinstance(instruction, list):
        messages = prompts.template_messages(instruction)
    else:
        messages = [{"role": "user", "content": [{"type": modality}, {"type": "text", "text": instruction}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def media_inputs(image: Any = None, video: Any = None, fps: float | None = None) -> dict:
    """Processor arguments for one image, or one clip of already sampled frames as the qwen2_vl adapter passes
    them (no resampling; the fps as metadata), so that training sees the inputs inference sees."""
    from predictor.adapters.hf_adapter import HFAdapter

    if video is not None:
        return HFAdapter.video_kwargs(video, fps)
    return {"images": image if isinstance(image, list) else [image]}


def make_batch(processor: Any, examples: list[tuple[Any, str | list[dict], str]], eos_id: int, pad_id: int,
               modality: str = "image") -> dict[str, torch.Tensor]:
    """Teacher-forcing batch of (image or frames, instruction, answer), or (the images, the messages, answer) of a
    chat: prompt (exactly as generation sees it) + answer + <|im_end|>.

    -> input_ids/attention_mask/labels (B, S) right-padded (labels -100 outside the answer),
       mm_token_type_ids (B, S), pixel_values (sum of patches, C*T*P*P), image_grid_thw (B, 3)
       (video: pixel_values_videos, video_grid_thw (B, 3) instead)
    """
    pixels_key, grid_key = ("pixel_values", "image_grid_thw") if modality == "image" else (
        "pixel_values_videos", "video_grid_thw")
    ids, labels, pixels, grids, types = [], [], [], [], []
    for media, instruction, answer_text in examples:
        media_kw = media_inputs(image=media) if modality == "image" else media_inputs(video=media, fps=FPS)
        enc = processor(text=[chat_prompt(processor, instruction, modality)], return_tensors="pt", **media_kw)
        answer = processor.tokenizer(answer_text, add_special_tokens=False).input_ids + [eos_id]
        prompt = enc["input_ids"][0].tolist()
        ids.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
        pixels.append(enc[pixels_key])
        grids.append(enc[grid_key])  # (images, 3)
        types.append(enc["mm_token_type_ids"][0].tolist())  # 1 at image tokens, 2 at video: M-RoPE needs it
    n = max(len(x) for x in ids)
    return {
        "input_ids": torch.tensor([x + [pad_id] * (n - len(x)) for x in ids]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids]),
        "labels": torch.tensor([x + [-100] * (n - len(x)) for x in labels]),
        "mm_token_type_ids": torch.tensor([x + [0] * (n - len(x)) for x in types]),
        pixels_key: torch.cat(pixels),
        grid_key: torch.cat(grids),
    }


@dataclass
class Example:
    """One training scene or clip, as the batches need it."""

    media: Any  # a PIL image, or the clip's frames
    question: str
    answer: str
    word: str  # the question's naming word ("red")
    kind: str  # its type word ("shape" / "colour")
    named: np.ndarray  # (N_v,) bool: the named object's visual tokens
    colour: np.ndarray  # (N_v,) int64 per-token labels (0 = background), see scenes.token_labels
    shape: np.ndarray
    grid: tuple[int, int, int]  # (t, h, w) visual tokens (of the first image)
    messages: list[dict] | None = None  # a chat prompt's messages (media: its images), None: (media, question)
    grids: list[tuple[int, int, int]] | None = None  # every image's grid, in prompt order (None: [grid])

    @property
    def prompt(self) -> str | list[dict]:
        return self.messages if self.messages is not None else self.question

    @property
    def all_grids(self) -> list[tuple[int, int, int]]:
        return self.grids or [self.grid]


def chat_example(c: prompts.ChatPrompt) -> Example:
    """A chat prompt as a training example: the named object's tokens and the per-token labels over all its
    images' visual tokens, in prompt order."""
    labels = [scenes.token_labels(s) for s in c.drawn]
    return Example(c.images, c.question.text, c.question.answer, c.question.word, c.question.kind,
                   c.relevance() > 0, np.concatenate([a for a, _ in labels]), np.concatenate([b for _, b in labels]),
                   c.drawn[0].grid, messages=c.messages, grids=[s.grid for s in c.drawn])


def example(drawn: scenes.Scene | clips.Clip) -> Example:
    if isinstance(drawn, clips.Clip):
        q = drawn.questions[0]
        named, (colour, shape) = clips.object_relevance(drawn, q.target) > 0, clips.token_labels(drawn)
        return Example(drawn.frames, q.text, q.answer, drawn.objects[q.target].colour, "shape", named, colour, shape,
                       drawn.grid)
    q = drawn.questions[0]
    colour, shape = scenes.token_labels(drawn)
    return Example(drawn.image, drawn.question, drawn.answer, q.word, q.kind,
                   scenes.object_relevance(drawn, drawn.target) > 0, colour, shape, drawn.grid)


@dataclass(frozen=True)
class Asked:
    """One held-out question as `loop.evaluate` reads it; the pipeline's `Item` has the same fields, so evaluate
    takes the `synthetic_scenes` / `synthetic_video` items of the same split too."""

    instruction: str
    answer: str
    image: Any = None
    video: Any = None
    fps: float | None = None
    modality: str = "image"
    messages: list[dict] | None = None  # a chat (`reference_mllm.prompts`): its images are in the messages


def heldout_items(seed: int, size: list[int], n: int, scene_config: dict, modality: str = "image",
                  kind: str = "single") -> list[Asked]:
    """The first n held-out scenes (video: clips, `scene_config` a ClipConfig dict) of one size, drawn as the
    reference model's training scenes were (the `synthetic_scenes` / `synthetic_video` sources' `heldout` split);
    kind "two_images" / "multi_turn": the source's prompts of that mode (`reference_mllm.prompts`)."""
    if kind != "single":
        stream = SceneStream(n + prompts.MAX_PARTNER_SEARCH, seed, "heldout", [size], scenes.SceneConfig(**scene_config))
        chats = [prompts.draw(stream, i, kind) for i in range(n)]
        return [Asked(c.question.text, c.question.answer, image=c.images, messages=c.messages) for c in chats]
    if modality == "image":
        stream = SceneStream(n, seed, "heldout", [size], scenes.SceneConfig(**scene_config))
        return [Asked(s.question, s.answer, image=s.image) for s in map(stream.scene, range(n))]
    stream = ClipStream(n, seed, "heldout", [size], clips.ClipConfig(**scene_config))
    return [Asked(c.questions[0].text, c.questions[0].answer, video=c.frames, fps=FPS, modality="video")
            for c in map(stream.clip, range(n))]


def batch_size(cfg, size: list[int]) -> int:
    """Scenes (clips) per step at `size`: the same visual-token budget per step at every size."""
    h, w = size
    frames = 1 if cfg.modality == "image" else cfg.clips["num_frames"] // clips.TEMPORAL_PATCH
    return max(1, cfg.visual_tokens_per_step // ((h // scenes.TOKEN_PX) * (w // scenes.TOKEN_PX) * frames))


def drop_tokens(rng: np.random.Generator, named: np.ndarray, objects: np.ndarray, p: float) -> np.ndarray:
    """Pruning as training augmentation: with probability p, drop visual tokens of one scene as a pruning
    method would. The named object's tokens stay; of the others a random number (1 to half the tokens)
    stays, half of the time other objects first (as a saliency-driven selection keeps them), otherwise
    uniformly. The model then cannot rely on empty background tokens as attention sinks, and answers when
    a selection keeps only objects (BENCHMARKS.md, "Why the reference MLLM's training terms exist").

    named, objects: (N_v,) bool, the named object's tokens and every object's -> (N_v,) bool, dropped.
    """
    n = len(named)
    if p <= 0 or rng.random() >= p:
        return np.zeros(n, dtype=bool)
    others = np.flatnonzero(~named)
    if rng.random() < 0.5:
        order = np.concatenate([rng.permutation(others[objects[others]]), rng.permutation(others[~objects[others]])])
    else:
        order = rng.permutation(others)
    keep = named.copy()
    keep[order[:int(rng.integers(1, n // 2 + 1))]] = True
    return ~keep


class TrainBatches(torch.utils.data.IterableDataset):
    """The training batches in step order. Step s draws its size from (seed, s); its scenes (clips) are the
    train-split items s*m, s*m+1, ... with m the largest batch of any size, so no two steps share a
    scene: the stream is a pure function of the seed.

    Yields (batch from `make_batch`, colour (N,) and shape (N,) class per visual token of the batch
    (0 = background), target (B, S) bool on the named object's tokens, word_pos (B,) position of the
    question's naming word, type_pos (B,) of its type word, instruction (B, S) bool, visual_y (B, S) image row
    of each visual token, 0 top to 1 bottom (video: the row in the frame pairs stacked top to bottom, so it
    grows in token order, as an image's does; NaN elsewhere and where dropped)). With `token_drop`, batch["dropped"] (B, S) marks
    the visual tokens removed from the attention (`drop_tokens`).
    """

    def __init__(self, cfg, processor: Any, eos_id: int, pad_id: int, image_token_id: int):
        """image_token_id: the visual tokens' id (video: the video token's)."""
        self.cfg, self.processor, self.eos_id, self.pad_id = cfg, processor, eos_id, pad_id
        self.image_token_id = image_token_id
        self.per_step = max(batch_size(cfg, s) for s in cfg.sizes)
        stream, config = ((SceneStream, scenes.SceneConfig(**cfg.scenes)) if cfg.modality == "image"
                          else (ClipStream, clips.ClipConfig(**cfg.clips)))
        # (the two-image partners come from further down the stream: room for their search)
        self.sources = [stream(cfg.steps * self.per_step + prompts.MAX_PARTNER_SEARCH, cfg.seed, "train", [s], config) for s in cfg.sizes]
        self.weights = np.asarray(cfg.size_weights, dtype=np.float64) / sum(cfg.size_weights)
        self.kinds = [k for k, w in cfg.prompt_mix.items() if w > 0]
        self.kind_weights = np.asarray([cfg.prompt_mix[k] for k in self.kinds], dtype=np.float64)
        self.kind_weights /= self.kind_weights.sum()

    def kind(self, step: int) -> str:
        """The prompt kind of step `step` (`cfg.prompt_mix`), drawn from (seed, step) apart from its size."""
        if len(self.kinds) == 1:
            return self.kinds[0]
        rng = np.random.default_rng([self.cfg.seed, step, 2])
        return self.kinds[int(rng.choice(len(self.kinds), p=self.kind_weights))]

    def scene_indices(self, step: int) -> tuple[int, range]:
        """(index into cfg.sizes, train-split item indices) of step `step`'s scenes."""
        rng = np.random.default_rng([self.cfg.seed, step])
        k = int(rng.choice(len(self.cfg.sizes), p=self.weights))
        first = step * self.per_step
        images = 2 if self.kind(step) == "two_images" else 1
        return k, range(first, first + max(1, batch_size(self.cfg, self.cfg.sizes[k]) // images))

    def __iter__(self):
        torch.set_num_threads(1)
        for step in range(self.cfg.steps):
            k, items = self.scene_indices(step)
            kind, rng = self.kind(step), np.random.default_rng([self.cfg.seed, step, 1])
            if kind != "single":
                yield self.encode([chat_example(prompts.draw(self.sources[k], i, kind)) for i in items], rng)
                continue
            draw = self.sources[k].scene if self.cfg.modality == "image" else self.sources[k].clip
            yield self.encode([draw(i) for i in items], rng)

    def encode(self, drawn: list[scenes.Scene] | list[clips.Clip] | list[Example],
               rng: np.random.Generator | None = None):
        """drawn: scenes or clips, or examples (`chat_example`); rng: draws the dropped tokens (None: nothing
        dropped)."""
        drawn = [d if isinstance(d, Example) else example(d) for d in drawn]
        batch = make_batch(self.processor, [(d.media, d.prompt, d.answer) for d in drawn], self.eos_id, self.pad_id,
                           self.cfg.modality)
        labels = [(d.colour, d.shape) for d in drawn]
        target = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for b, d in enumerate(drawn):
            target[b, batch["input_ids"][b] == self.image_token_id] = torch.from_numpy(d.named)
        tok = self.processor.tokenizer
        word_pos = self._positions(batch, [_word_id(tok, d.word) for d in drawn])
        type_pos = self._positions(batch, [_word_id(tok, d.kind) for d in drawn])
        # the instruction: the last user turn's text, from after its last <|vision_end|> (or its "user\n" header,
        # in a turn without an image) to its <|im_end|>
        ids = batch["input_ids"]
        idx = torch.arange(ids.shape[1])
        start = torch.maximum(self._positions(batch, tok.convert_tokens_to_ids(["<|vision_end|>"] * len(drawn))),
                              self._positions(batch, [_text_id(tok, "user")] * len(drawn)) + 1)
        instruction = (idx[None] > start[:, None]) & (idx[None] < word_pos.new_tensor(
            [int(((ids[b] == self.eos_id) & (idx > start[b])).nonzero()[0]) for b in range(len(drawn))])[:, None])
        visual_y = torch.full(ids.shape, float("nan"))
        for b, d in enumerate(drawn):  # each image's own rows
            visual_y[b, ids[b] == self.image_token_id] = torch.cat([
                (torch.arange(t * h * w) // w).float() / max(t * h - 1, 1) for t, h, w in d.all_grids])
        dropped = torch.zeros_like(target)
        if rng is not None:
            for b, d in enumerate(drawn):
                vis = ids[b] == self.image_token_id
                dropped[b, vis] = torch.from_numpy(
                    drop_tokens(rng, target[b, vis].numpy(), labels[b][0] > 0, self.cfg.token_drop))
        visual_y[dropped] = float("nan")
        batch["dropped"] = dropped
        return (batch, torch.from_numpy(np.concatenate([c for c, _ in labels])),
                torch.from_numpy(np.concatenate([s for _, s in labels])), target, word_pos, type_pos,
                instruction, visual_y)

    @staticmethod
    def _positions(batch, ids: list[int]) -> torch.Tensor:
        """(B,) the last position of token ids[b] in row b of the batch."""
        return torch.tensor([int((batch["input_ids"][b] == t).nonzero()[-1]) for b, t in enumerate(ids)])


def _text_id(tokenizer: Any, text: str) -> int:
    """The one token id of `text` as the chat template writes it (no space before it, e.g. the "user" of a turn
    header), for the word-level and the byte-level BPE tokenizer alike."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"the tokenizer splits {text!r} into {len(ids)} tokens; expected one")
    return ids[0]


def _word_id(tokenizer: Any, word: str) -> int:
    """The token id of `word` where a question has it, after a space: the word itself for the word-level
    tokenizer, its space-prefixed token for a byte-level BPE (the Qwen3.5 reference model's)."""
    ids = tokenizer(" " + word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"the tokenizer splits {word!r} into {len(ids)} tokens; the scene words must be one token each")
    return ids[0]
