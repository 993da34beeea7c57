"""Train the reference MLLM: a ~1M-parameter Qwen2-VL, from scratch, on `synthetic_scenes`.

    python -m data_gen.reference_train                    # -> checkpoints/reference-qwen2vl/
    python -m data_gen.reference_train --steps 200 --out /tmp/ref   # a quick look

The model is transformers' own `Qwen2VLForConditionalGeneration` (built by `data_gen.hf_build`),
trained on the chat-template prompt + answer + `<|im_end|>`, so greedy generation through the
`qwen2_vl` adapter answers and stops. Deterministic given `--seed` (same threads, same machine).

What makes a model this small learn in minutes (BENCHMARKS.md has the runs):
- scenes with each object inside one visual token's cell (`synthetic_scenes`' default placement);
- an auxiliary loss: a linear head on the merged vision features predicts the colour and shape of
  the object under each visual token (or background), so the vision tower has a signal of its own;
- attention guidance (-log attention mass) on head 0 of text layers 1 and 2: the question's colour
  word attends to that object's tokens, the answer position to the colour word. Layer 0 is left
  alone: its attention is the relevance predictor's input;
- text weights initialised with std 0.1, not transformers' 0.02.
The heads are dropped when saving: the saved folder is a plain Qwen2-VL.

Image sizes are mixed during training (same visual-token budget per step: batch 16 at 224x224,
fewer at larger sizes) so that the model also answers at 2x and 4x the tokens.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
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
    steps: int = 4000
    visual_tokens_per_step: int = 1024  # batch 16 at 224x224 (64 tokens each), 8 at 224x448
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    aux_weight: float = 1.0
    label_smoothing: float = 0.1  # on the answer loss: keeps the answer logit off saturation, so gae finds the object more often (BENCHMARKS.md)
    # Attention guidance (-log of attention mass) on head 0: in layer att_layers[0], the question's
    # content word ("red" in "What shape is the red object?") attends to the queried object's
    # visual tokens; in layer att_layers[1], the answer position attends to that word. Layer 0 is
    # left alone by default (it is the predictor's input). Without guidance the LLM sat at chance
    # for 700+ steps at this budget; guiding only the answer position onto the object plateaued at
    # attending to all objects alike.
    att_weight: float = 1.0
    att_layers: tuple[int, int] = (1, 2)
    # A weak instruction cue in layer 0, for experiments; 0 (the default) leaves layer 0 alone. Head 0's
    # attention mass from the content word onto the object is pushed up to `l0_cue` and no further
    # (hinge). The predictor's premise is that layer 0 of a real MLLM carries a weak, noisy signal of
    # which tokens the instruction needs; this plants one of known strength (BENCHMARKS.md).
    l0_cue: float = 0.0
    aux_head: str = "linear"  # "linear" | "tied": class scores = dot product with the word's input embedding |
    # "regress": merged features regressed (relative squared error) onto the input embeddings of their
    # (colour, shape) words: clean, small features the LLM can match against the question's words
    # Clean-feature warm start: with probability 1 until `clean_until` (a fraction of the steps), then
    # falling linearly to 0 over `clean_fade`, the LLM sees each visual token as the input embeddings of
    # its (colour, shape) words instead of the vision tower's output, so it learns the question-to-object
    # lookup on clean inputs while the vision tower learns to produce them. Both 0: off.
    clean_until: float = 0.0
    clean_fade: float = 0.0
    # [[from_fraction, objects_per_scene], ...], first from 0: objects per scene by training progress
    # (an easy start: one object needs no lookup). Empty: `num_objects` throughout.
    curriculum: list[list[float]] = field(default_factory=list)
    # (height, width) px and how often each is drawn; 224x224 is the main size
    sizes: list[list[int]] = field(default_factory=lambda: [[224, 224], [224, 448], [448, 224]])
    size_weights: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    # the scenes: what the shared DESIGN.md recipe learned (shape questions, 3 objects)
    question_types: list[str] = field(default_factory=lambda: ["shape"])
    num_objects: list[int] = field(default_factory=lambda: [3, 3])
    eval_items: int = 200  # held-out scenes per evaluated size
    eval_sizes: list[list[int]] = field(default_factory=lambda: [[224, 224], [224, 448], [448, 448]])
    threads: int = 1  # one thread: with other processes on the cores, 2 threads ran 5-7x slower
    # initializer_range 0.1 (transformers' default: 0.02): from the smaller init the answer path (object ->
    # question word -> answer position, three matrices deep) sat at chance for 1500 steps even with the
    # attention guided; from 0.1 it reached 79% in 800 (clean inputs, BENCHMARKS.md)
    text: dict = field(default_factory=lambda: dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
                                                    num_key_value_heads=2, intermediate_size=256,
                                                    initializer_range=0.1))
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
    """Per-visual-token colour and shape classifiers on the merged vision features (training only).

    tied=True scores each class by the dot product with the input embedding of its word ("red",
    "circle", ...), so that a visual token's feature points where the question word's embedding
    points: the LLM's attention can then match question and object from the start.
    """

    def __init__(self, dim: int, embeddings: torch.nn.Embedding | None = None,
                 colour_ids: list[int] | None = None, shape_ids: list[int] | None = None):
        super().__init__()
        self.tied = embeddings is not None
        if self.tied:
            self.embeddings = embeddings
            self.register_buffer("colour_ids", torch.tensor(colour_ids), persistent=False)
            self.register_buffer("shape_ids", torch.tensor(shape_ids), persistent=False)
            self.colour_bias = torch.nn.Parameter(torch.zeros(len(colour_ids) + 1))  # class 0: background
            self.shape_bias = torch.nn.Parameter(torch.zeros(len(shape_ids) + 1))
        else:
            self.colour = torch.nn.Linear(dim, len(scenes.COLOURS) + 1)
            self.shape = torch.nn.Linear(dim, len(scenes.SHAPES) + 1)

    def _logits(self, feats: torch.Tensor, ids: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        words = feats @ self.embeddings.weight[ids].T  # (N, K)
        return torch.cat([torch.zeros_like(words[:, :1]), words], 1) + bias

    def loss(self, feats: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """feats: (N, D) merged visual tokens of the batch; colour, shape: (N,) labels (0 = background)."""
        if self.tied:
            c, s = self._logits(feats, self.colour_ids, self.colour_bias), self._logits(feats, self.shape_ids,
                                                                                         self.shape_bias)
        else:
            c, s = self.colour(feats), self.shape(feats)
        return F.cross_entropy(c, colour) + F.cross_entropy(s, shape)


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


def heldout_items(seed: int, size: list[int], n: int, question_types=("shape",), num_objects=(3, 3)) -> list:
    """The first n held-out scenes of one size, drawn like the reference model's training scenes."""
    source = SyntheticScenes(num_items=n, seed=seed, split="heldout", sizes=[size], question_types=question_types,
                             num_objects=num_objects)
    return [source[i] for i in range(n)]


