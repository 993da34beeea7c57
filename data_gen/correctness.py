"""Is the generated answer correct? The paper keeps only samples the MLLM answers correctly.

Modes (the data_gen and eval option `correctness=<mode>`, e.g. `python -m data_gen correctness=exact`):
    exact   normalised exact match (lower case, punctuation, articles and extra spaces removed)
    choice  multiple-choice letter: the option letter of the reference ("B", "(B)", "B. a cat")
            against the option the model names ("B", "(B) a cat", "I think it is B.", "Answer: b", or the
            option's text when the question lists the options; rules in data_gen/choice.py)
    vqa     VQAv2 soft accuracy over every reference answer (VQA sets give ten): min(matches / 3, 1),
            a match being a normalised exact match. eval averages it; data_gen keeps an answer that at
            least one reference gives (accuracy > 0). The official VQAv2 evaluator also averages over the
            ten leave-one-out subsets of the answers (0.3 instead of 1/3 for one match) and maps number
            words and contractions; this is the plain formula.
    auto    `choice` when the reference is an option letter, else `exact`
    none    every answer counts as correct (keep all samples, e.g. for a randomly initialised model)

Several reference answers (a source's `Item.answers`): exact and choice accept a match with any of them.
"""
from __future__ import annotations

from collections.abc import Sequence

from data_gen.choice import listed_options, option_letter, reference_option, stated_letter
from predictor.text import normalise

MODES = ("auto", "exact", "choice", "vqa", "none")
__all__ = ["MODES", "is_correct", "normalise", "option_letter", "score", "stated_letter"]


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


def score(generated: str, reference: str | Sequence[str], mode: str = "auto", question: str = "") -> float:
    """The answer's credit in [0, 1] under `mode` (module docstring): 0 or 1, a fraction under `vqa`.

    reference: one answer or several (any of them may match); question: the instruction, whose listed
    options ("A. cat" lines) let a multiple-choice answer name an option by its text.
    """
    if mode not in MODES:
        raise ValueError(f"unknown correctness mode {mode!r}: expected one of {', '.join(MODES)}; "
                         f"set it on the command line, e.g. correctness=exact")
    if mode == "none":
        return 1.0
    refs = [reference] if isinstance(reference, str) else list(reference)
    if mode == "vqa":
        said = normalise(generated)
        return min(sum(said == normalise(r) for r in refs) / 3, 1.0)
    return float(any(_matches(generated, r, mode, question) for r in refs))


def is_correct(generated: str, reference: str | Sequence[str], mode: str = "auto", question: str = "") -> bool:
    """Whether the answer earns any credit: `score(...) > 0` (for `vqa`: some reference gives it)."""
    return score(generated, reference, mode, question) > 0
