"""Tests of train/masking.py: packed batch layout, 80/10/10 masking statistics, determinism, rate schedule."""

from __future__ import annotations

import types

import pytest
import torch
from conftest import make_tiny_tokenizer

from train.masking import MaskingSchedule, MaskingScheduleCallback, PackedMLMCollator, never_masked_ids

PAD, CLS, SEP, MASK, UNK = 0, 1, 2, 3, 4


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _doc(n_words: int, first: int = 10) -> list[int]:
    return [CLS, *range(first, first + n_words), SEP]


def test_layout_by_hand(tokenizer):
    examples = [
        {"input_ids": _doc(3) + _doc(1), "seq_lens": [5, 3]},
        {"input_ids": _doc(2), "seq_lens": [4]},
    ]
    batch = PackedMLMCollator(tokenizer, seed=0)(examples)
    assert batch["cu_seqlens"].tolist() == [0, 5, 8, 12]
    assert batch["cu_seqlens"].dtype == torch.int32
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]]
    assert batch["max_seqlen"] == 5 and isinstance(batch["max_seqlen"], int)
    assert batch["input_ids"].shape == batch["labels"].shape == (1, 12)
    assert set(batch) == {"input_ids", "position_ids", "cu_seqlens", "max_seqlen", "labels", "masked_positions"}
    assert batch["masked_positions"].tolist() == (batch["labels"][0] != -100).nonzero().flatten().tolist()
    assert len(batch["masked_positions"]) > 0


def test_positions_restart_at_one_token_documents(tokenizer):
    examples = [{"input_ids": [CLS, 10, SEP, 11, 12, 13], "seq_lens": [3, 1, 2]}, {"input_ids": [14], "seq_lens": [1]}]
    batch = PackedMLMCollator(tokenizer, seed=0)(examples)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 0]]
    assert batch["cu_seqlens"].tolist() == [0, 3, 4, 6, 7]


def test_padding_is_its_own_document(tokenizer):
    batch = PackedMLMCollator(tokenizer, pad_to_multiple_of=8)([{"input_ids": _doc(3), "seq_lens": [5]}])
    assert batch["cu_seqlens"].tolist() == [0, 5, 8]
    assert batch["input_ids"][0, 5:].tolist() == [PAD, PAD, PAD]
    assert batch["labels"][0, 5:].tolist() == [-100, -100, -100]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]


def test_bad_seq_lens_are_named(tokenizer):
    with pytest.raises(ValueError, match=r"example 0: seq_lens \[3\] \(sum 3\) do not partition its 5 input_ids"):
        PackedMLMCollator(tokenizer)([{"input_ids": _doc(3), "seq_lens": [3]}])


def _big_batch(tokenizer, probability, seed=0):
    # 400 documents of 48 words: 20,000 tokens, 19,200 maskable.
    examples = [{"input_ids": _doc(48, first=5 + i % 20), "seq_lens": [50]} for i in range(400)]
    collator = PackedMLMCollator(tokenizer, mlm_probability=probability, seed=seed)
    original = torch.tensor([t for e in examples for t in e["input_ids"]])
    return collator(examples), original


@pytest.mark.parametrize("probability", [0.30, 0.15])
def test_masking_rate_and_80_10_10_split(tokenizer, probability):
    batch, original = _big_batch(tokenizer, probability)
    labels, corrupted = batch["labels"][0], batch["input_ids"][0]
    selected = labels != -100
    n_maskable = 400 * 48
    # Binomial std of the rate: sqrt(p(1-p)/n) ~ 0.0033; 5 sigma tolerance.
    assert selected.sum().item() / n_maskable == pytest.approx(probability, abs=0.017)
    assert torch.equal(labels[selected], original[selected])  # labels are the original ids
    n_selected = selected.sum().item()
    as_mask = (corrupted[selected] == MASK).sum().item() / n_selected
    unchanged = (corrupted[selected] == original[selected]).sum().item() / n_selected
    random = 1 - as_mask - unchanged
    assert as_mask == pytest.approx(0.8, abs=0.03)
    # A random replacement can draw the original token (1 chance in 123 non-special ids): "unchanged" gains a bit.
    assert unchanged == pytest.approx(0.1 + 0.1 / 123, abs=0.025)
    assert random == pytest.approx(0.1 - 0.1 / 123, abs=0.025)
    # Unselected tokens are untouched; random replacements are never special tokens.
    assert torch.equal(corrupted[~selected], original[~selected])
    replaced = selected & (corrupted != MASK) & (corrupted != original)
    assert not torch.isin(corrupted[replaced], torch.tensor(never_masked_ids(tokenizer))).any()


