"""Tests for the sentence-transformers folder and the transformers-only reference ``encode``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from publish_fixtures import build_tiny_model_folder

from publish.__main__ import main
from publish.push import check_model_folder
from publish.sentence_transformers import ST_FILES, encode, mean_pool, sentence_transformers_files

TEXTS = [
    "chest pain",
    "patient presents with chest pain and shortness of breath",
    "no fever or chills reported by the patient today and blood pressure was elevated on admission",
]


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory):
    """A tiny MLM folder converted with the CLI (max_seq_length 12, so the longest text is truncated)."""
    root = tmp_path_factory.mktemp("st")
    source = build_tiny_model_folder(root / "mlm", head="masked-lm")
    assert main(["sentence-transformers", str(source), str(root / "st"), "--max-seq-length", "12"]) == 0
    return root / "st"


def test_files_content_by_hand():
    files = sentence_transformers_files(hidden_size=32, max_seq_length=128)
    assert [(m["path"], m["type"]) for m in files["modules.json"]] == [
        ("", "sentence_transformers.models.Transformer"),
        ("1_Pooling", "sentence_transformers.models.Pooling"),
    ]
    assert files["sentence_bert_config.json"] == {"max_seq_length": 128, "do_lower_case": False}
    pooling = files["1_Pooling/config.json"]
    assert pooling["word_embedding_dimension"] == 32
    assert [k for k, v in pooling.items() if k.startswith("pooling_mode") and v] == ["pooling_mode_mean_tokens"]
    assert files["config_sentence_transformers.json"]["similarity_fn_name"] == "cosine"


def test_folder_written_and_publishable(st_folder):
    for name in ST_FILES:
        assert (st_folder / name).is_file(), name
    assert json.loads((st_folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 12
    config = json.loads((st_folder / "config.json").read_text())
    assert config["architectures"] == ["ClinicalModernBertModel"]  # the MLM head is dropped
    assert json.loads((st_folder / "1_Pooling/config.json").read_text())["word_embedding_dimension"] == 32
    check = check_model_folder(st_folder)
    assert check.ok, check.problems()


def test_refuses_non_empty_output(st_folder, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["sentence-transformers", str(st_folder), str(tmp_path)]) == 1
    assert f"{tmp_path}: output folder exists and is not empty" in capsys.readouterr().err


def test_mean_pool_by_hand():
    tokens = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(mean_pool(tokens, mask), [[2.0, 3.0], [5.0, 6.0]])


def test_encode_ignores_padding_and_normalizes(st_folder):
    batch = encode(TEXTS, st_folder)
    assert batch.shape == (3, 32) and batch.dtype == np.float32
    alone = encode(TEXTS[:1], st_folder)  # no padding at all
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)
    unit = encode(TEXTS, st_folder, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), [1.0, 1.0, 1.0], atol=1e-6)
    with pytest.raises(TypeError, match="not one string"):
        encode("chest pain", st_folder)


def test_encode_offline_hub_id_fails_clearly():
    with pytest.raises(OSError, match="cannot load a model and tokenizer from my-lab/does-not-exist"):
        encode(["x"], "my-lab/does-not-exist")


def test_sentence_transformer_round_trip(st_folder):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(st_folder), trust_remote_code=True, device="cpu")
    assert model.max_seq_length == 12
    theirs = model.encode(TEXTS, convert_to_numpy=True, batch_size=2)
    ours = encode(TEXTS, st_folder, max_length=12)
    assert np.abs(theirs - ours).max() <= 1e-5
    # The truncation matters: without it the longest text embeds differently.
    assert np.abs(encode(TEXTS[2:], st_folder, max_length=64)[0] - ours[2]).max() > 1e-3
