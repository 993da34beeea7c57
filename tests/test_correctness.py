import pytest

from data_gen.correctness import is_correct, normalise, option_letter, stated_letter


@pytest.mark.parametrize("generated,reference,mode,expected", [
    ("Circle.", "circle", "exact", True),
    ("The red  circle!", "red circle", "exact", True),
    ("a square", "circle", "exact", False),
    ("red circle", "circle", "exact", False),  # exact, not containment
    ("B", "B", "choice", True),
    ("(B) a cat", "B", "choice", True),
    ("The answer is c.", "C", "choice", True),
    ("Answer: D", "(D) dog", "choice", True),
    ("A", "B", "choice", False),
    ("I cannot tell", "B", "choice", False),
    ("B", "B", "auto", True),  # auto: letter reference -> choice
    ("(B)", "b", "auto", True),
    ("A dog", "B", "auto", False),
    ("Cat.", "cat", "auto", True),  # auto: text reference -> exact
    ("dog", "cat", "auto", False),
    ("anything", "cat", "none", True),
])
def test_is_correct(generated, reference, mode, expected):
    assert is_correct(generated, reference, mode) is expected


def test_normalise_and_letters():
    assert normalise("  The Big, RED ball. ") == "big red ball"
    assert option_letter("A cat") is None  # text that starts with an article is not option A
    assert option_letter("B. a cat") == "B"
    assert stated_letter("no letter here") is None


def test_unknown_mode_lists_modes():
    with pytest.raises(ValueError, match="exact"):
        is_correct("a", "a", "fuzzy")


def test_unknown_mode_names_the_real_option():
    # the option is `correctness=<mode>` in data_gen and eval; there is no `correctness.mode`
    with pytest.raises(ValueError) as err:
        is_correct("a", "a", "fuzzy")
    msg = str(err.value)
    assert "'fuzzy'" in msg and "correctness=exact" in msg and "correctness.mode" not in msg
    import data_gen.correctness as mod
    assert "correctness.mode" not in mod.__doc__ and "correctness=<mode>" in mod.__doc__
