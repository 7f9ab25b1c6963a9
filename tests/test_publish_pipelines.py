"""transformers pipelines on published Clinical ModernBERT folders (remote code, tiny random weights)."""

from __future__ import annotations

import numpy as np
import pytest
from publish_fixtures import build_tiny_model_folder
from transformers import pipeline

SEQ_LABELS = {0: "NO_FINDING", 1: "FINDING"}
TOKEN_LABELS = {0: "O", 1: "B-PROBLEM", 2: "I-PROBLEM"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {
        "masked-lm": build_tiny_model_folder(root / "mlm", head="masked-lm"),
        "sequence-classification": build_tiny_model_folder(
            root / "seq", head="sequence-classification", id2label=SEQ_LABELS,
            label2id={v: k for k, v in SEQ_LABELS.items()},
        ),
        "token-classification": build_tiny_model_folder(
            root / "tok", head="token-classification", id2label=TOKEN_LABELS,
            label2id={v: k for k, v in TOKEN_LABELS.items()},
        ),
    }


def test_fill_mask(folders):
    fill = pipeline("fill-mask", model=str(folders["masked-lm"]), trust_remote_code=True, top_k=3)
    predictions = fill("patient presents with [MASK] pain")
    assert len(predictions) == 3
    assert all(set(p) == {"score", "token", "token_str", "sequence"} for p in predictions)
    assert all(p["sequence"] == f"patient presents with {p['token_str']} pain" for p in predictions)
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6


def test_feature_extraction(folders):
    extract = pipeline("feature-extraction", model=str(folders["masked-lm"]), trust_remote_code=True)
    features = np.asarray(extract("chest pain"))
    assert features.shape == (1, 4, 32)  # [CLS] chest pain [SEP], hidden 32
    batch = [np.asarray(f) for f in extract(["chest pain", "no fever or chills"])]
    assert [f.shape for f in batch] == [(1, 4, 32), (1, 6, 32)]
    np.testing.assert_allclose(batch[0], features, atol=1e-5)


def test_text_classification(folders):
    classify = pipeline("text-classification", model=str(folders["sequence-classification"]), trust_remote_code=True)
    [top] = classify("chest pain")
    assert top["label"] in SEQ_LABELS.values() and 0.5 <= top["score"] <= 1
    both = classify("chest pain", top_k=None)
    assert sorted(r["label"] for r in both) == ["FINDING", "NO_FINDING"]
    assert sum(r["score"] for r in both) == pytest.approx(1.0, abs=1e-6)


def test_token_classification(folders):
    tag = pipeline("token-classification", model=str(folders["token-classification"]), trust_remote_code=True,
                   ignore_labels=[])
    tokens = tag("chest pain")
    assert [(t["word"], t["index"], t["start"], t["end"]) for t in tokens] == [("chest", 1, 0, 5), ("pain", 2, 6, 10)]
    assert all(t["entity"] in TOKEN_LABELS.values() and 0 < t["score"] <= 1 for t in tokens)
