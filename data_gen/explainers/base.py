from __future__ import annotations

from typing import Callable, Protocol

import torch

from predictor.registry import Registry


class Explainer(Protocol):
    def __call__(self, adapter, prepared, answer_ids: torch.Tensor) -> torch.Tensor:
        """-> (N_v,) float32 relevance of each visual token, finite and >= 0."""


EXPLAINERS: Registry[Callable[..., Explainer]] = Registry("explainer", modules=(
    "data_gen.explainers.gae", "data_gen.explainers.attention", "data_gen.explainers.captum_attr",
    "data_gen.explainers.ground_truth"))


def get_explainer(name: str) -> Callable[..., Explainer]:
    """Registered factory for `name`; call it with the explainer's options to get an Explainer."""
    return EXPLAINERS.get(name)
