"""Loading task data into a `datasets.DatasetDict` with checked splits and labels.

Sources (see `eval.tasks`): builders of the default suite, local files per split (jsonl/json/csv/tsv/parquet
through `datasets.load_dataset`, CoNLL token/tag files through `read_conll`), `save_to_disk` folders, and Hub
dataset ids (which fail with an actionable message when offline).

Checks that raise a clear error instead of silently dropping data:
- a required split is missing (the message names the task and the splits that exist);
- a required field is missing (names the split and the columns that exist);
- dev/test labels that never occur in train (names the labels), since the head cannot predict them;
- a malformed CoNLL line (names `file:line`);
- qa rows: an answer whose `answer_start` does not point at its text in the context, an answer missing `text` or
  `answer_start`, or no answer at all without `version_2_with_negative` (names the split, the row and its id);
- multiple_choice rows: a missing choice, a label that is not a valid index/key/text of the row's choices, or a
  number of choices different from the task's (names the split and the row).

Rows with an empty text or a missing label are skipped and counted in the `DataReport`, which is logged.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from eval.tasks import TaskSpec

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev", "development": "dev", "queries": "test"}
CONLL_SUFFIXES = (".conll", ".conll03", ".bio", ".iob", ".iob2", ".iobes")
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
_TAG_PATTERN = re.compile(r"^(O|[BIES]-.+)$")


class DataError(ValueError):
    """Bad or missing task data; the message names the task, file, split, field or label at fault."""


@dataclass
class DataReport:
    """What a task load read, kept and skipped (with reasons), per split."""

    task: str
    source: str
    read: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, split: str, reason: str, count: int = 1) -> None:
        reasons = self.skipped.setdefault(split, {})
        reasons[reason] = reasons.get(reason, 0) + count

    def summary(self) -> str:
        parts = []
        for split, n_read in self.read.items():
            skipped = self.skipped.get(split, {})
            why = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
            kept = self.kept.get(split, 0)
            parts.append(f"{split}: read {n_read}, kept {kept}" + (f", skipped {why}" if why else ""))
        text = f"task {self.task} from {self.source}: " + "; ".join(parts)
        return text + ("".join(f" [{note}]" for note in self.notes))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "read": self.read, "kept": self.kept, "skipped": self.skipped,
                "notes": self.notes}


@dataclass
class TaskData:
    """A loaded task: its splits, its label names (empty for regression/retrieval) and the load report."""

    spec: TaskSpec
    splits: datasets.DatasetDict
    label_list: list[str]
    report: DataReport

    def sizes(self) -> dict[str, int]:
        return {split: len(rows) for split, rows in self.splits.items()}


# --------------------------------------------------------------------------------------------------------------
# CoNLL


def iobes_to_iob2(tags: Sequence[str]) -> list[str]:
    """Convert IOBES (a.k.a. BIOES/BILOU with E/S) tags to IOB2: S- -> B-, E- -> I-; B-, I-, O unchanged."""
    converted = []
    for tag in tags:
        if tag.startswith("S-"):
            converted.append("B-" + tag[2:])
        elif tag.startswith("E-"):
            converted.append("I-" + tag[2:])
        else:
            converted.append(tag)
    return converted


def read_conll(path: str | Path, scheme: str = "IOB2") -> list[dict[str, list[str]]]:
    """Read a CoNLL-style file: one token per line, token in the first column and its tag in the last.

    Columns are separated by tabs or spaces; a blank line ends a sentence; `-DOCSTART-` lines are skipped. Tags in
    `scheme="IOBES"` are converted to IOB2. A line with one column or a tag that is not O/B-/I-/E-/S- raises
    `DataError` naming `file:line`.
    """
    if scheme not in ("IOB2", "IOBES"):
        raise ValueError(f"read_conll: unknown scheme {scheme!r}; expected 'IOB2' or 'IOBES'")
    path = Path(path)
    sentences: list[dict[str, list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []

    def close_sentence() -> None:
        if tokens:
            sentences.append({"tokens": list(tokens), "tags": iobes_to_iob2(tags) if scheme == "IOBES" else list(tags)})
            tokens.clear()
            tags.clear()

    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            stripped = line.strip()
            if not stripped:
                close_sentence()
                continue
            if stripped.startswith("-DOCSTART-"):
                close_sentence()
                continue
            columns = stripped.split("\t") if "\t" in stripped else stripped.split()
            if len(columns) < 2:
                raise DataError(
                    f"{path}:{line_number}: expected a token and a tag separated by a tab or space, got {stripped!r}"
                )
            tag = columns[-1].strip()
            if not _TAG_PATTERN.match(tag) or (scheme == "IOB2" and tag[0] in "ES"):
                raise DataError(f"{path}:{line_number}: tag {tag!r} is not a valid {scheme} tag")
            tokens.append(columns[0].strip())
            tags.append(tag)
    close_sentence()
    logger.info("Read %d sentences, %d tokens from %s", len(sentences), sum(len(s["tokens"]) for s in sentences), path)
    return sentences


# --------------------------------------------------------------------------------------------------------------
# Sources


def _canonical_split(name: str) -> str:
    return SPLIT_ALIASES.get(name, name)


def load_local_files(paths: Mapping[str, str | Path]) -> datasets.DatasetDict:
    """Load one local file per split with `datasets.load_dataset` (or `read_conll` for CoNLL files)."""
    splits = {}
    for split, file in paths.items():
        file = Path(file)
        if not file.is_file():
            raise DataError(f"Data file for split {split!r} does not exist: {file}")
        suffix = file.suffix.lower()
        if suffix in CONLL_SUFFIXES:
            scheme = "IOBES" if suffix == ".iobes" else "IOB2"
            splits[_canonical_split(split)] = datasets.Dataset.from_list(read_conll(file, scheme=scheme))
            continue
        if suffix not in FILE_BUILDERS:
            raise DataError(f"{file}: unsupported file type {suffix!r}; use one of {sorted(FILE_BUILDERS)} or "
                            f"{list(CONLL_SUFFIXES)}")
        kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
        loaded = datasets.load_dataset(FILE_BUILDERS[suffix], data_files={"rows": str(file)}, split="rows", **kwargs)
        splits[_canonical_split(split)] = loaded
    return datasets.DatasetDict(splits)


def load_hub_dataset(dataset_id: str, config: str | None = None, task: str = "?") -> datasets.DatasetDict:
    """Load a Hub dataset; offline (or unreachable) it raises a `DataError` saying how to make it local."""
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    advice = (
        f"On a machine with network access run `datasets.load_dataset({dataset_id!r}"
        + (f", {config!r}" if config else "")
        + ").save_to_disk(DIR)` and point the task's `data` at DIR, or export the splits to jsonl and give the task "
        "a mapping {split: file}."
    )
    try:
        loaded = datasets.load_dataset(dataset_id, config)
    except Exception as error:  # datasets raises several types (ConnectionError, FileNotFoundError, ...) offline
        state = "offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1)" if offline else "not reachable or not found"
        raise DataError(
            f"Task {task!r}: could not load Hub dataset {dataset_id!r}: the Hugging Face Hub is {state} "
            f"({type(error).__name__}: {error}). {advice}"
        ) from error
    return datasets.DatasetDict({_canonical_split(split): rows for split, rows in loaded.items()})


def _load_source(spec: TaskSpec, cache_dir: str | Path | None) -> tuple[datasets.DatasetDict, str]:
    from eval import suite  # late import: suite imports this module

    if isinstance(spec.data, Mapping):
        return load_local_files(spec.data), "local files"
    if spec.data in suite.BUILDERS:
        paths = suite.build(spec.data, cache_dir=cache_dir)
        return load_local_files(paths), f"suite builder {spec.data!r}"
    if Path(spec.data).is_dir():
        loaded = datasets.load_from_disk(spec.data)
        if isinstance(loaded, datasets.Dataset):
            raise DataError(f"Task {spec.name!r}: {spec.data} holds a single Dataset; save a DatasetDict with splits")
        return datasets.DatasetDict({_canonical_split(s): d for s, d in loaded.items()}), f"folder {spec.data}"
    return load_hub_dataset(spec.data, spec.hub_config, task=spec.name), f"Hub dataset {spec.data!r}"


# --------------------------------------------------------------------------------------------------------------
# Checks


def required_splits(task_type: str) -> tuple[str, ...]:
    """Splits a task of this type needs: retrieval needs queries (`test`) and a `corpus`, the rest train/dev/test."""
    return ("test", "corpus") if task_type == "retrieval" else ("train", "dev", "test")


def check_splits(task: str, splits: Iterable[str], required: Sequence[str]) -> None:
    """Raise `DataError` naming the task, the missing split(s) and the available splits."""
    available = sorted(splits)
    missing = [split for split in required if split not in available]
    if missing:
        raise DataError(
            f"Task {task!r}: missing split(s) {missing}; available splits: {available}. "
            f"Needed: {list(required)} ('validation' is accepted for 'dev')."
        )


def check_fields(task: str, split: str, columns: Sequence[str], fields: Iterable[str]) -> None:
    missing = [name for name in fields if name not in columns]
    if missing:
        raise DataError(f"Task {task!r}, split {split!r}: missing field(s) {missing}; columns are {list(columns)}")


def _labels_of(task_type: str, value: Any) -> list[str]:
    if task_type == "single_label":
        return [str(value)]
    if task_type == "multi_label":
        return [str(label) for label in value]
    if task_type == "token":
        return [tag[2:] for tag in value if tag != "O"]  # entity types: B-X and I-X both need X seen in training
    return []


def check_unseen_labels(task: str, train_labels: Iterable[str], split_labels: Mapping[str, Iterable[str]]) -> None:
    """Raise `DataError` if any dev/test label never occurs in train (the model could never predict it)."""
    known = set(train_labels)
    problems = []
    for split, labels in split_labels.items():
        unseen = sorted(set(labels) - known)
        if unseen:
            problems.append(f"{split}: {unseen}")
    if problems:
        raise DataError(
            f"Task {task!r}: labels never seen in train: {'; '.join(problems)}. Add training examples for them or "
            "drop those rows from the evaluation split."
        )


# --------------------------------------------------------------------------------------------------------------
# Question answering and multiple choice rows


def row_location(task: str, split: str, index: int, row: Mapping[str, Any]) -> str:
    """'Task 't', split 'dev', row 3 (id 'q7')': rows count from 0 in the order the split was read."""
    row_id = row.get("id")
    return f"Task {task!r}, split {split!r}, row {index}" + (f" (id {row_id!r})" if row_id is not None else "")


def qa_answers(value: Any) -> tuple[list[str], list[int]]:
    """(texts, answer_starts) of a SQuAD-style answers value.

    Accepts the Hugging Face layout {"text": [...], "answer_start": [...]} (scalars are read as one answer) and the
    original SQuAD JSON layout, a list of {"text": ..., "answer_start": ...}. Raises ValueError saying what is
    wrong; `check_qa_row` adds the row.
    """
    if isinstance(value, Mapping):
        missing = [key for key in ("text", "answer_start") if value.get(key) is None]
        if missing:
            raise ValueError(f"answers has no {' or '.join(repr(key) for key in missing)} "
                             f"(expected {{'text': [...], 'answer_start': [...]}}), got {dict(value)!r}")
        texts, starts = value["text"], value["answer_start"]
        texts = [texts] if isinstance(texts, str) else list(texts)
        starts = [starts] if isinstance(starts, (int, float)) else list(starts)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        texts, starts = [], []
        for answer in value:
            if not isinstance(answer, Mapping) or answer.get("text") is None or answer.get("answer_start") is None:
                raise ValueError(f"each answer needs 'text' and 'answer_start', got {answer!r}")
            texts.append(answer["text"])
            starts.append(answer["answer_start"])
    else:
        raise ValueError(f"answers must be {{'text': [...], 'answer_start': [...]}}, got {value!r}")
    if len(texts) != len(starts):
        raise ValueError(f"answers has {len(texts)} text(s) but {len(starts)} answer_start(s)")
    clean_starts = []
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text:
            raise ValueError(f"answer text must be a non-empty string, got {text!r}")
        if isinstance(start, bool) or not isinstance(start, (int, float)) or float(start) != int(start):
            raise ValueError(f"answer_start must be an integer character offset, got {start!r}")
        clean_starts.append(int(start))
    return list(texts), clean_starts


def check_qa_row(spec: TaskSpec, split: str, index: int, row: Mapping[str, Any]) -> None:
    """Raise `DataError` (naming the row) unless every answer's text sits at its answer_start in the context."""
    where = row_location(spec.name, split, index, row)
    context = row[spec.text_fields[1]]
    try:
        texts, starts = qa_answers(row[spec.label_field])
    except ValueError as error:
        raise DataError(f"{where}: field {spec.label_field!r}: {error}") from None
    if not texts and not spec.extra.get("version_2_with_negative", False):
        raise DataError(
            f"{where}: no answer in {spec.label_field!r}. For SQuAD 2.0-style unanswerable questions set "
            "extra: {version_2_with_negative: true} on the task; otherwise drop the row."
        )
    for text, start in zip(texts, starts):
        found = context[start:start + len(text)] if start >= 0 else ""
        if found != text:
            hint = context.find(text)
            raise DataError(
                f"{where}: answer_start {start} does not match the answer text {text!r}: the context reads {found!r} "
                "there" + (f" (the text first occurs at {hint})" if hint >= 0 else " (the text is not in the context)")
            )


