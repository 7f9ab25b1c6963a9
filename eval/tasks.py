"""Task registry: every evaluation task is one small `TaskSpec` in the `TASKS` dict.

A task says what kind of head it needs (`task_type`), where its data comes from (`data`), which fields hold the
text and the labels, which local `evaluate` metric modules score it and which of their numbers is the headline
(`main_metric`). The runner never branches on task names, only on `task_type`.

`data` is one of:

- the name of a builder of the default offline suite (`eval.suite.BUILDERS`), e.g. ``"icd10cm_chapter"``;
- a mapping from split name to a local file (``{"train": "a.jsonl", "dev": "b.jsonl", "test": "c.jsonl"}``;
  jsonl, json, csv, tsv, parquet, or CoNLL token/tag files ``.conll``/``.bio``/``.iob`` for token tasks);
- a folder written by `datasets.DatasetDict.save_to_disk`;
- a Hugging Face Hub dataset id (``"org/name"``), which needs network access.

Users add their own tasks with `register_task` or a YAML file (`load_task_file`), without touching this module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

TASK_TYPES: dict[str, str] = {
    "single_label": "one class per text (or text pair); softmax head",
    "multi_label": "any subset of classes per text; sigmoid head, one logit per class",
    "token": "one IOB2 tag per word; entity-level strict scoring with seqeval",
    "qa": "extractive question answering: answer span in a context (SQuAD format); sliding windows; EM and token F1",
    "multiple_choice": "pick one of several candidate answers; each (question, choice) pair scored; accuracy",
    "regression": "one real number per text (or text pair); MSE head",
    "retrieval": "no fine-tuning: mean-pooled embeddings, cosine similarity, ranking metrics",
}

# Tasks the runner can run (today: every type in TASK_TYPES).
RUNNABLE_TASK_TYPES = ("single_label", "multi_label", "token", "qa", "multiple_choice", "regression", "retrieval")

# Defaults that replace the generic ones (text / label / accuracy+f1 / f1_macro) for task types whose data and
# scores look different, when a spec leaves those fields at the generic default.
_GENERIC_DEFAULTS: dict[str, Any] = {"text_fields": ("text",), "label_field": "label",
                                     "metrics": ("accuracy", "f1"), "main_metric": "f1_macro"}
TYPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "qa": {"text_fields": ("question", "context"), "label_field": "answers", "metrics": ("squad",),
           "main_metric": "f1"},
    "multiple_choice": {"text_fields": ("question",), "metrics": ("accuracy",), "main_metric": "accuracy"},
}

MAX_SUPPORTED_LENGTH = 8192


class UnknownTaskError(ValueError, KeyError):
    """Raised by `get_task` for a name that is not registered; catchable as ValueError or KeyError."""

    def __str__(self) -> str:  # KeyError would otherwise print the message with quotes
        return str(self.args[0])


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task.

    Attributes:
        name: registry key, also the results file name.
        task_type: one of `TASK_TYPES`.
        data: builder name, split->file mapping, saved-dataset folder or Hub dataset id (see module docstring).
        text_fields: one field, or two for text pairs (`retrieval` uses the `text` field of queries and corpus).
            `qa`: exactly (question, context), default ("question", "context"). `multiple_choice`: (question,)
            pairs each choice with the question; (context, question) pairs the context with "question choice"
            (the SWAG layout); default ("question",).
        label_field: the label column (`labels` list for multi_label, `tags` for token tasks, a float for
            regression, `relevant_ids` for retrieval queries, SQuAD-style `answers` = {"text": [...],
            "answer_start": [...]} for qa, the correct choice's index, key or text for multiple_choice).
        metrics: names of local metric modules under `eval/metrics/`.
        main_metric: the number that reports and the model card show, and early stopping watches.
        description: one or two sentences for the report.
        max_length: tokens per input window; longer documents are chunked (sequence tasks) or truncated (token).
        tokens_field: for token tasks, the column with the list of words.
        hub_config: optional Hub dataset configuration name.
        choice_fields: for multiple_choice, one field holding the list of choices (or a mapping key -> text,
            e.g. MedQA's options {"A": ..., "B": ...}), or several fields holding one choice each (SWAG's
            ending0..ending3, MedMCQA's opa..opd). Every row of a task must have the same number of choices.
        extra: task-type options: qa reads `version_2_with_negative` (bool: rows with no answer are allowed and the
            model may answer "", as in `run_qa.py`), `null_score_diff_threshold` (float, default 0) and
            `max_answer_length` (tokens; overrides `RunConfig.max_answer_length`).

    For `qa` and `multiple_choice`, fields left at the generic defaults (text_fields ("text",), label_field
    "label", metrics ("accuracy", "f1"), main_metric "f1_macro") take that type's defaults (`TYPE_DEFAULTS`).
    """

    name: str
    task_type: str
    data: str | Mapping[str, str]
    text_fields: tuple[str, ...] = ("text",)
    label_field: str = "label"
    metrics: tuple[str, ...] = ("accuracy", "f1")
    main_metric: str = "f1_macro"
    description: str = ""
    max_length: int = 128
    tokens_field: str = "tokens"
    hub_config: str | None = None
    choice_fields: tuple[str, ...] = ("choices",)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ValueError(
                f"Task {self.name!r}: unknown task_type {self.task_type!r}; expected one of {sorted(TASK_TYPES)}"
            )
        if isinstance(self.text_fields, str):  # a common YAML slip: `text_fields: text`
            object.__setattr__(self, "text_fields", (self.text_fields,))
        if isinstance(self.choice_fields, str):
            object.__setattr__(self, "choice_fields", (self.choice_fields,))
        object.__setattr__(self, "text_fields", tuple(self.text_fields))
        object.__setattr__(self, "choice_fields", tuple(self.choice_fields))
        for key, value in TYPE_DEFAULTS.get(self.task_type, {}).items():
            if getattr(self, key) == _GENERIC_DEFAULTS[key]:
                object.__setattr__(self, key, value)
        if self.task_type == "qa" and len(self.text_fields) != 2:
            raise ValueError(f"Task {self.name!r}: a qa task needs text_fields (question, context), "
                             f"got {self.text_fields!r}")
        if self.task_type == "multiple_choice" and not self.choice_fields:
            raise ValueError(f"Task {self.name!r}: a multiple_choice task needs choice_fields")
        if not 1 <= len(self.text_fields) <= 2:
            raise ValueError(f"Task {self.name!r}: text_fields must name 1 or 2 fields, got {self.text_fields!r}")
        if not 8 <= self.max_length <= MAX_SUPPORTED_LENGTH:
            raise ValueError(
                f"Task {self.name!r}: max_length={self.max_length} is outside [8, {MAX_SUPPORTED_LENGTH}]"
            )
        if not self.metrics:
            raise ValueError(f"Task {self.name!r}: needs at least one metric")

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2


