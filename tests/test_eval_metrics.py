"""Local `evaluate` metric modules against numbers worked out by hand on small inputs."""

import math

import evaluate
import pytest

from eval.data import read_conll
from eval.metrics import METRICS, load_metric, metric_path

FIXTURES = "tests/fixtures/eval"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_every_metric_loads_offline_from_its_local_file():
    for name in METRICS:
        module = load_metric(name)
        assert isinstance(module, evaluate.Metric)
        assert module.name == name  # evaluate names a module after its class: ours, not a Hub one
        assert metric_path(name).is_file()


def test_unknown_metric_lists_the_local_ones():
    with pytest.raises(ValueError, match="Unknown metric 'bleu'.*accuracy"):
        load_metric("bleu")


def test_accuracy():
    result = load_metric("accuracy").compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    assert result == {"accuracy": 0.75}


def test_f1_macro_micro_weighted():
    # class 0: P=1 R=1 F1=1; class 1: P=1/2 R=1 F1=2/3; class 2: P=1 R=1/2 F1=2/3; supports 1, 1, 2.
    result = load_metric("f1").compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    assert result["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert result["f1_micro"] == pytest.approx(0.75)
    assert result["f1_weighted"] == pytest.approx((1 * 1 + 1 * 2 / 3 + 2 * 2 / 3) / 4)


def test_multilabel_auroc_and_micro_f1():
    # label A: positives {0.9, 0.3}, negatives {0.8, 0.1}: 3 of 4 pairs ordered -> 0.75
    # label B: positives {0.6, 0.7}, negatives {0.2, 0.4}: 4 of 4 -> 1.0
    # label C: no positive -> AUROC undefined, skipped
    scores = [[0.9, 0.2, 0.1], [0.8, 0.6, 0.1], [0.3, 0.7, 0.6], [0.1, 0.4, 0.1]]
    gold = [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]]
    result = load_metric("multilabel").compute(predictions=scores, references=gold)
    assert result["auroc_macro"] == pytest.approx((0.75 + 1.0) / 2)
    assert result["n_labels_scored"] == 2
    assert result["n_labels_skipped"] == 1
    # at 0.5: predicted A0, A1, B1, B2, C2; gold A0, A2, B1, B2 -> TP 3, FP 2, FN 1
    precision, recall = 3 / 5, 3 / 4
    assert result["f1_micro"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_seqeval_strict_on_conll_fixture():
    sentences = read_conll(f"{FIXTURES}/two_sentences.conll")
    gold = [s["tags"] for s in sentences]
    # Finds the diabetes span, misses hypertension, and starts the drug with I- (not an entity in strict mode).
    predicted = [
        ["O", "O", "B-DISEASE", "I-DISEASE", "I-DISEASE", "I-DISEASE", "O", "O", "O"],
        ["I-DRUG", "O", "O", "O", "O"],
    ]
    result = load_metric("seqeval_strict").compute(predictions=predicted, references=gold)
    # gold entities: 2 DISEASE + 1 DRUG; predicted (strict): 1 DISEASE, correct -> P = 1, R = 1/3, F1 = 1/2
    assert result["precision"] == pytest.approx(1.0)
    assert result["recall"] == pytest.approx(1 / 3)
    assert result["f1"] == pytest.approx(0.5)
    assert result["f1_DISEASE"] == pytest.approx(2 / 3)  # P = 1, R = 1/2
    assert result["f1_DRUG"] == 0.0


def test_seqeval_iobes_scheme():
    gold = [["S-DRUG", "O", "B-DISEASE", "E-DISEASE"]]
    predicted = [["S-DRUG", "O", "B-DISEASE", "I-DISEASE"]]  # not closed by E-: no entity in strict IOBES
    result = load_metric("seqeval_strict").compute(predictions=predicted, references=gold, scheme="IOBES")
    assert result["precision"] == pytest.approx(1.0)
    assert result["recall"] == pytest.approx(0.5)


def test_correlation():
    # x mean 2.5, y mean 5.25; sum dx*dy = 11.5, sum dx^2 = 5, sum dy^2 = 26.75
    result = load_metric("correlation").compute(predictions=[1, 2, 3, 4], references=[2, 4, 6, 9])
    assert result["pearson"] == pytest.approx(11.5 / math.sqrt(5 * 26.75))
    assert result["spearman"] == pytest.approx(1.0)
    # ranks differ by d = (0, 1, -1, 0): rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    swapped = load_metric("correlation").compute(predictions=[1, 3, 2, 4], references=[1, 2, 3, 4])
    assert swapped["spearman"] == pytest.approx(0.8)


def test_retrieval_ndcg_mrr_recall():
    ranked = [["d3", "d1", "d2"], ["d2", "d4"]]
    relevant = [["d1", "d2"], ["d2"]]
    result = load_metric("retrieval").compute(predictions=ranked, references=relevant)
    # query 1: hits at ranks 2 and 3: DCG = 1/log2(3) + 1/log2(4); IDCG = 1 + 1/log2(3); query 2: perfect
    ndcg_1 = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert result["ndcg@10"] == pytest.approx((ndcg_1 + 1.0) / 2)
    assert result["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert result["recall@1"] == pytest.approx((0 + 1) / 2)
    assert result["recall@5"] == pytest.approx(1.0)


def test_retrieval_rejects_query_without_relevant_ids():
    with pytest.raises(ValueError, match="query 0 has no relevant"):
        load_metric("retrieval").compute(predictions=[["d1"]], references=[[]])
