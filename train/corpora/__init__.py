"""Corpus builders of the pretraining pipeline: each source becomes a ``datasets.Dataset`` plus a report.

Modules (import them directly; this package import stays light):

- :mod:`~train.corpora.report`: ``SourceReport`` (read / kept / skipped with reasons) and ``CorpusReport``.
- :mod:`~train.corpora.pubmed`: MEDLINE/PubMed XML, streamed, deduplicated by PMID.
- :mod:`~train.corpora.mimic`: MIMIC-IV-Note CSVs and ``split_by_subject``.
- :mod:`~train.corpora.codes`: ICD-10-CM (tabular XML), ICD-10-PCS, ICD-9-CM and HPO rendered as text.
- :mod:`~train.corpora.files`: local ``.txt/.jsonl/.csv/.parquet`` files and ``load_hub_dataset``.
- :mod:`~train.corpora.mix`: weighted mixing; :mod:`~train.corpora.sample`: whole-corpus and sample builds.
- :mod:`~train.corpora.registry`: ``SOURCES``, the name -> builder registry; :mod:`~train.corpora.cli`: the CLI.
- :mod:`~train.corpora.package_data`: the real data files shipped by installed packages.
- :mod:`~train.corpora.synthetic`: synthetic MIMIC-style notes for tests.
"""
