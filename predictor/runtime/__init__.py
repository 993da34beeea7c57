"""Inference with an export: layer-0 scores from q/k, top-k keep, physical pruning, generation.

Everything model-specific goes through `predictor.adapters` (transformers is imported there,
lazily); this package itself needs torch only.
"""
from predictor.runtime.baselines import ClusterAggregation, downsample_image, kmeans
from predictor.runtime.generate import (PrunedOutput, budget_for, cache_bytes, make_context, prefill,
                                        prune_context, pruned_generate)
from predictor.runtime.layer0 import layer0_attention
from predictor.runtime.prune import PrunedPrompt, left_pad, prune_prompt
from predictor.runtime.scorers import (AttentionScores, OracleScores, PredictorScores, RandomScores,
                                       ScoreContext, Selection)

METHODS = ("random", "attention", "oracle", "predictor", "cluster", "downsample")


def make_method(name: str, predictor=None, explainer=None, seed: int = 0, max_new_tokens: int = 32):
    """The selection method `name` (see METHODS; "downsample" re-prepares the image instead and has
    no selector: returns None). `predictor`: a loaded export; `explainer`: the oracle's callable."""
    if name == "random":
        return RandomScores(seed)
    if name == "attention":
        return AttentionScores()
    if name == "cluster":
        return ClusterAggregation(seed=seed)
    if name == "predictor":
        if predictor is None:
            raise ValueError("method 'predictor' needs a loaded export: predictor=<export dir>")
        return PredictorScores(predictor)
    if name == "oracle":
        if explainer is None:
            raise ValueError("method 'oracle' needs an explainer callable (e.g. data_gen's 'gae')")
        return OracleScores(explainer, max_new_tokens)
    if name == "downsample":
        return None
    raise KeyError(f"unknown pruning method {name!r}; available: {', '.join(METHODS)}")


__all__ = ["METHODS", "make_method", "ClusterAggregation", "downsample_image", "kmeans", "PrunedOutput",
           "budget_for", "cache_bytes", "make_context", "prefill", "prune_context", "pruned_generate",
           "layer0_attention", "PrunedPrompt", "left_pad", "prune_prompt", "AttentionScores", "OracleScores",
           "PredictorScores", "RandomScores", "ScoreContext", "Selection"]
