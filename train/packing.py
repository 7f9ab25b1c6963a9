"""Tokenize documents, split the long ones, and pack them into fixed-size bins with greedy best-fit.

Why packing: MLM pre-training on padded rows wastes the compute spent on padding. Our model is unpadded (it takes
``cu_seqlens`` and never attends across documents), so a training example is a *bin* of ``max_seq_len`` tokens
holding several whole documents back to back. Each packed example stores

* ``input_ids``: the documents' tokens concatenated (``sum(seq_lens) <= max_seq_len``, no padding);
* ``seq_lens``: the length of each document in the bin, in order.

Documents are tokenized without truncation. A document longer than ``max_seq_len`` is split into consecutive chunks
of at most ``max_seq_len - 2`` tokens, each wrapped as its own ``[CLS] ... [SEP]`` document, so no token is lost.

Bins are filled by greedy best-fit decreasing: documents are sorted longest first (ties by position), and each goes
into the open bin with the *least* remaining space that still fits it (ties: the oldest bin), or a new bin. With many
short documents this fills bins to > 95 %, and it is deterministic.

Results are cached under ``cache_dir/packed-<key>`` where the key hashes the tokenizer, ``max_seq_len``, the corpus
content and :data:`PACKING_VERSION`, so a changed tokenizer or corpus never reuses stale bins.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PACKING_VERSION = 1
# Below this many documents, tokenizing in one process beats the start-up cost of worker processes.
_MULTIPROCESS_MIN_DOCS = 20_000


@dataclass
class PackReport:
    """What tokenizing and packing one split read, kept, skipped (with reasons) and produced.

    ``documents_read == documents_kept + sum(documents_skipped.values())``; every kept token is in a bin.
    """

    split: str
    max_seq_len: int
    documents_read: int = 0
    documents_kept: int = 0
    documents_skipped: dict[str, int] = field(default_factory=dict)
    documents_split: int = 0
    chunks: int = 0
    tokens: int = 0
    bins: int = 0
    tokens_by_source: dict[str, int] = field(default_factory=dict)

    @property
    def fill_rate(self) -> float:
        """Real tokens / (bins x max_seq_len): the share of each step's compute that is not wasted."""
        return self.tokens / (self.bins * self.max_seq_len) if self.bins else 0.0

    def check(self) -> None:
        """Raise if the counts do not add up (a packing bug: a document was lost without a reason)."""
        skipped = sum(self.documents_skipped.values())
        if self.documents_read != self.documents_kept + skipped:
            raise AssertionError(
                f"{self.split}: read {self.documents_read} != kept {self.documents_kept} + skipped {skipped}"
            )

    def summary(self) -> str:
        skipped = sum(self.documents_skipped.values())
        line = (
            f"{self.split}: read {self.documents_read} documents, kept {self.documents_kept}, skipped {skipped}"
        )
        if skipped:
            line += " (" + ", ".join(f"{k}={v}" for k, v in sorted(self.documents_skipped.items())) + ")"
        line += (
            f"; split {self.documents_split} long documents -> {self.chunks} chunks, {self.tokens} tokens "
            f"in {self.bins} bins of {self.max_seq_len} (fill rate {100 * self.fill_rate:.2f}%)"
        )
        return line

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fill_rate": round(self.fill_rate, 6)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackReport:
        data = {k: v for k, v in data.items() if k != "fill_rate"}
        return cls(**data)


def split_into_chunks(token_ids: Sequence[int], max_seq_len: int, cls_id: int, sep_id: int) -> list[list[int]]:
    """Split a document's tokens (without special tokens) into ``[CLS] ... [SEP]`` chunks of <= ``max_seq_len``.

    An empty document gives no chunk.
    """
    if max_seq_len < 3:
        raise ValueError(f"max_seq_len={max_seq_len} leaves no room for a token between [CLS] and [SEP]")
    body = max_seq_len - 2
    return [[cls_id, *token_ids[start : start + body], sep_id] for start in range(0, len(token_ids), body)]


