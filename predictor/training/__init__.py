"""Training side of the predictor: Lightning, webdataset and matplotlib live here (and only here).

ShardDataModule and StreamingDataModule (shards -> padded batches; their one data policy is
`datamodule.DataModule`), PredictorModule (KL loss, optimiser, schedule, validation metrics),
RelevanceFigureCallback and export helpers (tests/synthetic_shards.py writes planted-pattern shards
for the tests).
Names are imported on first use, so `predictor.training.shards` (webdataset only) can find
shards, or fail with its message, before Lightning's multi-second import.
"""
import importlib

_WHERE = {
    "EvenBatchSampler": "epochs", "ShardDataModule": "memory", "StreamingDataModule": "streaming",
    "make_datamodule": "data", "collate": "batches", "is_val_key": "datamodule",
    "export_checkpoint": "export", "export_module": "export", "headline": "export", "RelevanceFigureCallback": "figures",
    "PredictorModule": "module", "read_shards": "shards", "resolve_shards": "shards",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'predictor.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"predictor.training.{_WHERE[name]}"), name)