def _suite_tasks() -> dict[str, TaskSpec]:
    """The default offline suite; data comes from builders in `eval.suite` (real package data, no network)."""
    specs = [
        TaskSpec(
            name="icd10cm_chapter",
            task_type="single_label",
            data="icd10cm_chapter",
            metrics=("accuracy", "f1"),
            main_metric="f1_macro",
            description="ICD-10-CM code description -> its chapter in the CDC tabular list (21 chapters).",
            max_length=64,
        ),
        TaskSpec(
            name="icd10cm_ccsr",
            task_type="single_label",
            data="icd10cm_ccsr",
            metrics=("accuracy", "f1"),
            main_metric="f1_macro",
            description="ICD-10-CM code description -> CCSR default category (the 30 most frequent categories).",
            max_length=64,
        ),
        TaskSpec(
            name="pubmed_mesh",
            task_type="multi_label",
            data="pubmed_mesh",
            label_field="labels",
            metrics=("multilabel",),
            main_metric="auroc_macro",
            description="MEDLINE title + abstract -> the 20 most frequent MeSH descriptors (multi-label).",
            max_length=256,
        ),
        TaskSpec(
            name="pubmed_pubtype",
            task_type="single_label",
            data="pubmed_pubtype",
            metrics=("accuracy", "f1"),
            main_metric="f1_macro",
            description="MEDLINE title + abstract -> most specific publication type (6 types).",
            max_length=256,
        ),
        TaskSpec(
            name="radiology_findings",
            task_type="multi_label",
            data="radiology_findings",
            label_field="labels",
            metrics=("multilabel",),
            main_metric="auroc_macro",
            description="Synthetic chest X-ray report -> findings labelled 'definitely present' (15 most frequent).",
            max_length=256,
        ),
        TaskSpec(
            name="radiology_mentions",
            task_type="token",
            data="radiology_mentions",
            label_field="tags",
            metrics=("seqeval_strict",),
            main_metric="f1",
            description="Finding mentions in synthetic radiology report sentences, typed by assertion "
            "(PRESENT/ABSENT/UNCERTAIN). Silver labels derived from the radlabels matcher output.",
            max_length=128,
        ),
        TaskSpec(
            name="icd10cm_synonym_retrieval",
            task_type="retrieval",
            data="icd10cm_synonym_retrieval",
            label_field="relevant_ids",
            metrics=("retrieval",),
            main_metric="ndcg@10",
            description="ICD-10-CM inclusion term -> its code's description among all candidate descriptions.",
            max_length=64,
        ),
    ]
    return {spec.name: spec for spec in specs}


TASKS: dict[str, TaskSpec] = _suite_tasks()

# The default suite, in report order.
DEFAULT_SUITE: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> TaskSpec:
    """Return the registered task `name`, or raise `UnknownTaskError` listing the known names."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"Unknown task {name!r}. Known tasks: {', '.join(sorted(TASKS))}") from None


def register_task(spec: TaskSpec, overwrite: bool = False) -> TaskSpec:
    """Add `spec` to `TASKS`; refuse to replace an existing task unless `overwrite`."""
    if spec.name in TASKS and not overwrite and TASKS[spec.name] != spec:
        raise ValueError(f"Task {spec.name!r} is already registered; pass overwrite=True to replace it")
    TASKS[spec.name] = spec
    return spec


def load_task_file(path: str | Path, overwrite: bool = False) -> list[TaskSpec]:
    """Register the tasks of a YAML file: a list of mappings with `TaskSpec` fields.

    Relative file paths in `data` are resolved against the YAML file's folder, so a task file and its data can
    move together.
    """
    path = Path(path)
    entries = yaml.safe_load(path.read_text())
    if not isinstance(entries, list):
        raise TypeError(f"{path}: expected a YAML list of tasks, got {type(entries).__name__}")
    specs = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"{path}: task #{index} must be a mapping with at least 'name', got {entry!r}")
        entry = dict(entry)
        if isinstance(entry.get("data"), dict):
            entry["data"] = {split: str((path.parent / file).resolve()) for split, file in entry["data"].items()}
        for key in ("text_fields", "metrics", "choice_fields"):
            if isinstance(entry.get(key), list):
                entry[key] = tuple(entry[key])
        try:
            spec = TaskSpec(**entry)
        except TypeError as error:
            raise ValueError(f"{path}: task {entry['name']!r}: {error}") from None
        specs.append(register_task(spec, overwrite=overwrite))
    logger.info("Registered %d task(s) from %s: %s", len(specs), path, ", ".join(s.name for s in specs))
    return specs
