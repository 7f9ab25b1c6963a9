"""Task registry: lookups, validation and YAML task files."""

import pytest

from eval import tasks
from eval.tasks import TASKS, TaskSpec, UnknownTaskError, get_task, load_task_file


def test_unknown_task_lists_known_names():
    with pytest.raises(ValueError, match="Unknown task 'icd11'.*icd10cm_chapter.*radiology_findings"):
        get_task("icd11")
    with pytest.raises(KeyError):
        get_task("icd11")


def test_error_message_is_readable():
    error = UnknownTaskError("Unknown task 'x'. Known tasks: a, b")
    assert str(error) == "Unknown task 'x'. Known tasks: a, b"


def test_default_suite_covers_the_task_types():
    types = {spec.task_type for spec in TASKS.values()}
    assert {"single_label", "multi_label", "token", "retrieval"} <= types
    assert get_task("radiology_mentions").metrics == ("seqeval_strict",)


def test_taskspec_validates_values():
    with pytest.raises(ValueError, match="unknown task_type 'ner'"):
        TaskSpec(name="x", task_type="ner", data={})
    with pytest.raises(ValueError, match="max_length=9000"):
        TaskSpec(name="x", task_type="single_label", data={}, max_length=9000)
    assert TaskSpec(name="x", task_type="single_label", data={}, text_fields="text").text_fields == ("text",)


def test_task_file_registers_with_paths_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "TASKS", dict(TASKS))
    (tmp_path / "task.yaml").write_text(
        "- name: my_notes\n  task_type: single_label\n  data: {train: data/train.jsonl, dev: d.jsonl, test: t.jsonl}\n"
        "  metrics: [accuracy]\n  main_metric: accuracy\n"
    )
    (spec,) = load_task_file(tmp_path / "task.yaml")
    assert tasks.get_task("my_notes") is spec
    assert spec.data["train"] == str(tmp_path / "data" / "train.jsonl")
    assert spec.metrics == ("accuracy",)


def test_task_file_with_unknown_field_names_file_and_task(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "TASKS", dict(TASKS))
    (tmp_path / "bad.yaml").write_text("- name: t\n  task_type: single_label\n  data: x\n  colour: red\n")
    with pytest.raises(ValueError, match=r"bad.yaml: task 't'.*colour"):
        load_task_file(tmp_path / "bad.yaml")
