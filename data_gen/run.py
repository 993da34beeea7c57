"""The data generation loop, as plain functions that tests call (`__main__.py` only composes config).

Per item: load image -> adapter.prepare -> generate -> correctness -> explainer relevance and layer-0
attention -> `predictor.schema.Sample` -> `ShardWriter`. Anything wrong with one item (bad image,
empty instruction, over-long sequence, non-finite relevance, an exception in the model) skips that
item with a reason in the manifest; the run aborts only when the share of such failures passes
`max_failure_rate` after `min_items_for_failure_rate` items.

Under torchrun every rank takes the items with `index % world_size == rank` and writes its own
shards; no process group is needed, so the union of the ranks' output equals a one-process run.
"""
from __future__ import annotations

import inspect
import io
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from data_gen.correctness import MODES, is_correct
from data_gen.explainers.ground_truth import attach_ground_truth
from data_gen.images import thumbnail_png
from data_gen.build import (build_adapter, build_explainer, build_source, dist_env, model_fingerprint,
                            resolve_model_path)
from data_gen.settings_guard import check_same_settings
from data_gen.sources.base import Item, Source
from data_gen.writer import ShardWriter, index_key, read_manifests, safe_key
from predictor.cli import DISK_ERRNOS, with_path
from predictor.media import DEFAULT_MAX_PIXELS, ImageError, cap_pixels, load_image, load_video
from predictor.schema import Sample, make_meta
from predictor.versions import versions

log = logging.getLogger(__name__)

WRONG = "wrong_answer"  # not a failure: the paper drops wrong answers by design
RENAMED = {"max_samples": "max_items"}  # old option -> its name now (one name for "first N items", as in eval)


