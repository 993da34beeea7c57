"""Figures explain themselves: eval's kept-token figures and training's relevance figures."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.text import Text
from PIL import Image

from predictor.runtime.report import kept_overlay


def _share(png, rgb) -> float:
    """Share of the pixels within 40 of colour `rgb`."""
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return float((np.abs(a - np.array(rgb)).sum(-1) < 40).mean())


def test_kept_overlay_frames_right_answers_green_and_wrong_ones_red(tmp_path):
    image = Image.new("RGB", (112, 112), (200, 200, 200))
    kept = {"predictor": torch.arange(16) < 4, "random": torch.arange(16) >= 12}
    both = kept_overlay(image, (1, 4, 4), kept, tmp_path / "both.png", correct={"predictor": True, "random": False})
    right = kept_overlay(image, (1, 4, 4), kept, tmp_path / "right.png", correct={"predictor": True, "random": True})
    plain = kept_overlay(image, (1, 4, 4), kept, tmp_path / "plain.png")
    green, red = (0, 100, 0), (139, 0, 0)
    assert _share(both, green) > 0.005 and _share(both, red) > 0.005
    assert _share(right, red) < 0.001 < _share(right, green)
    assert _share(plain, green) < 0.001 and _share(plain, red) < 0.001


def test_relevance_figure_has_colour_bars_the_full_key_and_the_question():
    from predictor.training.figures import relevance_figure

    key = "synthetic_scenes-heldout-000000123-a-very-long-key"
    batch = {"keys": [key, "k2"], "relevance": torch.rand(2, 16), "attn": torch.rand(2, 16),
             "grid": torch.tensor([[1, 4, 4], [1, 4, 4]]), "thumbnails": [None, None],
             "instructions": ["What shape is the red object?", ""]}
    fig = relevance_figure(batch, torch.rand(2, 16), rows=[0])
    texts = " ".join(t.get_text() for t in fig.findobj(Text))
    assert key in texts.replace("\n", "") and "What shape is the red object?" in texts
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 3 and len(fig.axes) == 6  # oracle, predicted, layer-0 attention, each with its colour bar
