"""Default offline suite: split function, label rules and builders on the real package data."""

import json

import pytest

from eval import suite
from eval.suite import BuildReport, mention_spans, pubtype_label, sentence_bounds, split_of


def test_split_of_is_deterministic_and_roughly_80_10_10():
    keys = [f"key{i}" for i in range(2000)]
    splits = [split_of(key) for key in keys]
    assert splits == [split_of(key) for key in keys]
    shares = {name: splits.count(name) / len(keys) for name in ("train", "dev", "test")}
    assert 0.77 < shares["train"] < 0.83 and 0.08 < shares["dev"] < 0.12 and 0.08 < shares["test"] < 0.12


def test_pubtype_label_prefers_the_most_specific_type():
    assert pubtype_label(["Journal Article", "Clinical Trial", "Randomized Controlled Trial"]) == (
        "Randomized Controlled Trial")
    assert pubtype_label(["Journal Article", "Controlled Clinical Trial"]) == "Clinical Trial"
    assert pubtype_label(["Review", "Journal Article"]) == "Review"
    assert pubtype_label(["Journal Article"]) == "Journal Article"
    assert pubtype_label(["Letter", "Comment"]) is None


def test_sentence_bounds():
    assert sentence_bounds(["a", "b", ".", "c", "."]) == [(0, 3), (3, 5)]
    assert sentence_bounds(["a", ".", "b"]) == [(0, 2), (2, 3)]


def test_mention_spans_merge_drop_and_count():
    report = BuildReport("t")
    matches = [
        {"start_ix": [5, 2], "label": "definitely present"},  # out of order -> span 2..6
        {"start_ix": [2, 5], "label": "definitely present"},  # same span again: merged
        {"start_ix": [8], "label": "definitely absent"},
        {"start_ix": [8, 9], "label": "uncertain"},  # overlaps the ABSENT span with another type: both dropped
        {"start_ix": [10, 20], "label": "definitely present"},  # 11 tokens wide: dropped
    ]
    assert mention_spans(matches, n_tokens=30, report=report) == [(2, 6, "PRESENT")]
    assert report.skipped == {"mention wider than 6 tokens": 1, "overlapping mentions with different assertions": 1}


def test_radiology_builders_on_the_real_package_data(tmp_path):
    paths = suite.build("radiology_findings", cache_dir=tmp_path)
    rows = {split: [json.loads(line) for line in open(path)] for split, path in paths.items()}
    assert sum(len(split_rows) for split_rows in rows.values()) == 1000  # every synthetic report, none lost
    meta = json.loads((tmp_path / "suite" / "radiology_findings" / "meta.json").read_text())
    assert len(meta["label_counts"]) == suite.FINDINGS_TOP_K
    assert all(set(row["labels"]) <= set(meta["label_counts"]) for row in rows["train"])
    assert suite.build("radiology_findings", cache_dir=tmp_path) == paths  # cached

    paths = suite.build("radiology_mentions", cache_dir=tmp_path)
    train_reports = {json.loads(line)["report_id"] for line in open(paths["train"])}
    test_reports = {json.loads(line)["report_id"] for line in open(paths["test"])}
    assert not train_reports & test_reports  # split by report: no sentence of a test report in train
    row = json.loads(open(paths["train"]).readline())
    assert len(row["tokens"]) == len(row["tags"])


def test_icd10cm_chapter_builder_groups_categories(tmp_path):
    paths = suite.build("icd10cm_chapter", cache_dir=tmp_path)
    categories = {split: {json.loads(line)["id"][:3] for line in open(path)} for split, path in paths.items()}
    assert not categories["train"] & categories["test"]
    labels = {json.loads(line)["label"] for line in open(paths["train"])}
    assert len(labels) == 21 and "01 Certain infectious and parasitic diseases" in labels


def test_unknown_builder_lists_known_ones():
    with pytest.raises(ValueError, match="Unknown suite dataset 'mimic'.*icd10cm_ccsr"):
        suite.build("mimic")
