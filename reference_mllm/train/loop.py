"""The training loop: build the model, train on the scene stream, evaluate held-out scenes, save."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from predictor.text import normalise
from reference_mllm import scenes
from reference_mllm.train.batches import TrainBatches, chat_prompt, heldout_items, media_inputs
from reference_mllm.train.card import model_card
from reference_mllm.train.config import RefTrainConfig
from reference_mllm.train.losses import AuxHead, guidance, layer0_cue, layer0_position_bias


@torch.no_grad()
def evaluate(model: Any, processor: Any, items: list, max_new_tokens: int = 4) -> float:
    """Answer accuracy with greedy generation from the chat-template prompt (normalised exact match); items are
    image or video questions (`batches.Asked`, or the pipeline's `Item`s)."""
    model.eval()
    correct = 0
    for item in items:
        prompt = item.messages if getattr(item, "messages", None) else item.instruction
        enc = processor(text=[chat_prompt(processor, prompt, item.modality)], return_tensors="pt",
                        **media_inputs(item.image, item.video, item.fps))
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        text = processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += normalise(text) == normalise(item.answer)
    return correct / max(len(items), 1)


def load_init(model: Any, processor: Any, path: str) -> None:
    """Copy a saved reference model's weights into `model`; its vocabulary must be this model's (ValueError)."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    saved = AutoTokenizer.from_pretrained(path).get_vocab()
    if saved != processor.tokenizer.get_vocab():
        raise ValueError(f"init={path!r}: its vocabulary differs from this recipe's ({len(saved)} against "
                         f"{len(processor.tokenizer.get_vocab())} tokens); train from scratch (init='')")
    state = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"init={path!r}: another architecture (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                         f"use the recipe's text/vision settings or train from scratch (init='')")


def train(cfg: RefTrainConfig, progress: bool = True) -> dict:
    """Train, evaluate on held-out scenes at each `eval_sizes`, save to `cfg.out`; -> the record."""
    from reference_mllm.tiny_models import make_qwen2_vl, make_qwen3_5, save_model

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    video = cfg.modality == "video"
    make = make_qwen3_5 if cfg.arch == "qwen3_5" else make_qwen2_vl
    model, processor = make(scenes.video_words() if video else scenes.scene_words(), text=cfg.text,
                            vision=cfg.vision, max_pixels=cfg.max_pixels, seed=cfg.seed)
    if cfg.init:
        load_init(model, processor, cfg.init)
    tok = processor.tokenizer
    eos_id, pad_id = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    maps = cfg.att_weight > 0 or cfg.l0_cue > 0 or cfg.l0_position_bias > 0  # attention maps are needed
    if maps:
        model.set_attn_implementation("eager")
    head = AuxHead(model.config.text_config.hidden_size)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0)))))

    captured: list[torch.Tensor] = []  # the merger's output: (N_visual_tokens_in_batch, D), images or videos
    hook = model.model.visual.merger.register_forward_hook(lambda m, i, out: captured.append(out))
    visual_id = model.config.video_token_id if video else model.config.image_token_id
    batches = torch.utils.data.DataLoader(  # drawing + processing overlap the model step
        TrainBatches(cfg, processor, eos_id, pad_id, visual_id), batch_size=None, num_workers=1, prefetch_factor=4)

    t0 = time.time()
    model.train()
    bar = tqdm(batches, total=cfg.steps, desc="reference MLLM", dynamic_ncols=True, disable=not progress)
    ema = None
    for batch, colour, shape, target, word_pos, type_pos, instruction, visual_y in bar:
        labels, dropped = batch.pop("labels"), batch.pop("dropped")
        # positions as in the whole prompt, then the dropped tokens masked out of the attention: what pruning
        # does at inference (predictor.runtime keeps the kept tokens' original positions)
        batch["position_ids"] = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                           batch.get("image_grid_thw"), batch.get("video_grid_thw"),
                                                           batch["attention_mask"])[0]
        batch["attention_mask"] = batch["attention_mask"] * ~dropped
        captured.clear()
        out = model(**batch, output_attentions=maps)
        logits = out.logits  # (B, S, V)
        lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                             label_smoothing=cfg.label_smoothing)
        aux = head(captured[-1], colour, shape)
        first = (labels[:, 1:] != -100).float().argmax(1)  # (B,) the position predicting the first answer token
        guide = guidance(out.attentions, target, word_pos, type_pos, first) if cfg.att_weight > 0 else torch.zeros(())
        loss = lm + cfg.aux_weight * aux + cfg.att_weight * guide
        if cfg.l0_cue > 0:
            loss = loss + layer0_cue(out.attentions, target, word_pos, cfg.l0_cue)
        bias = torch.zeros(())
        if cfg.l0_position_bias > 0:
            bias = layer0_position_bias(out.attentions, instruction, visual_y, cfg.l0_position_bias)
            loss = loss + bias
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        rows = torch.arange(len(labels))  # first answer token right from the logits: a cheap running accuracy
        acc = (logits[rows, first].argmax(-1) == labels[rows, first + 1]).float().mean().item()
        ema = acc if ema is None else 0.98 * ema + 0.02 * acc
        bar.set_postfix(lm=f"{lm.item():.3f}", aux=f"{aux.item():.3f}", guide=f"{guide.item():.2f}",
                        bias=f"{bias.item():.2f}", acc=f"{ema:.3f}")
    hook.remove()
    train_s = time.time() - t0

    model.eval()
    model.set_attn_implementation("sdpa")
    items = {f"{h}x{w}": heldout_items(cfg.seed, [h, w], cfg.eval_items, cfg.clips if video else cfg.scenes,
                                        cfg.modality) for h, w in cfg.eval_sizes}
    for kind in (k for k, w in cfg.prompt_mix.items() if w > 0 and k != "single"):
        h, w = cfg.eval_sizes[0]
        items[f"{kind} {h}x{w}"] = heldout_items(cfg.seed, [h, w], cfg.eval_items, cfg.scenes, kind=kind)
    accuracy = {size: evaluate(model, processor, drawn) for size, drawn in items.items()}
    record = {"train_seconds": round(train_s, 1), "steps": cfg.steps, "seed": cfg.seed,
              "parameters": sum(p.numel() for p in model.parameters()),
              "heldout_accuracy": accuracy, "heldout_items_per_size": cfg.eval_items, "config": asdict(cfg)}
    out = save_model(model, processor, cfg.out)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(model_card(record))
    return record
