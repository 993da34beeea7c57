"""Resumable, atomic WebDataset shard writing with a per-rank manifest and a per-rank lock.

Files in the output folder, per rank r (a torchrun rank, or 0 for a single process):

    shard-r00000-000000.tar        finished shards (only complete tars ever carry this name)
    shard-r00000-000001.tar.tmp    the shard being written; renamed to .tar when complete
    manifest-r00000.jsonl          append-only, fsync'd: one line per finished item, one per shard
        {"key": ..., "status": "written", "shard": "shard-r00000-000000.tar", "index": 12}
        {"key": ..., "status": "skipped", "reason": "missing_image", "detail": "...", "index": 13}
        {"status": "shard", "shard": "shard-r00000-000000.tar", "count": 500}
    .lock-r00000                   held while a process writes this rank (data_gen/lock.py)

A shard is committed as a unit: its tar is synced under the temporary name, then all of its
manifest lines (the keys and a closing "shard" line) are appended and synced, and only then is it
renamed into place. A "written" line counts only while its shard exists under its final name, so a
crash (or a full disk) anywhere in that sequence leaves either a finished shard with every line
recorded, or no shard and lines that count for nothing: the next run with the same `out` deletes
this rank's temp shard and redoes its items under a new shard name (names are never reused).
A tar without manifest lines is not a finished shard (this sequence never leaves one), and starting
up looks at no other rank's tars: another rank may commit a shard at any moment, and taking one for
such a tar recorded its keys twice. Each item thus ends up exactly once, written or skipped, whatever
the world size of the resumed run; a second process on the same rank is refused while the first one lives.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tarfile
from typing import Any

from webdataset import TarWriter

from data_gen.lock import WriterLock
from predictor.cli import with_path
from predictor.schema import Sample, encode

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def safe_key(item_id: str) -> str:
    """WebDataset key from an item id: no dots (they start the extension) or slashes. Ids that need
    changing get a hash suffix so that two different ids never map to the same key."""
    key = _UNSAFE.sub("_", item_id)
    if key != item_id or not key:
        key = f"{key}-{hashlib.sha1(item_id.encode('utf-8')).hexdigest()[:8]}"
    return key


def index_key(i: int) -> str:
    """The key of source item i when its record cannot be read (no id): stable for the source."""
    return f"index-{i:09d}"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform/filesystem
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _records(out: str) -> list[dict[str, Any]]:
    """Every readable manifest line of every rank in `out`, in file order (torn lines skipped)."""
    recs: list[dict[str, Any]] = []
    for path in sorted(glob.glob(os.path.join(out, "manifest-r*.jsonl"))):
        with open(path, "rb") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue  # a line torn by a kill or a full disk; its item is redone
                if isinstance(rec, dict):
                    recs.append(rec)
    return recs


def _valid(records: list[dict[str, Any]], out: str) -> dict[str, dict[str, Any]]:
    """key -> last record that counts: skipped items, and written items whose shard exists."""
    exists: dict[str, bool] = {}
    done: dict[str, dict[str, Any]] = {}
    for rec in records:
        if "key" not in rec:
            continue
        if rec.get("status") == "written":
            shard = str(rec.get("shard"))
            if shard not in exists:
                exists[shard] = os.path.isfile(os.path.join(out, shard))
            if not exists[shard]:
                continue  # its shard was never renamed into place: the item is redone
        done[rec["key"]] = rec
    return done


def read_manifests(out: str) -> dict[str, dict[str, Any]]:
    """key -> the record that counts for it, over all ranks' manifests in `out` (see module docstring)."""
    return _valid(_records(out), out)


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


def _shard_index(name: str) -> int:
    return int(re.sub(r"\.tar(\.tmp)?$", "", name)[-6:])