def test_special_tokens_are_never_masked(tokenizer):
    examples = [{"input_ids": [CLS, 10, UNK, 11, SEP, PAD, MASK], "seq_lens": [7]}] * 50
    batch = PackedMLMCollator(tokenizer, mlm_probability=1.0)(examples)
    labels = batch["labels"][0].view(50, 7)
    assert (labels[:, [0, 2, 4, 5, 6]] == -100).all()
    assert (labels[:, [1, 3]] != -100).all()


def test_at_least_one_token_is_selected(tokenizer):
    collator = PackedMLMCollator(tokenizer, mlm_probability=1e-9)
    batch = collator([{"input_ids": _doc(3), "seq_lens": [5]}])
    assert (batch["labels"] != -100).sum().item() == 1


def test_masks_are_deterministic_and_change_with_seed_and_epoch(tokenizer):
    examples = [{"input_ids": _doc(200), "seq_lens": [202]}]
    first = PackedMLMCollator(tokenizer, seed=3)(examples)["labels"]
    assert torch.equal(first, PackedMLMCollator(tokenizer, seed=3)(examples)["labels"])
    assert not torch.equal(first, PackedMLMCollator(tokenizer, seed=4)(examples)["labels"])
    next_epoch = PackedMLMCollator(tokenizer, seed=3)
    next_epoch.set_position(epoch=1, next_batch_index=0)
    assert not torch.equal(first, next_epoch(examples)["labels"])


def test_rate_validation(tokenizer):
    with pytest.raises(ValueError, match="mlm_probability=0.0 must be in"):
        PackedMLMCollator(tokenizer, mlm_probability=0.0)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("linear", [0.30, 0.225, 0.15, 0.15]),
        ("cosine", [0.30, 0.225, 0.15, 0.15]),
        ("constant", [0.30, 0.30, 0.30, 0.30]),
    ],
)
def test_schedule_start_middle_end(kind, expected):
    schedule = MaskingSchedule(start=0.30, end=0.15, kind=kind, total_steps=100)
    assert [schedule.rate(step) for step in (0, 50, 100, 150)] == pytest.approx(expected)


def test_schedule_quarter_points():
    linear = MaskingSchedule(0.30, 0.15, "linear", 100)
    cosine = MaskingSchedule(0.30, 0.15, "cosine", 100)
    assert linear.rate(25) == pytest.approx(0.2625)
    # cosine at 1/4: 0.15 + 0.15 * (1 + cos(pi/4)) / 2 = 0.15 + 0.15 * 0.853553
    assert cosine.rate(25) == pytest.approx(0.2780330)


def test_schedule_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown masking schedule 'step'"):
        MaskingSchedule(kind="step")


def _state(global_step, epoch, max_steps=10):
    return types.SimpleNamespace(global_step=global_step, max_steps=max_steps, epoch=epoch)


def test_callback_schedules_by_batch_index(tokenizer):
    collator = PackedMLMCollator(tokenizer)
    callback = MaskingScheduleCallback(collator, 0.30, 0.15, "linear")  # total = max_steps = 10
    example = [{"input_ids": _doc(3), "seq_lens": [5]}]
    args = types.SimpleNamespace(gradient_accumulation_steps=2)
    callback.on_train_begin(args, _state(4, 1.5), None)  # e.g. resumed from checkpoint-4, in epoch 1
    assert collator.epoch == 1
    rates = []
    for _ in range(3):  # batches 8, 9 (step 4) and 10 (step 5)
        collator(example)
        rates.append(collator.last_rate)
    assert rates == pytest.approx([0.24, 0.24, 0.225])
    callback.on_epoch_begin(args, _state(7, 2.0), None)  # a new epoch starts at batch 14 (step 7)
    collator(example)
    assert collator.epoch == 2 and collator.last_rate == pytest.approx(0.195)


def test_schedule_ignores_when_batches_are_collated(tokenizer):
    """Masks depend only on the batch index: collating ahead, or in worker processes, changes nothing."""
    examples = [{"input_ids": _doc(40, first=5 + i), "seq_lens": [42]} for i in range(8)]

    def labels_with(num_workers):
        collator = PackedMLMCollator(tokenizer, seed=1)
        callback = MaskingScheduleCallback(collator, 0.9, 0.1, "linear", total_steps=8)
        callback.on_train_begin(types.SimpleNamespace(gradient_accumulation_steps=1), _state(0, 0.0), None)
        loader = torch.utils.data.DataLoader(examples, batch_size=1, collate_fn=collator, num_workers=num_workers)
        return [batch["labels"] for batch in loader]

    in_process, in_workers = labels_with(0), labels_with(2)
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_workers))
    # And the schedule did act: the rate decays from 0.9 towards 0.1 over the 8 batches.
    masked = [(labels != -100).sum().item() for labels in in_process]
    assert masked[0] > 25 and masked[-1] < 15