def row_choices(spec: TaskSpec, row: Mapping[str, Any]) -> tuple[list[str], list[str] | None]:
    """The choices of a multiple_choice row and, when they come as a mapping (MedQA options), their keys.

    Several `choice_fields` give one choice each; one field holds a list, or a mapping key -> text (keys whose value
    is None are dropped: `datasets` fills absent keys of a struct column with None).
    """
    if len(spec.choice_fields) > 1:
        return [row[name] for name in spec.choice_fields], None
    value = row[spec.choice_fields[0]]
    if isinstance(value, Mapping):
        keys = [key for key, text in value.items() if text is not None]
        return [value[key] for key in keys], keys
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"field {spec.choice_fields[0]!r} must hold a list of choices or a mapping key -> choice, "
                         f"got {value!r}")
    return list(value), None


def choice_label(value: Any, choices: Sequence[str], keys: Sequence[str] | None = None) -> int:
    """The index of the correct choice: `value` is an index, a key of mapping choices, or the choice's text."""
    if isinstance(value, bool):
        raise ValueError(f"label {value!r} is a boolean, not a choice index")
    if isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value) and float(value) == int(value):
        index = int(value)
        if not 0 <= index < len(choices):
            raise ValueError(f"label {index} is out of range for {len(choices)} choices (0..{len(choices) - 1})")
        return index
    if isinstance(value, str):
        if keys is not None and value in keys:
            return list(keys).index(value)
        if value in choices:
            return list(choices).index(value)
    raise ValueError(f"label {value!r} is neither a choice index (0..{len(choices) - 1})"
                     + (f", a choice key {list(keys)}" if keys else "") + " nor the text of a choice")


