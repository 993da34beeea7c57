"""PredictorConfig: everything needed to rebuild a RelevancePredictor, and what an export stores as its
config.json's "predictor" section.

config.json is user input, so the fields' types and ranges are checked here, before any module is built.
Plain dataclass: no torch, so that reading an export's config needs nothing heavy.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

from predictor.features import INPUTS, num_channels

ARCHS = ("conv1d", "conv2d", "conv3d")
NORMS = ("none", "layer", "batch")
ACTIVATIONS = ("gelu", "relu", "silu")  # predictor.model.ACTIVATION_MODULES maps each to its nn module


@dataclass
class PredictorConfig:
    arch: str = "conv1d"
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # depth = len(widths)
    kernel_size: int = 5  # odd; the paper does not publish it
    norm: str = "layer"  # "layer": each token over its channels, batch-size free; "batch": valid tokens only
    activation: str = "gelu"
    inputs: list[str] = field(default_factory=lambda: ["attn"])  # see predictor.features.INPUTS
    num_heads: int = 0  # H of the per-head attention, needed only when "attn_heads" is an input
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # types too, not only values: an export's config.json is user input (see predictor.export)
        for name, choices in (("arch", ARCHS), ("norm", NORMS), ("activation", ACTIVATIONS)):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in choices:
                raise _bad(name, f"one of the available {list(choices)}", getattr(self, name))
        if not _is_int(self.kernel_size) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise _bad("kernel_size", "an odd int >= 1", self.kernel_size)
        if not _is_list(self.widths) or not self.widths or not all(_is_int(w) and w >= 1 for w in self.widths):
            raise _bad("widths", "a non-empty list of ints >= 1, one per layer", self.widths)
        if not _is_list(self.inputs) or not self.inputs or not all(isinstance(i, str) for i in self.inputs):
            raise _bad("inputs", f"a non-empty list of names from {list(INPUTS)}", self.inputs)
        if not _is_int(self.num_heads) or self.num_heads < 0:
            raise _bad("num_heads", "an int >= 0", self.num_heads)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real) or not 0 <= self.dropout < 1:
            raise _bad("dropout", "a number in [0, 1)", self.dropout)
        self.widths, self.inputs = [int(w) for w in self.widths], list(self.inputs)
        self.kernel_size, self.num_heads, self.dropout = int(self.kernel_size), int(self.num_heads), float(self.dropout)
        num_channels(self.inputs, self.num_heads)  # raises on unknown inputs

    @property
    def in_channels(self) -> int:
        return num_channels(self.inputs, self.num_heads)

    @property
    def needs_grid(self) -> bool:
        return self.arch != "conv1d" or "coords" in self.inputs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PredictorConfig":
        names = {f.name for f in fields(cls)}
        if not isinstance(d, Mapping):
            raise ValueError(f"predictor config: expected a mapping with keys {sorted(names)}, found {d!r}")
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown predictor config keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_list(v) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, (str, bytes))


def _bad(name: str, expected: str, found) -> ValueError:
    return ValueError(f"predictor config field {name!r}: expected {expected}, found {found!r}")
