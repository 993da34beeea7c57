"""Train the reference MLLM: a ~1M-parameter Qwen2-VL, from scratch, on `synthetic_scenes`.

    python -m data_gen.reference_train                    # -> checkpoints/reference-qwen2vl/
    python -m data_gen.reference_train --steps 200 --out /tmp/ref   # a quick look

The model is transformers' own `Qwen2VLForConditionalGeneration` (built by `data_gen.hf_build`),
trained on the chat-template prompt + answer + `<|im_end|>`, so greedy generation through the
`qwen2_vl` adapter answers and stops. Deterministic given `--seed` (same threads, same machine).

Why an auxiliary loss: with the answer loss alone a model this small stayed at chance for 25+
minutes (shared DESIGN.md). A linear head on the merged vision features that predicts the
colour and the shape of the object under each visual token (or background) gives the vision
tower a signal of its own; the LLM then only has to look the answer up. The heads are dropped
when saving: the saved folder is a plain Qwen2-VL.

Image sizes are mixed during training (same visual-token budget per step: batch 16 at 224x224,
fewer at larger sizes) so that the model also answers at 2x and 4x the tokens.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data_gen import scenes
from data_gen.correctness import normalise
from data_gen.sources.synthetic_scenes import SyntheticScenes

DEFAULT_OUT = "checkpoints/reference-qwen2vl"


@dataclass
class RefTrainConfig:
    out: str = DEFAULT_OUT
    seed: int = 0
    steps: int = 1600
    visual_tokens_per_step: int = 768  # batch 12 at 224x224 (64 tokens each), 3 at 448x448
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    aux_weight: float = 1.0
    # (height, width) px and how often each is drawn; 224x224 is the main size
    sizes: list[list[int]] = field(default_factory=lambda: [[224, 224], [224, 448], [448, 224], [448, 448]])
    size_weights: list[float] = field(default_factory=lambda: [0.55, 0.15, 0.15, 0.15])
    eval_items: int = 200  # held-out scenes per evaluated size
    eval_sizes: list[list[int]] = field(default_factory=lambda: [[224, 224], [224, 448], [448, 448]])
    threads: int = 1  # one thread: with other processes on the cores, 2 threads ran 5-7x slower
    text: dict = field(default_factory=lambda: dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                                    num_key_value_heads=4, intermediate_size=512))
    vision: dict = field(default_factory=lambda: dict(depth=2, embed_dim=64, num_heads=4))
    max_pixels: int = 896 * 896  # the processor leaves scenes up to this size unresized


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


class AuxHeads(torch.nn.Module):
    """Per-visual-token colour and shape classifiers on the merged vision features (training only)."""

    def __init__(self, dim: int):
        super().__init__()
        self.colour = torch.nn.Linear(dim, len(scenes.COLOURS) + 1)
        self.shape = torch.nn.Linear(dim, len(scenes.SHAPES) + 1)

    def loss(self, feats: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """feats: (N, D) merged visual tokens of the batch; colour, shape: (N,) labels (0 = background)."""
        return F.cross_entropy(self.colour(feats), colour) + F.cross_entropy(self.shape(feats), shape)


@torch.no_grad()
def evaluate(model: Any, processor: Any, items: list, max_new_tokens: int = 4) -> float:
    """Answer accuracy with greedy generation from the chat-template prompt (normalised exact match)."""
    model.eval()
    correct = 0
    for item in items:
        enc = processor(text=[chat_prompt(processor, item.instruction)], images=[item.image], return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        text = processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += normalise(text) == normalise(item.answer)
    return correct / max(len(items), 1)


def heldout_items(seed: int, size: list[int], n: int) -> list:
    source = SyntheticScenes(num_items=n, seed=seed, split="heldout", sizes=[size])
    return [source[i] for i in range(n)]


def train(cfg: RefTrainConfig) -> dict:
    """Train, evaluate on held-out scenes at each `eval_sizes`, save to `cfg.out`; -> the record."""
    from data_gen.hf_build import make_qwen2_vl, save_model

    if len(cfg.sizes) != len(cfg.size_weights):
        raise ValueError(f"sizes ({len(cfg.sizes)}) and size_weights ({len(cfg.size_weights)}) differ in length")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model, processor = make_qwen2_vl(scenes.scene_words(), text=cfg.text, vision=cfg.vision,
                                     max_pixels=cfg.max_pixels, seed=cfg.seed)
    tok = processor.tokenizer
    eos_id, pad_id = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    heads = AuxHeads(model.config.text_config.hidden_size)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0)))))

    captured: list[torch.Tensor] = []  # the merger's output: (N_visual_tokens_in_batch, D)
    hook = model.model.visual.merger.register_forward_hook(lambda m, i, o: captured.append(o))
    sources = [SyntheticScenes(num_items=cfg.steps * 64, seed=cfg.seed, split="train", sizes=[s]) for s in cfg.sizes]
    weights = np.asarray(cfg.size_weights, dtype=np.float64) / sum(cfg.size_weights)

    t0 = time.time()
    model.train()
    bar = tqdm(range(cfg.steps), desc="reference MLLM", dynamic_ncols=True)
    ema = None
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step])
        k = int(rng.choice(len(sources), p=weights))
        h, w = cfg.sizes[k]
        bs = max(1, cfg.visual_tokens_per_step // ((h // scenes.TOKEN_PX) * (w // scenes.TOKEN_PX)))
        idx = [step * 64 + j for j in range(bs)]  # disjoint train items for every step
        drawn = [sources[k].scene(i) for i in idx]
        batch = make_batch(processor, [(s.image, s.question, s.answer) for s in drawn], eos_id, pad_id)
        labels = batch.pop("labels")
        captured.clear()
        logits = model(**batch).logits  # (B, S, V)
        lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        tl = [scenes.token_labels(s) for s in drawn]
        colour = torch.from_numpy(np.concatenate([c for c, _ in tl]))
        shape = torch.from_numpy(np.concatenate([s for _, s in tl]))
        aux = heads.loss(captured[-1], colour, shape)
        loss = lm + cfg.aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        # first answer token right from the logits: a cheap running accuracy
        first = (labels[:, 1:] != -100).float().argmax(1)
        pred = logits[torch.arange(len(drawn)), first].argmax(-1)
        acc = (pred == labels[torch.arange(len(drawn)), first + 1]).float().mean().item()
        ema = acc if ema is None else 0.98 * ema + 0.02 * acc
        bar.set_postfix(lm=f"{lm.item():.3f}", aux=f"{aux.item():.3f}", acc=f"{ema:.3f}")
    hook.remove()
    train_s = time.time() - t0

    model.eval()
    accuracy = {}
    for size in cfg.eval_sizes:
        accuracy[f"{size[0]}x{size[1]}"] = evaluate(model, processor, heldout_items(cfg.seed, size, cfg.eval_items))
    record = {"train_seconds": round(train_s, 1), "steps": cfg.steps, "seed": cfg.seed,
              "parameters": sum(p.numel() for p in model.parameters()),
              "heldout_accuracy": accuracy, "heldout_items_per_size": cfg.eval_items, "config": asdict(cfg)}
    out = save_model(model, processor, cfg.out)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(model_card(record))
    return record


def model_card(record: dict) -> str:
    cfg = record["config"]
    rows = "\n".join(f"| {k} | {v * 100:.1f}% |" for k, v in record["heldout_accuracy"].items())
    return f"""# reference-qwen2vl: a test model for this pipeline, not a general MLLM