def objects_at(cfg: RefTrainConfig, step: int) -> int | None:
    """Objects per scene at `step` under `cfg.curriculum` (None: no curriculum, `cfg.num_objects`)."""
    n = None
    for start, count in cfg.curriculum:
        if step >= start * cfg.steps:
            n = int(count)
    return n


def clean_probability(cfg: RefTrainConfig, step: int) -> float:
    """Probability that the LLM is fed clean word-embedding features at `step` (see RefTrainConfig)."""
    frac = step / cfg.steps
    if frac < cfg.clean_until:
        return 1.0
    if cfg.clean_fade <= 0:
        return 0.0
    return max(0.0, 1.0 - (frac - cfg.clean_until) / cfg.clean_fade)


class _Batches(torch.utils.data.IterableDataset):
    """The training batches in step order: step s draws its size from (seed, s) and its scenes are
    the train-split items s*64, s*64+1, ... (disjoint across steps): a pure function of the seed."""

    def __init__(self, cfg: RefTrainConfig, processor: Any, eos_id: int, pad_id: int, image_token_id: int):
        self.cfg, self.processor, self.eos_id, self.pad_id = cfg, processor, eos_id, pad_id
        self.image_token_id = image_token_id
        counts = [None] if not cfg.curriculum else sorted({int(n) for _, n in cfg.curriculum})
        self.sources = {n: [SyntheticScenes(num_items=cfg.steps * 64, seed=cfg.seed, split="train", sizes=[s],
                                            question_types=cfg.question_types,
                                            num_objects=cfg.num_objects if n is None else [n, n])
                            for s in cfg.sizes] for n in counts}
        self.weights = np.asarray(cfg.size_weights, dtype=np.float64) / sum(cfg.size_weights)

    def __iter__(self):
        torch.set_num_threads(1)
        for step in range(self.cfg.steps):
            rng = np.random.default_rng([self.cfg.seed, step])
            k = int(rng.choice(len(self.cfg.sizes), p=self.weights))
            h, w = self.cfg.sizes[k]
            bs = max(1, self.cfg.visual_tokens_per_step // ((h // scenes.TOKEN_PX) * (w // scenes.TOKEN_PX)))
            drawn = [self.sources[objects_at(self.cfg, step)][k].scene(step * 64 + j) for j in range(bs)]
            batch = make_batch(self.processor, [(d.image, d.question, d.answer) for d in drawn],
                               self.eos_id, self.pad_id)
            tl = [scenes.token_labels(d) for d in drawn]  # (h*w,) colour and shape class per token
            target = torch.zeros_like(batch["input_ids"], dtype=torch.bool)  # (B, S) target object's tokens
            for b, d in enumerate(drawn):
                obj = d.objects[d.target]
                on = torch.from_numpy(scenes.relevance_from_mask(scenes.object_mask(obj, d.height, d.width)) > 0)
                target[b, batch["input_ids"][b] == self.image_token_id] = on
            # the question's content word ("red" in "What shape is the red object?"): (B,) positions
            words = [obj.colour if d.question_type == "shape" else obj.shape
                     for d, obj in ((d, d.objects[d.target]) for d in drawn)]
            word_ids = self.processor.tokenizer.convert_tokens_to_ids(words)
            word_pos = torch.tensor([int((batch["input_ids"][b] == t).nonzero()[-1]) for b, t in enumerate(word_ids)])
            yield (batch, torch.from_numpy(np.concatenate([c for c, _ in tl])),
                   torch.from_numpy(np.concatenate([sh for _, sh in tl])), target, word_pos)


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
    maps = cfg.att_weight > 0 or cfg.l0_cue > 0  # attention probabilities are needed during training
    if maps:
        model.set_attn_implementation("eager")
    if cfg.curriculum and cfg.curriculum[0][0] != 0:
        raise ValueError(f"curriculum {cfg.curriculum} must start at fraction 0, e.g. [[0, 1], [0.12, 2], [0.35, 3]]")
    n_layers = int(cfg.text["num_hidden_layers"])
    if any(not 0 <= layer < n_layers for layer in cfg.att_layers):
        raise ValueError(f"att_layers={list(cfg.att_layers)}: the text model has layers 0..{n_layers - 1}; pass "
                         f"--att-layers with two of them (e.g. 1,{min(2, n_layers - 1)}) or more layers with --text")
    if cfg.aux_head not in ("linear", "tied", "regress"):
        raise ValueError(f"aux_head={cfg.aux_head!r}: expected linear, tied or regress")
    # input-embedding rows of each colour and shape class (class 0, background, reads <|endoftext|>)
    class_ids = {"colour": torch.tensor([pad_id] + tok.convert_tokens_to_ids(list(scenes.COLOURS))),
                 "shape": torch.tensor([pad_id] + tok.convert_tokens_to_ids(list(scenes.SHAPES)))}

    def clean_features(colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """(N,) class labels -> (N, D): the input embeddings of each token's colour word + shape word."""
        emb = model.get_input_embeddings().weight
        return emb[class_ids["colour"]][colour] + emb[class_ids["shape"]][shape]

    heads = None
    if cfg.aux_head == "tied":
        heads = AuxHeads(model.config.text_config.hidden_size, model.get_input_embeddings(),
                         tok.convert_tokens_to_ids(list(scenes.COLOURS)), tok.convert_tokens_to_ids(list(scenes.SHAPES)))
    elif cfg.aux_head == "linear":
        heads = AuxHeads(model.config.text_config.hidden_size)
    params = list(model.parameters()) + ([] if heads is None else
                                         [p for n, p in heads.named_parameters() if not n.startswith("embeddings.")])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0)))))

    captured: list[torch.Tensor] = []  # the merger's output: (N_visual_tokens_in_batch, D)
    feed = {"clean": False}  # this step's labels, and whether the LLM gets clean features instead
    clean_rng = torch.Generator().manual_seed(cfg.seed)

    def merger_hook(module, inputs, output):
        captured.append(output)
        return clean_features(feed["colour"], feed["shape"]) if feed["clean"] else output

    hook = model.model.visual.merger.register_forward_hook(merger_hook)
    batches = torch.utils.data.DataLoader(  # drawing + processing overlap the model step
        _Batches(cfg, processor, eos_id, pad_id, model.config.image_token_id), batch_size=None, num_workers=1, prefetch_factor=4)

    t0 = time.time()
    model.train()
    bar = tqdm(batches, total=cfg.steps, desc="reference MLLM", dynamic_ncols=True)
    ema = None
    for step, (batch, colour, shape, target, word_pos) in enumerate(bar):
        labels = batch.pop("labels")
        captured.clear()
        feed.update(colour=colour, shape=shape,
                    clean=bool(torch.rand((), generator=clean_rng) < clean_probability(cfg, step)))
        out = model(**batch, output_attentions=maps)
        logits = out.logits  # (B, S, V)
        lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                             label_smoothing=cfg.label_smoothing)
        if cfg.aux_head == "regress":
            tgt = clean_features(colour, shape).detach()
            aux = ((captured[-1] - tgt) ** 2).sum(-1).mean() / (tgt ** 2).sum(-1).mean()
        else:
            aux = heads.loss(captured[-1], colour, shape)
        loss = lm + cfg.aux_weight * aux
        first = (labels[:, 1:] != -100).float().argmax(1)  # (B,) the position predicting the first answer token
        guide = torch.zeros(())
        rows = torch.arange(len(labels))
        if cfg.l0_cue > 0:  # hinge: at least l0_cue of the word's head-0 mass on the object, no more
            att = out.attentions[0][rows, 0, word_pos]
            loss = loss + F.relu(cfg.l0_cue - (att * target).sum(-1)).mean()
        if cfg.att_weight > 0:
            object_layer, word_layer = cfg.att_layers
            att = out.attentions[object_layer][rows, 0, word_pos]  # (B, S): head 0's row at the content word
            guide = -torch.log((att * target).sum(-1) + 1e-6).mean()
            att = out.attentions[word_layer][rows, 0, first]  # (B, S): head 0's row at the answer position
            guide = guide - torch.log(att[rows, word_pos] + 1e-6).mean()
            loss = loss + cfg.att_weight * guide
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        # first answer token right from the logits: a cheap running accuracy
        pred = logits[torch.arange(len(labels)), first].argmax(-1)
        acc = (pred == labels[torch.arange(len(labels)), first + 1]).float().mean().item()
        ema = acc if ema is None else 0.98 * ema + 0.02 * acc
        bar.set_postfix(lm=f"{lm.item():.3f}", aux=f"{aux.item():.3f}", guide=f"{guide.item():.2f}", acc=f"{ema:.3f}")
    hook.remove()
    train_s = time.time() - t0

    model.eval()
    model.set_attn_implementation("sdpa")
    accuracy = {}
    for size in cfg.eval_sizes:
        accuracy[f"{size[0]}x{size[1]}"] = evaluate(model, processor, heldout_items(
            cfg.seed, size, cfg.eval_items, cfg.question_types, cfg.num_objects))
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
    acc = record["heldout_accuracy"].get("224x224", 0.0)
    status = "" if acc >= 0.95 else f"""
> **Provisional: below the bar.** Held-out accuracy is {acc * 100:.1f}% (chance: 25%, four shapes),
> not the >= 95% this model is meant to reach. Until a run reaches it, the pipeline runs end to end on this model, but its answers, and so
> the relevance labels made from it, are not meaningful.
"""
    questions = {"shape": '"What shape is the <colour> object?"', "colour": '"What colour is the <shape>?"'}
    asked = " and ".join(questions[q] for q in cfg.get("question_types", list(questions)))
    lo, hi = cfg.get("num_objects", [3, 4])
    count = str(lo) if lo == hi else f"{lo}-{hi}"
    return f"""# reference-qwen2vl: a test model for this pipeline, not a general MLLM
{status}
A {record['parameters'] / 1e6:.2f}M-parameter model in the Qwen2-VL architecture (transformers'
`Qwen2VLForConditionalGeneration`; text: {cfg['text']['num_hidden_layers']} layers, hidden
{cfg['text']['hidden_size']}; vision: {cfg['vision']['depth']} layers, embed {cfg['vision']['embed_dim']},
patch 14, merge 2), trained from scratch on this repository's `synthetic_scenes` source. It knows
only those scenes ({count} coloured shapes, each inside one 28 x 28 px visual-token cell, on grey
backgrounds with grey distractor strokes) and the questions {asked}.
Its vocabulary is a few dozen words. It exists
so that data generation, predictor training and pruned evaluation can run, and be judged against a
known ground truth, on a CPU. Do not use it for anything else.

Load it like any Qwen2-VL checkpoint:

```python
from predictor.adapters import load_adapter
adapter = load_adapter("qwen2_vl", "checkpoints/reference-qwen2vl")
```

## Training

    python -m data_gen.reference_train --seed {record['seed']} --steps {record['steps']}

{record['steps']} steps, {record['train_seconds'] / 60:.1f} min on a 2-core CPU, seed {record['seed']},
image sizes {cfg['sizes']} drawn with weights {cfg['size_weights']}, {cfg['visual_tokens_per_step']}
visual tokens per step. Losses: the answer (label smoothing {cfg.get('label_smoothing', 0.0)}); an auxiliary
per-visual-token colour/shape classifier on the merged vision features (its heads are not part of this
folder); and attention guidance on head 0 of text layers {cfg['att_layers'][0]} and {cfg['att_layers'][1]} (weight
{cfg['att_weight']}): the question's colour word attends to the object, the answer position to that word.
Layer 0, whose attention the relevance predictor reads, is {_layer0_note(cfg)}.
Details: `training.json`.

## Held-out accuracy

Greedy generation, normalised exact match, {record['heldout_items_per_size']} held-out scenes
(`synthetic_scenes` split `heldout`, seed {record['seed']}) per image size, all visual tokens:

| image size (h x w) | accuracy |
|---|---|
{rows}
"""


