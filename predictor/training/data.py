"""Which data store trains: `make_datamodule` picks the in-memory store (`memory.ShardDataModule`) or the
streaming one (`streaming.StreamingDataModule`) per data.streaming. Both give the same split, batches'
shapes (`batches`) and summary (`datamodule.DataModule`)."""
from __future__ import annotations

import os

from predictor.training.datamodule import DataModule
from predictor.training.memory import ShardDataModule
from predictor.training.shards import expand_specs, is_url
from predictor.training.streaming import StreamingDataModule


def make_datamodule(shards, inputs: list[str], streaming: bool | str = "auto", stream_above_gb: float = 4.0,
                    val_shards=None, shuffle_buffer: int = 1000, **kw) -> DataModule:
    """ShardDataModule (decoded into memory) or StreamingDataModule, per data.streaming: true, false, or
    "auto": streaming for URLs, `pipe:` commands, data.val_shards, or local shards above `stream_above_gb`
    (the choice and the size are printed). kw: the arguments both modules share."""
    if streaming not in (True, False, "auto"):
        raise ValueError(f"data.streaming={streaming!r}: expected true, false or auto")
    specs = expand_specs(shards)
    urls = [u for u in specs if is_url(u)]
    if streaming is False and (urls or val_shards):
        why = f"URLs or pipe: commands ({urls[0]})" if urls else "data.val_shards"
        raise ValueError(f"data.streaming=false but data.shards has {why}, which only the streaming mode reads; "
                         "set data.streaming=true (or auto)")
    if streaming == "auto":
        gb = sum(os.path.getsize(p) for p in specs if not is_url(p)) / 1e9
        streaming = bool(urls or val_shards) or gb > stream_above_gb
        why = "URLs or pipe: commands" if urls else "data.val_shards" if val_shards else (
            f"{gb:.2f} GB of shards {'>' if streaming else '<='} data.stream_above_gb={stream_above_gb}")
        print(f"data: {'streaming' if streaming else 'decoded into memory'} ({why})")
    if streaming:
        return StreamingDataModule(shards, inputs, val_shards=val_shards, buffer=shuffle_buffer, **kw)
    return ShardDataModule(shards, inputs, **kw)