def check_choice_row(spec: TaskSpec, split: str, index: int, row: Mapping[str, Any],
                     expected: dict[str, Any]) -> None:
    """Raise `DataError` (naming the row) for a missing choice, a bad label or an unexpected number of choices.

    `expected` carries the first row's number of choices across splits (every row of a task needs the same number:
    a batch is a (batch, num_choices, seq) tensor and the head's softmax runs over num_choices).
    """
    where = row_location(spec.name, split, index, row)
    try:
        choices, keys = row_choices(spec, row)
    except ValueError as error:
        raise DataError(f"{where}: {error}") from None
    for position, choice in enumerate(choices):
        if not isinstance(choice, str):
            name = spec.choice_fields[position] if len(spec.choice_fields) > 1 else (
                f"{spec.choice_fields[0]}[{keys[position] if keys else position}]")
            raise DataError(f"{where}: choice field {name!r} is missing or not text (got {choice!r})")
    if len(choices) < 2:
        raise DataError(f"{where}: {len(choices)} choice(s); multiple choice needs at least 2")
    try:
        choice_label(row[spec.label_field], choices, keys)
    except ValueError as error:
        raise DataError(f"{where}: field {spec.label_field!r}: {error}") from None
    if "n_choices" not in expected:
        expected.update(n_choices=len(choices), where=f"split {split!r}, row {index}")
    elif len(choices) != expected["n_choices"]:
        raise DataError(
            f"{where}: {len(choices)} choices, but {expected['where']} has {expected['n_choices']}. Every row of a "
            "multiple_choice task needs the same number of choices: pad the short rows with a choice that is never "
            "correct, or split the task by number of choices."
        )


