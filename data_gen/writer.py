"""Resumable, atomic WebDataset shard writing with a per-rank manifest.

Files in the output folder, per rank r (a torchrun rank, or 0 for a single process):

    shard-r00000-000000.tar        finished shards (only complete tars ever carry this name)
    shard-r00000-000001.tar.tmp    the shard being written; renamed to .tar when complete
    manifest-r00000.jsonl          append-only, fsync'd: one line per finished item
        {"key": ..., "status": "written", "shard": "shard-r00000-000000.tar"}
        {"key": ..., "status": "skipped", "reason": "missing_image", "detail": "..."}

A sample counts as written only once its shard has been renamed and its manifest lines synced.
After a crash (even SIGKILL) the next run with the same `out` deletes this rank's temp shard
(its items are redone), records any complete shard the manifest missed (a crash between rename
and manifest append), and skips every key already in any rank's manifest. So each item ends up
exactly once, written or skipped, whatever the world size of the resumed run.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tarfile
from typing import Any

from predictor.schema import Sample, encode

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def safe_key(item_id: str) -> str:
    """WebDataset key from an item id: no dots (they start the extension) or slashes. Ids that need
    changing get a hash suffix so that two different ids never map to the same key."""
    key = _UNSAFE.sub("_", item_id)
    if key != item_id or not key:
        key = f"{key}-{hashlib.sha1(item_id.encode('utf-8')).hexdigest()[:8]}"
    return key


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform/filesystem
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifests(out: str) -> dict[str, dict[str, Any]]:
    """key -> last manifest record over all ranks' manifests in `out` (torn last lines ignored)."""
    done: dict[str, dict[str, Any]] = {}
    for path in sorted(glob.glob(os.path.join(out, "manifest-r*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill; that item is redone
                if isinstance(rec, dict) and "key" in rec:
                    done[rec["key"]] = rec
    return done


def tar_keys(path: str) -> list[str]:
    """Sample keys in a finished shard, in order."""
    keys: list[str] = []
    with tarfile.open(path) as tf:
        for name in tf.getnames():
            base = os.path.basename(name)
            key = os.path.join(os.path.dirname(name), base.split(".", 1)[0])
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys


class ShardWriter:
    """One rank's shard sequence. Use as a context manager; `close()` finishes the open shard.

    out: output folder; rank: this worker's index (distinct names per rank); shard_size: samples
    per shard. Keys already finished by any rank are in `self.done`.
    """

    def __init__(self, out: str, rank: int = 0, shard_size: int = 500, prefix: str = "shard"):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, found {shard_size}")
        os.makedirs(out, exist_ok=True)
        self.out, self.rank, self.shard_size = out, rank, shard_size
        self.stem = f"{prefix}-r{rank:05d}"
        self.manifest_path = os.path.join(out, f"manifest-r{rank:05d}.jsonl")
        self._tar: tarfile.TarFile | None = None
        self._file = None
        self._pending: list[str] = []  # keys in the open temp shard
        self._recover()
        self.done = read_manifests(out)
        self._manifest = open(self.manifest_path, "a", encoding="utf-8")

    # --- recovery -------------------------------------------------------------------------------
    def _shard_path(self, index: int) -> str:
        return os.path.join(self.out, f"{self.stem}-{index:06d}.tar")

    def _recover(self) -> None:
        for tmp in glob.glob(os.path.join(self.out, f"{self.stem}-*.tar.tmp")):
            os.remove(tmp)  # an unfinished shard: its items are not in the manifest, so they are redone
        if os.path.exists(self.manifest_path):  # cut a line torn by a kill, so appends start clean
            with open(self.manifest_path, "rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        shards = sorted(glob.glob(os.path.join(self.out, f"{self.stem}-*.tar")))
        self._next_index = 1 + max((int(s[-10:-4]) for s in shards), default=-1)
        recorded = {rec.get("shard") for rec in read_manifests(self.out).values()}
        lost = [s for s in shards if os.path.basename(s) not in recorded]
        if lost:  # complete shards whose manifest lines were lost in a crash: record them now
            with open(self.manifest_path, "a", encoding="utf-8") as f:
                for shard in lost:
                    for key in tar_keys(shard):
                        f.write(json.dumps({"key": key, "status": "written", "shard": os.path.basename(shard)}) + "\n")
                f.flush()
                os.fsync(f.fileno())

    # --- writing --------------------------------------------------------------------------------
    def _append(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            self._manifest.write(json.dumps(rec, sort_keys=True) + "\n")
            self.done[rec["key"]] = rec
        self._manifest.flush()
        os.fsync(self._manifest.fileno())

    def is_done(self, key: str) -> bool:
        return key in self.done

    def write(self, sample: Sample) -> None:
        """Add one sample (validated by `schema.encode`) to the open shard."""
        raw = encode(sample)
        if self._tar is None:
            self._file = open(self._shard_path(self._next_index) + ".tmp", "wb")
            self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        key = raw.pop("__key__")
        for ext, data in raw.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), 0o444, 0  # fixed mtime: same input, same tar
            self._tar.addfile(info, _BytesReader(data))
        self._pending.append(key)
        if len(self._pending) >= self.shard_size:
            self.finish_shard()

    def skip(self, key: str, reason: str, detail: str = "") -> None:
        """Record an item that produces no sample, with a short reason tag (and detail text)."""
        self._append([{"key": key, "status": "skipped", "reason": reason, "detail": detail[:500]}])

    def finish_shard(self) -> None:
        """Close, sync and rename the open shard, then record its keys in the manifest."""
        if self._tar is None:
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._shard_path(self._next_index)
        os.replace(final + ".tmp", final)
        _fsync_dir(self.out)
        name = os.path.basename(final)
        self._append([{"key": k, "status": "written", "shard": name} for k in self._pending])
        self._tar, self._file, self._pending = None, None, []
        self._next_index += 1

    def close(self) -> None:
        self.finish_shard()
        self._manifest.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        # on an exception the open shard is finished too: its samples are complete and valid
        self.close()


class _BytesReader:
    """Minimal file-like for tarfile.addfile without copying into BytesIO."""

    def __init__(self, data: bytes):
        self._data, self._pos = memoryview(data), 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        chunk = self._data[self._pos:end].tobytes()
        self._pos = end
        return chunk
