"""The registry of corpus sources: name -> how to build it, its CLI flag, its shipped default files, its terms.

A new source plugs in by adding one :class:`SourceSpec` to :data:`SOURCES`; the generic corpus build and the CLI
(``python -m train.corpora build --<flag> FILES``) pick it up without any other change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from datasets import Dataset, concatenate_datasets

from train.corpora import codes, files, mimic, package_data, pubmed
from train.corpora.report import SourceReport


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings that are not file lists; each builder reads the ones it understands."""

    progress: bool = True
    max_pubmed: int | None = None
    pubmed_languages: tuple[str, ...] | None = None
    on_error: Literal["raise", "skip"] = "raise"
    text_field: str = "text"
    text_mode: str = "line"


Builder = Callable[[Sequence[Path], BuildOptions], tuple[Dataset, SourceReport]]


@dataclass(frozen=True)
class SourceSpec:
    """One corpus source.

    Attributes:
        name: registry key, CLI flag stem and report name.
        description: one line for ``list-sources`` and the model card.
        build: ``(files, options) -> (dataset, report)``.
        file_help: what files the CLI flag takes.
        shipped: the real files used by the embedded sample corpus, or None when the source has none (MIMIC).
        license: the data's terms, for the model card.
        cli_aliases: extra CLI flags for the same source (e.g. ``--icd10cm-xml``).
        split_key: the column hashed for the train/validation split; rows sharing a value stay together
            (``subject_id`` for MIMIC, so no patient is in both splits).
    """

    name: str
    description: str
    build: Builder
    file_help: str
    shipped: Callable[[], list[Path]] | None
    license: str
    cli_aliases: tuple[str, ...] = ()
    split_key: str = "doc_id"

    @property
    def cli_flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _each_file(build_one: Callable[[Path, BuildOptions], tuple[Dataset, SourceReport]]) -> Builder:
    """A builder over several files from a one-file builder (datasets concatenated, reports merged)."""

    def build(paths: Sequence[Path], options: BuildOptions) -> tuple[Dataset, SourceReport]:
        if not paths:
            raise ValueError("no input files")
        built = [build_one(Path(path), options) for path in paths]
        report = built[0][1]
        for _, other in built[1:]:
            report = report.merge(other)
        return concatenate_datasets([dataset for dataset, _ in built]), report

    return build


def _code_file(system: str) -> Builder:
    return _each_file(lambda path, options: codes.build_code_file(path, system, progress=options.progress))


_PUBLIC_DOMAIN = "U.S. government work, public domain"

SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        SourceSpec(
            name="pubmed",
            description="MEDLINE/PubMed titles + abstracts (baseline and update XML, deduplicated by PMID)",
            build=lambda paths, o: pubmed.build_pubmed(
                paths, languages=o.pubmed_languages, on_error=o.on_error, limit=o.max_pubmed, progress=o.progress
            ),
            file_help="MEDLINE XML files (.xml/.xml.gz), baseline first then updates",
            shipped=package_data.shipped_pubmed_files,
            license="NLM terms and conditions for MEDLINE/PubMed data; abstracts may carry publisher copyright",
        ),
        SourceSpec(
            name="mimic",
            description="MIMIC-IV-Note discharge and radiology notes (credentialed; never shipped)",
            build=lambda paths, o: mimic.build_mimic_notes(paths, progress=o.progress),
            file_help="MIMIC-IV-Note discharge.csv(.gz) / radiology.csv(.gz)",
            shipped=None,
            license="PhysioNet Credentialed Health Data License 1.5.0 (DUA required)",
            split_key="subject_id",
        ),
        SourceSpec(
            name="icd10cm",
            description="ICD-10-CM tabular list: code, description, chapter/section/parent, notes",
            build=_each_file(lambda path, o: codes.build_icd10cm_tabular(path, progress=o.progress)),
            file_help="CDC icd10cm_tabular_20XX.xml",
            shipped=lambda: [package_data.shipped_icd10cm_tabular()],
            license=f"CDC/NCHS ICD-10-CM, {_PUBLIC_DOMAIN}",
            cli_aliases=("--icd10cm-xml",),
        ),
        SourceSpec(
            name="icd10cm_codes",
            description="ICD-10-CM code descriptions from a flat code file (no hierarchy)",
            build=_code_file("icd10cm"),
            file_help="CDC icd10cm_codes_20XX.txt or icd10cm_order_20XX.txt",
            shipped=None,  # the tabular XML covers the same codes with more context
            license=f"CDC/NCHS ICD-10-CM, {_PUBLIC_DOMAIN}",
        ),
        SourceSpec(
            name="icd10pcs",
            description="ICD-10-PCS procedure code descriptions with their section",
            build=_code_file("icd10pcs"),
            file_help="CMS icd10pcs_codes_20XX.txt or icd10pcs_order_20XX.txt",
            shipped=lambda: [package_data.shipped_icd10pcs_codes()],
            license=f"CMS ICD-10-PCS, {_PUBLIC_DOMAIN}",
        ),
        SourceSpec(
            name="icd9",
            description="ICD-9-CM diagnosis code descriptions (v32) with their chapter",
            build=_code_file("icd9"),
            file_help="CMS CMS32_DESC_LONG_DX.txt",
            shipped=lambda: [package_data.shipped_icd9_descriptions("dx")],
            license=f"CMS ICD-9-CM, {_PUBLIC_DOMAIN}",
        ),
        SourceSpec(
            name="icd9proc",
            description="ICD-9-CM procedure code descriptions (v32) with their chapter",
            build=_code_file("icd9proc"),
            file_help="CMS CMS32_DESC_LONG_SG.txt",
            shipped=lambda: [package_data.shipped_icd9_descriptions("proc")],
            license=f"CMS ICD-9-CM, {_PUBLIC_DOMAIN}",
        ),
        SourceSpec(
            name="hpo",
            description="Human Phenotype Ontology terms: name, definition, synonyms, parents",
            build=_each_file(lambda path, o: codes.build_hpo(path, progress=o.progress)),
            file_help="hp.obo",
            shipped=lambda: [package_data.shipped_hpo_obo()],
            license="HPO license (https://hpo.jax.org/app/license): free use, cite HPO and its version",
        ),
        SourceSpec(
            name="text_files",
            description="Local .txt/.jsonl/.csv/.parquet files (see --text-field, --text-mode)",
            build=lambda paths, o: files.build_text_files(
                paths, text_field=o.text_field, source="text_files", text_mode=o.text_mode
            ),
            file_help="local text files",
            shipped=None,
            license="as given by the files' owner",
        ),
    )
}

#: The sources of the embedded sample corpus, in build order (HPO is added on request).
SAMPLE_SOURCES: tuple[str, ...] = ("pubmed", "icd10cm", "icd10pcs", "icd9", "icd9proc")
