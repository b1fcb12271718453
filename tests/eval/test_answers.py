"""The answer parsers on messy model text, and their properties over generated text."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gem_stages.eval.answers import parse_box, parse_choice, parse_number, parse_points, parse_yesno


@pytest.mark.parametrize("text, expected", [
    ("B", "B"),
    ("(b)", "B"),
    ("B.", "B"),
    ("[C]", "C"),
    ("Answer: b", "B"),
    ("The answer is C.", "C"),
    ("the correct option is (D) because it is closer", "D"),
    ("B. the chair", "B"),
    ("C) left of the table", "C"),
    ("I think (B) fits best.", "B"),
    ("Looking at the frames, I pick B here.", "B"),
    ("A chair is next to the bed, so the answer is D", "D"),   # the article "A" is not option A
    ("A chair is next to the bed; I choose B", "B"),
    ("A", "A"),
    ("A.", "A"),
    ("between B and C, hard to say", None),                    # two lone letters: ambiguous
    ("A cat sits on a mat.", None),                            # only the article
    ("I don't know", None),                                    # "I" is not an option here (A-D)
    ("E", None),                                               # not among the options
    ("", None),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, "ABCD") == expected


def test_parse_choice_matches_option_text():
    assert parse_choice("The chair.", "ABC", ["table", "the chair", "lamp"]) == "B"
    assert parse_choice("sofa", "ABC", ["table", "chair", "lamp"]) is None


@pytest.mark.parametrize("text, unit, expected", [
    ("3", None, 3.0),
    ("about 2.5 m", None, 2.5),
    ("It is roughly 1,200 cm long", None, 1200.0),
    ("-3 degrees", None, -3.0),
    (".5", None, 0.5),
    ("There are three chairs.", None, 3.0),
    ("Twelve", None, 12.0),
    ("150 cm", "m", 1.5),
    ("2.5 meters", "cm", 250.0),
    ("The table is 3 ft wide", "m", 0.9144),
    ("12 square feet", "m2", 1.11483648),
    ("4 m", None, 4.0),
    ("2 chairs", "m", 2.0),                    # no unit written: the number as it is
    ("none at all", None, None),
    ("", None, None),
])
def test_parse_number(text, unit, expected):
    got = parse_number(text, unit)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("no.", "no"), ("Yes, the mug fits.", "yes"), ("I would say no", "no"),
    ("It is not possible", None), ("maybe", None), ("", None),
])
def test_parse_yesno(text, expected):
    assert parse_yesno(text) == expected


def test_parse_points_formats():
    assert parse_points("[(0.25, 0.7), (0.3,0.4)]") == [(0.25, 0.7), (0.3, 0.4)]
    assert parse_points("Point: [0.5, 0.5]") == [(0.5, 0.5)]
    assert parse_points("[[0.1, 0.2], [0.3, 0.4]]") == [(0.1, 0.2), (0.3, 0.4)]
    assert parse_points("(120, 240)", size=(480, 320)) == [(0.25, 0.75)]   # pixels with the image size
    assert parse_points("(500, 250)") == [(0.5, 0.25)]                      # Qwen3-VL's 0-1000 grid
    assert parse_points("(5000, 250)") is None                              # neither: unreadable
    assert parse_points("no idea") is None
    assert parse_points("[0.1, 0.2, 0.3, 0.4]") is None                     # a box is not a point


def test_parse_box_formats():
    assert parse_box("[0.1, 0.2, 0.5, 0.6]") == (0.1, 0.2, 0.5, 0.6)
    assert parse_box("box (50, 40, 10, 20)", size=(100, 200)) == (0.1, 0.1, 0.5, 0.2)  # reordered
    assert parse_box("[100, 200, 300, 400]") == (0.1, 0.2, 0.3, 0.4)
    assert parse_box("(0.1, 0.2)") is None


letters = st.sampled_from("ABCD")
filler = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,", max_size=30)


@given(letters, filler, st.sampled_from(["({})", "Answer: {}", "The answer is {}.", "{}. ", "[{}]", "{})"]))
def test_choice_read_back_in_any_wrapper(letter, tail, wrapper):
    """A letter in any documented wrapper, followed by lower-case prose, is read back. (A bare "A" followed by a
    lower-case word is the article, by rule 5.)"""
    assert parse_choice(wrapper.format(letter) + " " + tail, "ABCD") == letter


@given(letters, st.sampled_from(["", ".", " ", "\n"]))
def test_bare_letter_read_back(letter, end):
    assert parse_choice(letter + end, "ABCD") == letter


@given(filler)
def test_lowercase_prose_never_yields_a_letter(text):
    """Prose with no capital letters and no answer marker never invents an option."""
    assert parse_choice(text, "ABCD") is None or text.strip() in ("a", "b", "c", "d")


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda v: round(v, 3)), filler)
def test_number_read_back(value, tail):
    assert parse_number(f"{value} {tail}") == pytest.approx(value)


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)).map(lambda p: (round(p[0], 4), round(p[1], 4))),
                min_size=1, max_size=5))
def test_points_read_back(points):
    text = "[" + ", ".join(f"({x}, {y})" for x, y in points) + "]"
    assert parse_points(text) == [pytest.approx(p) for p in points]


@given(st.text(max_size=80))
def test_parsers_never_raise(text):
    """Any model text is read or reported unreadable (None), never an exception: grading never raises."""
    assert parse_choice(text, "ABCD") in (None, "A", "B", "C", "D")
    number = parse_number(text, unit="m")
    assert number is None or number == number  # not NaN
    assert parse_yesno(text) in (None, "yes", "no")
    for points in (parse_points(text), parse_points(text, size=(640, 480))):
        assert points is None or all(len(p) == 2 for p in points)
    box = parse_box(text)
    assert box is None or (box[0] <= box[2] and box[1] <= box[3])
