"""One source item -> one labelled `predictor.schema.Sample`, or `SkipItem` saying why not.

Load the image or clip -> adapter.prepare -> generate -> correctness -> explainer relevance and layer-0
attention -> Sample. Anything wrong with the item (empty instruction, over-long sequence, wrong answer,
non-finite relevance, bad attention) raises `SkipItem` with the reason the manifest records.
"""
from __future__ import annotations

import inspect
import io
from typing import Any, Callable

import numpy as np
import torch

from data_gen.config import DataGenConfig
from data_gen.correctness import is_correct
from data_gen.explainers.ground_truth import attach_ground_truth
from data_gen.images import thumbnail_png
from data_gen.sources.base import Item
from data_gen.writer import safe_key
from predictor.media import cap_pixels, load_image, load_video
from predictor.schema import Sample, make_meta

WRONG = "wrong_answer"  # not a failure: the paper drops wrong answers by design


class SkipItem(Exception):
    """This item produces no sample; `reason` is the tag counted in the summary and manifest."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")



def _source_files_and_meta(item: Item) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The source's `item.extra` -> (extra shard files, JSON metadata). `gt_relevance` (synthetic scenes) and
    array values become `.npy` files; the rest goes into `meta.source_extra`."""
    files: dict[str, bytes] = {}
    meta: dict[str, Any] = {}
    for k, v in item.extra.items():
        if k == "gt_relevance" or isinstance(v, (np.ndarray, torch.Tensor)):
            arr = np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float32)
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            files["gt_rel.npy" if k == "gt_relevance" else f"{safe_key(k)}.npy"] = buf.getvalue()
        else:
            meta[k] = v
    return files, meta


def _load_chat(messages: list[dict], cfg: DataGenConfig) -> tuple[list[dict], Any]:
    """The item's chat with every image part loaded and capped as single images are: (messages, first image)."""
    out, first = [], None
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image" and part.get("image") is not None:
                    part = {**part, "image": cap_pixels(load_image(part["image"]), cfg.max_pixels)}
                    first = part["image"] if first is None else first
                parts.append(part)
            msg = {**msg, "content": parts}
        out.append(msg)
    if first is None:
        raise SkipItem("no_image", "the item's messages hold no image")
    return out, first


def _takes_fps(prepare: Callable) -> bool:
    params = inspect.signature(prepare).parameters.values()
    return any(p.name == "fps" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def process_item(item: Item, key: str, adapter: Any, explainer: Callable, explainer_name: str,
                 cfg: DataGenConfig, stats: dict[str, list]) -> Sample:
    """One item -> one Sample, or raise SkipItem. Appends token counts to `stats`."""
    if not item.instruction or not item.instruction.strip():
        raise SkipItem("empty_instruction", "the instruction is empty")
    video_meta = None
    if item.messages is not None:
        chat, thumb_src = _load_chat(item.messages, cfg)
        prepared = adapter.prepare_messages(chat)
    elif item.modality == "video":
        frames, fps = load_video(item.video, item.fps, cfg.max_pixels, cfg.max_video_pixels)
        video_meta = {"num_frames": len(frames), "fps": fps}
        # the frames' rate times them (Qwen2.5-VL); adapters written before prepare(fps=) are called without it
        timed = fps is not None and _takes_fps(adapter.prepare)
        prepared = adapter.prepare(None, item.instruction, video=frames, **({"fps": fps} if timed else {}))
        thumb_src = frames[0]
    else:
        image = cap_pixels(load_image(item.image), cfg.max_pixels)
        prepared = adapter.prepare(image, item.instruction)
        thumb_src = image
    attach_ground_truth(prepared, item.extra)  # for explainer=ground_truth; other explainers ignore it
    if prepared.seq_len > cfg.max_seq_len:
        raise SkipItem("too_long", f"prompt {prepared.seq_len} tokens > max_seq_len={cfg.max_seq_len}")
    if prepared.instruction_positions.numel() == 0:
        raise SkipItem("empty_instruction", "no instruction tokens after the chat template")

    answer_ids, text = adapter.generate(prepared, max_new_tokens=cfg.max_new_tokens)
    answer_ids = answer_ids.reshape(-1)
    if answer_ids.numel() == 0:
        raise SkipItem("empty_answer", "the model generated no tokens")
    if prepared.seq_len + answer_ids.numel() > cfg.max_seq_len:
        raise SkipItem("too_long", f"prompt + answer {prepared.seq_len + answer_ids.numel()} tokens "
                                   f"> max_seq_len={cfg.max_seq_len}")
    correct = is_correct(text, item.references, cfg.correctness, item.instruction)
    if not correct and not cfg.keep_wrong:
        raise SkipItem(WRONG, f"generated {text[:80]!r}, reference {item.answer[:80]!r}")

    n_v = prepared.num_visual
    rel = explainer(adapter, prepared, answer_ids).detach().float().cpu().reshape(-1)
    if rel.numel() != n_v:
        raise SkipItem("bad_relevance", f"explainer returned {rel.numel()} values for N_v={n_v}")
    if not torch.isfinite(rel).all():
        raise SkipItem("nonfinite_relevance", f"{int((~torch.isfinite(rel)).sum())} of {n_v} values")
    if (rel < 0).any():
        raise SkipItem("negative_relevance", f"min {float(rel.min()):.3g}")
    heads = adapter.layer0_attention(prepared)[0].detach().float().cpu()  # (H, N_v)
    if heads.ndim != 2 or heads.shape[1] != n_v or not torch.isfinite(heads).all():
        raise SkipItem("bad_attention", f"layer-0 attention {tuple(heads.shape)} for N_v={n_v}, or non-finite")

    files, source_meta = _source_files_and_meta(item)
    meta = make_meta(
        model_id=adapter.model_id, adapter=adapter.name, probe_layer=adapter.probe_layer, explainer=explainer_name,
        modality=prepared.modality, grid=list(prepared.grid), segments=prepared.segments,
        instruction=prepared.instruction if item.messages is not None else item.instruction,
        reference_answer=item.answer, generated_answer=text, correct=bool(correct),
        answer_tokens=int(answer_ids.numel()), item_id=item.id, prompt_tokens=prepared.seq_len,
    )
    if meta["segments"] is None:
        del meta["segments"]
    if item.messages is not None:  # which tokens the layer-0 features read, and how long the history was
        meta["instruction_positions"] = [int(i) for i in prepared.instruction_positions]
        meta["user_turns"] = sum(m.get("role") == "user" for m in item.messages)
    if video_meta is not None:
        meta["video"] = video_meta  # the frames the labels were made on: count and rate after sampling
    if source_meta:
        meta["source_extra"] = source_meta
    stats["prompt"].append(prepared.seq_len)
    stats["visual"].append(n_v)
    stats["answer"].append(int(answer_ids.numel()))
    return Sample(key=key, attn=heads.mean(0), relevance=rel, meta=meta,
                  attn_heads=heads if cfg.save_heads else None,
                  thumbnail=thumbnail_png(thumb_src, cfg.thumbnail_size) if cfg.thumbnails else None,
                  extra_files=files)

