"""Is the generated answer correct? The paper keeps only samples the MLLM answers correctly.

Modes (the data_gen and eval option `correctness=<mode>`, e.g. `python -m data_gen correctness=exact`):
    exact   normalised exact match (lower case, punctuation, articles and extra spaces removed)
    choice  multiple-choice letter: the option letter of the reference ("B", "(B)", "B. a cat")
            against the option the model names ("B", "(B) a cat", "I think it is B.", "Answer: b", or the
            option's text when the question lists the options; rules in data_gen/choice.py)
    auto    `choice` when the reference is an option letter, else `exact`
    none    every answer counts as correct (keep all samples, e.g. for a randomly initialised model)
"""
from __future__ import annotations

from data_gen.choice import listed_options, option_letter, reference_option, stated_letter
from data_gen.text import normalise

MODES = ("auto", "exact", "choice", "none")
__all__ = ["MODES", "is_correct", "normalise", "option_letter", "stated_letter"]


def _matches(generated: str, reference: str, mode: str, question: str) -> bool:
    """One reference under a binary mode (auto, exact, choice)."""
    if mode == "auto":
        mode = "choice" if option_letter(reference) is not None and len(normalise(reference)) <= 1 else "exact"
    if mode == "choice":
        ref = option_letter(reference)
        if ref is None:  # reference is not a letter: fall back to the text
            return normalise(generated) == normalise(reference)
        return stated_letter(generated, listed_options(question) or reference_option(reference)) == ref
    return normalise(generated) == normalise(reference)


def is_correct(generated: str, reference: str, mode: str = "auto", question: str = "") -> bool:
    """Compare a generated answer with the reference under `mode` (see module docstring). question: the
    instruction, whose listed options ("A. cat" lines) let a multiple-choice answer name an option by its text."""
    if mode not in MODES:
        raise ValueError(f"unknown correctness mode {mode!r}: expected one of {', '.join(MODES)}; "
                         f"set it on the command line, e.g. correctness=exact")
    if mode == "none":
        return True
    return _matches(generated, reference, mode, question)
