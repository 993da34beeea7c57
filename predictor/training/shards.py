"""Finding and reading WebDataset shards, through `predictor.schema.decode`.

Shards may be local paths (folders, globs, brace patterns `shard-r{00000..00007}-{000000..000099}.tar`),
`pipe:` commands or URLs (`tar_stream` opens those). Either way a tar is trusted only if it was written to
its end (`check_tar_end`): tar readers stop quietly at a truncation that falls on a file boundary; members
become samples by `group_members`, and a corrupt shard under data.strict is refused by `corrupt_shard`.

In memory (`read_shards`): datasets of this project are small (the paper: 8-12K samples of a few thousand
floats), so every shard is decoded once into a list of samples; training then never waits on I/O.
A corrupt shard (an unreadable or truncated tar) is skipped and counted; a bad sample (breaks the
schema, or repeats a key already read from its shard) is skipped alone, never the rest of its shard.
With `strict=True` the first of either raises an error naming the shard and the sample.
Streamed (`tar_stream`): raw samples of one shard at a time, the same grouping and end check; the caller
decodes. (That module is apart because it opens URLs with fsspec, which eval's fidelity check, a reader of
local shards through this module, does not install.)
"""
from __future__ import annotations

import glob
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from braceexpand import braceexpand
from webdataset.tariterators import tar_file_iterator

from predictor.schema import Sample, SampleError, decode

log = logging.getLogger(__name__)

MAKE_SHARDS_HINT = "create them with: python -m data_gen out={out}"


def is_url(spec: str) -> bool:
    """A `pipe:` command or a URL (http://, s3://, file://, ...): read as a stream, never listed."""
    return spec.startswith("pipe:") or "://" in spec


def _specs(shards: str | os.PathLike | list | tuple) -> list[str]:
    """One spec per shard pattern; brace patterns (`shard-{000..009}.tar`) expanded as webdataset does."""
    specs = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    return [e for spec in specs for e in braceexpand(str(spec))]


def expand_specs(shards: str | os.PathLike | list | tuple) -> list[str]:
    """Shard specs -> shard URLs and local paths, in order: URLs and `pipe:` commands as given (after
    brace expansion), local folders, globs and files through `resolve_shards`. A brace pattern must name
    existing files (a missing one is an error naming it)."""
    specs = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    out: list[str] = []
    for spec in (str(s) for s in specs):
        expanded = list(braceexpand(spec))
        if is_url(spec):
            out += expanded
            continue
        missing = [e for e in expanded if not any(c in e for c in "*?[") and not Path(e).exists()]
        if "{" in spec and missing:
            raise FileNotFoundError(f"data.shards={spec} names {len(missing)} missing shard(s), e.g. {missing[:3]}; "
                                    "fix the brace pattern, or " + MAKE_SHARDS_HINT.format(out=Path(missing[0]).parent))
        out += [str(p) for p in resolve_shards(expanded)]
    return list(dict.fromkeys(out))


def resolve_shards(shards: str | os.PathLike | list | tuple) -> list[Path]:
    """A folder (its `*.tar`, recursively), a glob, a file, a brace pattern, or a list of these -> sorted
    local shard paths.

    Raises FileNotFoundError naming what was looked for and the command that creates shards.
    """
    specs = _specs(shards)
    found: list[Path] = []
    looked: list[str] = []
    for spec in specs:
        spec = str(spec)
        p = Path(spec)
        if p.is_dir():
            looked.append(f"{p}/**/*.tar")
            found += sorted(Path(f) for f in glob.glob(str(p / "**" / "*.tar"), recursive=True))
        elif any(c in spec for c in "*?["):
            looked.append(spec)
            found += sorted(Path(f) for f in glob.glob(spec, recursive=True))
        else:
            looked.append(spec)
            if p.is_file():
                found.append(p)
    if not found:
        first = specs[0] if specs else "<dir>"
        out = first if not any(c in str(first) for c in "*?[") else Path(str(first)).parent
        raise FileNotFoundError(
            f"No shards found for data.shards={looked if len(looked) > 1 else looked[0]!s}; "
            + MAKE_SHARDS_HINT.format(out=out)
            + " (or point data.shards= at a folder, glob or list of .tar shards)"
        )
    # a folder and a glob may name the same file twice
    return list(dict.fromkeys(p.resolve() for p in found))


@dataclass
class ReadStats:
    shards: int = 0
    samples: int = 0
    corrupt_shards: list[str] = field(default_factory=list)
    skipped_samples: int = 0
    skip_reasons: list[str] = field(default_factory=list)  # the first few, for the log