# --------------------------------------------------------------------------------------------------------------
# Main entry


def _clean_split(spec: TaskSpec, split: str, rows: datasets.Dataset, report: DataReport,
                 state: dict[str, Any] | None = None) -> datasets.Dataset:
    """Drop rows with an empty text or a missing label, counting each reason; check qa / multiple_choice rows.

    `state` is shared by the splits of one task (multiple_choice: the expected number of choices).
    """
    state = {} if state is None else state
    report.read[split] = len(rows)
    if spec.task_type == "token":
        text_fields: tuple[str, ...] = (spec.tokens_field,)
        label_field: str | None = spec.label_field
    elif spec.task_type == "retrieval":
        text_fields = ("text",)
        label_field = spec.label_field if split != "corpus" else None
    else:
        text_fields = spec.text_fields
        label_field = spec.label_field
    choice_fields = spec.choice_fields if spec.task_type == "multiple_choice" else ()
    check_fields(spec.name, split, rows.column_names,
                 text_fields + choice_fields + ((label_field,) if label_field else ()))

    def keep(row: dict[str, Any]) -> bool:
        if any(row[name] is None or len(row[name]) == 0 for name in text_fields):
            return False
        return label_field is None or row[label_field] is not None

    empty_text = sum(1 for row in rows if any(row[name] is None or len(row[name]) == 0 for name in text_fields))
    missing_label = 0 if label_field is None else sum(1 for value in rows[label_field] if value is None)
    if empty_text:
        report.skip(split, "empty text", empty_text)
    if missing_label:
        report.skip(split, "missing label", missing_label)
    if spec.task_type in ("qa", "multiple_choice"):  # before filtering, so errors name rows as they were read
        for index, row in enumerate(rows):
            if not keep(row):
                continue
            if spec.task_type == "qa":
                check_qa_row(spec, split, index, row)
            else:
                check_choice_row(spec, split, index, row, state)
    if empty_text or missing_label:
        rows = rows.filter(keep)
    if spec.task_type == "token":
        lengths = [(len(t), len(g)) for t, g in zip(rows[spec.tokens_field], rows[label_field])]
        for index, (n_tokens, n_tags) in enumerate(lengths):
            if n_tokens != n_tags:
                raise DataError(
                    f"Task {spec.name!r}, split {split!r}, row {index}: {n_tokens} tokens but {n_tags} tags"
                )
    report.kept[split] = len(rows)
    return rows


