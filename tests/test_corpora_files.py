"""Local text files via datasets' packaged builders, and the offline error of load_hub_dataset."""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from train.corpora.common import CorpusError
from train.corpora.files import build_text_files, load_hub_dataset


@pytest.fixture
def cache(tmp_path):
    """A private datasets cache, so tests never write into the user's ~/.cache/huggingface."""
    return str(tmp_path / "hf_cache")


@pytest.fixture
def txt(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first doc\n\nsecond paragraph line one\nline two\n   \nlast\n")
    return path


def test_txt_one_document_per_line(txt, cache):
    dataset, report = build_text_files([txt], source="local", cache_dir=cache)
    assert dataset["text"] == ["first doc", "second paragraph line one", "line two", "last"]
    assert dataset["doc_id"] == ["local:notes.txt:0", "local:notes.txt:2", "local:notes.txt:3", "local:notes.txt:5"]
    assert set(dataset["source"]) == {"local"}
    assert (report.read, report.kept, report.skipped) == (6, 4, Counter(empty_text=2))


def test_txt_paragraph_mode(txt, cache):
    dataset, report = build_text_files([txt], text_mode="paragraph", cache_dir=cache)
    assert [text.strip() for text in dataset["text"]] == [
        "first doc", "second paragraph line one\nline two\n   \nlast"]
    assert report.kept == 2


def test_jsonl_csv_parquet_with_text_field(tmp_path, cache):
    jsonl = tmp_path / "a.jsonl.gz"
    with gzip.open(jsonl, "wt") as handle:
        for row in ({"body": "x y", "id": 7}, {"body": "", "id": 8}, {"body": None, "id": 9}):
            handle.write(json.dumps(row) + "\n")
    csv_path = tmp_path / "b.csv"
    csv_path.write_text('id,body\n1,"hello, world"\n2,\n')
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["p1", "p2"], "id": [1, 2]}), parquet)
    dataset, report = build_text_files([jsonl, csv_path, parquet], text_field="body", source="mine", cache_dir=cache)
    assert dataset["text"] == ["x y", "hello, world", "p1", "p2"]
    assert dataset["doc_id"] == ["mine:a.jsonl.gz:0", "mine:b.csv:0", "mine:c.parquet:0", "mine:c.parquet:1"]
    assert dataset.column_names == ["text", "source", "doc_id"]
    assert (report.read, report.kept) == (7, 4)
    assert report.skipped == Counter(empty_text=1, null_text=2)  # csv's empty field reads as null


def test_id_field(tmp_path, cache):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a", "uid": "x1"}\n{"text": "b", "uid": "x2"}\n')
    dataset, _ = build_text_files([path], id_field="uid", source="s", cache_dir=cache)
    assert dataset["doc_id"] == ["s:x1", "s:x2"]


def test_missing_text_field_names_file_and_columns(tmp_path, cache):
    path = tmp_path / "a.jsonl"
    path.write_text('{"body": "x", "id": 1}\n')
    with pytest.raises(CorpusError, match=r"a\.jsonl: no text field 'text'; available columns: \['body', 'id'\]"):
        build_text_files([path], cache_dir=cache)


def test_non_string_text_field_is_an_error(tmp_path, cache):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": 5}\n')
    with pytest.raises(CorpusError, match=r"a\.jsonl: text field 'text' has type"):
        build_text_files([path], cache_dir=cache)


def test_unsupported_suffix_and_missing_file(tmp_path, cache):
    path = tmp_path / "a.docx"
    path.write_text("x")
    with pytest.raises(CorpusError, match=r"a\.docx: unsupported file type '\.docx'"):
        build_text_files([path], cache_dir=cache)
    with pytest.raises(CorpusError, match=r"gone\.txt: no such file"):
        build_text_files([tmp_path / "gone.txt"], cache_dir=cache)


def test_hub_dataset_offline_fails_fast_with_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"cannot reach the Hugging Face Hub to load 'ncbi/pubmed' \(offline") as err:
        load_hub_dataset("ncbi/pubmed", split="train", text_field="text")
    assert time.perf_counter() - start < 2.0
    assert "pass the local files" in str(err.value)
