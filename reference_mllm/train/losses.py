"""The reference MLLM's training losses besides the answer's own: the vision tower's per-token
auxiliary classifier, attention guidance for the lookup, and the two properties given to layer 0
(a weak instruction cue and a position bias)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from reference_mllm import scenes
from reference_mllm.train.config import GUIDED

EPS = 1e-6


class AuxHead(torch.nn.Module):
    """Per-visual-token colour and shape classifiers (linear) on the merged vision features: the vision
    tower's own training signal (training only; not saved)."""

    def __init__(self, dim: int):
        super().__init__()
        self.colour = torch.nn.Linear(dim, len(scenes.COLOURS) + 1)
        self.shape = torch.nn.Linear(dim, len(scenes.SHAPES) + 1)

    def forward(self, feats: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """feats: (N, D) merged visual tokens of the batch; colour, shape: (N,) class (0 = background) -> loss."""
        return F.cross_entropy(self.colour(feats), colour) + F.cross_entropy(self.shape(feats), shape)


def guidance(attentions: tuple[torch.Tensor, ...], target: torch.Tensor, word_pos: torch.Tensor,
             type_pos: torch.Tensor, answer_pos: torch.Tensor) -> torch.Tensor:
    """-log attention mass along the lookup, on the heads and layers of GUIDED:
    layer 1 head 0: the question's naming word ("red") onto the named object's visual tokens;
    layer 2 head 0: the answer position onto the naming word (which now holds the object's attributes);
    layer 2 head 1: the answer position onto the question's type word ("shape" / "colour": what to answer).

    attentions: per layer (B, H, S, S); target: (B, S) bool object tokens; word_pos, type_pos, answer_pos: (B,).
    """
    rows = torch.arange(len(target), device=target.device)
    (obj_layer, obj_head), (word_layer, word_head), (type_layer, type_head) = GUIDED
    on_object = (attentions[obj_layer][rows, obj_head, word_pos] * target).sum(-1)  # (B,)
    on_word = attentions[word_layer][rows, word_head, answer_pos, word_pos]  # (B,)
    on_type = attentions[type_layer][rows, type_head, answer_pos, type_pos]  # (B,)
    return -(torch.log(on_object + EPS) + torch.log(on_word + EPS) + torch.log(on_type + EPS)).mean()


def layer0_cue(attentions: tuple[torch.Tensor, ...], target: torch.Tensor, word_pos: torch.Tensor,
               level: float) -> torch.Tensor:
    """Hinge: layer 0, head 0, the naming word's attention mass on the object's tokens up to `level`, no more."""
    rows = torch.arange(len(target), device=target.device)
    mass = (attentions[0][rows, 0, word_pos] * target).sum(-1)  # (B,)
    return F.relu(level - mass).mean()


def layer0_position_bias(attentions: tuple[torch.Tensor, ...], instruction: torch.Tensor, visual_y: torch.Tensor,
                         slope: float) -> torch.Tensor:
    """Hinge: the slope of log layer-0 attention (instruction rows over the visual tokens, mean over rows and
    heads: the predictor's input) against the visual token's row in the image (0 top, 1 bottom) up to `slope`,
    no more. Real MLLMs' early layers attend more to the end of the image, nearest the text.

    instruction: (B, S) bool instruction tokens; visual_y: (B, S) normalised row of each visual token, NaN elsewhere.
    """
    att = attentions[0].mean(1)  # (B, S, S) mean over heads
    losses = []
    for b in range(att.shape[0]):
        vis = ~torch.isnan(visual_y[b])
        a = att[b][instruction[b]][:, vis].mean(0)  # (N_v,)
        log_a = torch.log(a / a.sum() + EPS)
        y = visual_y[b][vis]
        yc = y - y.mean()
        fitted = (yc * (log_a - log_a.mean())).sum() / (yc * yc).sum().clamp_min(EPS)
        losses.append(F.relu(slope - fitted))
    return torch.stack(losses).mean()