A {record['parameters'] / 1e6:.2f}M-parameter model in the Qwen2-VL architecture (transformers'
`Qwen2VLForConditionalGeneration`; text: {cfg['text']['num_hidden_layers']} layers, hidden
{cfg['text']['hidden_size']}; vision: {cfg['vision']['depth']} layers, embed {cfg['vision']['embed_dim']},
patch 14, merge 2), trained from scratch on this repository's `synthetic_scenes` source. It knows
only those scenes (3-4 coloured shapes on grey backgrounds) and two questions: "What shape is the
<colour> object?" and "What colour is the <shape>?". Its vocabulary is a few dozen words. It exists
so that data generation, predictor training and pruned evaluation can run, and be judged against a
known ground truth, on a CPU. Do not use it for anything else.

Load it like any Qwen2-VL checkpoint:

```python
from predictor.adapters import load_adapter
adapter = load_adapter("qwen2_vl", "checkpoints/reference-qwen2vl")
```

## Training

    python -m data_gen.reference_train --seed {record['seed']} --steps {record['steps']}

{record['steps']} steps, {record['train_seconds'] / 60:.1f} min on a 2-core CPU (shared), seed {record['seed']},
image sizes {cfg['sizes']} drawn with weights {cfg['size_weights']}, {cfg['visual_tokens_per_step']}
visual tokens per step; answer loss + an auxiliary per-visual-token colour/shape loss (the heads are
not part of this folder). Details: `training.json`.

## Held-out accuracy

Greedy generation, normalised exact match, {record['heldout_items_per_size']} held-out scenes
(`synthetic_scenes` split `heldout`, seed {record['seed']}) per image size, all visual tokens:

| image size (h x w) | accuracy |
|---|---|
{rows}
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=RefTrainConfig.steps)
    p.add_argument("--eval-items", type=int, default=RefTrainConfig.eval_items)
    p.add_argument("--threads", type=int, default=RefTrainConfig.threads)
    a = p.parse_args(argv)
    record = train(RefTrainConfig(out=a.out, seed=a.seed, steps=a.steps, eval_items=a.eval_items,
                                  threads=a.threads))
    print(f"saved {a.out}: {record['steps']} steps in {record['train_seconds'] / 60:.1f} min")
    for size, acc in record["heldout_accuracy"].items():
        print(f"held-out accuracy at {size}: {acc * 100:.1f}% ({record['heldout_items_per_size']} scenes)")


if __name__ == "__main__":
    main()
