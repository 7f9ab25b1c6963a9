"""Tests of train/packing.py: best-fit bins by hand, long-document splitting, fill rate, no token lost, cache."""

from __future__ import annotations

import datasets
import pytest
from conftest import make_tiny_tokenizer

from train.packing import (
    PackReport,
    best_fit_pack,
    fill_corpus_report_tokens,
    pack_corpus,
    pack_split,
    split_into_chunks,
)


def test_best_fit_hand_example():
    # Sorted: 7(#0) 5(#1) 4(#2) 3(#3) 1(#4). 7 -> new A (3 left); 5 -> new B (5 left); 4 -> B (1 left);
    # 3 -> A, the only bin it fits (0 left); 1 -> B (0 left).
    assert best_fit_pack([7, 5, 4, 3, 1], 10) == [[0, 3], [1, 2, 4]]


def test_best_fit_prefers_tightest_bin():
    # 6(#0) -> A (4 left); 5(#1) -> B (5 left); 4(#2) fits both A (4) and B (5): best fit is A, exactly full.
    # 3(#3) -> B (2 left); 2(#4) -> B (0 left).
    assert best_fit_pack([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]


def test_best_fit_ties_go_to_the_oldest_bin_and_lower_index():
    # Three 6s open three bins with 4 left each; the two 4s (#3 before #4 on the tie) go to bins 0 and 1.
    assert best_fit_pack([6, 6, 6, 4, 4], 10) == [[0, 3], [1, 4], [2]]


def test_best_fit_rejects_impossible_lengths():
    with pytest.raises(ValueError, match="item 1 has length 11"):
        best_fit_pack([3, 11], 10)
    with pytest.raises(ValueError, match="item 0 has length 0"):
        best_fit_pack([0], 10)


def test_split_into_chunks():
    assert split_into_chunks([10, 11, 12, 13, 14, 15, 16], 5, cls_id=1, sep_id=2) == [
        [1, 10, 11, 12, 2], [1, 13, 14, 15, 2], [1, 16, 2]
    ]
    assert split_into_chunks([10, 11, 12], 5, 1, 2) == [[1, 10, 11, 12, 2]]
    assert split_into_chunks([], 5, 1, 2) == []


@pytest.fixture
def tokenizer(tmp_path):
    return make_tiny_tokenizer(tmp_path / "tokenizer")


def _corpus(texts, sources=None):
    sources = sources or ["icd"] * len(texts)
    return datasets.Dataset.from_dict(
        {"text": texts, "source": sources, "doc_id": [f"d{i}" for i in range(len(texts))]}
    )


def test_pack_split_by_hand(tokenizer):
    # WordLevel tokenizer: one token per word, plus [CLS] and [SEP]. max_seq_len 8 -> chunk bodies of 6 words.
    texts = [
        "the patient has type diabetes mellitus without complications",  # 8 words -> chunks of 8 and 4 tokens
        "acute chronic kidney disease",  # 6 tokens
        "",  # empty: skipped, reported
        "fever cough",  # 4 tokens
    ]
    packed, report = pack_split(_corpus(texts, ["a", "b", "a", "b"]), tokenizer, max_seq_len=8)
    # Chunks: #0 = 8 tok, #1 = 4 tok (doc 0 tail), #2 = 6 tok, #3 = 4 tok.
    # Best fit: 8 -> bin0 full; 6 -> bin1 (2 left); 4 (#1) -> bin2 (4 left); 4 (#3) -> bin2 (0 left).
    assert [row["seq_lens"] for row in packed] == [[8], [6], [4, 4]]
    ids = tokenizer.convert_tokens_to_ids
    assert packed[0]["input_ids"] == ids(["[CLS]", "the", "patient", "has", "type", "diabetes", "mellitus", "[SEP]"])
    assert packed[2]["input_ids"] == ids(["[CLS]", "without", "complications", "[SEP]",
                                          "[CLS]", "fever", "cough", "[SEP]"])
    assert report.documents_read == 4
    assert report.documents_kept == 3
    assert report.documents_skipped == {"empty_text": 1}
    assert report.documents_split == 1
    assert report.chunks == 4
    assert report.tokens == 22
    assert report.bins == 3
    assert report.fill_rate == pytest.approx(22 / 24)
    assert report.tokens_by_source == {"a": 12, "b": 10}
    assert "fill rate 91.67%" in report.summary()


def test_no_token_lost_and_bins_within_capacity(tokenizer):
    words = ["the", "patient", "has", "acute", "chronic", "kidney", "disease", "with", "fever", "and", "cough"]
    texts = [" ".join(words[: 1 + (i * 7) % len(words)] * (1 + i % 5)) for i in range(60)]
    packed, report = pack_split(_corpus(texts), tokenizer, max_seq_len=16)
    expected_tokens = 0
    for text in texts:
        n_words = len(text.split())
        n_chunks = -(-n_words // 14)
        expected_tokens += n_words + 2 * n_chunks
    assert report.tokens == expected_tokens
    assert sum(sum(row["seq_lens"]) for row in packed) == expected_tokens
    assert all(len(row["input_ids"]) == sum(row["seq_lens"]) <= 16 for row in packed)
    assert report.fill_rate == pytest.approx(expected_tokens / (16 * len(packed)))


def test_non_string_text_names_the_document(tokenizer):
    data = datasets.Dataset.from_dict({"text": ["fever", None], "source": ["a", "b"], "doc_id": ["x1", "x2"]})
    with pytest.raises(TypeError, match="doc_id='x2' \\(source 'b'\\)"):
        pack_split(data, tokenizer, max_seq_len=8)


def test_missing_columns_are_named(tokenizer):
    data = datasets.Dataset.from_dict({"text": ["fever"]})
    with pytest.raises(ValueError, match=r"lacks the columns \['doc_id', 'source'\]"):
        pack_split(data, tokenizer, max_seq_len=8)


def test_pack_corpus_cache_roundtrip(tokenizer, tmp_path):
    corpus = datasets.DatasetDict(train=_corpus(["fever cough", "acute chronic kidney disease"]),
                                  validation=_corpus(["chest pain"]))
    packed, reports = pack_corpus(corpus, tokenizer, 8, cache_dir=tmp_path / "cache")
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("packed-8-")
    again, reports_again = pack_corpus(corpus, tokenizer, 8, cache_dir=tmp_path / "cache")
    assert again["train"]["input_ids"] == packed["train"]["input_ids"]
    assert reports_again["validation"].to_dict() == reports["validation"].to_dict()
    # Another max_seq_len or another corpus is another cache entry.
    pack_corpus(corpus, tokenizer, 6, cache_dir=tmp_path / "cache")
    pack_corpus(datasets.DatasetDict(train=_corpus(["fever"])), tokenizer, 8, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_report_roundtrip_and_corpus_token_counts():
    report = PackReport(split="train", max_seq_len=8, documents_read=2, documents_kept=2, chunks=2, tokens=12,
                        bins=2, tokens_by_source={"a": 5, "b": 7})
    assert PackReport.from_dict(report.to_dict()) == report
    assert report.to_dict()["fill_rate"] == 0.75

    class FakeCorpusReport:
        def __init__(self):
            self.tokens = {}

        def set_tokens(self, source, tokens):
            self.tokens[source] = tokens

    validation = PackReport(split="validation", max_seq_len=8, tokens_by_source={"a": 3})
    corpus_report = FakeCorpusReport()
    fill_corpus_report_tokens(corpus_report, {"train": report, "validation": validation})
    assert corpus_report.tokens == {"a": 8, "b": 7}
