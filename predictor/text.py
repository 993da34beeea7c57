"""Answer text normalisation: one rule for data_gen's correctness modes and option extraction, and for the
reference MLLMs' held-out accuracy (reference_mllm), which may not import data_gen."""
from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalise(text: str) -> str:
    """'The  Red Circle.' -> 'red circle'."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())