@dataclass
class DataGenConfig:
    """Options of one run (the non-group keys of conf/data_gen.yaml)."""

    out: str = "data/shards/reference"
    max_items: int | None = None  # use the first N source items (None: all); counts items, not written samples
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # images are downscaled to at most this many pixels
    max_video_pixels: int | None = 2 * DEFAULT_MAX_PIXELS  # a clip's frames together (see conf/data_gen.yaml)
    max_seq_len: int = 8192  # prompt + answer tokens; longer items are skipped (reason too_long)
    max_new_tokens: int = 16
    shard_size: int = 500
    save_heads: bool = True  # also store per-head layer-0 attention (H, N_v): the default predictor reads it
    thumbnails: bool = True
    thumbnail_size: int = 96
    correctness: str = "auto"  # see data_gen/correctness.py
    keep_wrong: bool = False  # write wrong answers too, with meta.correct = false
    max_failure_rate: float = 0.5
    min_items_for_failure_rate: int = 50
    retry_errors: bool = False  # redo items skipped earlier because of an exception (e.g. CUDA OOM)
    allow_version_change: bool = False  # resume a folder labelled under another torch/transformers version
    progress: bool = True

    def __post_init__(self) -> None:
        if self.correctness not in MODES:
            raise ValueError(f"correctness={self.correctness!r}: expected one of {', '.join(MODES)}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError(f"max_failure_rate={self.max_failure_rate}: expected a fraction in [0, 1]")


class DataGenFailed(RuntimeError):
    """The run stopped on its input or settings (too many failed items, nothing written): a problem the user
    fixes, so `python -m data_gen` ends with its message as one `error:` line, not a traceback."""


class SkipItem(Exception):
    """This item produces no sample; `reason` is the tag counted in the summary and manifest."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@dataclass
class Summary:
    rank: int = 0
    world_size: int = 1
    items: int = 0  # items of this rank's slice
    already_done: int = 0  # finished by an earlier run (resume)
    processed: int = 0  # handled in this run
    written: int = 0
    wrong_answers: int = 0  # skipped because wrong (or written with correct=false when keep_wrong)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, wrong answers excluded
    prompt_tokens_per_sample: float = 0.0
    visual_tokens_per_sample: float = 0.0
    answer_tokens_per_sample: float = 0.0
    seconds_per_sample: float = 0.0  # wall time of this run / samples written
    seconds: float = 0.0

    def text(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"rank {self.rank}/{self.world_size}: {self.written} written, {self.wrong_answers} wrong answers, "
                f"skipped: {skipped}; {self.already_done} already done before this run; "
                f"tokens/sample: prompt {self.prompt_tokens_per_sample:.0f}, visual {self.visual_tokens_per_sample:.0f}, "
                f"answer {self.answer_tokens_per_sample:.1f}; {self.seconds_per_sample:.3f} s/sample "
                f"({self.seconds:.1f} s)")


def check_same_labeller(out: str, labeller: dict[str, Any], allow_version_change: bool = False) -> None:
    """Resuming into `out` is only safe with the labeller that made its samples: the model, explainer
    and every option that changes a label or which items are kept (see `labeller_settings`). Recorded
    in `out/labeller.json` on the first run; later runs raise ValueError if they differ. The weights'
    fingerprint, not the model path string, says whether the model is the same one; torch and transformers
    must be the same releases unless `allow_version_change`."""
    check_same_settings(Path(out) / "labeller.json", labeller, ignore=("model",),
                        why="Its samples were labelled another way, and resuming would mix labels.",
                        allow_version_change=allow_version_change)


def labeller_settings(model: dict[str, Any], model_dir: str, adapter_name: str, explainer: dict[str, Any],
                      cfg: DataGenConfig) -> dict[str, Any]:
    """What makes a label: the model's weights and numerics, the explainer, the image size (token
    count), the answer length (the relevance is of the generated answer), which answers are kept, and the
    torch / transformers releases that computed it (predictor.versions)."""
    return {"versions": versions(), "adapter": adapter_name, "model": str(model["path"]), "model_fingerprint": model_fingerprint(model_dir),
            "dtype": model.get("dtype"), "attn_implementation": model.get("attn_implementation"),
            # gae's chunk sets memory, not labels (batched and per-token backward agree to ~1e-6)
            "explainer": {k: v for k, v in explainer.items() if k != "chunk"},
            "max_pixels": cfg.max_pixels, "max_video_pixels": cfg.max_video_pixels, "max_new_tokens": cfg.max_new_tokens,
            "correctness": cfg.correctness, "keep_wrong": cfg.keep_wrong, "save_heads": cfg.save_heads}


# --- one item ------------------------------------------------------------------------------------
def _extras(item: Item, n_v: int) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Source extras -> (extra shard files, JSON metadata). `gt_relevance` (synthetic scenes) and
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


def _takes_fps(prepare: Callable) -> bool:
    params = inspect.signature(prepare).parameters.values()
    return any(p.name == "fps" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def process_item(item: Item, key: str, adapter: Any, explainer: Callable, explainer_name: str,
                 cfg: DataGenConfig, stats: dict[str, list]) -> Sample:
    """One item -> one Sample, or raise SkipItem. Appends token counts to `stats`."""
    if not item.instruction or not item.instruction.strip():
        raise SkipItem("empty_instruction", "the instruction is empty")
    video_meta = None
    if item.modality == "video":
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

    files, source_meta = _extras(item, n_v)
    meta = make_meta(
        model_id=adapter.model_id, adapter=adapter.name, explainer=explainer_name, modality=prepared.modality,
        grid=list(prepared.grid), segments=prepared.segments, instruction=item.instruction,
        reference_answer=item.answer, generated_answer=text, correct=bool(correct),
        answer_tokens=int(answer_ids.numel()), item_id=item.id, prompt_tokens=prepared.seq_len,
    )
    if meta["segments"] is None:
        del meta["segments"]
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
                  extra=files)


# --- the loop ------------------------------------------------------------------------------------
def duplicate_ids(source: Source, n: int, progress: bool = False) -> dict[int, int]:
    """{index: index of the first item with the same key} for items 0..n-1 whose id repeats an earlier
    one's. Every rank computes the same map, so the first copy wins whatever the world size. Sources
    whose ids are unique by construction (`unique_ids = True`) are not scanned."""
    if getattr(source, "unique_ids", False):
        return {}
    from tqdm import tqdm

    item_id = getattr(source, "item_id", None) or (lambda i: source[i].id)  # a duck-typed source
    first: dict[str, int] = {}
    dups: dict[int, int] = {}
    for i in tqdm(range(n), desc="checking item ids", unit="item", disable=not progress or n < 10_000):
        try:
            key = safe_key(item_id(i))
        except Exception:  # a malformed record: the loop records it as bad_item
            continue
        j = first.setdefault(key, i)
        if j != i:
            dups[i] = j
    return dups


def identify(source: Source, i: int, dups: dict[int, int]) -> tuple[str, Item | None, str | None, str]:
    """Item i -> (manifest key, item or None, skip reason or None, detail). A malformed record is keyed
    by its index, which is stable for the source; a repeated id by its key and index ('#' never occurs
    in a sample key), so that its skip line never stands for the first copy's sample."""
    try:
        item = source[i]
        key = safe_key(item.id)
    except Exception as e:
        return index_key(i), None, "bad_item", f"{type(e).__name__}: {e}"
    if i in dups:
        return (f"{key}#{i}", None, "duplicate_id",
                f"id {item.id!r} is also item {dups[i]}'s, which is the one labelled; give every item its own id")
    return key, item, None, ""