def _subsample(rows: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or len(rows) <= limit:
        return rows
    indices = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return rows.select(indices)


def load_task_data(
    spec: TaskSpec,
    cache_dir: str | Path | None = None,
    max_train: int | None = None,
    max_eval: int | None = None,
    seed: int = 0,
) -> TaskData:
    """Load, check and (optionally) subsample a task's splits.

    Args:
        spec: the task.
        cache_dir: where suite builders write their jsonl files (default `eval.suite.default_cache_dir()`).
        max_train: keep at most this many train rows (a fixed random subset; `seed` picks it).
        max_eval: keep at most this many dev and test rows (not applied to a retrieval corpus).
        seed: seed of the subsampling, independent of the fine-tuning seeds so all seeds see the same data.
    """
    raw, source = _load_source(spec, cache_dir)
    check_splits(spec.name, raw.keys(), required_splits(spec.task_type))
    report = DataReport(task=spec.name, source=source)
    splits = {}
    state: dict[str, Any] = {}
    for split in required_splits(spec.task_type):
        rows = _clean_split(spec, split, raw[split], report, state)
        if split == "train":
            rows = _subsample(rows, max_train, seed)
        elif split in ("dev", "test"):
            rows = _subsample(rows, max_eval, seed)
        if len(rows) != report.kept[split]:
            report.notes.append(f"{split} subsampled to {len(rows)} of {report.kept[split]}")
        if len(rows) == 0:
            raise DataError(f"Task {spec.name!r}: split {split!r} is empty after cleaning ({report.summary()})")
        splits[split] = rows
    label_list: list[str] = []
    if spec.task_type in ("single_label", "multi_label", "token"):
        train_labels = Counter(
            lab for value in splits["train"][spec.label_field] for lab in _labels_of(spec.task_type, value)
        )
        check_unseen_labels(
            spec.name,
            train_labels,
            {
                split: [lab for value in splits[split][spec.label_field] for lab in _labels_of(spec.task_type, value)]
                for split in ("dev", "test")
            },
        )
        if spec.task_type == "token":
            label_list = ["O"] + [f"{prefix}-{kind}" for kind in sorted(train_labels) for prefix in ("B", "I")]
        else:
            label_list = sorted(train_labels)
    logger.info("%s", report.summary())
    return TaskData(spec=spec, splits=datasets.DatasetDict(splits), label_list=label_list, report=report)
