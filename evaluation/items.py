"""Pruned generation, item by item: every method at every keep ratio on one item -> one record.

A record is {"i", "id", "num_visual", "rows": {method: {keep: {"answer", "correct", "visual_tokens",
"object_kept", "prefill_s", "kv_bytes"}}}, "swap"?: {method: {"changed", "own", "swap"}}}, or a
skipped record (`evaluation.records.skipped_record`). object_kept: whether the token with the most
ground-truth relevance survived (sources with `extra.gt_relevance`, e.g. synthetic scenes; None
without it, and for downsampling, which keeps no tokens of the original grid). correct: true/false, or
under correctness=vqa the answer's soft accuracy in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evaluation.aggregate import aggregate
from data_gen.writer import index_key
from evaluation.records import append_record, resume, skipped_record
from predictor.media import DEFAULT_MAX_PIXELS, ImageError, cap_pixels, load_image, load_video


@dataclass
class ItemSettings:
    """How each item is evaluated (the per-item part of `evaluation.EvalSettings`)."""

    max_new_tokens: int = 16
    correctness: str = "auto"
    timing: bool = True  # prefill time and KV-cache size per method and keep
    swap_keep: float | None = None  # the instruction-swap check at this keep ratio (items with `extra.swap`)
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # images (and each video frame) downscaled first, as data_gen does
    max_video_pixels: int | None = 2 * DEFAULT_MAX_PIXELS  # a clip's frames together (data_gen's default)
    figures: int = 0  # the first N items get an image with the kept tokens (keep 0.25) in figures_dir
    figures_dir: Path | None = None


@dataclass
class Media:
    """One item's picture: an image, or a clip's frames and their rate."""

    image: Any = None
    frames: list | None = None
    fps: float | None = None

    def prepare(self, adapter, instruction: str):
        if self.frames is None:
            return adapter.prepare(self.image, instruction)
        return adapter.prepare(None, instruction, video=self.frames, fps=self.fps)

    def downsampled(self, keep: float) -> "Media":
        """The downsampling baseline: a smaller image, or a clip with fewer and smaller frames."""
        from predictor.runtime import downsample_image, downsample_video

        if self.frames is None:
            return Media(image=downsample_image(self.image, keep))
        return Media(None, *downsample_video(self.frames, self.fps, keep))

    @property
    def first(self):
        """The image, or the first frame (figures)."""
        return self.image if self.frames is None else self.frames[0]


def load_media(item, s: ItemSettings) -> Media:
    """An item's image or video, capped as data_gen caps it (so pruning runs at the labels' token count)."""
    if getattr(item, "messages", None) is not None:  # evaluated as its first image alone, it would be the wrong prompt
        raise ValueError(f"item {item.id!r} is a chat (several images or earlier turns); eval.py evaluates one image "
                         f"or video per item: measure such prompts with benchmarks/bench_multi_prompt.py, or pick "
                         f"source.mode=single")
    if item.modality == "video":
        frames, fps = load_video(item.video, item.fps, s.max_pixels, s.max_video_pixels)
        return Media(frames=frames, fps=fps)
    return Media(image=cap_pixels(load_image(item.image), s.max_pixels))


class ItemEvaluator:
    """Evaluates items of one source with one adapter and a fixed set of methods and keep ratios.

    methods: {name: selection method from predictor.runtime.make_method, or None for downsampling}.
    """

    def __init__(self, adapter, source, methods: dict[str, Any], keeps: list[float], settings: ItemSettings,
                 desc: str = "eval"):
        self.adapter, self.source, self.methods, self.s, self.desc = adapter, source, methods, settings, desc
        self.keeps = [k for k in sorted({float(k) for k in keeps}, reverse=True) if k < 1.0]

    # --- pieces -------------------------------------------------------------------------------------
    def _context(self, media: Media, instruction: str, gt_extra: dict[str, Any], i: int):
        """-> (score context, the ground truth's main token in gt_extra or None)"""
        from data_gen.explainers.ground_truth import attach_ground_truth
        from predictor.runtime import make_context

        prepared = media.prepare(self.adapter, instruction)
        attach_ground_truth(prepared, gt_extra)  # the oracle may be explainer=ground_truth
        ctx = make_context(self.adapter, prepared)
        ctx.item = i
        gt = gt_extra.get("gt_relevance")
        ok = gt is not None and len(gt) == prepared.num_visual
        return ctx, (int(torch.as_tensor(gt).argmax()) if ok else None)

    def _generate(self, ctx, method, keep: float):
        """-> (answer ids, selection, (prefill seconds, KV bytes) or None)"""
        from predictor.runtime import deepstack_batch, left_pad, prefill, prune_context

        pp, sel = prune_context(ctx, method, keep=keep)
        ids = self.adapter.generate_from_embeds(*left_pad([pp]), max_new_tokens=self.s.max_new_tokens,
                                                deepstack=deepstack_batch([pp]))[0]
        pre = prefill(self.adapter, pp, repeats=2) if self.s.timing else None  # best of 2: CPU timings are noisy
        return ids, sel, pre

    def _row(self, item, ids, n_kept: int, pre, kept: torch.Tensor | None, main: int | None) -> dict[str, Any]:
        from data_gen.correctness import score

        text = self.adapter.decode_answer(ids)
        credit = score(text, item.references, self.s.correctness, item.instruction)
        # vqa's soft accuracy stays a fraction (accuracy is its mean); the other modes record true/false
        return {"answer": text, "correct": credit if self.s.correctness == "vqa" else credit > 0,
                "visual_tokens": int(n_kept),
                "object_kept": bool(kept[main]) if kept is not None and main is not None else None,
                "prefill_s": pre[0] if pre else None, "kv_bytes": pre[1] if pre else None}

    def _swap(self, ctx, main: int, media: Media, other: dict[str, Any], i: int) -> dict[str, Any] | None:
        """The same image, another object named: does each method's kept set follow the question?"""
        from predictor.metrics import instruction_swap
        from predictor.runtime import prune_context

        ctx_b, main_b = self._context(media, other["instruction"], other, i)
        if main_b is None:
            return None
        out = {}
        for name, method in self.methods.items():
            if method is None:  # downsampling keeps no tokens of the original grid
                continue
            kept = [prune_context(c, method, keep=self.s.swap_keep)[1].kept.cpu()[None] for c in (ctx, ctx_b)]
            check = instruction_swap(*kept, torch.tensor([main]), torch.tensor([main_b]))
            out[name] = {k: bool(v[0]) for k, v in check.items()}
        return out

    # --- one item -----------------------------------------------------------------------------------
    def evaluate(self, i: int) -> dict[str, Any]:
        """Item i -> its record (see the module docstring)."""
        from predictor.runtime import make_context
        from predictor.runtime.report import kept_overlay

        try:
            item = self.source[i]
        except Exception as e:  # a record the source cannot read
            return skipped_record(i, index_key(i), e)
        try:
            media = load_media(item, self.s)
        except ImageError as e:
            return skipped_record(i, item.id, e)
        extra = item.extra if isinstance(item.extra, dict) else {}
        ctx, main = self._context(media, item.instruction, extra, i)
        n_v = ctx.prepared.num_visual
        full_ids, _, pre = self._generate(ctx, None, 1.0)
        ctx.answer_ids = full_ids

        rows: dict[str, dict[str, dict[str, Any]]] = {}
        kept_fig: dict[str, torch.Tensor] = {}
        for name, method in self.methods.items():
            rows[name] = {"1": self._row(item, full_ids, n_v, pre, torch.ones(n_v, dtype=torch.bool), main)}
            for keep in self.keeps:
                if method is None:  # downsampling: a smaller image (fewer, smaller frames), the model unpruned
                    p_ds = media.downsampled(keep).prepare(self.adapter, item.instruction)
                    ids, _, pre_k = self._generate(make_context(self.adapter, p_ds), None, 1.0)
                    n_kept, kept = p_ds.num_visual, None
                else:
                    ids, sel, pre_k = self._generate(ctx, method, keep)
                    n_kept, kept = int(sel.kept.sum()), sel.kept.cpu()
                    if keep == 0.25:
                        kept_fig[name] = kept
                rows[name][f"{keep:g}"] = self._row(item, ids, n_kept, pre_k, kept, main)
        if self.s.figures_dir is not None and i < self.s.figures and kept_fig:
            self.s.figures_dir.mkdir(parents=True, exist_ok=True)
            kept_overlay(media.first, ctx.prepared.grid, kept_fig, self.s.figures_dir / f"{self.desc}-{i:03d}.png",
                         title=f"{item.instruction} -> {item.answer} (keep 0.25)", token_px=self.adapter.token_px,
                         correct={m: bool(rows[m]["0.25"]["correct"]) for m in kept_fig})
        rec = {"i": i, "id": item.id, "num_visual": n_v, "rows": rows}
        other = extra.get("swap")
        if self.s.swap_keep is not None and other is not None and main is not None:
            swap = self._swap(ctx, main, media, other, i)
            if swap is not None:
                rec["swap"] = swap
        return rec


def evaluate_records(adapter, source, methods: dict[str, Any], keeps: list[float], max_items: int,
                     settings: ItemSettings | None = None, records: Path | None = None, desc: str = "eval",
                     progress: bool = True) -> list[dict[str, Any]]:
    """The records of the first `max_items` items of `source`. With `records` (a JSON-lines file), every
    finished item is appended there and the items already in it are not run again, so a killed
    evaluation resumes where it stopped (the caller checks that the settings match)."""
    from tqdm.auto import tqdm

    n = min(max_items, len(source))
    if n == 0:
        raise ValueError("the source has no items to evaluate; check source.* and max_items")
    done = resume(records, source, n, desc) if records is not None else {}
    evaluator = ItemEvaluator(adapter, source, methods, keeps, settings or ItemSettings(), desc)
    todo = [i for i in range(n) if i not in done]
    with tqdm(total=n, initial=n - len(todo), desc=desc, unit="item", disable=not progress) as bar:
        for i in todo:
            done[i] = evaluator.evaluate(i)
            if records is not None:
                append_record(records, done[i])
            bar.update()
    return [done[i] for i in range(n)]


def evaluate_items(adapter, source, methods: dict[str, Any], keeps: list[float], max_items: int,
                   settings: ItemSettings | None = None, **kwargs: Any) -> dict[str, dict[str, dict[str, float]]]:
    """`evaluate_records` aggregated: {method: {str(keep): means over the items}} (see `aggregate`)."""
    settings = settings or ItemSettings()
    recs = evaluate_records(adapter, source, methods, keeps, max_items, settings, **kwargs)
    return aggregate(recs, list(methods), sorted({float(k) for k in keeps}, reverse=True), settings.timing)
