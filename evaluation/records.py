"""The per-item records of an evaluation (`out/items-*.jsonl`): one JSON line per finished item, fsync'd
before the next item starts, so that a killed evaluation resumes where it stopped.

A record is {"i", "id", "num_visual", "rows": {method: {keep: {...}}}, "swap"?} (see
`evaluation.items`), or {"i", "id", "skipped": reason, "detail"} for an item that cannot be read.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from data_gen.writer import index_key
from predictor.media import ImageError

log = logging.getLogger(__name__)


def read_records(path: Path) -> dict[int, dict[str, Any]]:
    """Finished items of an earlier, interrupted run: {item index: record}. A line cut short by a kill
    (or otherwise unreadable) is ignored, so that item is simply evaluated again."""
    done: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return done
    bad = 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            done[int(rec["i"])] = rec
        except (ValueError, KeyError, TypeError):
            bad += 1
    if bad:
        log.warning("%s: ignored %d unreadable line(s); those items are evaluated again", path, bad)
    return done


def item_id(source, i: int) -> str:
    """Item i's id, or data_gen's index key for a record that cannot be read."""
    try:
        return source[i].id
    except Exception:
        return index_key(i)


def skipped_record(i: int, key: str, e: Exception) -> dict[str, Any]:
    """The record of an item that cannot be evaluated: the reason is an ImageError's tag, or bad_item
    for a record the source cannot read (data_gen's reasons)."""
    reason = e.reason if isinstance(e, ImageError) else "bad_item"
    detail = str(e) if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
    log.warning("item %d (%s) skipped: %s", i, key, detail)
    return {"i": i, "id": key, "skipped": reason, "detail": detail[:500]}


def skipped_summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """-> {n, of, reasons: {reason: count}, items: [{i, id, reason, detail}]} over the skipped records."""
    bad = [r for r in recs if "skipped" in r]
    return {"n": len(bad), "of": len(recs), "reasons": dict(Counter(r["skipped"] for r in bad)),
            "items": [{"i": r["i"], "id": r["id"], "reason": r["skipped"], "detail": r["detail"]} for r in bad]}


def skipped_line(summary: dict[str, Any], records: str) -> str:
    if not summary["n"]:
        return ""
    why = ", ".join(f"{k} {v}" for k, v in sorted(summary["reasons"].items()))
    return (f"\nskipped {summary['n']} of {summary['of']} items ({why}); each item's reason is in results.json "
            f"and {records}\n")


def append_record(path: Path, rec: dict[str, Any]) -> None:
    """One finished item, on disk before the next one starts."""
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def resume(path: Path, source, n: int, desc: str) -> dict[int, dict[str, Any]]:
    """The records already in `path` (an interrupted run), checked against the source: the data behind
    it may have changed under the same settings. Rewrites the file without a line cut short by a kill."""
    done = read_records(path)
    if not done:
        return done
    log.info("%s: resuming, %d of %d items already evaluated (%s)", desc, sum(i < n for i in done), n, path)
    last = max(done)
    if last < len(source) and item_id(source, last) != done[last]["id"]:
        raise ValueError(f"{path} was made from other data: its item {last} is {done[last]['id']!r}, the "
                         f"source's item {last} is now {item_id(source, last)!r}. Write to a new folder (out=...), "
                         f"or delete {path} to evaluate these items again.")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
    os.replace(tmp, path)
    return done
