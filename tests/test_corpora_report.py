"""SourceReport / CorpusReport: summaries, merging, the counting invariant, markdown and JSON."""

from __future__ import annotations

from collections import Counter

import pytest

from train.corpora.report import CorpusReport, SourceReport


def _pubmed_report() -> SourceReport:
    return SourceReport(
        source="pubmed",
        read=33012,
        kept=30100,
        skipped=Counter(no_abstract=2800, duplicate_pmid=100, non_english=12),
        files=["a.xml.gz"],
    )


def test_summary_lists_reasons_largest_first():
    assert _pubmed_report().summary() == (
        "pubmed: read 33012, kept 30100, skipped 2912 (no_abstract=2800, duplicate_pmid=100, non_english=12)"
    )


def test_summary_without_skips_and_with_info_and_tokens():
    report = SourceReport(source="hpo", read=3, kept=3, info=Counter(blank_lines=2), tokens=120)
    assert report.summary() == "hpo: read 3, kept 3, skipped 0; blank_lines=2; 120 tokens"


def test_merge_adds_counts_and_keeps_file_order():
    first = SourceReport("mimic", read=5, kept=4, skipped=Counter(empty_text=1), files=["discharge.csv"])
    second = SourceReport("mimic", read=3, kept=1, skipped=Counter(empty_text=1, malformed_row=1),
                          files=["radiology.csv"], warnings=["w"])
    merged = first + second
    assert (merged.source, merged.read, merged.kept) == ("mimic", 8, 5)
    assert merged.skipped == Counter(empty_text=2, malformed_row=1)
    assert merged.files == ["discharge.csv", "radiology.csv"]
    assert merged.warnings == ["w"]
    assert first.read == 5  # merge does not mutate


def test_check_catches_lost_records():
    SourceReport("x", read=3, kept=2, skipped=Counter(empty_text=1)).check()
    with pytest.raises(AssertionError, match="read 3 != kept 1 \\+ skipped 1"):
        SourceReport("x", read=3, kept=1, skipped=Counter(empty_text=1)).check()


def test_corpus_report_markdown_table():
    corpus = CorpusReport()
    corpus.add(SourceReport("pubmed", read=10, kept=7, skipped=Counter(no_abstract=3), files=["a", "b"]))
    corpus.add(SourceReport("icd10cm", read=5, kept=5, files=["t.xml"]))
    corpus.set_tokens("pubmed", 700)
    corpus.splits = {"train": {"pubmed": 6, "icd10cm": 5}, "validation": {"pubmed": 1}}
    assert corpus.to_markdown().splitlines() == [
        "| Source | Files | Read | Kept | Skipped | Skip reasons | Tokens |",
        "|---|---:|---:|---:|---:|---|---:|",
        "| pubmed | 2 | 10 | 7 | 3 | no_abstract=3 | 700 |",
        "| icd10cm | 1 | 5 | 5 | 0 | - | - |",
        "| **total** | 3 | 15 | 12 | 3 | | 700 |",
        "",
        "| Split | icd10cm | pubmed | total |",
        "|---|---:|---:|---:|",
        "| train | 5 | 6 | 11 |",
        "| validation | 0 | 1 | 1 |",
    ]


def test_corpus_report_json_round_trip_and_merge_of_same_source(tmp_path):
    corpus = CorpusReport(config={"seed": 3})
    corpus.add(SourceReport("mimic", read=2, kept=2, files=["d.csv"]))
    corpus.add(SourceReport("mimic", read=1, kept=0, skipped=Counter(empty_text=1), files=["r.csv"]))
    assert corpus.sources["mimic"].read == 3
    _, md_path = corpus.save(tmp_path)
    assert md_path.read_text().startswith("| Source |")
    loaded = CorpusReport.load(tmp_path)
    assert loaded.to_dict() == corpus.to_dict()
    assert loaded.sources["mimic"].skipped == Counter(empty_text=1)


def test_set_tokens_unknown_source_names_it():
    with pytest.raises(KeyError, match="'nope'"):
        CorpusReport().set_tokens("nope", 1)


def test_load_broken_report_names_file(tmp_path):
    path = tmp_path / "corpus_report.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="corpus_report.json"):
        CorpusReport.load(path)