def corrupt_shard(url, reason: str, after: int | None = None) -> ValueError:
    """The strict mode's error for an unreadable or truncated shard (reason: "<exception type>: <message>")."""
    read = "" if after is None else f" after {after} samples;"
    return ValueError(f"shard {url} is corrupt ({reason});{read} regenerate it with python -m data_gen, "
                      "or set data.strict=false to skip it")


def check_tar_end(size: int, tail: bytes) -> None:
    """A tar written to its end is a whole number of 512-byte blocks ending in two zero blocks (`tail`:
    its last 1024 bytes)."""
    if size < 1024 or size % 512 or tail.count(0) != len(tail):
        raise tarfile.ReadError(f"truncated tar ({size} bytes, no end-of-archive marker)")


def check_complete(path: Path) -> None:
    """`check_tar_end` of a local file, before it is read."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 1024))
        check_tar_end(size, f.read())


def group_members(files: Iterator[dict], url: str) -> Iterator[dict]:
    """Tar members -> raw samples {"__key__", "__url__", ext: bytes}: consecutive members sharing a key
    (the name up to the first dot of its base name, as writers name them). A member whose extension the
    open sample already has starts a new sample with the same key (two samples under one key), which
    the caller drops as a duplicate; webdataset's grouping would reject the whole shard instead."""
    current: dict | None = None
    for f in files:
        folder, base = os.path.split(f["fname"])
        key, _, ext = base.partition(".")
        key = os.path.join(folder, key)
        if current is None or current["__key__"] != key or ext in current:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": url}
        current[ext] = f["data"]
    if current is not None:
        yield current


def read_shard(path: Path, load_heads: bool = True, strict: bool = False,
               stats: ReadStats | None = None) -> list[Sample]:
    """All valid samples of one shard. A tar that cannot be read to its end counts as corrupt and
    contributes no samples (a half-written shard is not trusted)."""
    stats = stats if stats is not None else ReadStats()
    stats.shards += 1
    out: list[Sample] = []
    bad: list[str] = []
    seen: set[str] = set()
    try:
        check_complete(path)
        with open(path, "rb") as f:
            for raw in group_members(tar_file_iterator(f), str(path)):
                try:
                    if raw["__key__"] in seen:
                        raise SampleError(raw["__key__"], "__key__", "a key once per shard",
                                          "a second sample with this key (it is dropped; the first is kept)")
                    seen.add(raw["__key__"])
                    try:
                        out.append(decode(raw, load_heads=load_heads))
                    except SampleError:
                        raise
                    except Exception as e:  # decoding works on bytes in memory: whatever fails is this sample's
                        raise SampleError(raw["__key__"], "(sample)", "a decodable sample",
                                          f"{type(e).__name__}: {e}") from e
                except SampleError as e:
                    if strict:
                        raise SampleError(e.key, e.field, e.expected, f"{e.found} (in shard {path})") from e
                    bad.append(str(e))
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        if isinstance(e, SampleError):
            raise
        if strict:
            raise corrupt_shard(path, f"{type(e).__name__}: {e}", after=len(out)) from e
        stats.corrupt_shards.append(f"{path}: {type(e).__name__}: {e}")
        log.warning("skipping corrupt shard %s (%s: %s)", path, type(e).__name__, e)
        return []
    stats.samples += len(out)
    stats.skipped_samples += len(bad)
    stats.skip_reasons += bad[: max(0, 5 - len(stats.skip_reasons))]
    for reason in bad[:3]:
        log.warning("skipping sample: %s", reason)
    return out


def read_shards(paths: list[Path], load_heads: bool = True, strict: bool = False,
                progress: bool = True) -> tuple[list[Sample], ReadStats]:
    """Decode every shard; duplicate keys (a shard listed twice, a re-run) keep their first copy."""
    stats = ReadStats()
    samples: dict[str, Sample] = {}
    it = paths
    if progress and len(paths) > 1:
        from tqdm.auto import tqdm

        it = tqdm(paths, desc="reading shards", unit="shard")
    for p in it:
        for s in read_shard(p, load_heads=load_heads, strict=strict, stats=stats):
            samples.setdefault(s.key, s)
    if stats.corrupt_shards or stats.skipped_samples:
        log.warning("skipped %d corrupt shard(s) and %d invalid sample(s) of %d shard(s); "
                    "data.strict=true raises instead", len(stats.corrupt_shards),
                    stats.skipped_samples, stats.shards)
    return list(samples.values()), stats