def run(cfg: DataGenConfig, source: Source, adapter: Any, explainer: Callable, explainer_name: str,
        rank: int = 0, world_size: int = 1) -> Summary:
    """Process this rank's slice of `source` into shards under `cfg.out`; returns (and writes
    `summary-r<rank>.json`) the run summary. Raises RuntimeError past the failure rate."""
    from tqdm import tqdm

    n = len(source) if cfg.max_items is None else min(len(source), cfg.max_items)
    indices = range(rank, n, world_size)
    summary = Summary(rank=rank, world_size=world_size, items=len(indices))
    skipped: Counter[str] = Counter()
    stats: dict[str, list] = {"prompt": [], "visual": [], "answer": []}
    failures = 0
    t0 = time.perf_counter()
    dups = duplicate_ids(source, n, progress=cfg.progress and rank == 0)
    with ShardWriter(cfg.out, rank=rank, shard_size=cfg.shard_size) as writer:
        if cfg.retry_errors:
            for k in [k for k, r in writer.done.items() if str(r.get("reason", "")).startswith("error:")]:
                del writer.done[k]
        bar = tqdm(indices, desc=f"data_gen rank {rank}", unit="item", disable=not cfg.progress or rank != 0,
                   dynamic_ncols=True)
        for i in bar:
            key, item, reason, detail = identify(source, i, dups)
            if writer.is_done(key):
                summary.already_done += 1
                continue
            if item is not None:
                try:
                    sample = process_item(item, key, adapter, explainer, explainer_name, cfg, stats)
                except SkipItem as e:
                    reason, detail = e.reason, e.detail
                except ImageError as e:
                    reason, detail = e.reason, str(e)
                except OSError as e:
                    if e.errno in DISK_ERRNOS:  # our disk, not this item: stop (the run resumes later)
                        raise
                    reason, detail = f"error:{type(e).__name__}", str(e)
                except Exception as e:  # a model-side failure on this input: skip it, keep going
                    reason, detail = f"error:{type(e).__name__}", str(e)
                    log.warning("item %s failed", item.id, exc_info=failures < 3)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                else:
                    writer.write(sample, index=i)
                    summary.written += 1
                    summary.wrong_answers += int(not sample.meta["correct"])
            summary.processed += 1
            if reason is not None:
                writer.skip(key, reason, detail, index=i)
                if reason == WRONG:
                    summary.wrong_answers += 1
                else:
                    skipped[reason] += 1
                    failures += 1
            bar.set_postfix(written=summary.written, wrong=summary.wrong_answers, skipped=failures, refresh=False)
            if summary.processed >= cfg.min_items_for_failure_rate and failures / summary.processed > cfg.max_failure_rate:
                top = ", ".join(f"{k} {v}" for k, v in skipped.most_common(5))
                raise DataGenFailed(
                    f"data_gen aborted: {failures} of {summary.processed} items failed "
                    f"(> max_failure_rate={cfg.max_failure_rate}); reasons: {top}; last: {detail[:300]}. "
                    f"Details are in {writer.manifest_path}. Fix the input or model config, or raise "
                    f"max_failure_rate; re-running the same command resumes (retry_errors=true redoes errors).")
        bar.close()
    summary.skipped = dict(skipped)
    summary.seconds = time.perf_counter() - t0
    for name, values in stats.items():
        setattr(summary, f"{name}_tokens_per_sample", float(np.mean(values)) if values else 0.0)
    summary.seconds_per_sample = summary.seconds / max(1, summary.written)
    path = os.path.join(cfg.out, f"summary-r{rank:05d}.json")
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(asdict(summary), f, indent=2)
    except OSError as e:
        raise with_path(e, path) from e
    return summary


def main(model: dict[str, Any], source: dict[str, Any], explainer: dict[str, Any], options: dict[str, Any]) -> Summary:
    """Build everything from plain config dicts and run this process's rank."""
    known = set(DataGenConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        renamed = "".join(f" ({k} is now {RENAMED[k]})" for k in unknown if k in RENAMED)
        raise KeyError(f"unknown data_gen option(s) {unknown}{renamed}; available: {', '.join(sorted(known))}")
    cfg = DataGenConfig(**options)
    rank, world, local_rank = dist_env()
    torch.manual_seed(0)
    model_dir = resolve_model_path(str(model["path"]))  # a missing model fails before the source is read
    adapter = build_adapter(model, local_rank)
    src = build_source(source, adapter)  # synthetic sources draw in the model's visual-token cells
    expl, expl_name = build_explainer(explainer)
    if hasattr(expl, "check_source"):  # e.g. ground_truth refuses a source that has none
        expl.check_source(src)
    check_same_labeller(cfg.out, labeller_settings(model, model_dir, adapter.name, explainer, cfg),
                        cfg.allow_version_change)
    summary = run(cfg, src, adapter, expl, expl_name, rank=rank, world_size=world)
    # once: Hydra's console log handler would repeat a log.info of it; ends with where the shards are
    print(f"{summary.text()} -> {cfg.out}/", flush=True)
    if world == 1:  # under torchrun another rank may not have committed its shards yet, and a rank that
        check_written(cfg.out, summary.items)  # fails would stop the others mid-run
    return summary


def check_written(out: str, items: int) -> None:
    """DataGenFailed unless `out` holds at least one written sample (from this run or an earlier one): a
    folder of skipped items only is no data set, and `train.py` would only find that out later."""
    done = read_manifests(out)
    if any(rec.get("status") == "written" for rec in done.values()):
        return
    reasons = Counter(str(rec.get("reason")) for rec in done.values())
    why = ", ".join(f"{k} {v}" for k, v in reasons.most_common(5)) or "none recorded"
    raise DataGenFailed(
        f"nothing was written to {out}: no item gave a sample ({items} items; reasons: {why}; each "
        f"item's is in {os.path.join(out, 'manifest-r*.jsonl')}). Fix the input (a model that answers wrongly: "
        f"correctness=none or keep_wrong=true) and write to a new out=: skipped items are not redone in this "
        f"folder (retry_errors=true redoes those that failed with an error).")
