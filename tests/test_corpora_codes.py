"""Code systems as text: formatting rules, the ICD-10-CM tabular parser, flat code files and HPO."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from train.corpora.codes import (
    CODE_SYSTEMS,
    build_code_file,
    build_hpo,
    build_icd10cm_tabular,
    format_icd9_dx,
    format_icd9_proc,
    format_icd10cm,
    format_icd10pcs,
    iter_code_file,
    iter_hpo_terms,
    iter_icd10cm_tabular,
)
from train.corpora.common import CorpusError
from train.corpora.package_data import shipped_icd9_descriptions, shipped_icd10cm_tabular
from train.corpora.report import SourceReport

FIXTURES = Path(__file__).parent / "fixtures" / "corpora"
TABULAR = FIXTURES / "icd10cm_tabular_tiny.xml"


# --- formatting ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected"),
    [("E119", "E11.9"), ("e11.9", "E11.9"), ("A00", "A00"), ("S72001A", "S72.001A"), (" I10 ", "I10"),
     ("QA00101", "QA0.0101"), ("Z7984", "Z79.84")],
)
def test_format_icd10cm(raw, expected):
    assert format_icd10cm(raw) == expected


@pytest.mark.parametrize("bad", ["E1", "11.9", "E11.99999", "E11-9", ""])
def test_format_icd10cm_rejects_and_names_value(bad):
    with pytest.raises(ValueError, match=f"not an ICD-10-CM code: {bad!r}".replace(".", r"\.")):
        format_icd10cm(bad)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("25000", "250.00"), ("2500", "250.0"), ("0010", "001.0"), ("042", "042"), ("V700", "V70.0"),
     ("V0481", "V04.81"), ("V70", "V70"), ("E8497", "E849.7"), ("E849", "E849"), ("250.00", "250.00")],
)
def test_format_icd9_dx(raw, expected):
    assert format_icd9_dx(raw) == expected


@pytest.mark.parametrize("bad", ["E84971", "25", "V7", "2500000", "X123"])
def test_format_icd9_dx_rejects(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        format_icd9_dx(bad)


@pytest.mark.parametrize(("raw", "expected"), [("0001", "00.01"), ("8151", "81.51"), ("851", "85.1"), ("00", "00")])
def test_format_icd9_proc(raw, expected):
    assert format_icd9_proc(raw) == expected


def test_format_icd10pcs():
    assert format_icd10pcs("0016070") == "0016070"
    assert format_icd10pcs("xy0yx37") == "XY0YX37"
    with pytest.raises(ValueError, match="'0016O70'"):
        format_icd10pcs("0016O70")  # PCS never uses the letter O


def test_render_flat_systems_exactly():
    assert CODE_SYSTEMS["icd9"].render("250.00", "Diabetes mellitus without mention of complication") == (
        "ICD-9-CM code 250.00: Diabetes mellitus without mention of complication\n"
        "Chapter 3: Endocrine, nutritional and metabolic diseases, and immunity disorders (240-279)."
    )
    assert CODE_SYSTEMS["icd9"].render("V70.0", "Routine general medical examination at a health care facility") == (
        "ICD-9-CM code V70.0: Routine general medical examination at a health care facility\n"
        "Supplementary classification of factors influencing health status and contact with health services "
        "(V01-V91)."
    )
    assert CODE_SYSTEMS["icd9"].render("E849.7", "Accidents occurring in residential institution") == (
        "ICD-9-CM code E849.7: Accidents occurring in residential institution\n"
        "Supplementary classification of external causes of injury and poisoning (E000-E999)."
    )
    assert CODE_SYSTEMS["icd9proc"].render("81.51", "Total hip replacement") == (
        "ICD-9-CM procedure code 81.51: Total hip replacement\n"
        "Procedure chapter: Operations on the musculoskeletal system (76-84)."
    )
    assert CODE_SYSTEMS["icd10pcs"].render("0016070", "Bypass Cerebral Ventricle") == (
        "ICD-10-PCS code 0016070: Bypass Cerebral Ventricle\nSection 0: Medical and Surgical."
    )
    assert CODE_SYSTEMS["icd10cm"].render("E11.9", "Type 2 diabetes mellitus without complications") == (
        "ICD-10-CM code E11.9: Type 2 diabetes mellitus without complications"
    )


# --- ICD-10-CM tabular --------------------------------------------------------------------------------------------

def test_tabular_iterator_hierarchy_and_notes():
    codes = {entry.code: entry for entry in iter_icd10cm_tabular(TABULAR)}
    assert list(codes) == ["E11", "E11.2", "E11.21", "E11.9", "S00", "S00.0", "S00.00"]
    e11_21 = codes["E11.21"]
    assert (e11_21.chapter, e11_21.chapter_title, e11_21.chapter_range) == (
        "4", "Endocrine, nutritional and metabolic diseases", "E00-E89")
    assert (e11_21.section, e11_21.section_title) == ("E08-E13", "Diabetes mellitus")
    assert (e11_21.parent, e11_21.depth, e11_21.is_leaf) == ("E11.2", 3, True)
    assert e11_21.inclusion_terms == [
        "Type 2 diabetes mellitus with intercapillary glomerulosclerosis",
        "Type 2 diabetes mellitus with Kimmelstiel-Wilson disease",
    ]
    assert codes["E11"].includes == ["diabetes NOS", "insulin resistant diabetes (mellitus)"]
    assert codes["E11"].is_leaf is False
    assert codes["S00.00"].seventh_characters == {"A": "initial encounter", "D": "subsequent encounter"}
    assert codes["E11.9"].seventh_characters == {}


def test_tabular_documents_exact_text():
    dataset, report = build_icd10cm_tabular(TABULAR, progress=False)
    rows = {row["code"]: row for row in dataset}
    assert rows["E11.9"]["text"] == (
        "ICD-10-CM code E11.9: Type 2 diabetes mellitus without complications\n"
        "Chapter 4: Endocrine, nutritional and metabolic diseases (E00-E89). Section: Diabetes mellitus (E08-E13). "
        "Parent code E11: Type 2 diabetes mellitus.\n"
        "Excludes1: type 2 diabetes mellitus, without complications in remission (E11.A)."
    )
    assert rows["E11"]["text"] == (
        "ICD-10-CM code E11: Type 2 diabetes mellitus\n"
        "Chapter 4: Endocrine, nutritional and metabolic diseases (E00-E89). Section: Diabetes mellitus (E08-E13).\n"
        "Includes: diabetes NOS; insulin resistant diabetes (mellitus). Excludes1: type 1 diabetes mellitus (E10.-)."
    )
    assert {key: rows["E11.9"][key] for key in ("source", "doc_id", "chapter", "section", "parent", "is_leaf")} == {
        "source": "icd10cm", "doc_id": "icd10cm:E11.9", "chapter": "4", "section": "E08-E13", "parent": "E11",
        "is_leaf": True,
    }
    assert (report.read, report.kept, report.n_skipped) == (7, 7, 0)


def test_tabular_without_hierarchy_is_the_paper_format():
    dataset, _ = build_icd10cm_tabular(TABULAR, with_hierarchy=False, with_notes=False, progress=False)
    assert dataset["text"][3] == "ICD-10-CM code E11.9: Type 2 diabetes mellitus without complications"


def test_seventh_character_expansion_uses_placeholder_x():
    dataset, report = build_icd10cm_tabular(TABULAR, expand_seventh=True, progress=False)
    rows = {row["code"]: row for row in dataset}
    assert sorted(code for code in rows if len(code.replace(".", "")) == 7) == ["S00.00XA", "S00.00XD"]
    assert rows["S00.00XA"]["text"].splitlines()[0] == (
        "ICD-10-CM code S00.00XA: Unspecified superficial injury of scalp, initial encounter"
    )
    assert rows["S00.00XA"]["parent"] == "S00.00"
    assert report.info["seventh_character_codes"] == 2
    assert report.kept == 9


def test_tabular_errors_name_file_and_line(tmp_path):
    bad_code = tmp_path / "bad_code.xml"
    bad_code.write_text(TABULAR.read_text().replace("<name>E11.9</name>", "<name>E11-9</name>"))
    line = next(i for i, text in enumerate(bad_code.read_text().splitlines(), 1) if "<name>E11-9</name>" in text)
    with pytest.raises(CorpusError, match=rf"bad_code\.xml line {line - 1}: not an ICD-10-CM code: 'E11-9'"):
        list(iter_icd10cm_tabular(bad_code))
    broken = tmp_path / "broken.xml"
    broken.write_text(TABULAR.read_text().replace("</section>", "</sektion>", 1))
    with pytest.raises(CorpusError, match=r"broken\.xml: malformed XML at line \d+"):
        list(iter_icd10cm_tabular(broken))


def test_real_tabular_e11_9():
    path = shipped_icd10cm_tabular()
    assert path.name.startswith("icd10c") and path.suffix == ".xml"
    entry = next(entry for entry in iter_icd10cm_tabular(path) if entry.code == "E11.9")
    assert entry.description == "Type 2 diabetes mellitus without complications"
    assert (entry.chapter, entry.chapter_title) == ("4", "Endocrine, nutritional and metabolic diseases")
    assert (entry.section, entry.section_title, entry.parent) == ("E08-E13", "Diabetes mellitus", "E11")


# --- flat code files ----------------------------------------------------------------------------------------------

def test_code_file_counts_bad_lines():
    dataset, report = build_code_file(FIXTURES / "icd10cm_codes_tiny.txt", "icd10cm", progress=False)
    assert dataset["doc_id"] == ["icd10cm:A00.0", "icd10cm:E11.9"]
    assert dataset["text"][1] == "ICD-10-CM code E11.9: Type 2 diabetes mellitus without complications"
    assert report.read == 5
    assert report.skipped == Counter(invalid_code=1, malformed_line=1, duplicate_code=1)
    assert report.info == Counter(blank_lines=1)


def test_order_file_layout_and_latin1(tmp_path):
    path = tmp_path / "icd10cm_order_2024.txt"
    short = "Type 2 diabetes mellitus without complications"
    long = "Type 2 diabetes mellitus without complications (long)"
    lines = [
        f"{1:05d} {'E11':<7} 0 {'Type 2 diabetes mellitus':<60} Type 2 diabetes mellitus",
        f"{2:05d} {'E119':<7} 1 {short:<60} {long}",
    ]
    path.write_text("\n".join(lines) + "\n")
    entries = list(iter_code_file(path, "icd10cm", SourceReport("icd10cm")))
    assert [(e.code, e.billable, e.description) for e in entries] == [
        ("E11", False, "Type 2 diabetes mellitus"), ("E11.9", True, long)]
    icd9 = tmp_path / "dx.txt"
    icd9.write_bytes("38600  M\xe9ni\xe8re's disease, unspecified\n".encode("latin-1"))
    assert [(e.code, e.description) for e in iter_code_file(icd9, "icd9")] == [
        ("386.00", "M\u00e9ni\u00e8re's disease, unspecified")]


def test_unknown_system_names_it():
    with pytest.raises(ValueError, match="'icd11'"):
        build_code_file(FIXTURES / "icd10cm_codes_tiny.txt", "icd11")


def test_real_icd9_file_line():
    entries = {e.code: e.description for e in iter_code_file(shipped_icd9_descriptions("dx"), "icd9")}
    assert entries["250.00"] == (
        "Diabetes mellitus without mention of complication, type II or unspecified type, not stated as uncontrolled"
    )
    assert entries["386.00"] == "M\u00e9ni\u00e8re's disease, unspecified"  # Latin-1 in the CMS file
    assert entries["V70.0"] == "Routine general medical examination at a health care facility"


# --- HPO ----------------------------------------------------------------------------------------------------------

def test_hpo_terms_and_text():
    terms = {term.id: term for term in iter_hpo_terms(FIXTURES / "hp_tiny.obo")}
    assert list(terms) == ["HP:0000001", "HP:0001250", "HP:0000002"]
    seizure = terms["HP:0001250"]
    assert seizure.synonyms == ["Epilepsy", "Seizures"]  # the obsolete_synonym is dropped
    assert seizure.render() == (
        "HPO term HP:0001250: Seizure\n"
        'Definition: An intermittent abnormality of nervous system physiology, "transient" by definition.\n'
        "Synonyms: Epilepsy; Seizures.\n"
        "Is a: Abnormal nervous system physiology; All."
    )
    dataset, report = build_hpo(FIXTURES / "hp_tiny.obo", progress=False)
    assert dataset["doc_id"] == ["hpo:HP:0000001", "hpo:HP:0001250"]
    assert report.skipped == Counter(obsolete=1)


def test_real_hpo_seizure():
    seizure = next(term for term in iter_hpo_terms() if term.id == "HP:0001250")
    assert seizure.name == "Seizure"
    assert ("HP:0012638", "Abnormal nervous system physiology") in seizure.parents
