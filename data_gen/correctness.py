"""Is the generated answer correct? The paper keeps only samples the MLLM answers correctly.

Modes (the data_gen and eval option `correctness=<mode>`, e.g. `python -m data_gen correctness=exact`):
    exact   normalised exact match (lower case, punctuation, articles and extra spaces removed)
    choice  multiple-choice letter: the option letter of the reference ("B", "(B)", "B. a cat")
            against the first option letter the model states ("B", "(B) a cat", "The answer is B.")
    auto    `choice` when the reference is an option letter, else `exact`
    none    every answer counts as correct (keep all samples, e.g. for a randomly initialised model)
"""
from __future__ import annotations

import re
import string

MODES = ("auto", "exact", "choice", "none")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
# reference given as a bare option letter, optionally bracketed and followed by the option text
_REF_LETTER = re.compile(r"^\s*[\(\[]?([A-Za-z])[\)\]\.:]?(\s+.*)?$", re.DOTALL)
# the letter a model states: first standalone capital, or after "answer is"/"option"
_GEN_LETTER = re.compile(r"(?i:answer(?: is)?|option)\s*[:\-]?\s*[\(\[]?([A-Za-z])\b"
                         r"|(?<![A-Za-z])[\(\[]?([A-Z])(?![A-Za-z])")


def normalise(text: str) -> str:
    """'The  Red Circle.' -> 'red circle'."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def option_letter(reference: str) -> str | None:
    """The option letter of a multiple-choice reference, or None if it is not one.

    A single letter alone counts ("B", "(B)", "b."); a letter followed by option text only when
    bracketed or punctuated ("B. a cat", "(B) a cat"), so that "A cat" is not option A.
    """
    ref = reference.strip()
    m = _REF_LETTER.match(ref)
    if m is None:
        return None
    rest = m.group(2)
    if rest and not re.match(r"^\s*[\(\[]?[A-Za-z][\)\]\.:]", ref):
        return None
    return m.group(1).upper()


def stated_letter(generated: str) -> str | None:
    """The first option letter a model states in its answer, or None."""
    m = _GEN_LETTER.search(generated.strip())
    if m is None:
        return None
    return (m.group(1) or m.group(2)).upper()


def is_correct(generated: str, reference: str, mode: str = "auto") -> bool:
    """Compare a generated answer with the reference under `mode` (see module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown correctness mode {mode!r}: expected one of {', '.join(MODES)}; "
                         f"set it on the command line, e.g. correctness=exact")
    if mode == "none":
        return True
    if mode == "auto":
        mode = "choice" if option_letter(reference) is not None and len(normalise(reference)) <= 1 else "exact"
    if mode == "choice":
        ref = option_letter(reference)
        if ref is None:  # reference is not a letter: fall back to the text
            return normalise(generated) == normalise(reference)
        return stated_letter(generated) == ref
    return normalise(generated) == normalise(reference)
