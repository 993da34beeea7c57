"""The train/validation split of shard samples, by a stable hash of each sample's key.

Training holds out `is_val_key(key, val_fraction)`; eval's fidelity check scores the same keys (the
export records `val_fraction`). Standard library only: eval reads it without importing Lightning.
"""
from __future__ import annotations

import hashlib


def key_fraction(key: str) -> float:
    """Stable hash of a sample key -> [0, 1). Same on every machine and Python (no PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64


def is_val_key(key: str, val_fraction: float) -> bool:
    """Whether a sample with this key is held out for validation."""
    return key_fraction(key) < val_fraction
