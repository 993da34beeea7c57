"""Inference with an export: layer-0 scores from q/k, top-k keep, physical pruning, generation.

Everything model-specific goes through `predictor.adapters` (transformers is imported there,
lazily); this package itself needs torch only.
"""
from typing import Any, Callable

from predictor.adapters.layer0 import instruction_attention
from predictor.registry import Registry
from predictor.runtime.baselines import ClusterAggregation, downsample_image, downsample_video, kmeans
from predictor.runtime.generate import (PrunedOutput, budget_for, cache_bytes, make_context, prefill,
                                        prune_context, pruned_generate, pruned_loglikelihood)
from predictor.runtime.prune import PrunedPrompt, deepstack_batch, left_pad, prune_prompt
from predictor.runtime.scorers import (AttentionScores, OracleScores, PredictorScores, RandomScores,
                                       ScoreContext, Selection)

# name -> builder(predictor, explainer, seed, max_new_tokens); the names are what eval's methods= takes
METHODS: Registry[Callable[..., Any]] = Registry("pruning method")


def make_method(name: str, predictor=None, explainer=None, seed: int = 0, max_new_tokens: int = 32,
                allow_modality_mismatch: bool = False):
    """The selection method `name` (see METHODS; "downsample" re-prepares the image instead and has
    no selector: returns None). `predictor`: a loaded export; `explainer`: the oracle's callable;
    `allow_modality_mismatch`: let the predictor score prompts of the other modality than its export's."""
    method = METHODS.get(name)(predictor, explainer, seed, max_new_tokens)
    if isinstance(method, PredictorScores):  # set here, not per builder: the other methods have no modality
        method.allow_modality_mismatch = allow_modality_mismatch
    return method


@METHODS.register("random")
def _random(predictor, explainer, seed: int, max_new_tokens: int) -> RandomScores:
    return RandomScores(seed)


@METHODS.register("attention")
def _attention(predictor, explainer, seed: int, max_new_tokens: int) -> AttentionScores:
    return AttentionScores()


@METHODS.register("cluster")
def _cluster(predictor, explainer, seed: int, max_new_tokens: int) -> ClusterAggregation:
    return ClusterAggregation(seed=seed)


@METHODS.register("predictor")
def _predictor(predictor, explainer, seed: int, max_new_tokens: int) -> PredictorScores:
    if predictor is None:
        raise ValueError("method 'predictor' needs a loaded export: predictor=<export dir>")
    return PredictorScores(predictor)


@METHODS.register("oracle")
def _oracle(predictor, explainer, seed: int, max_new_tokens: int) -> OracleScores:
    if explainer is None:
        raise ValueError("method 'oracle' needs an explainer callable (e.g. data_gen's 'gae')")
    return OracleScores(explainer, max_new_tokens)


@METHODS.register("downsample")
def _downsample(predictor, explainer, seed: int, max_new_tokens: int) -> None:
    return None  # eval re-prepares a smaller image instead of selecting tokens


__all__ = ["METHODS", "make_method", "ClusterAggregation", "downsample_image", "downsample_video", "kmeans", "PrunedOutput",
           "budget_for", "cache_bytes", "make_context", "prefill", "prune_context", "pruned_generate", "pruned_loglikelihood",
           "instruction_attention", "PrunedPrompt", "deepstack_batch", "left_pad", "prune_prompt", "AttentionScores", "OracleScores",
           "PredictorScores", "RandomScores", "ScoreContext", "Selection"]
