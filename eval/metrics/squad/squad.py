"""SQuAD exact match and token F1 for extractive question answering (local `evaluate` module).

Both compare a predicted answer string with every gold answer of its question after the official SQuAD
normalisation (lowercase; drop punctuation; drop the articles a/an/the; collapse whitespace) and keep the best
match. Token F1 is computed on the whitespace tokens of the normalised strings. A question without gold answers
(SQuAD 2.0 "unanswerable") has the single gold answer "", so only an empty prediction scores 1.

Unlike the official script, which prints percentages, the numbers are fractions in [0, 1], like every other metric
of this project.
"""

import re
import string
from collections import Counter

import datasets
import evaluate

_KWARGS = """
Args:
    predictions (list of str): one predicted answer per question.
    references (list of list of str): the gold answer texts of each question (empty: unanswerable).
Returns:
    exact_match (float): share of questions whose normalised prediction equals a normalised gold answer.
    f1 (float): mean over questions of the best token F1 against any gold answer.
"""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, remove punctuation, remove articles, collapse whitespace (the SQuAD evaluation script's rule)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised strings; two empty strings score 1, one empty string scores 0."""
    predicted_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not predicted_tokens or not gold_tokens:
        return float(predicted_tokens == gold_tokens)
    common = Counter(predicted_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: list) -> list:
    """Gold answers that are not empty after normalisation; [""] when there are none (unanswerable)."""
    kept = [answer for answer in answers if normalize_answer(answer)]
    return kept or [""]


class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="SQuAD exact match and token F1 (official normalisation), as fractions.",
            citation="Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text (EMNLP 2016)",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("squad: no predictions to score")
        exact, f1 = 0.0, 0.0
        for prediction, answers in zip(predictions, references):
            golds = gold_answers(list(answers))
            exact += max(exact_match_score(prediction, gold) for gold in golds)
            f1 += max(f1_score(prediction, gold) for gold in golds)
        return {"exact_match": exact / len(predictions), "f1": f1 / len(predictions)}
