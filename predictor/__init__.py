"""Visual-token relevance predictor: schema, model, targets, metrics and export.

Importing `predictor` needs torch, numpy and safetensors only; `predictor.training` adds
Lightning, `predictor.adapters` and `predictor.runtime` add transformers.
"""
from predictor.export import load_predictor, read_export_config, save_predictor
from predictor.features import build_features
from predictor.model import PredictorConfig, RelevancePredictor
from predictor.schema import SCHEMA_VERSION, Sample, SampleError, decode, encode, make_meta, validate

__all__ = [
    "SCHEMA_VERSION", "Sample", "SampleError", "decode", "encode", "make_meta", "validate",
    "PredictorConfig", "RelevancePredictor", "build_features", "load_predictor", "save_predictor",
    "read_export_config",
]
