"""Synthetic MIMIC-IV-Note files for tests and smoke runs: the official schema, invented content.

No real note is used or paraphrased: the text is assembled from a few generic template sentences, marked
``SYNTHETIC``, and uses MIMIC's ``___`` de-identification placeholder. Each note spans several lines and contains
commas and double quotes, so it exercises CSV quoting the way real discharge summaries do.
"""

from __future__ import annotations

import csv
import gzip
import random
from pathlib import Path

from train.corpora.mimic import MIMIC_NOTE_COLUMNS

_COMPLAINTS = ("chest pain", "shortness of breath", "abdominal pain", "fever", "headache", "fall at home")
_FINDINGS = ("no acute process", "mild cardiomegaly", "small left pleural effusion", "unremarkable study")
_NOTE_KINDS = {"DS": ("discharge", 10_000_000), "RR": ("radiology", 20_000_000)}


def synthetic_note_text(note_type: str, rng: random.Random) -> str:
    """A multi-line synthetic note of ``note_type`` ``"DS"`` (discharge) or ``"RR"`` (radiology)."""
    if note_type == "RR":
        return (
            "SYNTHETIC RADIOLOGY REPORT\n"
            f"EXAMINATION:  CHEST (PA AND LAT)\nINDICATION:  ___ with {rng.choice(_COMPLAINTS)}.\n"
            f'FINDINGS:  The "heart size" is normal, lungs are clear.\n\nIMPRESSION:  {rng.choice(_FINDINGS)}.'
        )
    return (
        "SYNTHETIC DISCHARGE SUMMARY\n"
        f"Name:  ___                 Unit No:   ___\n\nChief Complaint:\n{rng.choice(_COMPLAINTS)}\n\n"
        f'History of Present Illness:\nMr. ___ is a ___ y/o with "{rng.choice(_COMPLAINTS)}", seen, treated, '
        f"and discharged.\n\nDischarge Diagnosis:\n{rng.choice(_FINDINGS)}\n"
    )


def write_synthetic_mimic_notes(
    path: str | Path,
    n_subjects: int = 3,
    notes_per_subject: int = 2,
    note_type: str = "DS",
    seed: int = 0,
    extra_rows: list[dict[str, str]] | None = None,
) -> list[dict[str, str]]:
    """Write a MIMIC-IV-Note style CSV (``.csv`` or ``.csv.gz``) and return its rows.

    Subject ids are ``10000001, 10000002, ...``; note ids follow MIMIC's ``<subject_id>-<DS|RR>-<seq>`` pattern.
    ``extra_rows`` (dicts with any of the schema's columns) are appended as given, to plant edge cases.
    """
    if note_type not in _NOTE_KINDS:
        raise ValueError(f"note_type must be one of {sorted(_NOTE_KINDS)}, got {note_type!r}")
    rng = random.Random(seed)
    _, hadm_base = _NOTE_KINDS[note_type]
    rows = []
    for subject in range(n_subjects):
        subject_id = str(10_000_001 + subject)
        for seq in range(1, notes_per_subject + 1):
            rows.append(
                {
                    "note_id": f"{subject_id}-{note_type}-{seq}",
                    "subject_id": subject_id,
                    "hadm_id": str(hadm_base + subject * 10 + seq),
                    "note_type": note_type,
                    "note_seq": str(seq),
                    "charttime": f"2180-0{1 + seq % 9}-1{seq % 10} 00:00:00",
                    "storetime": f"2180-0{1 + seq % 9}-1{seq % 10} 12:00:00",
                    "text": synthetic_note_text(note_type, rng),
                }
            )
    rows += [{column: row.get(column, "") for column in MIMIC_NOTE_COLUMNS} for row in extra_rows or []]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(MIMIC_NOTE_COLUMNS), quoting=csv.QUOTE_MINIMAL)
        writer.writeheader()
        writer.writerows(rows)
    return rows
