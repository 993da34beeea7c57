"""The data generation loop, as plain functions that tests call (`__main__.py` only composes config).

Each item of this rank's slice goes through `data_gen.item.process_item` into the `ShardWriter`. Anything
wrong with one item (bad image, empty instruction, over-long sequence, non-finite relevance, an exception
in the model) skips that item with a reason in the manifest; the run aborts only when the share of such
failures passes `max_failure_rate` after `min_items_for_failure_rate` items.

Under torchrun every rank takes the items with `index % world_size == rank` and writes its own
shards; no process group is needed, so the union of the ranks' output equals a one-process run.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Any, Callable

import torch

from data_gen.build import build_adapter, build_explainer, build_source, dist_env, resolve_model_path
from data_gen.config import DataGenConfig, config_from_options
from data_gen.item import WRONG, SkipItem, process_item
from data_gen.item_keys import duplicate_ids, read_item
from data_gen.labeller import check_same_labeller, labeller_settings
from data_gen.sources.base import Source
from data_gen.summary import Summary
from data_gen.writer import ShardWriter, read_manifests
from predictor.cli import DISK_ERRNOS
from predictor.media import ImageError

log = logging.getLogger(__name__)


class DataGenFailed(RuntimeError):
    """The run stopped on its input or settings (too many failed items, nothing written): a problem the user
    fixes, so `python -m data_gen` ends with its message as one `error:` line, not a traceback."""



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
            key, item, reason, detail = read_item(source, i, dups)
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
    summary.finish(skipped, stats, time.perf_counter() - t0)
    summary.save(cfg.out)
    return summary


def main(model: dict[str, Any], source: dict[str, Any], explainer: dict[str, Any], options: dict[str, Any]) -> Summary:
    """Build everything from plain config dicts and run this process's rank."""
    cfg = config_from_options(options)
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
