"""Visual-token relevance predictor: schema, model, targets, metrics and export.

Importing `predictor` needs torch, numpy and safetensors only; `predictor.training` adds
Lightning, `predictor.adapters` and `predictor.runtime` add transformers.
Names are imported on first use, so that `predictor.cli` and `predictor.threads` run before torch
loads (OpenMP reads its thread settings then).
"""
import importlib

_WHERE = {
    "SCHEMA_VERSION": "schema", "Sample": "schema", "SampleError": "schema", "decode": "schema",
    "encode": "schema", "make_meta": "schema", "validate": "schema", "PredictorConfig": "config",
    "RelevancePredictor": "model", "build_features": "features", "load_predictor": "hub",
    "save_predictor": "export", "read_export_config": "export",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'predictor' has no attribute {name!r}")
    return getattr(importlib.import_module(f"predictor.{_WHERE[name]}"), name)
