"""Tests of train/tokenizer.py: the trained BPE follows ModernBERT's conventions; mismatches are refused."""

from __future__ import annotations

import json
import types

import pytest
from transformers import AutoTokenizer

from train.tokenizer import (
    TokenizerModelMismatchError,
    TokenizerUnavailableError,
    check_tokenizer_matches_config,
    load_tokenizer,
    round_up_to_multiple,
    save_tokenizer,
    special_token_ids,
    train_bpe_tokenizer,
)

TEXTS = [
    "Type 2 diabetes mellitus without complications",
    "Acute myocardial infarction of anterior wall",
    "Fracture of left femur, initial encounter",
    "Chronic kidney disease, stage 3",
    "Essential (primary) hypertension",
] * 20


@pytest.fixture(scope="module")
def trained():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def test_special_tokens_have_ids_0_to_4(trained):
    assert [trained.pad_token_id, trained.cls_token_id, trained.sep_token_id, trained.mask_token_id,
            trained.unk_token_id] == [0, 1, 2, 3, 4]
    assert trained.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]


def test_post_processor_wraps_cls_sep(trained):
    single = trained("Acute infarction")["input_ids"]
    assert single[0] == 1 and single[-1] == 2
    assert single[1:-1] == trained("Acute infarction", add_special_tokens=False)["input_ids"]
    pair = trained("Acute", "wall")["input_ids"]
    body_a = trained("Acute", add_special_tokens=False)["input_ids"]
    body_b = trained("wall", add_special_tokens=False)["input_ids"]
    assert pair == [1, *body_a, 2, *body_b, 2]
    assert "token_type_ids" not in trained("Acute")


def test_byte_level_no_prefix_space_and_mask_lstrip(trained):
    def body(text):
        return trained(text, add_special_tokens=False)["input_ids"]

    # No prefix space on the first word; "Ġ" marks the space before the others; [MASK] swallows its left space.
    assert trained.convert_ids_to_tokens(body("of")) == ["of"]
    assert trained.convert_ids_to_tokens(body(" of")) == ["Ġof"]
    assert body("of anterior [MASK] wall") == body("of anterior") + [3] + body(" wall")
    assert trained.decode(trained("Acute myocardial infarction", add_special_tokens=False)["input_ids"]) == (
        "Acute myocardial infarction"
    )


def test_vocab_is_a_multiple_of_64_and_model_max_length(trained):
    assert len(trained) % 64 == 0
    assert trained.model_max_length == 8192
    # The padding is [unusedN] special tokens after the learned ids.
    last = trained.convert_ids_to_tokens(len(trained) - 1)
    assert last.startswith("[unused")


def test_round_up_to_multiple():
    assert [round_up_to_multiple(n) for n in (1, 64, 65, 50280)] == [64, 64, 128, 50304]


def test_save_and_reload_is_portable(trained, tmp_path):
    files = save_tokenizer(trained, tmp_path / "tok")
    assert files == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert json.loads((tmp_path / "tok" / "special_tokens_map.json").read_text())["mask_token"] == "[MASK]"
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert reloaded("Acute wall")["input_ids"] == trained("Acute wall")["input_ids"]
    assert len(reloaded) == len(trained)
    assert load_tokenizer(str(tmp_path / "tok")).mask_token_id == 3


def test_hub_id_offline_gives_actionable_error():
    with pytest.raises(TokenizerUnavailableError, match="--train_tokenizer"):
        load_tokenizer("answerdotai/ModernBERT-base")


def test_folder_without_tokenizer_files(tmp_path):
    with pytest.raises(TokenizerUnavailableError, match="not a tokenizer folder"):
        load_tokenizer(str(tmp_path))


def test_empty_corpus_is_refused():
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe_tokenizer([], vocab_size=300)


def _config(**overrides):
    values = {"vocab_size": 320, "pad_token_id": 0, "cls_token_id": 1, "sep_token_id": 2, "bos_token_id": 1,
              "eos_token_id": 2, "mask_token_id": 3}
    return types.SimpleNamespace(**{**values, **overrides})


def test_matching_config_passes(trained):
    assert len(trained) == 320  # ~270 learned ids + 5 special, padded to 5 x 64
    check_tokenizer_matches_config(trained, _config())
    check_tokenizer_matches_config(trained, _config(vocab_size=384))  # a larger embedding is fine
    assert special_token_ids(trained)["mask_token_id"] == 3


def test_vocab_larger_than_embedding_is_refused(trained):
    with pytest.raises(TokenizerModelMismatchError, match="tokenizer has 320 tokens .* vocab_size=256"):
        check_tokenizer_matches_config(trained, _config(vocab_size=256))


def test_special_id_disagreement_is_refused(trained):
    with pytest.raises(TokenizerModelMismatchError, match=r"pad_token_id: config=50283, tokenizer=0 \(\[PAD\]\)"):
        check_tokenizer_matches_config(trained, _config(pad_token_id=50283))
