"""Weighted mixing: multipliers, exact fractional counts, determinism, columns and errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from datasets import Dataset

from train.corpora.mix import mix, mix_with_report, sample_indices


def _source(name: str, n: int, extra: bool = False) -> Dataset:
    columns = {
        "text": [f"{name} {i}" for i in range(n)],
        "source": [name] * n,
        "doc_id": [f"{name}:{i}" for i in range(n)],
    }
    if extra:
        columns["year"] = list(range(n))
    return Dataset.from_dict(columns)


def test_sample_indices_multipliers():
    rng = random.Random(0)
    assert sample_indices(3, 2.0, rng) == [0, 1, 2, 0, 1, 2]
    assert sample_indices(3, 0.0, rng) == []
    half = sample_indices(10, 0.5, rng)
    assert len(half) == 5 and len(set(half)) == 5
    one_and_half = Counter(sample_indices(4, 1.5, rng))
    assert sorted(one_and_half.values()) == [1, 1, 2, 2]


def test_weights_as_multipliers():
    mixed, report = mix_with_report({"a": _source("a", 4), "b": _source("b", 10)}, {"a": 2.0, "b": 0.5}, seed=0)
    counts = Counter(mixed["doc_id"])
    assert all(counts[f"a:{i}"] == 2 for i in range(4))
    b_docs = [doc for doc in counts if doc.startswith("b:")]
    assert len(b_docs) == 5 and all(counts[doc] == 1 for doc in b_docs)
    assert len(mixed) == 13
    assert (report.sources["a"].documents_in, report.sources["a"].documents_out) == (4, 8)
    assert (report.sources["b"].documents_in, report.sources["b"].documents_out) == (10, 5)
    assert report.summary() == "a: 4 -> 8 (x2); b: 10 -> 5 (x0.5)"


def test_deterministic_for_a_seed_and_shuffled():
    sources = {"a": _source("a", 20), "b": _source("b", 20)}
    first = mix(sources, {"b": 0.5}, seed=3)["doc_id"]
    assert mix(sources, {"b": 0.5}, seed=3)["doc_id"] == first
    assert mix(sources, {"b": 0.5}, seed=4)["doc_id"] != first
    assert first != sorted(first)  # shuffled, not concatenated in order


def test_sample_of_a_source_does_not_depend_on_other_sources():
    alone = {doc for doc in mix({"b": _source("b", 20)}, {"b": 0.5}, seed=1)["doc_id"]}
    with_other = {doc for doc in mix({"a": _source("a", 5), "b": _source("b", 20)}, {"b": 0.5}, seed=1)["doc_id"]}
    assert alone == {doc for doc in with_other if doc.startswith("b:")}


def test_keeps_common_columns_and_row_sources():
    mixed = mix({"group": _source("x", 3, extra=True)}, {}, seed=0)
    assert mixed.column_names == ["text", "source", "doc_id"]
    assert set(mixed["source"]) == {"x"}  # rows keep their own source, not the group name
    assert len(mixed) == 3  # missing weight = 1.0


def test_errors_name_the_source_and_value():
    with pytest.raises(ValueError, match=r"source 'a': .*-1\.0"):
        mix({"a": _source("a", 2)}, {"a": -1.0}, seed=0)
    with pytest.raises(ValueError, match=r"unknown sources \['zzz'\]"):
        mix({"a": _source("a", 2)}, {"zzz": 1.0}, seed=0)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['doc_id'\]"):
        mix({"a": Dataset.from_dict({"text": ["t"], "source": ["a"]})}, {}, seed=0)
    with pytest.raises(ValueError, match="at least one"):
        mix({}, {}, seed=0)


def test_empty_sources_give_an_empty_dataset():
    empty = _source("a", 0)
    mixed = mix({"a": empty, "b": _source("b", 0)}, {}, seed=0)
    assert len(mixed) == 0 and mixed.column_names == ["text", "source", "doc_id"]
    assert mix({"a": empty, "b": _source("b", 2)}, {}, seed=0)["doc_id"] in (["b:0", "b:1"], ["b:1", "b:0"])
