"""Synthetic benchmark batches: the SAME documents as a padded batch (transformers) and packed (ours).

A benchmark batch is a list of documents, one per row of the padded batch, each at most `seq_len` tokens. Their
lengths come from a fixed-seed log-normal mix (many short documents, long ones truncated at `seq_len`), scaled so
that the padded batch has a chosen padding fraction (about 25% for training). The same token ids and the same
masked positions (30% of real tokens carry a label) are laid out two ways:

- padded: `input_ids`, `attention_mask`, `labels` of shape `(rows, seq_len)`, -100 on unmasked and padding tokens;
- packed: `input_ids`, `position_ids`, `labels` of shape `(1, total_tokens)`, `cu_seqlens` `(rows + 1,)` int32 and
  `max_seqlen` (a Python int), the documents concatenated without padding.

Imports only torch and the standard library, so the benchmark runs on a machine without `datasets`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

FIRST_ORDINARY_ID = 5  # ids below this are special tokens in every preset (pad, cls, sep, mask, unk)


def padding_fraction(lengths: list[int], seq_len: int) -> float:
    """Fraction of the `(len(lengths), seq_len)` padded batch that is padding."""
    return 1.0 - sum(lengths) / (len(lengths) * seq_len)


def sample_document_lengths(rows: int, seq_len: int, padding: float, seed: int = 0, min_len: int = 16,
                            sigma: float = 1.0) -> list[int]:
    """`rows` document lengths in `[min_len, seq_len]` whose padded batch has padding as close to `padding` as possible.

    Raw lengths are log-normal (a mix of short notes and long ones that get truncated); one scale factor, found by
    bisection, sets the mean. The result depends only on the arguments, so every model sees the same documents.
    """
    if rows <= 0 or seq_len <= 0:
        raise ValueError(f"rows={rows} and seq_len={seq_len} must be positive")
    if not 1 <= min_len <= seq_len:
        raise ValueError(f"min_len={min_len} must be in [1, seq_len={seq_len}]")
    most_padding = 1.0 - min_len / seq_len
    if not 0.0 <= padding <= most_padding:
        raise ValueError(f"padding={padding} is not reachable with min_len={min_len}, seq_len={seq_len}: "
                         f"use a value in [0, {most_padding:.3f}]")
    rng = random.Random(seed)
    raw = [rng.lognormvariate(0.0, sigma) for _ in range(rows)]

    def lengths_at(scale: float) -> list[int]:
        return [min(seq_len, max(min_len, round(scale * r))) for r in raw]

    # Padding falls as the scale grows; bisect on log(scale) and keep the closest integer solution seen.
    low, high = math.log(1e-6), math.log(1e6 * seq_len)
    best = lengths_at(math.exp(high))
    for _ in range(100):
        middle = (low + high) / 2
        candidate = lengths_at(math.exp(middle))
        if abs(padding_fraction(candidate, seq_len) - padding) < abs(padding_fraction(best, seq_len) - padding):
            best = candidate
        if padding_fraction(candidate, seq_len) > padding:
            low = middle
        else:
            high = middle
    return best


@dataclass
class DocumentBatch:
    """One set of documents, padded and packed; see the module docstring for the layouts."""

    lengths: list[int]
    seq_len: int
    input_ids: torch.Tensor  # (rows, seq_len) int64, pad_token_id at padding
    attention_mask: torch.Tensor  # (rows, seq_len) int64
    labels: torch.Tensor  # (rows, seq_len) int64, -100 except at masked real tokens
    packed_input_ids: torch.Tensor  # (1, total_tokens)
    packed_position_ids: torch.Tensor  # (1, total_tokens), restarting at 0 per document
    packed_labels: torch.Tensor  # (1, total_tokens)
    cu_seqlens: torch.Tensor  # (rows + 1,) int32
    max_seqlen: int

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def padded_tokens(self) -> int:
        return self.rows * self.seq_len

    @property
    def padding_fraction(self) -> float:
        return padding_fraction(self.lengths, self.seq_len)

    @property
    def masked_tokens(self) -> int:
        return int((self.packed_labels != -100).sum())

    def padded_inputs(self, device: torch.device | str, with_labels: bool) -> dict:
        """Keyword arguments for a padded forward (transformers' layout; also what a tokenizer gives users)."""
        inputs = {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}
        if with_labels:
            inputs["labels"] = self.labels.to(device)
        return inputs

    def packed_inputs(self, device: torch.device | str, with_labels: bool) -> dict:
        """Keyword arguments for our packed forward (what the training collator produces)."""
        inputs = {
            "input_ids": self.packed_input_ids.to(device),
            "position_ids": self.packed_position_ids.to(device),
            "cu_seqlens": self.cu_seqlens.to(device),
            "max_seqlen": self.max_seqlen,
        }
        if with_labels:
            inputs["labels"] = self.packed_labels.to(device)
            inputs["masked_positions"] = (self.packed_labels.flatten() != -100).nonzero().squeeze(1).to(device)
        return inputs

    def summary(self) -> dict:
        return {
            "rows": self.rows, "seq_len": self.seq_len, "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens, "padding_fraction": round(self.padding_fraction, 4),
            "masked_tokens": self.masked_tokens, "min_doc": min(self.lengths), "max_doc": max(self.lengths),
        }


def build_batch(lengths: list[int], seq_len: int, vocab_size: int, pad_token_id: int, mask_token_id: int | None,
                mask_rate: float = 0.3, seed: int = 0) -> DocumentBatch:
    """Random documents of the given lengths, with `round(mask_rate * real_tokens)` masked positions.

    Masked positions are drawn once over the real tokens, so both layouts label exactly the same tokens; the input
    at a masked position becomes `mask_token_id` (when given), as a masking collator would make it.
    """
    if not lengths:
        raise ValueError("lengths is empty: a batch needs at least one document")
    for index, length in enumerate(lengths):
        if not 1 <= length <= seq_len:
            raise ValueError(f"document {index} has length {length}, outside [1, seq_len={seq_len}]")
    if vocab_size <= FIRST_ORDINARY_ID:
        raise ValueError(f"vocab_size={vocab_size} leaves no ordinary ids (ids < {FIRST_ORDINARY_ID} are special)")
    if not 0.0 <= mask_rate <= 1.0:
        raise ValueError(f"mask_rate={mask_rate} must be in [0, 1]")

    generator = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    tokens = torch.randint(FIRST_ORDINARY_ID, vocab_size, (total,), generator=generator)
    masked = torch.zeros(total, dtype=torch.bool)
    masked[torch.randperm(total, generator=generator)[: round(mask_rate * total)]] = True
    packed_labels = torch.where(masked, tokens, torch.full_like(tokens, -100))
    packed_ids = tokens.masked_fill(masked, mask_token_id) if mask_token_id is not None else tokens

    seqlens = torch.tensor(lengths)
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = seqlens.cumsum(0)
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), seqlens)
    position_ids = torch.arange(total) - starts  # (total,) restarting at 0 per document

    attention_mask = (torch.arange(seq_len)[None, :] < seqlens[:, None]).long()  # (rows, seq_len), right padding
    real = attention_mask.bool()
    input_ids = torch.full((len(lengths), seq_len), pad_token_id, dtype=torch.long)
    input_ids[real] = packed_ids  # row-major order of the mask == packed order
    labels = torch.full((len(lengths), seq_len), -100, dtype=torch.long)
    labels[real] = packed_labels
    return DocumentBatch(
        lengths=list(lengths), seq_len=seq_len, input_ids=input_ids, attention_mask=attention_mask, labels=labels,
        packed_input_ids=packed_ids[None], packed_position_ids=position_ids[None], packed_labels=packed_labels[None],
        cu_seqlens=cu_seqlens, max_seqlen=max(lengths),
    )
