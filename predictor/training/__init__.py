"""Training side of the predictor: Lightning, webdataset and matplotlib live here (and only here).

ShardDataModule (shards -> padded batches), PredictorModule (KL loss, optimiser, schedule,
validation metrics), RelevanceFigureCallback, export helpers and planted-pattern shards for tests.
"""
from predictor.training.data import EvenBatchSampler, ShardDataModule, collate, is_val_key
from predictor.training.export import export_checkpoint, export_module
from predictor.training.figures import RelevanceFigureCallback
from predictor.training.module import PredictorModule
from predictor.training.shards import read_shards, resolve_shards
from predictor.training.synthetic import write_synthetic_shards

__all__ = [
    "EvenBatchSampler", "ShardDataModule", "collate", "is_val_key", "export_checkpoint", "export_module",
    "RelevanceFigureCallback", "PredictorModule", "read_shards", "resolve_shards", "write_synthetic_shards",
]
