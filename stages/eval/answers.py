"""Reading an answer out of a model's free text. Each parser returns None when the text holds no readable answer;
the grader then scores the item 0 and counts it as unparsable.

Choice letters (parse_choice), tried in this order, the first rule that finds a valid letter wins:
  1. the whole reply is one letter, bare or wrapped: "B", "(b)", "B.", "[C]";
  2. an explicit marker: "Answer: b", "the answer is (C)", "answer is C.", "option D";
  3. the reply starts with a letter and punctuation: "B. the chair", "C) left", "A: yes";
  4. a letter in brackets anywhere: "I think (B) fits";
  5. capital letters standing alone as words, when they name exactly one valid option: "I pick B here". A capital
     "A" followed by a lower-case word is the article ("A chair is ..."), never option A; two different lone
     letters ("between B and C") are ambiguous and read as nothing;
  6. the reply is exactly one option's text ("chair" for "B. chair"), compared after SQuAD normalisation.
Numbers (parse_number): the first number in the text ("about 2.5 m", "1,200", "-3", ".5"), or else a number word
  from zero to twenty ("three chairs") since counting questions are often answered in words; with `unit` set
  (a length or area unit), a unit written after the number converts to it ("150 cm" -> 1.5 for unit="m").
Yes/no (parse_yesno): the first word when it is yes or no, else the only one of the two words the text contains.
Points (parse_points) and boxes (parse_box): every "(x, y)" / "[x, y]" pair, or the first "[x0, y0, x1, y1]".
  Coordinates all within [0, 1] are normalised already; larger ones are pixels when the image size is given, else
  Qwen3-VL's 0-1000 relative grid. Results are normalised to [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .metrics import normalize_answer

_NUMBER_RE = re.compile(r"(?<![\w.])([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)")
_NUM = r"\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*"
_PAIR_RE = re.compile(r"[(\[]" + _NUM + "," + _NUM + r"[)\]]")
_BOX_RE = re.compile(r"[(\[]" + _NUM + "," + _NUM + "," + _NUM + "," + _NUM + r"[)\]]")

_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen twenty").split()
_WORD_RE = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)

# Metres per unit (lengths) and square metres per unit (areas); longer spellings first so "cm" is not read as "m".
_LENGTH = {"millimeters": 1e-3, "millimetres": 1e-3, "mm": 1e-3, "centimeters": 1e-2, "centimetres": 1e-2,
           "cm": 1e-2, "kilometers": 1e3, "kilometres": 1e3, "km": 1e3, "meters": 1.0, "metres": 1.0, "meter": 1.0,
           "metre": 1.0, "m": 1.0, "feet": 0.3048, "foot": 0.3048, "ft": 0.3048, "inches": 0.0254, "inch": 0.0254,
           "in": 0.0254, "yards": 0.9144, "yard": 0.9144}
_AREA = {"square meters": 1.0, "square metres": 1.0, "sq m": 1.0, "m2": 1.0, "m²": 1.0, "square feet": 0.09290304,
         "sq ft": 0.09290304, "ft2": 0.09290304, "ft²": 0.09290304}
_UNIT_RE = re.compile(r"\s*(" + "|".join(re.escape(u) for u in sorted({**_AREA, **_LENGTH}, key=len, reverse=True))
                      + r")(?![a-z])", re.IGNORECASE)


def parse_choice(text: str, letters: str = "ABCD", choices: Sequence[str] | None = None) -> str | None:
    """The option letter (upper case, one of `letters`) the text answers with, by the rules above."""
    valid = set(letters.upper())
    stripped = text.strip()

    def pick(match: re.Match | None) -> str | None:
        return match.group(1).upper() if match and match.group(1).upper() in valid else None

    found = (
        pick(re.fullmatch(r"[(\[]?\s*([A-Za-z])\s*[)\].:]?", stripped))
        or pick(re.search(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*[:\-]?\s*[(\[]?([A-Za-z])\b(?![\w'])", stripped,
                          re.IGNORECASE))
        or pick(re.match(r"[(\[]?([A-Za-z])[)\].:](?:\s|$)", stripped))
        or pick(re.search(r"[(\[]([A-Za-z])[)\]]", stripped))
    )
    if found:
        return found
    lone = {m.group(1) for m in re.finditer(r"(?<![\w'])(?!A\s+[a-z])([A-Z])(?![\w'])", stripped)} & valid
    if len(lone) == 1:
        return lone.pop()
    if choices:
        said = normalize_answer(stripped)
        same = [letters[i].upper() for i, c in enumerate(choices) if i < len(letters) and normalize_answer(c) == said]
        if len(same) == 1:
            return same[0]
    return None


def parse_number(text: str, unit: str | None = None) -> float | None:
    """The first number in the text (digits, else a number word), converted to `unit` when one follows it."""
    match = _NUMBER_RE.search(text)
    if match:
        value = float(match.group(1).replace(",", ""))
        rest = text[match.end():]
    else:
        word = _WORD_RE.search(text)
        if not word:
            return None
        value, rest = float(_WORDS.index(word.group(1).lower())), text[word.end():]
    if unit is None:
        return value
    written = _UNIT_RE.match(rest)
    if written is None:
        return value
    said, want = written.group(1).lower(), unit.lower()
    for table in (_LENGTH, _AREA):
        if said in table and want in table:
            return value * table[said] / table[want]
    return value


def parse_yesno(text: str) -> str | None:
    words = re.findall(r"[a-z]+", text.lower())
    if words and words[0] in ("yes", "no"):
        return words[0]
    said = {w for w in words if w in ("yes", "no")}
    return said.pop() if len(said) == 1 else None


def _normalise(values: list[float], axes: list[int], size: tuple[int, int] | None) -> list[float] | None:
    """Coordinates to [0, 1]: kept when all are, divided by the image size (pixels) or by 1000 (Qwen3-VL's grid)."""
    if all(0.0 <= v <= 1.0 for v in values):
        return values
    if size is not None:
        return [v / size[a] for v, a in zip(values, axes)]
    if all(0.0 <= v <= 1000.0 for v in values):
        return [v / 1000.0 for v in values]
    return None


def parse_points(text: str, size: tuple[int, int] | None = None) -> list[tuple[float, float]] | None:
    """Every (x, y) pair in the text, normalised to [0, 1]; `size` is the image's (width, height) for pixels."""
    pairs = [(float(a), float(b)) for a, b in _PAIR_RE.findall(text)]
    if not pairs:
        return None
    flat = _normalise([v for p in pairs for v in p], [0, 1] * len(pairs), size)
    if flat is None:
        return None
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def parse_box(text: str, size: tuple[int, int] | None = None) -> tuple[float, float, float, float] | None:
    """The first (x0, y0, x1, y1) box in the text, normalised to [0, 1] and ordered so that x0 <= x1, y0 <= y1."""
    match = _BOX_RE.search(text)
    if not match:
        return None
    flat = _normalise([float(v) for v in match.groups()], [0, 1, 0, 1], size)
    if flat is None:
        return None
    x0, y0, x1, y1 = flat
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)
