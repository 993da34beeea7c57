"""Which option of a multiple-choice question does a generated answer name?

The rules follow the option extraction of lmms-eval (MMMU's `parse_multi_choice_response`: "(B)", then a
bare "B", then "B.", then the option's text; the answer-phrase prefixes of its Video-MME parser, "The answer
is", "Best option:") and of VLMEvalKit (`can_infer_option`: a letter counts only when exactly one option
letter stands alone; `can_infer_text`: else exactly one option's text). They are tried from the most
explicit statement to the least; the first rule that finds an option decides:

  1. the whole answer is a letter:              "B", "(b)", "B.", "**B**"
  2. it opens with a marked letter:             "B. a cat", "(B) a cat", "b) a cat", "B: cat"
  3. an answer phrase, the last one (a conclusion follows the reasoning):
                                                "Answer: B", "the answer is (b).", "My answer would be C"
  4. "option"/"choice" and one letter:          "Option B", "the best choice is C"
  5. one bracketed letter:                      "... so it has to be (B)"
  6. one standalone capital letter:             "I think it is B." ("A" and "I" before a lower-case word
                                                are the article and the pronoun: "A cat sits ...")
  7. one option's text, when the options are known: "It is a dog."

Rules 4 to 7 need exactly one option (two different ones name none: a guess is not an answer). A lower-case
letter counts only where it cannot be a word: alone, bracketed, or closing an answer phrase ("answer is c."
but not "answer is a cat"). The options are known when the question lists them one per line, as lmms-eval's
and VLMEvalKit's prompts do ("A. cat\\nB. dog"); then only their letters count.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from predictor.text import normalise

# a reference given as a bare option letter, optionally bracketed and followed by the option text
_REF_LETTER = re.compile(r"^\s*[\(\[]?([A-Za-z])[\)\]\.:]?(\s+.*)?$", re.DOTALL)
_REF_MARKED = re.compile(r"^\s*[\(\[]?[A-Za-z][\)\]\.:]")

_NOT_WORD = r"(?![A-Za-z0-9'’-])"  # the letter is not the start of a word ("B" but not "Bob", "I'm")
_ONLY = re.compile(r"^\W*([A-Za-z])\W*$")
_OPENING = re.compile(r"^\s*(?:\*\*)?(?:[\(\[]([A-Za-z])[\)\]]|([A-Za-z])\)|([A-Z])[.:](?=\s|$))")
_LINK = r"(?:\s*(?:is|would be|should be|will be|must be|[:=\-]))*\s*"
_LETTER = r"[\(\[\*]*([A-Za-z])[\)\]\*]*" + _NOT_WORD + r"(\s*(?:[.,;:!?]|$))?"
_PHRASE = re.compile(r"\banswer\b" + _LINK + r"(?:(?:option|choice|letter)\s*)?" + _LETTER, re.IGNORECASE)
_OPTION = re.compile(r"\b(?:option|choice)\b" + _LINK + _LETTER, re.IGNORECASE)
_BRACKETED = re.compile(r"[\(\[]([A-Za-z])[\)\]]")
_CAPITAL = re.compile(r"(?<![A-Za-z0-9'’-])([A-Z])" + _NOT_WORD + r"(\s+[a-z])?")
_LISTED = re.compile(r"^\s*[\(\[]?([A-Z])[\)\]\.:]\s+(\S.*?)\s*$", re.MULTILINE)


def option_letter(reference: str) -> str | None:
    """The option letter of a multiple-choice reference, or None if it is not one.

    A single letter alone counts ("B", "(B)", "b."); a letter followed by option text only when
    bracketed or punctuated ("B. a cat", "(B) a cat"), so that "A cat" is not option A.
    """
    m = _REF_LETTER.match(reference.strip())
    if m is None or (m.group(2) and not _REF_MARKED.match(reference)):
        return None
    return m.group(1).upper()


def reference_option(reference: str) -> dict[str, str]:
    """{letter: text} of a reference that gives both ("B. a cat" -> {"B": "a cat"}), else {}."""
    letter = option_letter(reference)
    text = _REF_MARKED.sub("", reference.strip(), count=1).strip() if letter else ""
    return {letter: text} if letter and text else {}


def listed_options(question: str) -> dict[str, str]:
    """The options a question lists one per line ("A. cat", "(B) dog", "C) bird") -> {"A": "cat", ...};
    {} unless they run A, B, ... (two at least), so that a stray "I. Introduction" line is no option list."""
    found = dict(_LISTED.findall(question or ""))
    letters = sorted(found)
    if len(letters) < 2 or letters != [chr(ord("A") + i) for i in range(len(letters))]:
        return {}
    return found


def _one(letters: list[str]) -> str | None:
    return letters[0] if len(set(letters)) == 1 else None


def stated_letter(generated: str, options: Mapping[str, str] | None = None) -> str | None:
    """The option letter a model's answer names (rules in the module docstring), or None.

    options: {letter: text} when known (e.g. `listed_options(question)`): only their letters count, and an
    answer that names one option's text instead of its letter names that option.
    """
    text = generated.strip()
    allowed = set(options) if options and len(options) > 1 else None  # one known option cannot bound the letters

    def ok(letter: str | None) -> str | None:
        letter = letter.upper() if letter else None
        return letter if letter and (allowed is None or letter in allowed) else None

    m = _ONLY.match(text)
    if m:
        return ok(m.group(1))
    m = _OPENING.match(text)
    opening = ok(next(g for g in m.groups() if g)) if m else None
    if opening:
        return opening
    # a lower-case letter after an answer phrase must end it: "the answer is c." but not "the answer is a cat"
    stated = [ok(m.group(1)) for m in _PHRASE.finditer(text) if m.group(1).isupper() or m.group(2) is not None]
    if any(stated):
        return [s for s in stated if s][-1]
    for pattern in (_OPTION, _BRACKETED):
        found = [ok(m.group(1)) for m in pattern.finditer(text)
                 if pattern is _BRACKETED or m.group(1).isupper() or m.group(2) is not None]
        if any(found):
            return _one([f for f in found if f])
    capitals = [ok(m.group(1)) for m in _CAPITAL.finditer(text) if not (m.group(1) in "AI" and m.group(2))]
    if any(capitals):
        return _one([c for c in capitals if c])
    return _named_option(text, options or {})


def _named_option(text: str, options: Mapping[str, str]) -> str | None:
    """The one option whose text the answer contains as whole words (one known option: the whole answer)."""
    said = f" {normalise(text)} "
    texts = {k: normalise(v) for k, v in options.items() if normalise(v)}
    if len(texts) == 1:
        (k, v), = texts.items()
        return k if said.strip() == v else None
    named = [k for k, v in texts.items() if f" {v} " in said]
    # "dark red" also contains option "red": the longer, more specific text is the one named
    named = [k for k in named if not any(k != o and texts[k] in texts[o] for o in named)]
    return _one(named)
