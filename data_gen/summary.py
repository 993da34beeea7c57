"""The run summary of one data_gen rank: counts, tokens and time per sample, its line and its JSON file."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from predictor.cli import with_path


@dataclass
class Summary:
    """What one rank's run did; `summary-r<rank>.json` in the output folder, and the line the run prints."""

    rank: int = 0
    world_size: int = 1
    items: int = 0  # items of this rank's slice
    already_done: int = 0  # finished by an earlier run (resume)
    processed: int = 0  # handled in this run
    written: int = 0
    wrong_answers: int = 0  # skipped because wrong (or written with correct=false when keep_wrong)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, wrong answers excluded
    prompt_tokens_per_sample: float = 0.0
    visual_tokens_per_sample: float = 0.0
    answer_tokens_per_sample: float = 0.0
    seconds_per_sample: float = 0.0  # wall time of this run / samples written
    seconds: float = 0.0

    def text(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"rank {self.rank}/{self.world_size}: {self.written} written, {self.wrong_answers} wrong answers, "
                f"skipped: {skipped}; {self.already_done} already done before this run; "
                f"tokens/sample: prompt {self.prompt_tokens_per_sample:.0f}, visual {self.visual_tokens_per_sample:.0f}, "
                f"answer {self.answer_tokens_per_sample:.1f}; {self.seconds_per_sample:.3f} s/sample "
                f"({self.seconds:.1f} s)")


    def finish(self, skipped: dict[str, int], stats: dict[str, list], seconds: float) -> None:
        """Fill in the skip reasons, the mean prompt / visual / answer tokens of `stats` and the time."""
        self.skipped = dict(skipped)
        self.seconds = seconds
        for name, values in stats.items():
            setattr(self, f"{name}_tokens_per_sample", float(np.mean(values)) if values else 0.0)
        self.seconds_per_sample = self.seconds / max(1, self.written)

    def save(self, out: str) -> None:
        """Write `out/summary-r<rank>.json`."""
        path = os.path.join(out, f"summary-r{self.rank:05d}.json")
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(asdict(self), f, indent=2)
        except OSError as e:
            raise with_path(e, path) from e
