"""Data loading: CoNLL parsing, split and label checks, offline Hub errors, skip reports."""

import json

import pytest

from eval.data import DataError, iobes_to_iob2, load_hub_dataset, load_task_data, read_conll
from eval.tasks import TaskSpec

FIXTURES = "tests/fixtures/eval"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_read_conll_two_sentences_skips_docstart():
    sentences = read_conll(f"{FIXTURES}/two_sentences.conll")
    assert len(sentences) == 2
    assert sentences[0]["tokens"][:4] == ["Patient", "has", "type", "2"]
    assert sentences[0]["tags"] == ["O", "O", "B-DISEASE", "I-DISEASE", "I-DISEASE", "I-DISEASE", "O", "B-DISEASE", "O"]
    assert sentences[1] == {"tokens": ["Metformin", "500", "mg", "daily", "."], "tags": ["B-DRUG", "O", "O", "O", "O"]}


def test_malformed_conll_line_names_file_and_line():
    with pytest.raises(DataError, match=r"malformed\.conll:3: .*'hypertension'"):
        read_conll(f"{FIXTURES}/malformed.conll")


def test_invalid_tag_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("aspirin\tB-DRUG\ndaily\tDRUG\n")
    with pytest.raises(DataError, match=r"bad\.conll:2: tag 'DRUG'"):
        read_conll(path)


def test_iobes_to_iob2():
    assert iobes_to_iob2(["S-DRUG", "O", "B-DIS", "I-DIS", "E-DIS"]) == ["B-DRUG", "O", "B-DIS", "I-DIS", "I-DIS"]


def test_read_conll_iobes_file_is_converted(tmp_path):
    path = tmp_path / "x.iobes"
    path.write_text("aspirin\tS-DRUG\nfor\tO\nchest\tB-DIS\npain\tE-DIS\n")
    assert read_conll(path, scheme="IOBES")[0]["tags"] == ["B-DRUG", "O", "B-DIS", "I-DIS"]


def test_local_jsonl_task_loads_and_reports_skips():
    spec = TaskSpec(name="cls", task_type="single_label",
                    data={split: f"{FIXTURES}/cls/{split}.jsonl" for split in ("train", "dev", "test")},
                    metrics=("accuracy",))
    data = load_task_data(spec)
    assert data.sizes() == {"train": 15, "dev": 3, "test": 3}
    assert data.label_list == ["cardiac", "renal", "respiratory"]
    assert data.report.read["train"] == 16
    assert data.report.skipped == {"train": {"empty text": 1}}


def test_conll_task_labels_are_iob2_over_train_types():
    spec = TaskSpec(name="ner", task_type="token", label_field="tags", metrics=("seqeval_strict",),
                    data={split: f"{FIXTURES}/ner/{split}.conll" for split in ("train", "dev", "test")})
    data = load_task_data(spec)
    assert data.label_list == ["O", "B-DISEASE", "I-DISEASE", "B-DRUG", "I-DRUG"]
    assert data.sizes() == {"train": 4, "dev": 2, "test": 2}


def test_missing_split_names_task_and_available_splits(tmp_path):
    rows = [{"text": "a", "label": "x"}]
    spec = TaskSpec(name="no_dev", task_type="single_label", metrics=("accuracy",),
                    data={"train": write_jsonl(tmp_path / "train.jsonl", rows),
                          "test": write_jsonl(tmp_path / "test.jsonl", rows)})
    expected = r"Task 'no_dev': missing split\(s\) \['dev'\]; available splits: \['test', 'train'\]"
    with pytest.raises(DataError, match=expected):
        load_task_data(spec)


def test_validation_split_is_accepted_as_dev(tmp_path):
    rows = [{"text": "a", "label": "x"}]
    spec = TaskSpec(name="val", task_type="single_label", metrics=("accuracy",),
                    data={name: write_jsonl(tmp_path / f"{name}.jsonl", rows)
                          for name in ("train", "validation", "test")})
    assert load_task_data(spec).sizes() == {"train": 1, "dev": 1, "test": 1}


def test_unseen_test_labels_are_named(tmp_path):
    train = [{"text": "a", "label": "cardiac"}, {"text": "b", "label": "renal"}]
    test = [{"text": "c", "label": "cardiac"}, {"text": "d", "label": "neuro"}, {"text": "e", "label": "derm"}]
    spec = TaskSpec(name="unseen", task_type="single_label", metrics=("accuracy",),
                    data={"train": write_jsonl(tmp_path / "train.jsonl", train),
                          "dev": write_jsonl(tmp_path / "dev.jsonl", train),
                          "test": write_jsonl(tmp_path / "test.jsonl", test)})
    with pytest.raises(DataError, match=r"Task 'unseen': labels never seen in train: test: \['derm', 'neuro'\]"):
        load_task_data(spec)


def test_unseen_multilabel_and_entity_types(tmp_path):
    train = [{"text": "a", "labels": ["x"]}]
    dev = [{"text": "b", "labels": ["x", "y"]}]
    spec = TaskSpec(name="ml", task_type="multi_label", label_field="labels", metrics=("multilabel",),
                    data={"train": write_jsonl(tmp_path / "train.jsonl", train),
                          "dev": write_jsonl(tmp_path / "dev.jsonl", dev),
                          "test": write_jsonl(tmp_path / "test.jsonl", train)})
    with pytest.raises(DataError, match=r"dev: \['y'\]"):
        load_task_data(spec)


def test_missing_field_names_split_and_columns(tmp_path):
    rows = [{"body": "a", "label": "x"}]
    spec = TaskSpec(name="f", task_type="single_label", metrics=("accuracy",),
                    data={name: write_jsonl(tmp_path / f"{name}.jsonl", rows) for name in ("train", "dev", "test")})
    expected = r"split 'train': missing field\(s\) \['text'\]; columns are \['body', 'label'\]"
    with pytest.raises(DataError, match=expected):
        load_task_data(spec)


def test_hub_dataset_offline_gives_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = r"Task 'hub': could not load Hub dataset 'no-org/no-such-set'.*offline.*save_to_disk"
    with pytest.raises(DataError, match=expected):
        load_hub_dataset("no-org/no-such-set", task="hub")


def test_subsampling_is_deterministic():
    spec = TaskSpec(name="cls", task_type="single_label", metrics=("accuracy",),
                    data={split: f"{FIXTURES}/cls/{split}.jsonl" for split in ("train", "dev", "test")})
    first = load_task_data(spec, max_train=5).splits["train"]["text"]
    second = load_task_data(spec, max_train=5).splits["train"]["text"]
    assert list(first) == list(second) and len(first) == 5
