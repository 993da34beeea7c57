"""Relevance methods, one file each, registered under the name written into shard metadata.

An explainer is a callable `(adapter, prepared, answer_ids) -> (N_v,) float32 relevance >= 0`.
"""
from data_gen.explainers.base import EXPLAINERS, get_explainer

__all__ = ["EXPLAINERS", "get_explainer"]