class ShardWriter:
    """One rank's shard sequence. Use as a context manager; `close()` finishes the open shard.

    Each tar is written by webdataset's `TarWriter`; its `ShardWriter` is not used because it names and closes
    shards itself, with no temporary name, manifest or resume, which are the commit sequence above.

    out: output folder; rank: this worker's index (distinct names per rank); shard_size: samples
    per shard. Keys already finished by any rank are in `self.done`. Raises `FolderInUse` when
    another live process writes this rank of `out`.
    """

    def __init__(self, out: str, rank: int = 0, shard_size: int = 500, prefix: str = "shard"):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, found {shard_size}")
        os.makedirs(out, exist_ok=True)
        self.out, self.rank, self.shard_size = out, rank, shard_size
        self.stem = f"{prefix}-r{rank:05d}"
        self.manifest_path = os.path.join(out, f"manifest-r{rank:05d}.jsonl")
        self._lock = WriterLock(os.path.join(out, f".lock-r{rank:05d}"), f"{out} (rank {rank})").acquire()
        self._tar: TarWriter | None = None
        self._file = None
        self._manifest = None
        self._pending: dict[str, int | None] = {}  # key -> source index, of the samples in the open temp shard
        try:
            self._recover()
            self.done = read_manifests(out)
            self._manifest = open(self.manifest_path, "a", encoding="utf-8")
        except BaseException:
            self._lock.release()
            raise

    # --- recovery -------------------------------------------------------------------------------
    def _shard_path(self, index: int) -> str:
        return os.path.join(self.out, f"{self.stem}-{index:06d}.tar")

    def _recover(self) -> None:
        for tmp in glob.glob(os.path.join(self.out, f"{self.stem}-*.tar.tmp")):
            os.remove(tmp)  # an unfinished shard: its lines (if any) count for nothing, its items are redone
        if os.path.exists(self.manifest_path):  # cut a line torn by a kill, so appends start clean
            with open(self.manifest_path, "rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        # never reuse a name that a manifest line mentions: a line of a shard that was not renamed must
        # not come to describe another shard. Only this rank's names count, and only this process (it holds
        # the rank's lock) makes them, so other ranks committing shards meanwhile change nothing here.
        mine = [str(rec["shard"]) for rec in _records(self.out) if str(rec.get("shard", "")).startswith(self.stem)]
        shards = glob.glob(os.path.join(self.out, f"{self.stem}-*.tar"))
        self._next_index = 1 + max([_shard_index(os.path.basename(s)) for s in shards]
                                   + [_shard_index(m) for m in mine], default=-1)

    # --- writing --------------------------------------------------------------------------------
    def _append(self, records: list[dict[str, Any]]) -> None:
        try:
            self._manifest.write("".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records))
            self._manifest.flush()
            os.fsync(self._manifest.fileno())
        except OSError as e:  # e.g. a full disk: say which file
            raise with_path(e, self.manifest_path) from e

    def is_done(self, key: str) -> bool:
        return key in self.done

    def holds(self, key: str) -> bool:
        """Whether `key` is finished or waiting in the open shard."""
        return key in self.done or key in self._pending

    def write(self, sample: Sample, index: int | None = None) -> None:
        """Add one sample (validated by `schema.encode`) to the open shard; `index`: its source index."""
        if self.holds(sample.key):  # one key twice would make the shard unreadable for every sample in it
            raise ValueError(f"sample key {sample.key!r} is already written in {self.out}; "
                             "every item needs a distinct id")
        raw = encode(sample)
        tmp = self._shard_path(self._next_index) + ".tmp"
        try:
            if self._tar is None:
                # we open the file so that finish_shard can fsync it before the rename; fixed mtime: same input,
                # same tar; encoder=False: schema.encode already made the bytes
                self._file = open(tmp, "wb")
                self._tar = TarWriter(self._file, encoder=False, mtime=0)
            self._tar.write(raw)
        except OSError as e:
            raise with_path(e, tmp) from e
        self._pending[sample.key] = index
        if len(self._pending) >= self.shard_size:
            self.finish_shard()

    def skip(self, key: str, reason: str, detail: str = "", index: int | None = None) -> None:
        """Record an item that produces no sample, with a short reason tag (and detail text)."""
        rec = {"key": key, "status": "skipped", "reason": reason, "detail": detail[:500]}
        if index is not None:
            rec["index"] = index
        self._append([rec])
        self.done[key] = rec

    def finish_shard(self) -> None:
        """Commit the open shard: sync the tar, append and sync its manifest lines, then rename it."""
        if self._tar is None:
            return
        final = self._shard_path(self._next_index)
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as e:
            raise with_path(e, final + ".tmp") from e
        self._tar, self._file = None, None
        name = os.path.basename(final)
        self._next_index += 1  # taken even if the commit fails below: a name is never reused
        recs = [{"key": k, "status": "written", "shard": name} | ({"index": i} if i is not None else {})
                for k, i in self._pending.items()]
        self._append(recs + [{"status": "shard", "shard": name, "count": len(recs)}])
        os.replace(final + ".tmp", final)
        _fsync_dir(self.out)
        self.done.update((r["key"], r) for r in recs)
        self._pending = {}

    def abandon(self) -> None:
        """Drop the open shard (its items are redone by the next run) and release the folder; for when
        the disk is full or gone, where finishing the shard would only fail again."""
        for f in (self._tar, self._file, self._manifest):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        self._tar = self._file = self._manifest = None
        self._pending = {}
        self._lock.release()

    def close(self) -> None:
        try:
            self.finish_shard()
            self._manifest.close()
        finally:
            self._lock.release()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, OSError):  # e.g. no space left: finishing the shard would fail again and hide it
            self.abandon()
        else:  # on other exceptions the open shard is finished too: its samples are complete and valid
            self.close()

