"""Any benchmark whose records are JSON, by a small mapping file (benchmarks/NAME.yaml):

    name: my-spatial-qa             # the benchmark's name in results and MLflow
    root: data/my-spatial-qa        # its folder (relative: to the directory gemctl runs in)
    records: questions.jsonl        # a JSON array or JSONL file below root, or a glob ("*/item.json") of files
                                    # each holding one record (or an array of them)
    fields:                         # record field for each part; "a.b" reads a nested field
      question: question
      answer: answer
      images: image                 # a path or a list of paths, relative to image_root
      choices: options              # a list of options (leave out for free text, or see choices_in_question)
      category: type                # optional: per-category scores
    answer_format: letter           # letter ("B", "(b)"), index (into the choices), text, or number

Items with choices (a list field, or options written in the question as "A. ...", "(B) ..." lines with
choices_in_question: true) are multiple choice, scored by accuracy of the letter; an answer given as text is
matched to its option. Free-text answers score by normalised exact match or token F1 (open_metric), SQuAD's
definitions, named as such: this is not the official score of a benchmark that grades otherwise. Number answers
score by Mean Relative Accuracy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml

from gem_models.config import Bool, Int, Str, setting
from gem_stages.config import settings
from gem_stages.errors import InputError

from .answers import parse_number
from .benchmark import Benchmark, EvalItem, Graded
from .benchmarks.common import (
    LETTERS,
    MC_SUFFIX,
    SHORT_SUFFIX,
    choice_prompt,
    confined_file,
    grade,
    image_error,
    need,
    read_json,
    read_records,
)
from .metrics import normalize_answer, normalized_exact_match, token_f1

OPEN_METRICS = {"normalized_exact_match": normalized_exact_match, "token_f1": token_f1}
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[).:]\s*(.+?)\s*$", re.MULTILINE)


@settings
class MappingFields:
    """Which record field holds each part of an item."""

    question: Str = setting(..., "The question text.")
    answer: Str = setting(..., "The ground-truth answer (see answer_format).")
    images: Str | None = setting(None, "Image path, or list of paths, relative to image_root (null: text only).")
    choices: Str | None = setting(None, "List of the options, in letter order (null: free text, or "
                                  "choices_in_question).")
    id: Str | None = setting(None, "A unique id per record (null: the record's file and position).")
    category: Str | None = setting(None, "Per-category scores by this field (null: one category, or the folder "
                                   "with category_from_folder).")


@settings
class MappingConfig:
    name: Str = setting(..., "The benchmark's name in results.json and MLflow.", min_length=1)
    root: Str = setting(..., "The benchmark's folder; a relative path is taken from the working directory.")
    records: Str = setting(..., "A JSON array or JSONL file below root, or a glob of files of one record each.")
    fields: MappingFields = setting(..., "Record field names.")
    answer_format: Literal["letter", "index", "text", "number"] = setting(
        "letter", "letter: 'B' or '(b)'; index: a position in the choices; text: free text (or an option's "
                  "text); number: a numeric answer scored by Mean Relative Accuracy.")
    index_base: Int = setting(0, "The first choice's index when answer_format is index (0 or 1).", ge=0, le=1)
    choices_in_question: Bool = setting(
        False, "The options are written in the question, one per line as 'A. ...' or '(A) ...'.")
    image_root: Str | None = setting(
        None, "Folder below root that image paths are relative to (null: root; for globbed records, the "
              "record file's folder).")
    category_from_folder: Bool = setting(False, "Category = the record file's folder name (globbed records).")
    open_metric: Literal["normalized_exact_match", "token_f1"] = setting(
        "normalized_exact_match", "Score of free-text answers (SQuAD's normalisation).")


def _get(record: Any, dotted: str, where: str, key: str) -> Any:
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            raise InputError(f"{where}: missing field '{dotted}' (the mapping's fields.{key})")
        value = value[part]
    return value


class MappingBenchmark(Benchmark):
    def __init__(self, config: MappingConfig, source: Path | None = None):
        super().__init__(Path(config.root))
        self.config = config
        self.source = source  # the mapping file, for messages
        self.name = config.name
        f = config.fields
        self.has_choices = f.choices is not None or config.choices_in_question
        if self.has_choices:
            self.metric = "accuracy"
        elif config.answer_format == "number":
            self.metric = "MRA"
        else:
            self.metric = config.open_metric

    @classmethod
    def from_file(cls, path: Path | str) -> MappingBenchmark:
        path = Path(path)
        need(path, "a benchmark mapping file (benchmarks/NAME.yaml)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a mapping of settings (name, root, records, fields)")
        try:
            config = MappingConfig(**data)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
        except TypeError as e:  # pydantic dataclasses reject unknown keyword arguments before validating
            raise InputError(f"{path}: {e}") from None
        return cls(config, path)

    def _sources(self) -> list[tuple[Path, list[Any], bool, bool]]:
        """(file, its records, whether it is one of many globbed files, whether it held a single record object)."""
        need(self.root, f"the benchmark folder of {self.source or self.name}")
        pattern = self.config.records
        if any(ch in pattern for ch in "*?["):
            files = sorted(p for p in self.root.glob(pattern) if p.is_file())
            if not files:
                raise InputError(f"{self.root}: no files match records '{pattern}' ({self.source})")
            out = []
            for p in files:
                data = read_records(p) if p.suffix == ".jsonl" else read_json(p)
                out.append((p, data if isinstance(data, list) else [data], True, not isinstance(data, list)))
            return out
        path = need(self.root / pattern, f"the records file named in {self.source or 'the mapping'}")
        return [(path, read_records(path), False, False)]

    def items(self) -> list[EvalItem]:
        cfg, f = self.config, self.config.fields
        items = []
        for path, records, globbed, single in self._sources():
            for n, r in enumerate(records):
                where = f"{path} record {n}"
                question = _get(r, f.question, where, "question")
                if not isinstance(question, str):
                    raise InputError(f"{where}: field '{f.question}' must be text, got {type(question).__name__}")
                item = EvalItem(id=self._id(r, path, n, single, where), kind="open", question=question, answer=None)
                item.images, item.error = self._images(r, path, globbed, where)
                if f.category:
                    item.category = str(_get(r, f.category, where, "category"))
                elif cfg.category_from_folder:
                    item.category = path.parent.name
                answer = _get(r, f.answer, where, "answer")
                if self.has_choices:
                    item.kind, item.choices = "choice", self._choices(r, question, where)
                    item.answer = self._letter(answer, item.choices, where)
                elif cfg.answer_format == "number":
                    value = answer if isinstance(answer, (int, float)) and not isinstance(answer, bool) else (
                        parse_number(answer) if isinstance(answer, str) else None)
                    if value is None:
                        raise InputError(f"{where}: answer {answer!r:.60} is not a number (answer_format: number)")
                    item.kind, item.answer = "numeric", float(value)
                else:
                    if not isinstance(answer, (str, int, float)):
                        raise InputError(f"{where}: answer must be text, got {type(answer).__name__}")
                    item.answer = str(answer)
                items.append(item)
        ids = [i.id for i in items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise InputError(f"{self.source}: id '{dup}' appears more than once; map fields.id to a unique field")
        return items

    def _id(self, record: Any, path: Path, n: int, single: bool, where: str) -> str:
        """The mapped id field, else the record's file (below root) and, in a file of many, its position."""
        if self.config.fields.id:
            return str(_get(record, self.config.fields.id, where, "id"))
        name = path.relative_to(self.root).as_posix()
        return name if single else f"{name}#{n}"

    def _images(self, record: Any, path: Path, globbed: bool, where: str) -> tuple[list[str], str | None]:
        key = self.config.fields.images
        if key is None:
            return [], None
        value = _get(record, key, where, "images")
        paths = [value] if isinstance(value, str) else value
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise InputError(f"{where}: field '{key}' must be a path or a list of paths, got {value!r:.60}")
        base = self.root / self.config.image_root if self.config.image_root else (
            path.parent if globbed else self.root)
        files = []
        for rel in paths:
            # confined to the benchmark root, also when image_root or the records' folder is the base
            found = confined_file(self.root, os.path.relpath(base / rel, self.root), where)
            if found is None:
                raise InputError(f"{where}: image {base / rel} not found (image paths are relative to {base})")
            files.append(found)
        errors = [f"{p.name}: {e}" for p in files if (e := image_error(p))]
        return [str(p) for p in files], errors[0] if errors else None

    def _choices(self, record: Any, question: str, where: str) -> list[str]:
        key = self.config.fields.choices
        if key is not None:
            choices = _get(record, key, where, "choices")
            if not isinstance(choices, list) or not choices:
                raise InputError(f"{where}: field '{key}' must be a non-empty list of options, got {choices!r:.60}")
            return [str(c) for c in choices]
        lines = _OPTION_LINE.findall(question)
        letters = [letter for letter, _ in lines]
        if len(lines) < 2 or letters != list(LETTERS[: len(lines)]):
            raise InputError(f"{where}: no options 'A. ...', 'B. ...' found in the question (choices_in_question)")
        return [text for _, text in lines]

    def _letter(self, answer: Any, choices: list[str], where: str) -> str:
        fmt, k = self.config.answer_format, len(choices)
        if fmt == "index":
            if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer - self.config.index_base < k:
                raise InputError(f"{where}: answer {answer!r:.60} is not an index into its {k} choices "
                                 f"(index_base {self.config.index_base})")
            return LETTERS[answer - self.config.index_base]
        if not isinstance(answer, str):
            raise InputError(f"{where}: answer {answer!r:.60} must be text for answer_format: {fmt}")
        if fmt == "letter":
            letter = answer.strip().strip("().").upper()
            if len(letter) != 1 or letter not in LETTERS[:k]:
                raise InputError(f"{where}: answer {answer!r:.60} is not a letter A to {LETTERS[k - 1]}")
            return letter
        same = [i for i, c in enumerate(choices) if normalize_answer(c) == normalize_answer(answer)]
        if len(same) != 1:
            raise InputError(f"{where}: answer {answer!r:.60} matches {len(same)} of the choices, not exactly one")
        return LETTERS[same[0]]

    def prompt(self, item: EvalItem) -> str:
        if item.kind == "choice":
            if self.config.choices_in_question and self.config.fields.choices is None:
                return f"{item.question}\n{MC_SUFFIX}"
            return choice_prompt(item.question, item.choices or [])
        return f"{item.question}\n{SHORT_SUFFIX}"

    def grade(self, item: EvalItem, text: str) -> Graded:
        if item.kind != "open" or item.error is not None:
            return grade(item, text)
        said = text.strip()
        if not normalize_answer(said):
            return Graded(item.id, None, 0.0, note="unparsable")
        return Graded(item.id, said, OPEN_METRICS[self.config.open_metric](said, item.answer))
