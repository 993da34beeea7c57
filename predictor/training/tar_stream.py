"""Reading one shard as a stream: a local path, `pipe:` command or URL (http(s) through webdataset's curl
opener; s3://, gcs://, memory://, ... through fsspec), checked to its end as `shards` checks a local file.
The streaming store's index (`meta_members`) and loaders (`stream_samples`) read shards through here."""
from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterator

from webdataset.gopen import gopen, gopen_schemes
from webdataset.tariterators import tar_file_iterator

from predictor.schema import EXT_META
from predictor.training.shards import check_complete, check_tar_end, group_members, is_url


def open_stream(url: str):
    """A readable byte stream for a local path, `pipe:` command or URL. Schemes webdataset has no opener
    for (s3, gcs, az, memory, ...) go through fsspec."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme and scheme not in gopen_schemes and scheme != "file":
        import fsspec

        return fsspec.open(url, "rb").open()
    return gopen(url)


class CheckedStream:
    """A byte stream that, once drained (`check`), runs `shards.check_tar_end` on what it read: a stream cannot seek
    to its end first, and tarfile's stream mode stops quietly at a truncation."""

    def __init__(self, raw, url: str):
        self.raw, self.url, self.size, self.tail = raw, url, 0, b""

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.size += len(data)
        self.tail = (self.tail + data)[-1024:]
        return data

    def check(self) -> None:
        while self.read(1 << 20):
            pass
        check_tar_end(self.size, self.tail)

    def close(self) -> None:
        self.raw.close()


def stream_samples(url: str) -> Iterator[dict]:
    """Raw samples of one shard (path, `pipe:` or URL) read as a stream, duplicates included; raises
    tarfile.ReadError after the last one if the tar was not written to its end."""
    stream = CheckedStream(open_stream(url), url)
    try:
        yield from group_members(tar_file_iterator(stream), url)
        stream.check()
    finally:
        stream.close()


def meta_members(url: str) -> Iterator[dict]:
    """Tar members as {"fname", "data"} where only meta.json is read (other members' data is b""): local tars
    seek over the arrays, a URL is read once."""
    def members(tar: tarfile.TarFile) -> Iterator[dict]:
        for m in tar:
            if m.isreg():
                yield {"fname": m.name, "data": tar.extractfile(m).read() if m.name.endswith("." + EXT_META) else b""}

    if not is_url(url):
        check_complete(Path(url))
        with tarfile.open(url, "r:") as tar:
            yield from members(tar)
        return
    stream = CheckedStream(open_stream(url), url)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield from members(tar)
        stream.check()
    finally:
        stream.close()