def best_fit_pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Greedy best-fit decreasing bin packing; returns the item indices of each bin, bins in creation order.

    Items are placed longest first (ties: lower index first) into the open bin with the least remaining space that
    fits (ties: the bin created first), else into a new bin. O(n log n): open bins are bucketed by remaining
    space, and the sorted list of non-empty remaining sizes has at most ``capacity`` entries.
    """
    for index, length in enumerate(lengths):
        if not 0 < length <= capacity:
            raise ValueError(f"item {index} has length {length}; every length must be in [1, {capacity}]")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    by_remaining: dict[int, list[int]] = {}  # remaining space -> heap of bin ids
    remaining_sizes: list[int] = []  # sorted remaining sizes that have at least one open bin
    for index in tqdm(order, desc="best-fit packing", unit="doc", disable=len(order) < 200_000, mininterval=2):
        length = lengths[index]
        pos = bisect_left(remaining_sizes, length)
        if pos < len(remaining_sizes):
            remaining = remaining_sizes[pos]
            bin_id = heapq.heappop(by_remaining[remaining])
            if not by_remaining[remaining]:
                del by_remaining[remaining]
                remaining_sizes.pop(pos)
        else:
            remaining, bin_id = capacity, len(bins)
            bins.append([])
        bins[bin_id].append(index)
        remaining -= length
        if remaining > 0:
            if remaining not in by_remaining:
                by_remaining[remaining] = []
                insort(remaining_sizes, remaining)
            heapq.heappush(by_remaining[remaining], bin_id)
    return bins


def _tokenize_batch(
    batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_seq_len: int
) -> dict[str, list]:
    """``datasets.map`` function: documents -> one row per ``[CLS] ... [SEP]`` chunk (empty documents vanish)."""
    texts = batch["text"]
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"document doc_id={batch['doc_id'][position]!r} (source {batch['source'][position]!r}) has "
                f"text of type {type(text).__name__}, expected str"
            )
    encoded = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    out: dict[str, list] = {"input_ids": [], "source": [], "doc_id": [], "chunk_index": [], "length": []}
    for ids, source, doc_id in zip(encoded, batch["source"], batch["doc_id"]):
        for chunk_index, chunk in enumerate(
            split_into_chunks(ids, max_seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
        ):
            out["input_ids"].append(chunk)
            out["source"].append(source)
            out["doc_id"].append(doc_id)
            out["chunk_index"].append(chunk_index)
            out["length"].append(len(chunk))
    return out


def _gather_bins(batch: dict[str, list], chunks: datasets.Dataset) -> dict[str, list]:
    """``datasets.map`` function: bins of chunk indices -> packed ``input_ids`` and ``seq_lens``."""
    flat = [index for bin_indices in batch["chunk_indices"] for index in bin_indices]
    rows = chunks[flat]
    ids_by_index = dict(zip(flat, rows["input_ids"]))
    input_ids, seq_lens = [], []
    for bin_indices in batch["chunk_indices"]:
        docs = [ids_by_index[index] for index in bin_indices]
        input_ids.append([token for doc in docs for token in doc])
        seq_lens.append([len(doc) for doc in docs])
    return {"input_ids": input_ids, "seq_lens": seq_lens}


_PACKED_FEATURES = datasets.Features(
    {"input_ids": datasets.Sequence(datasets.Value("int32")), "seq_lens": datasets.Sequence(datasets.Value("int32"))}
)


def pack_split(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_len: int,
    split: str = "train",
    num_proc: int | None = None,
) -> tuple[datasets.Dataset, PackReport]:
    """Tokenize, split and best-fit pack one split (columns ``text``, ``source``, ``doc_id``)."""
    missing = {"text", "source", "doc_id"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"split {split!r} lacks the columns {sorted(missing)}; it has {dataset.column_names}")
    if max_seq_len > tokenizer.model_max_length:
        raise ValueError(f"max_seq_len={max_seq_len} exceeds the tokenizer's model_max_length")
    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, 8) if len(dataset) >= _MULTIPROCESS_MIN_DOCS else None
    # Explicit fingerprints: datasets would otherwise hash the tokenizer / the chunk table passed as fn_kwargs.
    key = _hash(PACKING_VERSION, tokenizer_fingerprint(tokenizer), max_seq_len, corpus_fingerprint(dataset))
    chunks = dataset.map(
        _tokenize_batch,
        batched=True,
        remove_columns=dataset.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_seq_len": max_seq_len},
        num_proc=num_proc,
        new_fingerprint=_hash(key, "tokenize"),
        desc=f"tokenizing {split}",
    )
    lengths = list(chunks["length"])
    chunk_index = list(chunks["chunk_index"])
    report = PackReport(split=split, max_seq_len=max_seq_len, documents_read=len(dataset))
    report.documents_kept = sum(1 for index in chunk_index if index == 0)
    report.documents_split = sum(1 for index in chunk_index if index == 1)
    if report.documents_read > report.documents_kept:
        report.documents_skipped = {"empty_text": report.documents_read - report.documents_kept}
    report.chunks = len(lengths)
    report.tokens = sum(lengths)
    by_source: Counter[str] = Counter()
    for source, length in zip(chunks["source"], lengths):
        by_source[source] += length
    report.tokens_by_source = dict(sorted(by_source.items()))

    bins = best_fit_pack(lengths, max_seq_len)
    report.bins = len(bins)
    packed = datasets.Dataset.from_dict({"chunk_indices": bins}).map(
        _gather_bins,
        batched=True,
        batch_size=256,
        remove_columns=["chunk_indices"],
        fn_kwargs={"chunks": chunks.select_columns(["input_ids"])},
        features=_PACKED_FEATURES,
        new_fingerprint=_hash(key, "pack"),
        desc=f"packing {split}",
    )
    report.check()
    packed_tokens = sum(sum(lens) for lens in packed["seq_lens"])
    if packed_tokens != report.tokens:  # cannot happen unless _gather_bins is wrong; never lose tokens silently
        raise AssertionError(f"{split}: packed {packed_tokens} tokens but tokenized {report.tokens}")
    logger.info("packed %s", report.summary())
    return packed, report


def _hash(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything in the tokenizer that changes token ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    payload += json.dumps([tokenizer.cls_token_id, tokenizer.sep_token_id])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def corpus_fingerprint(dataset: datasets.Dataset) -> str:
    """Stable fingerprint of a split: datasets' own for on-disk data, a content hash for in-memory data.

    In-memory datasets get a random fingerprint from ``datasets``, which would defeat the cache.
    """
    if dataset.cache_files:
        return dataset._fingerprint
    digest = hashlib.sha256()
    for batch in dataset.select_columns(["text", "source", "doc_id"]).iter(batch_size=10_000):
        for text, source, doc_id in zip(batch["text"], batch["source"], batch["doc_id"]):
            digest.update(f"{source}\x00{doc_id}\x00{text}\x01".encode())
    return digest.hexdigest()[:16]


def pack_corpus(
    corpus: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_len: int,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
) -> tuple[datasets.DatasetDict, dict[str, PackReport]]:
    """Pack every split of ``corpus``; reuse ``cache_dir/packed-<key>`` when tokenizer, length and corpus match."""
    cache_path = None
    if cache_dir is not None:
        splits = [f"{name}={corpus_fingerprint(split)}" for name, split in sorted(corpus.items())]
        key = _hash(PACKING_VERSION, tokenizer_fingerprint(tokenizer), max_seq_len, *splits)
        cache_path = Path(cache_dir) / f"packed-{max_seq_len}-{key}"
        report_path = cache_path / "pack_report.json"
        if report_path.exists():
            packed = datasets.load_from_disk(str(cache_path))
            reports = {name: PackReport.from_dict(r) for name, r in json.loads(report_path.read_text()).items()}
            for report in reports.values():
                logger.info("packed (cached in %s) %s", cache_path, report.summary())
            return packed, reports
    packed_splits, reports = {}, {}
    for name, split in corpus.items():
        packed_splits[name], reports[name] = pack_split(split, tokenizer, max_seq_len, split=name, num_proc=num_proc)
    packed = datasets.DatasetDict(packed_splits)
    if cache_path is not None:
        packed.save_to_disk(str(cache_path))
        # Written last: its presence marks a complete cache entry.
        (cache_path / "pack_report.json").write_text(
            json.dumps({name: r.to_dict() for name, r in reports.items()}, indent=2) + "\n"
        )
        packed = datasets.load_from_disk(str(cache_path))  # memory-mapped, cheap to share with dataloader workers
    return packed, reports


def fill_corpus_report_tokens(corpus_report: Any, reports: dict[str, PackReport]) -> None:
    """Set each source's ``tokens`` in a ``train.corpora.report.CorpusReport``: tokens over all splits."""
    totals: Counter[str] = Counter()
    for report in reports.values():
        totals.update(report.tokens_by_source)
    for source, tokens in totals.items():
        corpus_report.set_tokens(source, tokens)
