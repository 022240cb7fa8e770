import pytest

from kpod.rationale import answers_match, extract_answer, join_rationale_and_answer, split_steps, strip_answer_sentence

TEXTS = [
    "Mr. Smith has 3.5 apples. He buys 2 more!\nSo he has $9.96 now.  Done",
    "It costs .3 dollars each? Yes.\n\nTotal: 0.83 + 1.2 = 2.03.",
    "  leading space. e.g. this stays. end",
    "",
    "no punctuation at all",
    "Step 1.\n\n\nStep 2. ",
]


@pytest.mark.parametrize("text", TEXTS)
def test_split_steps_joins_back_exactly(text):
    steps = split_steps(text)
    assert "".join(steps) == text
    assert all(s.strip() for s in steps) or text.strip() == ""


def test_split_steps_boundaries():
    assert split_steps("Mr. Smith has 3.5 apples. He buys 2 more!\nSo he has $9.96 now.  Done") == [
        "Mr. Smith has 3.5 apples. ",
        "He buys 2 more!\n",
        "So he has $9.96 now.  ",
        "Done",
    ]
    assert split_steps("It costs .3 dollars.") == ["It costs .3 dollars."]
    assert split_steps("Step 1.\n\n\nStep 2. ") == ["Step 1.\n\n\n", "Step 2. "]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("So 4 + 5 = 9. Therefore, the answer is 9.", "9"),
        ("The answer is $1,234.50.", "1234.5"),
        ("She lost 5. Now she has -3 left", "-3"),
        ("They made 2 dollars a day over the remaining 57 days.", "2"),
        ("So they fill 108 x 58 = 6264 drums in 58 days.", "6264"),
        ("The answer is 50%.", "50"),
        ("It is 3/4 of the cake. The answer is 3/4", "0.75"),
        ("The answer is (79 - 53).", "26"),
        ("We get 12. Then 15", "15"),
        ("the answer is 12.\n\nQ: another 7", "12"),
        ("5-3 = 2", "2"),
        ("nothing here", None),
    ],
)
def test_extract_math(text, expected):
    assert extract_answer(text, "math") == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("So the answer is (d) math problem.", "D"),
        ("Therefore, the answer is B.", "B"),
        ("A person would choose C", "C"),
        ("I think they would open doors", "C"),
        ("A man walked in.", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_answer(text, "choice", ["annoy", "eat meat", "open doors", "need food", "jog"]) == expected


def test_last_number_fallback():
    assert (
        extract_answer("They made 2 dollars a day over the remaining 57 days.", "math", fallback="last_number") == "57"
    )


def test_answers_match_tolerance():
    assert answers_match("18.00001", "18", "math")
    assert not answers_match("18.1", "18", "math")
    assert answers_match("b", "B", "choice")
    assert not answers_match(None, "3", "math")


def test_answer_sentence_round_trip():
    text = join_rationale_and_answer("He has 5 apples.", "5")
    assert text == "He has 5 apples. Therefore, the answer is 5."
    assert strip_answer_sentence(text) == "He has 5 apples."
    assert extract_answer(text, "math") == "5"


def test_hedged_choice_answers_take_the_first_choice_named():
    choices = ["bank", "library", "school", "park", "zoo"]
    assert extract_answer("So the answer is A or C.", "choice", choices) == "A"
    assert extract_answer("Therefore, the answer is (A) or (C).", "choice", choices) == "A"
    assert extract_answer("the answer is library or bank.", "choice", choices) == "B"
    assert extract_answer("The answer is either bank or park.", "choice", choices) == "A"
    # without the trigger, the option named last still wins
    assert extract_answer("Not the bank; people read in a library.", "choice", choices) == "B"
    # zero-shot-CoT's hedges: the first option letter after the trigger, as its answer cleansing takes
    assert extract_answer("So the answer is probably A or C.", "choice", choices) == "A"
    assert extract_answer("Therefore, the answer is most likely A, B, or D.", "choice", choices) == "A"
    assert extract_answer("the answer is either A or B.", "choice", choices) == "A"
    assert extract_answer("the answer is (probably) C, but maybe E.", "choice", choices) == "C"
    # a capital inside a word or an article is no option letter
    assert extract_answer("the answer is But not sure. A lot say E", "choice", choices) == "E"
