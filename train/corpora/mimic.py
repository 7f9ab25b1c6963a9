"""MIMIC-IV-Note clinical notes (``discharge.csv``, ``radiology.csv``, optionally ``.csv.gz``) as documents.

MIMIC-IV-Note is credentialed data (PhysioNet Credentialed Health Data License and DUA): this module never logs,
prints or puts into an error message any note text. Messages name the file, line, column and ``note_id`` only.
Tests use :mod:`train.corpora.synthetic`, never real notes.

Files are streamed with the ``csv`` module (notes span many lines and contain quotes). The source of a note comes
from its ``note_type`` (``DS``/``AD`` discharge, ``RR``/``AR`` radiology), else from the file name.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Value
from tqdm.auto import tqdm

from train.corpora.common import (
    READ_ERRORS,
    CorpusError,
    dataset_from_rows,
    describe_read_error,
    open_text,
    split_by_key,
)
from train.corpora.report import SourceReport

logger = logging.getLogger(__name__)

#: The columns of ``discharge.csv`` / ``radiology.csv`` in MIMIC-IV-Note v2.2.
MIMIC_NOTE_COLUMNS: tuple[str, ...] = (
    "note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("note_id", "subject_id", "text")
#: note_type -> source name (MIMIC-IV-Note: DS discharge summary, AD its addendum, RR radiology report, AR addendum).
NOTE_TYPE_SOURCES: dict[str, str] = {
    "DS": "mimic_discharge",
    "AD": "mimic_discharge",
    "RR": "mimic_radiology",
    "AR": "mimic_radiology",
}
#: file-name prefix -> source name, used when a row has no known note_type.
FILENAME_SOURCES: dict[str, str] = {"discharge": "mimic_discharge", "radiology": "mimic_radiology"}
FALLBACK_SOURCE = "mimic_note"
FEATURES = Features(
    {
        "text": Value("string"),
        "source": Value("string"),
        "doc_id": Value("string"),
        "subject_id": Value("string"),
        "note_type": Value("string"),
    }
)

# Discharge summaries can exceed the csv module's default 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class MimicNote:
    """One note row; ``line`` is the CSV line where the row starts (for messages that must not show text)."""

    note_id: str
    subject_id: str
    note_type: str
    source: str
    text: str
    line: int

    def to_row(self) -> dict:
        return {
            "text": self.text,
            "source": self.source,
            "doc_id": f"mimic:{self.note_id}",
            "subject_id": self.subject_id,
            "note_type": self.note_type,
        }


def source_for(note_type: str, path: str | Path) -> str:
    """``mimic_discharge`` / ``mimic_radiology`` from the note type, else the file name, else ``mimic_note``."""
    if note_type in NOTE_TYPE_SOURCES:
        return NOTE_TYPE_SOURCES[note_type]
    name = Path(path).name.lower()
    for prefix, source in FILENAME_SOURCES.items():
        if name.startswith(prefix):
            return source
    return FALLBACK_SOURCE


def iter_mimic_notes(path: str | Path, report: SourceReport, progress: bool = True) -> Iterator[MimicNote]:
    """Stream the notes of one MIMIC-IV-Note CSV (``.csv`` or ``.csv.gz``).

    Rows are counted in ``report.read``; rows without text, note_id or subject_id, or with the wrong number of
    fields, are counted in ``report.skipped`` and not yielded. Raises :class:`CorpusError` naming the file and
    the missing columns when the header lacks a required column, and naming the file and line for broken CSV.
    """
    path = Path(path)
    report.files.append(str(path))
    bar = tqdm(desc=f"mimic {path.name}", unit=" notes", disable=not progress, leave=False)
    try:
        with open_text(path) as handle:
            reader = csv.reader(handle, strict=True)  # a stray quote is an error, not a silently merged field
            header = next(reader, None)
            if header is None:
                raise CorpusError(f"{path}: empty file, expected a header with columns {list(MIMIC_NOTE_COLUMNS)}")
            header = [name.strip() for name in header]
            missing = [name for name in REQUIRED_COLUMNS if name not in header]
            if missing:
                raise CorpusError(
                    f"{path}: missing required column(s) {missing}; the header has {header} "
                    f"(expected the MIMIC-IV-Note schema {list(MIMIC_NOTE_COLUMNS)})"
                )
            index = {name: header.index(name) for name in header}
            has_note_type = "note_type" in index
            row_start = reader.line_num + 1
            for fields in reader:
                line, row_start = row_start, reader.line_num + 1
                report.read += 1
                bar.update(1)
                if len(fields) != len(header):
                    report.skip("malformed_row")
                    logger.warning(
                        "%s line %d: %d fields, expected %d; row skipped", path, line, len(fields), len(header)
                    )
                    continue
                note_id = fields[index["note_id"]].strip()
                subject_id = fields[index["subject_id"]].strip()
                text = fields[index["text"]]
                if not note_id:
                    report.skip("missing_note_id")
                    logger.warning("%s line %d: empty note_id; row skipped", path, line)
                elif not subject_id:
                    report.skip("missing_subject_id")
                    logger.warning("%s line %d (note_id %s): empty subject_id; row skipped", path, line, note_id)
                elif not text.strip():
                    report.skip("empty_text")
                else:
                    note_type = fields[index["note_type"]].strip() if has_note_type else ""
                    yield MimicNote(
                        note_id=note_id,
                        subject_id=subject_id,
                        note_type=note_type,
                        source=source_for(note_type, path),
                        text=text.replace("\r\n", "\n"),
                        line=line,
                    )
    except csv.Error as error:
        # csv.Error messages describe the syntax problem, never the field content.
        raise CorpusError(f"{path} line {reader.line_num}: broken CSV ({error})") from error
    except READ_ERRORS as error:
        raise CorpusError(describe_read_error(path, error)) from error
    finally:
        bar.close()


def build_mimic_notes(paths: Sequence[str | Path], progress: bool = True) -> tuple[Dataset, SourceReport]:
    """Build the MIMIC-IV-Note corpus from ``discharge.csv`` / ``radiology.csv`` files (plain or gzipped).

    A ``note_id`` seen twice is kept once (first occurrence; ``skipped["duplicate_note_id"]``).

    Returns:
        The dataset (columns ``text, source, doc_id, subject_id, note_type``; source is ``mimic_discharge``,
        ``mimic_radiology`` or ``mimic_note``) and one report for source ``mimic``.
    """
    if isinstance(paths, (str, Path)):
        raise TypeError(f"paths must be a list of files, got the single path {paths!r}")
    report = SourceReport(source="mimic")
    seen: set[str] = set()
    rows = []
    for path in paths:
        for note in iter_mimic_notes(path, report, progress=progress):
            if note.note_id in seen:
                report.skip("duplicate_note_id")
                logger.warning("%s line %d: duplicate note_id %s; row skipped", path, note.line, note.note_id)
                continue
            seen.add(note.note_id)
            report.info[note.source] += 1
            rows.append(note.to_row())
    report.kept = len(rows)
    report.check()
    report.log()
    return dataset_from_rows(rows, FEATURES), report


def split_by_subject(dataset: Dataset, validation_fraction: float, seed: int = 0) -> DatasetDict:
    """``train`` / ``validation`` splits with no ``subject_id`` in both (a patient's notes stay together).

    Deterministic: a subject goes to validation when the hash of ``(seed, subject_id)`` falls below
    ``validation_fraction``; see :func:`train.corpora.common.split_by_key`.
    """
    return split_by_key(dataset, "subject_id", validation_fraction, seed)
