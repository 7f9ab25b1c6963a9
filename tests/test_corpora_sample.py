"""Whole-corpus builds through the registry: split, mix, save, cache, CLI; and the embedded sample corpus."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from train.corpora.cli import main, parse_weights
from train.corpora.common import CorpusError
from train.corpora.registry import SAMPLE_SOURCES, SOURCES, BuildOptions
from train.corpora.report import CorpusReport
from train.corpora.sample import build_corpus, build_sample_corpus, sample_source_files
from train.corpora.synthetic import write_synthetic_mimic_notes

FIXTURES = Path(__file__).parent / "fixtures" / "corpora"
QUIET = BuildOptions(progress=False)


@pytest.fixture
def source_files(tmp_path) -> dict[str, list[Path]]:
    mimic = tmp_path / "discharge.csv"
    write_synthetic_mimic_notes(mimic, n_subjects=10, notes_per_subject=2)
    return {
        "pubmed": [FIXTURES / "pubmed_baseline.xml", FIXTURES / "pubmed_update.xml"],
        "icd10cm": [FIXTURES / "icd10cm_tabular_tiny.xml"],
        "mimic": [mimic],
        "hpo": [FIXTURES / "hp_tiny.obo"],
    }


def test_build_corpus_splits_mixes_and_saves(tmp_path, source_files):
    out = tmp_path / "corpus"
    corpus, report = build_corpus(source_files, out, weights={"icd10cm": 2.0}, seed=1, validation_fraction=0.3,
                                  options=QUIET)
    assert sorted(path.name for path in out.iterdir()) == [
        "corpus_report.json", "corpus_report.md", "dataset_dict.json", "train", "validation"]
    assert {name: (r.read, r.kept) for name, r in report.sources.items()} == {
        "pubmed": (11, 6), "icd10cm": (7, 7), "mimic": (20, 20), "hpo": (3, 2)}
    train, validation = Counter(corpus["train"]["doc_id"]), Counter(corpus["validation"]["doc_id"])
    assert not set(train) & set(validation)
    assert len(set(train) | set(validation)) == 6 + 7 + 20 + 2
    assert all(count == 1 for count in validation.values())
    assert all(count == (2 if doc.startswith("icd10cm:") else 1) for doc, count in train.items())
    assert report.splits == {split: dict(Counter(corpus[split]["source"])) for split in ("train", "validation")}
    assert report.mix["sources"]["icd10cm"]["weight"] == 2.0
    assert corpus["train"].column_names == ["text", "source", "doc_id"]
    assert CorpusReport.load(out).to_dict() == report.to_dict()
    subjects = {split: {doc.split(":")[1].split("-")[0] for doc in corpus[split]["doc_id"] if doc.startswith("mimic:")}
                for split in corpus}
    assert subjects["validation"] and not subjects["train"] & subjects["validation"]  # MIMIC splits by patient
    assert "| pubmed | 2 | 11 | 6 | 5 |" in (out / "corpus_report.md").read_text()


def test_cache_reuse_mismatch_and_overwrite(tmp_path, source_files):
    out = tmp_path / "corpus"
    _, first = build_corpus(source_files, out, seed=0, options=QUIET)
    marker = (out / "dataset_dict.json").stat().st_mtime_ns
    _, again = build_corpus(source_files, out, seed=0, options=QUIET)
    assert again.to_dict() == first.to_dict()
    assert (out / "dataset_dict.json").stat().st_mtime_ns == marker  # not rebuilt
    with pytest.raises(CorpusError, match=r"other settings \(differing: \['seed'\]\).*overwrite=True"):
        build_corpus(source_files, out, seed=5, options=QUIET)
    corpus, rebuilt = build_corpus(source_files, out, seed=5, options=QUIET, overwrite=True)
    assert rebuilt.config["seed"] == 5
    assert len(corpus["train"]) + len(corpus["validation"]) == 35


def test_refuses_to_replace_a_directory_that_is_not_a_corpus(tmp_path, source_files):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(CorpusError, match="precious exists and is not a corpus directory"):
        build_corpus({"hpo": source_files["hpo"]}, out, options=QUIET)
    assert (out / "thesis.tex").read_text() == "keep me"


def test_unknown_source_and_unused_weight(tmp_path, source_files):
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['umls'\]"):
        build_corpus({"umls": [tmp_path / "x"]}, tmp_path / "c", options=QUIET)
    with pytest.raises(ValueError, match=r"weights given for source\(s\) \['pubmed'\]"):
        build_corpus({"hpo": source_files["hpo"]}, tmp_path / "c", weights={"pubmed": 2}, options=QUIET)


def test_cli_build_prints_per_source_report(tmp_path, source_files, capsys):
    out = tmp_path / "cli_corpus"
    argv = ["build", "--pubmed", *map(str, source_files["pubmed"]), "--icd10cm-xml", str(source_files["icd10cm"][0]),
            "--weights", "pubmed=1,icd10cm=2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "pubmed: read 11, kept 6, skipped 5 (duplicate_pmid=2, deleted=1, missing_pmid=1, no_abstract=1); " \
           "delete_citations=2, delete_citations_unmatched=1" in printed
    assert "icd10cm: read 7, kept 7, skipped 0" in printed
    assert (out / "corpus_report.md").is_file()


def test_cli_errors(tmp_path, capsys):
    assert main(["build", "--out", str(tmp_path / "c")]) == 2
    assert main(["build", "--pubmed", str(tmp_path / "missing.xml"), "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 1
    assert "missing.xml: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build", "--hpo", "x.obo", "--weights", "hpo:2", "--out", str(tmp_path / "c")])
    assert "bad weight 'hpo:2'" in capsys.readouterr().err


def test_parse_weights():
    assert parse_weights("pubmed=1, icd10cm=2.5") == {"pubmed": 1.0, "icd10cm": 2.5}
    assert parse_weights("") == {}


def test_cli_list_sources(capsys):
    assert main(["list-sources"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == list(SOURCES)


def test_sample_source_files_are_shipped_real_files():
    files = sample_source_files(include_hpo=True)
    assert list(files) == [*SAMPLE_SOURCES, "hpo"]
    assert all(path.is_file() for paths in files.values() for path in paths)
    assert [path.name for path in files["pubmed"]] == ["pubmed20n0014.xml.gz", "pubmed21n1298.xml.gz"]


@pytest.mark.slow
def test_build_sample_corpus_real_data(tmp_path):
    corpus, report = build_sample_corpus(tmp_path / "sample", max_pubmed=500, progress=False)
    assert list(report.sources) == list(SAMPLE_SOURCES)
    assert report.sources["pubmed"].read == 500
    assert report.sources["icd10cm"].kept > 40_000
    total = sum(len(split) for split in corpus.values())
    assert total == sum(r.kept for r in report.sources.values())
    assert 0 < len(corpus["validation"]) < 0.03 * total
    assert (tmp_path / "sample" / "corpus_report.md").is_file()
