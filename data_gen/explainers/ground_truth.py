"""`ground_truth`: the source's own per-token relevance, no model involved.

Sources that know where the answer is (synthetic scenes: the share of the named object's pixels
in each visual token, `extra.gt_relevance`) give perfect labels. Training the predictor on them
shows what it can learn when the oracle makes no mistakes: an explainer-free upper bound for the
labels of `gae` and the rest. data_gen and eval put the item's ground truth on the prepared prompt
(`attach_ground_truth`); other sources have none, and the run is refused before the first item.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from data_gen.explainers._common import finish
from data_gen.explainers.base import EXPLAINERS

KEY = "gt_relevance"


def attach_ground_truth(prepared, extra: Mapping[str, Any] | None) -> None:
    """Copy an item's `extra.gt_relevance` (if it has one) onto `prepared.ground_truth` for this explainer."""
    if extra and KEY in extra:
        prepared.ground_truth = torch.as_tensor(extra[KEY], dtype=torch.float32).reshape(-1)


def _missing(what: str) -> ValueError:
    return ValueError(f"explainer=ground_truth: {what} has no ground-truth relevance (extra.{KEY}); only "
                      f"sources that know the answer-bearing region have it (source=synthetic_scenes). Use "
                      f"explainer=gae for other sources.")


class GroundTruth:
    def check_source(self, source) -> None:
        """Refuse a source without ground truth before any item is processed."""
        if len(source) and KEY not in (source[0].extra or {}):
            raise _missing(f"the source's first item ({source[0].id!r})")

    def __call__(self, adapter, prepared, answer_ids: torch.Tensor) -> torch.Tensor:
        rel = prepared.ground_truth
        if rel is None:
            raise _missing("this item")
        if rel.numel() != prepared.num_visual:
            raise ValueError(f"explainer=ground_truth: extra.{KEY} has {rel.numel()} values but the prompt has "
                             f"{prepared.num_visual} visual tokens; the source's grid and the model's disagree "
                             f"(synthetic scenes need 28 px visual tokens and sizes that are multiples of 28)")
        return finish(rel)


@EXPLAINERS.register("ground_truth")
def make_ground_truth() -> GroundTruth:
    return GroundTruth()
