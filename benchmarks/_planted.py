"""The planted-pattern shard writers of the tests (tests/synthetic_shards.py), for the benchmarks that train on
them. They are test fixtures, not library code, so they live with the tests; a benchmark runs from a checkout,
where this puts tests/ on sys.path once instead of each benchmark doing it."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synthetic_shards import write_synthetic_shards  # noqa: E402  (needs the path above)

__all__ = ["write_synthetic_shards"]
