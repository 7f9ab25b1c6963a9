"""MIMIC-IV-Note builder on synthetic notes in the official schema (no real note anywhere)."""

from __future__ import annotations

import csv
import gzip
import logging
from collections import Counter

import pytest

from train.corpora.common import CorpusError
from train.corpora.mimic import build_mimic_notes, source_for, split_by_subject
from train.corpora.synthetic import write_synthetic_mimic_notes


def test_multiline_quoted_notes_round_trip(tmp_path):
    path = tmp_path / "discharge.csv"
    rows = write_synthetic_mimic_notes(path, n_subjects=2, notes_per_subject=2)
    assert all("\n" in row["text"] and '"' in row["text"] and "," in row["text"] for row in rows)
    dataset, report = build_mimic_notes([path], progress=False)
    assert (report.read, report.kept, report.n_skipped) == (4, 4, 0)
    assert dataset["text"] == [row["text"] for row in rows]
    assert dataset["doc_id"] == ["mimic:10000001-DS-1", "mimic:10000001-DS-2", "mimic:10000002-DS-1",
                                 "mimic:10000002-DS-2"]
    assert dataset["subject_id"] == ["10000001", "10000001", "10000002", "10000002"]
    assert set(dataset["source"]) == {"mimic_discharge"}
    assert set(dataset["note_type"]) == {"DS"}


def test_gzip_and_two_files_with_sources_from_note_type(tmp_path):
    write_synthetic_mimic_notes(tmp_path / "discharge.csv.gz", n_subjects=1, notes_per_subject=2)
    write_synthetic_mimic_notes(tmp_path / "radiology.csv", n_subjects=2, notes_per_subject=1, note_type="RR")
    dataset, report = build_mimic_notes([tmp_path / "discharge.csv.gz", tmp_path / "radiology.csv"], progress=False)
    assert Counter(dataset["source"]) == Counter(mimic_discharge=2, mimic_radiology=2)
    assert report.info == Counter(mimic_discharge=2, mimic_radiology=2)
    assert len(report.files) == 2


def test_source_from_filename_when_note_type_is_unknown():
    assert source_for("DS", "notes.csv") == "mimic_discharge"
    assert source_for("AR", "notes.csv") == "mimic_radiology"
    assert source_for("", "/data/radiology.csv.gz") == "mimic_radiology"
    assert source_for("XX", "discharge_extra.csv") == "mimic_discharge"
    assert source_for("", "notes.csv") == "mimic_note"


def test_bad_rows_are_counted_and_never_log_text(tmp_path, caplog):
    secret = "SYNTHETIC-SENTINEL patient text that must never be logged"
    extra = [
        {"note_id": "10000009-DS-1", "subject_id": "10000009", "note_type": "DS", "text": "   \n  "},  # empty
        {"note_id": "10000001-DS-1", "subject_id": "10000001", "note_type": "DS", "text": secret},  # duplicate id
        {"note_id": "", "subject_id": "10000009", "note_type": "DS", "text": secret},  # no note_id
        {"note_id": "10000009-DS-2", "subject_id": "", "note_type": "DS", "text": secret},  # no subject_id
    ]
    path = tmp_path / "discharge.csv"
    write_synthetic_mimic_notes(path, n_subjects=1, notes_per_subject=1, extra_rows=extra)
    with path.open("a", newline="") as handle:  # a row with too few fields
        csv.writer(handle).writerow(["10000009-DS-3", "10000009", secret])
    with caplog.at_level(logging.DEBUG):
        _, report = build_mimic_notes([path], progress=False)
    assert report.read == 6
    assert report.kept == 1
    assert report.skipped == Counter(
        empty_text=1, duplicate_note_id=1, missing_note_id=1, missing_subject_id=1, malformed_row=1
    )
    assert "SENTINEL" not in caplog.text
    assert "discharge.csv" in caplog.text and "10000009-DS-2" in caplog.text  # file and note_id are named


def test_missing_required_columns_names_file_and_columns(tmp_path):
    path = tmp_path / "discharge.csv"
    path.write_text("note_id,subject_id,hadm_id,note_type\n1-DS-1,1,2,DS\n")
    with pytest.raises(CorpusError, match=r"discharge\.csv: missing required column\(s\) \['text'\]"):
        build_mimic_notes([path], progress=False)
    path.write_text("hadm_id,text\n2,hello\n")
    with pytest.raises(CorpusError, match=r"\['note_id', 'subject_id'\]"):
        build_mimic_notes([path], progress=False)


def test_truncated_gzip_names_file(tmp_path):
    good = tmp_path / "good.csv.gz"
    write_synthetic_mimic_notes(good, n_subjects=20, notes_per_subject=3)
    data = good.read_bytes()
    broken = tmp_path / "radiology.csv.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=r"radiology\.csv\.gz: .*(ends too early|corrupt gzip)"):
        build_mimic_notes([broken], progress=False)


def test_broken_csv_names_file_and_line_without_text(tmp_path):
    path = tmp_path / "discharge.csv"
    path.write_bytes(b'note_id,subject_id,text\n1-DS-1,1,"ok"\n1-DS-2,1,"SENTINEL" text\n')
    with pytest.raises(CorpusError, match=r"discharge\.csv line 3: broken CSV") as caught:
        build_mimic_notes([path], progress=False)
    assert "SENTINEL" not in str(caught.value)


def test_split_by_subject_is_disjoint_complete_and_deterministic(tmp_path):
    path = tmp_path / "discharge.csv"
    write_synthetic_mimic_notes(path, n_subjects=40, notes_per_subject=3)
    dataset, _ = build_mimic_notes([path], progress=False)
    splits = split_by_subject(dataset, validation_fraction=0.25, seed=7)
    train_subjects, validation_subjects = set(splits["train"]["subject_id"]), set(splits["validation"]["subject_id"])
    assert not train_subjects & validation_subjects
    assert train_subjects | validation_subjects == set(dataset["subject_id"])
    assert len(splits["train"]) + len(splits["validation"]) == len(dataset) == 120
    assert len(splits["validation"]) % 3 == 0  # every subject's 3 notes together
    assert 0 < len(validation_subjects) < 40
    again = split_by_subject(dataset, validation_fraction=0.25, seed=7)
    assert again["validation"]["doc_id"] == splits["validation"]["doc_id"]
    other = split_by_subject(dataset, validation_fraction=0.25, seed=8)
    assert set(other["validation"]["subject_id"]) != validation_subjects
    assert len(split_by_subject(dataset, validation_fraction=0.0, seed=7)["validation"]) == 0


def test_split_by_subject_rejects_bad_fraction(tmp_path):
    path = tmp_path / "discharge.csv"
    write_synthetic_mimic_notes(path, n_subjects=1, notes_per_subject=1)
    dataset, _ = build_mimic_notes([path], progress=False)
    with pytest.raises(ValueError, match="1.5"):
        split_by_subject(dataset, validation_fraction=1.5, seed=0)


def test_synthetic_writer_uses_the_official_header(tmp_path):
    path = tmp_path / "radiology.csv.gz"
    write_synthetic_mimic_notes(path, n_subjects=1, notes_per_subject=1, note_type="RR")
    with gzip.open(path, "rt", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"]