def _layer0_note(cfg: dict) -> str:
    if 0 in cfg["att_layers"]:
        return "guided too"
    if cfg.get("l0_cue", 0.0) > 0:
        return (f"given a weak cue: head 0's mass from the colour word on the object pushed up to "
                f"{cfg['l0_cue']} (hinge), no further")
    return "not guided"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=RefTrainConfig.steps)
    p.add_argument("--eval-items", type=int, default=RefTrainConfig.eval_items)
    p.add_argument("--threads", type=int, default=RefTrainConfig.threads)
    p.add_argument("--att-weight", type=float, default=RefTrainConfig.att_weight)
    p.add_argument("--aux-head", choices=("tied", "linear", "regress"), default=RefTrainConfig.aux_head)
    p.add_argument("--clean-until", type=float, default=RefTrainConfig.clean_until)
    p.add_argument("--clean-fade", type=float, default=RefTrainConfig.clean_fade)
    p.add_argument("--curriculum", default="", help="objects per scene by progress, e.g. 0:1,0.12:2,0.35:3")
    p.add_argument("--att-layers", default="", help="text layers of the two guided attention hops, e.g. 1,2")
    p.add_argument("--label-smoothing", type=float, default=RefTrainConfig.label_smoothing)
    p.add_argument("--l0-cue", type=float, default=RefTrainConfig.l0_cue,
                   help="weak instruction cue in layer 0: head 0's mass from the colour word on the object, "
                        "pushed up to this (0: off)")
    p.add_argument("--text", default="", help='JSON overrides of the text config, e.g. \'{"hidden_size": 128}\'')
    p.add_argument("--sizes", default="", help="training image sizes HxW, e.g. 224x224 (default: the config's mix)")
    a = p.parse_args(argv)
    extra = {}
    if a.curriculum:
        extra["curriculum"] = [[float(f), int(n)] for f, n in (x.split(":") for x in a.curriculum.split(","))]
    if a.att_layers:
        extra["att_layers"] = tuple(int(v) for v in a.att_layers.split(","))
    if a.text:
        extra["text"] = {**RefTrainConfig().text, **json.loads(a.text)}
    if a.sizes:
        extra["sizes"] = [[int(v) for v in x.split("x")] for x in a.sizes.split(",")]
        extra["size_weights"] = [1.0] * len(extra["sizes"])
    record = train(RefTrainConfig(out=a.out, seed=a.seed, steps=a.steps, eval_items=a.eval_items,
                                  threads=a.threads, aux_head=a.aux_head, att_weight=a.att_weight,
                                  clean_until=a.clean_until, clean_fade=a.clean_fade,
                                  label_smoothing=a.label_smoothing, l0_cue=a.l0_cue, **extra))
    print(f"saved {a.out}: {record['steps']} steps in {record['train_seconds'] / 60:.1f} min")
    for size, acc in record["heldout_accuracy"].items():
        print(f"held-out accuracy at {size}: {acc * 100:.1f}% ({record['heldout_items_per_size']} scenes)")


if __name__ == "__main__":
    main()
