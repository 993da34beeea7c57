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


# How models phrase a multiple-choice answer (reference "B"), with the option lmms-eval's / VLMEvalKit's
# extraction reads (data_gen/choice.py). Each was misread by "the first standalone capital wins".
QUESTION = "What is on the mat?\nA. a dog\nB. a cat\nC. a bird\nD. nothing\nAnswer with the option's letter."
MC_CORPUS = [
    ("B", "B"), ("b", "B"), ("B.", "B"), ("(B)", "B"), ("[B]", "B"), ("**B**", "B"), (" (b) ", "B"),
    ("B. a cat", "B"), ("(B) a cat", "B"), ("b) a cat", "B"), ("B: a cat", "B"),
    ("Answer: B", "B"), ("answer: b", "B"), ("ANSWER: (B)", "B"), ("The answer is B.", "B"),
    ("The answer is (B).", "B"), ("The correct answer is B because a cat sits there.", "B"),
    ("My answer would be b.", "B"), ("The answer is option B.", "B"), ("Best option: B", "B"),
    ("I think it is B.", "B"), ("I'd say B.", "B"), ("It is B, the cat.", "B"),
    ("A cat sits on the mat, so the answer is B", "B"),
    ("A dog is not there. The answer is B.", "B"),
    ("Option A shows a dog, but the answer is B.", "B"),
    ("Looking at the image, I can see a cat. So (B).", "B"),
    ("The best choice is B.", "B"), ("option b.", "B"),
    ("It is a cat.", "B"), ("a cat", "B"), ("Cat", "B"),  # the option's text instead of its letter
    ("There is a black cat on the mat.", "B"),
    # naming another option, or none
    ("A", "A"), ("The answer is A.", "A"), ("I think it is D.", "D"), ("It is a dog.", "A"),
    ("I cannot tell.", None), ("A cat or a dog, I am not sure.", None), ("The answer is a cat", "B"),
]


@pytest.mark.parametrize("generated,expected", MC_CORPUS)
def test_multiple_choice_phrasings(generated, expected):
    from data_gen.choice import listed_options

    assert stated_letter(generated, listed_options(QUESTION)) == expected
    assert is_correct(generated, "B", "choice", QUESTION) is (expected == "B")
    assert is_correct(generated, "B", "auto", QUESTION) is (expected == "B")


@pytest.mark.parametrize("generated,expected", [
    ("I think it is B.", "B"), ("A cat sits on the mat, so the answer is B", "B"), ("Answer: b", "B"),
    ("The answer is a cat.", None), ("It is (c).", "C"), ("I'm sure: D", "D"), ("A", "A"), ("i.", "I"),
])
def test_letters_without_known_options(generated, expected):
    assert stated_letter(generated) == expected


def test_option_text_from_the_reference_and_the_question():
    from data_gen.choice import listed_options

    assert is_correct("A cat.", "B. a cat", "choice") and not is_correct("A dog.", "B. a cat", "choice")
    assert listed_options(QUESTION) == {"A": "a dog", "B": "a cat", "C": "a bird", "D": "nothing"}
    assert listed_options("I. Introduction\nsome text") == {}  # not a list that runs A, B, ...
    opts = {"A": "red", "B": "dark red"}
    assert stated_letter("It is dark red.", opts) == "B"  # the longer option is the one named
    assert stated_letter("It is Z.", opts) is None  # not one of the listed letters


@pytest.mark.parametrize("word", ["red", "circle", "blue", "square", "triangle", "cross", "diamond", "ring",
                                  "green", "yellow"])
def test_synthetic_single_word_answers_unchanged(word):
    # the reference benchmark's answers are single words: auto stays normalised exact match
    assert is_correct(word, word) and is_correct(f"{word.capitalize()}.", word) and not is_correct("B", word)
    assert not is_correct(f"A {word} one", word) and not is_correct("I", word)


# ten annotators' answers: one "blue", two "dark blue", three "sky", four "grey"
VQA_REFS = ["blue"] + ["dark blue"] * 2 + ["sky"] * 3 + ["grey"] * 4


@pytest.mark.parametrize("generated,matches", [("navy", 0), ("blue", 1), ("Dark blue.", 2), ("the sky", 3),
                                               ("Grey", 4)])
def test_vqa_soft_accuracy(generated, matches):
    from data_gen.correctness import score

    assert score(generated, VQA_REFS, "vqa") == pytest.approx(min(matches / 3, 1))
    assert is_correct(generated, VQA_REFS, "vqa") is (matches > 0)  # data_gen keeps an answer a reference gives


def test_several_references_any_counts():
    assert is_correct("Navy", ["blue", "navy"], "exact") and not is_correct("cyan", ["blue", "navy"])
    assert is_correct("(C)", ["B", "C"], "choice") and is_correct("anything", [], "none")
