"""Numerical parity with transformers' ModernBERT (identical weights), and padding/packing invariance."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from conftest import native_modernbert, tiny_config

from configuration_clinical_modernbert import ClinicalModernBertConfig
from modeling_clinical_modernbert import (
    ClinicalModernBertForMaskedLM,
    ClinicalModernBertForSequenceClassification,
    ClinicalModernBertModel,
)

pytestmark = pytest.mark.oldest  # also run against the oldest supported transformers

BACKENDS = ["eager", "sdpa"]


def padded_batch(lengths: list[int], vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random ids (never special ids 0..4) and the matching attention mask."""
    generator = torch.Generator().manual_seed(seed)
    seq_len = max(lengths)
    ids = torch.randint(5, vocab_size, (len(lengths), seq_len), generator=generator)
    mask = (torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def base_geometry(num_layers: int, **overrides) -> ClinicalModernBertConfig:
    # ModernBERT-base shapes; a 4096-token vocabulary keeps model construction fast on a 2-core CI machine.
    special = dict(pad_token_id=0, cls_token_id=1, bos_token_id=1, sep_token_id=2, eos_token_id=2, mask_token_id=3)
    return ClinicalModernBertConfig.from_preset(
        "base", num_hidden_layers=num_layers, vocab_size=4096, **special, **overrides
    )


# Lengths fall below and above the local window (16 for tiny, 128 for base).
CASES = [
    pytest.param(lambda: tiny_config(), [40, 23, 9, 1], id="tiny"),
    pytest.param(lambda: base_geometry(3), [260, 100, 37], id="base-3-layers"),
]


@cache
def cached_pair(model_class: type, make_config, pooling: str = "cls", seed: int = 0):
    """Our model and transformers' with identical weights; building base-geometry models is the slow part."""
    torch.manual_seed(seed)
    config = make_config()
    config.classifier_pooling = pooling
    config.num_labels = 3
    ours = model_class(config).eval()
    return ours, {backend: native_modernbert(ours, attn_implementation=backend) for backend in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make_config, lengths", CASES)
def test_base_model_matches_transformers(make_config, lengths, backend):
    ours, natives = cached_pair(ClinicalModernBertModel, make_config)
    config, native = ours.config, natives[backend]
    config.attention_backend = backend
    ids, mask = padded_batch(lengths, config.vocab_size)
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        want = native(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert got.shape == want.shape
    assert (got[real] - want[real]).abs().max().item() <= 1e-4
    assert torch.count_nonzero(got[~real]) == 0  # padding positions are zeros, not garbage


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make_config, lengths", CASES)
def test_masked_lm_matches_transformers(make_config, lengths, backend):
    ours, natives = cached_pair(ClinicalModernBertForMaskedLM, make_config, seed=1)
    config, native = ours.config, natives[backend]
    config.attention_backend = backend
    ids, mask = padded_batch(lengths, config.vocab_size, seed=1)
    labels = torch.full_like(ids, -100)
    masked = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.3) & mask.bool()
    labels[masked] = ids[masked]
    with torch.no_grad():
        dense = ours(input_ids=ids, attention_mask=mask).logits
        want = native(input_ids=ids, attention_mask=mask).logits
        sparse = ours(input_ids=ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    assert (dense[real] - want[real]).abs().max().item() <= 1e-4
    # Sparse prediction: logits only at labelled tokens, in row-major order, and the same loss.
    assert sparse.logits.shape == (int(masked.sum()), config.vocab_size)
    assert (sparse.logits - want[masked]).abs().max().item() <= 1e-4
    want_loss = torch.nn.functional.cross_entropy(want[masked], ids[masked])
    assert abs(sparse.loss.item() - want_loss.item()) <= 1e-5


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make_config, lengths", CASES)
def test_sequence_classification_matches_transformers(make_config, lengths, backend, pooling):
    ours, natives = cached_pair(ClinicalModernBertForSequenceClassification, make_config, pooling, seed=2)
    config, native = ours.config, natives[backend]
    config.attention_backend = backend
    ids, mask = padded_batch(lengths, config.vocab_size, seed=3)
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).logits
        want = native(input_ids=ids, attention_mask=mask).logits
    assert (got - want).abs().max().item() <= 1e-4


def test_backends_agree_with_each_other():
    torch.manual_seed(3)
    ids, mask = padded_batch([50, 17, 3], 128, seed=4)
    model = ClinicalModernBertModel(tiny_config()).eval()
    outputs = {}
    with torch.no_grad():
        for backend in BACKENDS:
            model.config.attention_backend = backend
            outputs[backend] = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (outputs["eager"] - outputs["sdpa"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_invariance(backend):
    """A sequence's outputs do not depend on the padding around it, on either side."""
    torch.manual_seed(4)
    model = ClinicalModernBertModel(tiny_config(attention_backend=backend)).eval()
    seq = torch.randint(5, 128, (1, 30))
    with torch.no_grad():
        alone = model(input_ids=seq).last_hidden_state[0]
        right = torch.cat([seq, torch.zeros(1, 70, dtype=torch.long)], dim=1)
        right_mask = torch.cat([torch.ones(1, 30), torch.zeros(1, 70)], dim=1).long()
        left = torch.cat([torch.zeros(1, 11, dtype=torch.long), seq], dim=1)
        left_mask = torch.cat([torch.zeros(1, 11), torch.ones(1, 30)], dim=1).long()
        other = torch.randint(5, 128, (1, 100))
        batch = torch.cat([right, other])
        batch_mask = torch.cat([right_mask, torch.ones(1, 100, dtype=torch.long)])
        padded_right = model(input_ids=batch, attention_mask=batch_mask).last_hidden_state[0, :30]
        padded_left = model(input_ids=left, attention_mask=left_mask).last_hidden_state[0, 11:]
    assert (alone - padded_right).abs().max().item() <= 1e-5
    assert (alone - padded_left).abs().max().item() <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_documents_equal_separate_runs(backend):
    """Two documents in one row (restarting position_ids, or cu_seqlens) never attend across each other."""
    torch.manual_seed(5)
    model = ClinicalModernBertForMaskedLM(tiny_config(attention_backend=backend)).eval()
    doc_a, doc_b = torch.randint(5, 128, (1, 27)), torch.randint(5, 128, (1, 14))
    packed = torch.cat([doc_a, doc_b], dim=1)
    position_ids = torch.cat([torch.arange(27), torch.arange(14)])[None]
    cu_seqlens = torch.tensor([0, 27, 41], dtype=torch.int32)
    with torch.no_grad():
        separate = torch.cat([model(input_ids=doc_a).logits[0], model(input_ids=doc_b).logits[0]])
        by_positions = model(input_ids=packed, position_ids=position_ids).logits[0]
        by_cu_seqlens = model(input_ids=packed, cu_seqlens=cu_seqlens, max_seqlen=27).logits[0]
        # Without the document marks the two documents do see each other: the check above can fail.
        unmarked = model(input_ids=packed).logits[0]
    assert (separate - by_positions).abs().max().item() <= 1e-5
    assert (separate - by_cu_seqlens).abs().max().item() <= 1e-5
    assert (separate - unmarked).abs().max().item() > 1e-4  # 10x the tolerance above


def test_padded_rows_that_pack_documents():
    """Packed rows with padding: documents split at position 0, padding dropped."""
    torch.manual_seed(6)
    model = ClinicalModernBertModel(tiny_config(attention_backend="sdpa")).eval()
    docs = [torch.randint(5, 128, (n,)) for n in (10, 6, 12)]
    row0 = torch.cat([docs[0], docs[1]])
    ids = torch.zeros(2, 16, dtype=torch.long)
    ids[0], ids[1, :12] = row0, docs[2]
    mask = torch.zeros(2, 16, dtype=torch.long)
    mask[0], mask[1, :12] = 1, 1
    position_ids = torch.zeros(2, 16, dtype=torch.long)
    position_ids[0] = torch.cat([torch.arange(10), torch.arange(6)])
    position_ids[1, :12] = torch.arange(12)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
        for doc, got in ((docs[0], out[0, :10]), (docs[1], out[0, 10:16]), (docs[2], out[1, :12])):
            want = model(input_ids=doc[None]).last_hidden_state[0]
            assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_documents_grouped_into_one_padded_row_stay_apart(backend):
    """The padded backends group consecutive short documents into one row; the block mask keeps them apart."""
    from modeling_clinical_modernbert import DocumentPadding

    torch.manual_seed(7)
    model = ClinicalModernBertModel(tiny_config(attention_backend=backend)).eval()
    lengths = [5, 7, 9, 27, 3, 20]
    docs = [torch.randint(5, 128, (1, n)) for n in lengths]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    padding = DocumentPadding.build(cu_seqlens, max(lengths), sum(lengths))
    assert padding.num_rows == 3  # [5, 7, 9] | [27] | [3, 20]: 3 rows of 27 slots instead of 6
    with torch.no_grad():
        packed = model(input_ids=torch.cat(docs, dim=1), cu_seqlens=cu_seqlens).last_hidden_state[0]
        separate = torch.cat([model(input_ids=doc).last_hidden_state[0] for doc in docs])
    assert (packed - separate).abs().max().item() <= 1e-5
