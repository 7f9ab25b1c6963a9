"""Mixing sources with weights as sampling multipliers.

A weight ``w`` takes each document ``floor(w)`` times, plus a seeded sample of exactly
``round((w - floor(w)) * n)`` of the ``n`` documents once more: ``2.0`` repeats every document twice, ``0.5`` keeps
a deterministic half, ``1.5`` keeps all and repeats a half. Multipliers (rather than target proportions) keep the
meaning of a weight independent of the other sources' sizes, which is how the paper's up-sampling of code text is
described. The result keeps the common columns ``text, source, doc_id`` and is shuffled with the seed.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from datasets import Dataset, concatenate_datasets

from train.corpora.common import COMMON_COLUMNS, COMMON_FEATURES, CorpusError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MixCounts:
    """Documents of one source before and after weighting."""

    source: str
    weight: float
    documents_in: int
    documents_out: int


@dataclass
class MixReport:
    """Per-source documents in and out of one :func:`mix` call."""

    seed: int
    sources: dict[str, MixCounts] = field(default_factory=dict)

    def summary(self) -> str:
        return "; ".join(
            f"{c.source}: {c.documents_in} -> {c.documents_out} (x{c.weight:g})" for c in self.sources.values()
        )

    def to_dict(self) -> dict:
        return {"seed": self.seed, "sources": {name: counts.__dict__ for name, counts in self.sources.items()}}


def sample_indices(n_documents: int, weight: float, rng: random.Random) -> list[int]:
    """Row indices for one source: every row ``floor(weight)`` times plus an exact seeded fraction once more."""
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f"a mixture weight must be a finite number >= 0, got {weight!r}")
    whole = math.floor(weight)
    extra = round((weight - whole) * n_documents)
    return list(range(n_documents)) * whole + sorted(rng.sample(range(n_documents), extra))


def mix_with_report(
    datasets_by_source: Mapping[str, Dataset], weights: Mapping[str, float], seed: int
) -> tuple[Dataset, MixReport]:
    """:func:`mix`, also returning the per-source counts."""
    if not datasets_by_source:
        raise ValueError("mix() needs at least one dataset")
    unknown = sorted(set(weights) - set(datasets_by_source))
    if unknown:
        raise ValueError(f"weights for unknown sources {unknown}; the sources are {sorted(datasets_by_source)}")
    report = MixReport(seed=seed)
    parts: list[Dataset] = []
    indices: list[int] = []
    offset = 0
    for name, dataset in datasets_by_source.items():
        missing = [column for column in COMMON_COLUMNS if column not in dataset.column_names]
        if missing:
            raise CorpusError(f"source {name!r} lacks column(s) {missing}; it has {dataset.column_names}")
        weight = float(weights.get(name, 1.0))
        try:
            # A per-source generator: the sample of one source does not change when another source is added.
            rows = sample_indices(len(dataset), weight, random.Random(f"{seed}:{name}"))
        except ValueError as error:
            raise ValueError(f"source {name!r}: {error}") from error
        report.sources[name] = MixCounts(name, weight, len(dataset), len(rows))
        if len(dataset):  # empty parts add no rows, and concatenate_datasets fails on all-empty inputs
            part = dataset.select_columns(list(COMMON_COLUMNS))
            parts.append(part if part.features == COMMON_FEATURES else part.cast(COMMON_FEATURES))
        indices += [offset + row for row in rows]
        offset += len(dataset)
    random.Random(seed).shuffle(indices)
    if not parts:
        mixed = Dataset.from_dict({name: [] for name in COMMON_COLUMNS}, features=COMMON_FEATURES)
    else:
        mixed = concatenate_datasets(parts).select(indices)
    logger.info("mix (seed %d): %s", seed, report.summary())
    return mixed, report


def mix(datasets_by_source: Mapping[str, Dataset], weights: Mapping[str, float], seed: int) -> Dataset:
    """Concatenate sources with weights as sampling multipliers, shuffled with ``seed``.

    Args:
        datasets_by_source: name -> dataset with at least ``text, source, doc_id`` (rows keep their own ``source``).
        weights: name -> multiplier >= 0; a source without a weight gets 1.0. 0 drops a source.
        seed: fixes the fractional samples and the shuffle; the same inputs and seed give the same rows in the
            same order.

    Returns:
        The mixed dataset with columns ``text, source, doc_id``. Per-source counts are logged; use
        :func:`mix_with_report` to get them.
    """
    return mix_with_report(datasets_by_source, weights, seed)[0]
