"""Indexing streamed shards: one pass over every sample's key and meta.json, never its arrays (local tars
seek over them; a URL is read once), so that each epoch can be planned (`epochs.plan_epoch`) and the data
summarised before any array is decoded."""
from __future__ import annotations

import json
import logging
import math
import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from predictor.schema import EXT_META, meta_value
from predictor.split import is_val_key
from predictor.training.datamodule import SUMMARY_META
from predictor.training.shards import corrupt_shard, group_members
from predictor.training.tar_stream import meta_members

log = logging.getLogger(__name__)


@dataclass
class ShardIndex:
    url: str
    train: int = 0
    val: int = 0
    n_v: list[int] = field(default_factory=list)  # [min, max, sum] over the kept samples
    meta: dict[str, Counter] = field(default_factory=dict)  # model_id, adapter, ... over the kept samples
    modalities: Counter = field(default_factory=Counter)  # over all samples (data.modality filters the rest)
    corrupt: str | None = None


def index_shard(url: str, val_fraction: float, modality: str | None, split: str | None) -> ShardIndex:
    """Count the samples of one shard by split (split "train"/"val": all samples in that split; None: by
    key hash). Samples whose meta.json is unreadable are left out (decoding skips and counts them)."""
    idx = ShardIndex(url, meta={k: Counter() for k in SUMMARY_META})
    seen: set[str] = set()
    try:
        for raw in group_members(meta_members(url), url):
            key = raw["__key__"]
            if key in seen:
                continue
            seen.add(key)
            try:
                meta = json.loads(raw[EXT_META])
                n_v = math.prod(int(g) for g in meta["grid"])
            except Exception:  # noqa: BLE001 (decode names the fault when the sample is streamed)
                continue
            idx.modalities[meta.get("modality")] += 1
            if modality is not None and meta.get("modality") != modality:
                continue
            for k in SUMMARY_META:
                idx.meta[k][meta_value(meta, k)] += 1
            is_val = split == "val" if split else is_val_key(key, val_fraction)
            idx.val += is_val
            idx.train += not is_val
            idx.n_v = [min(idx.n_v[0], n_v), max(idx.n_v[1], n_v), idx.n_v[2] + n_v] if idx.n_v else [n_v] * 3
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        idx.corrupt = f"{type(e).__name__}: {e}"
    return idx


def index_shards(urls: list[str], val_fraction: float, modality: str | None, split: str | None,
                 strict: bool) -> list[ShardIndex]:
    """`index_shard` of each, in order; a corrupt one is warned about (strict: raised)."""
    with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:  # I/O bound (URLs, cold disks)
        out = list(pool.map(lambda u: index_shard(u, val_fraction, modality, split), urls))
    bad = [ix for ix in out if ix.corrupt]
    if bad and strict:
        raise corrupt_shard(bad[0].url, bad[0].corrupt)
    for ix in bad:
        log.warning("skipping corrupt shard %s (%s)", ix.url, ix.corrupt)
    return out
