"""Training and evaluation scenes as model inputs: chat prompts, teacher-forcing batches, and the
per-step stream of training batches (a pure function of the seed)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from data_gen import scenes
from data_gen.sources.synthetic_scenes import SyntheticScenes


def chat_prompt(processor: Any, instruction: str) -> str:
    """The chat-template prompt for one image + instruction, ending with the assistant header."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def make_batch(processor: Any, examples: list[tuple[Any, str, str]], eos_id: int, pad_id: int,
               ) -> dict[str, torch.Tensor]:
    """Teacher-forcing batch of (image, instruction, answer): prompt (exactly as generation sees it) + answer + <|im_end|>.

    -> input_ids/attention_mask/labels (B, S) right-padded (labels -100 outside the answer),
       mm_token_type_ids (B, S), pixel_values (sum of patches, C*T*P*P), image_grid_thw (B, 3)
    """
    ids, labels, pixels, grids, types = [], [], [], [], []
    for image, instruction, answer_text in examples:
        enc = processor(text=[chat_prompt(processor, instruction)], images=[image], return_tensors="pt")
        answer = processor.tokenizer(answer_text, add_special_tokens=False).input_ids + [eos_id]
        prompt = enc["input_ids"][0].tolist()
        ids.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
        pixels.append(enc["pixel_values"])
        grids.append(enc["image_grid_thw"])
        types.append(enc["mm_token_type_ids"][0].tolist())  # 1 at image tokens: M-RoPE needs it
    n = max(len(x) for x in ids)
    return {
        "input_ids": torch.tensor([x + [pad_id] * (n - len(x)) for x in ids]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids]),
        "labels": torch.tensor([x + [-100] * (n - len(x)) for x in labels]),
        "mm_token_type_ids": torch.tensor([x + [0] * (n - len(x)) for x in types]),
        "pixel_values": torch.cat(pixels),
        "image_grid_thw": torch.cat(grids),
    }


def heldout_items(seed: int, size: list[int], n: int, scene_config: dict) -> list:
    """The first n held-out scenes of one size, drawn as the reference model's training scenes were."""
    source = SyntheticScenes(num_items=n, seed=seed, split="heldout", sizes=[size], **scene_config)
    return [source[i] for i in range(n)]


def batch_size(cfg, size: list[int]) -> int:
    """Scenes per step at `size`: the same visual-token budget per step at every size."""
    h, w = size
    return max(1, cfg.visual_tokens_per_step // ((h // scenes.TOKEN_PX) * (w // scenes.TOKEN_PX)))


def drop_tokens(rng: np.random.Generator, named: np.ndarray, objects: np.ndarray, p: float) -> np.ndarray:
    """Pruning as training augmentation: with probability p, drop visual tokens of one scene as a pruning
    method would. The named object's tokens stay; of the others a random number (1 to half the tokens)
    stays, half of the time other objects first (as a saliency-driven selection keeps them), otherwise
    uniformly. Without it the model leans on empty background tokens as attention sinks and fails when a
    selection keeps only objects (BENCHMARKS.md).

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
    """The training batches in step order. Step s draws its size from (seed, s); its scenes are the
    train-split items s*m, s*m+1, ... with m the largest batch of any size, so no two steps share a
    scene: the stream is a pure function of the seed.

    Yields (batch from `make_batch`, colour (N,) and shape (N,) class per visual token of the batch
    (0 = background), target (B, S) bool on the named object's tokens, word_pos (B,) position of the
    question's naming word, type_pos (B,) of its type word, instruction (B, S) bool, visual_y (B, S) image row
    of each visual token (NaN elsewhere and where dropped)). With `token_drop`, batch["dropped"] (B, S) marks
    the visual tokens removed from the attention (`drop_tokens`).
    """

    def __init__(self, cfg, processor: Any, eos_id: int, pad_id: int, image_token_id: int):
        self.cfg, self.processor, self.eos_id, self.pad_id = cfg, processor, eos_id, pad_id
        self.image_token_id = image_token_id
        self.per_step = max(batch_size(cfg, s) for s in cfg.sizes)
        self.sources = [SyntheticScenes(num_items=cfg.steps * self.per_step, seed=cfg.seed, split="train", sizes=[s],
                                        **cfg.scenes) for s in cfg.sizes]
        self.weights = np.asarray(cfg.size_weights, dtype=np.float64) / sum(cfg.size_weights)

    def scene_indices(self, step: int) -> tuple[int, range]:
        """(index into cfg.sizes, train-split item indices) of step `step`'s scenes."""
        rng = np.random.default_rng([self.cfg.seed, step])
        k = int(rng.choice(len(self.cfg.sizes), p=self.weights))
        first = step * self.per_step
        return k, range(first, first + batch_size(self.cfg, self.cfg.sizes[k]))

    def __iter__(self):
        torch.set_num_threads(1)
        for step in range(self.cfg.steps):
            k, items = self.scene_indices(step)
            yield self.encode([self.sources[k].scene(i) for i in items], np.random.default_rng([self.cfg.seed, step, 1]))

    def encode(self, drawn: list[scenes.Scene], rng: np.random.Generator | None = None):
        """rng: draws the dropped tokens (None: nothing dropped)."""
        batch = make_batch(self.processor, [(d.image, d.question, d.answer) for d in drawn], self.eos_id, self.pad_id)
        labels = [scenes.token_labels(d) for d in drawn]
        target = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for b, d in enumerate(drawn):
            target[b, batch["input_ids"][b] == self.image_token_id] = torch.from_numpy(
                scenes.object_relevance(d, d.target) > 0)
        tok = self.processor.tokenizer
        word_pos = self._positions(batch, tok.convert_tokens_to_ids([d.questions[0].word for d in drawn]))
        type_pos = self._positions(batch, tok.convert_tokens_to_ids([d.questions[0].kind for d in drawn]))
        # the instruction: the tokens between <|vision_end|> and the user turn's <|im_end|>
        ids = batch["input_ids"]
        idx = torch.arange(ids.shape[1])
        start = self._positions(batch, tok.convert_tokens_to_ids(["<|vision_end|>"] * len(drawn)))
        instruction = (idx[None] > start[:, None]) & (idx[None] < word_pos.new_tensor(
            [int(((ids[b] == self.eos_id) & (idx > start[b])).nonzero()[0]) for b in range(len(drawn))])[:, None])
        visual_y = torch.full(ids.shape, float("nan"))
        for b, d in enumerate(drawn):
            _, h, w = d.grid
            visual_y[b, ids[b] == self.image_token_id] = (torch.arange(h * w) // w).float() / max(h - 1, 1)
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
