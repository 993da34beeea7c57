"""One adapter per MLLM family: the single home of model-family knowledge.

`data_gen` (labels) and `predictor.runtime` (pruned inference) both go through these. Each
family's module imports transformers lazily and registers its adapter class in ADAPTERS under
the name that is written into shard metadata.
"""
from predictor.adapters.base import ADAPTERS, Adapter, DeepStack, Prepared, get_adapter, load_adapter

__all__ = ["ADAPTERS", "Adapter", "DeepStack", "Prepared", "get_adapter", "load_adapter"]
