"""Multi-label scores: macro/micro AUROC and micro-F1 at a probability threshold (local `evaluate` module).

Macro AUROC averages over the labels whose references hold both a positive and a negative example; AUROC is
undefined for the others, and their count is returned as `n_labels_skipped` rather than silently hidden.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

_KWARGS = """
Args:
    predictions (list of list of float): per-label probabilities (after the sigmoid), shape (n, n_labels).
    references (list of list of int): 0/1 gold matrix, shape (n, n_labels).
    threshold (float): probability at or above which a label counts as predicted for f1_micro (default 0.5).
Returns:
    auroc_macro, auroc_micro, f1_micro (float), n_labels_scored, n_labels_skipped (int).
"""


class Multilabel(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Macro and micro AUROC plus micro-F1 at a threshold for multi-label classification.",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, threshold=0.5):
        scores = np.asarray(predictions, dtype=np.float64)
        gold = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or scores.shape != gold.shape:
            raise ValueError(f"multilabel: predictions {scores.shape} and references {gold.shape} must be equal 2-D")
        positives = gold.sum(axis=0)
        scorable = [j for j in range(gold.shape[1]) if 0 < positives[j] < gold.shape[0]]
        auroc_macro = (
            float(np.mean([roc_auc_score(gold[:, j], scores[:, j]) for j in scorable])) if scorable else float("nan")
        )
        both = 0 < gold.sum() < gold.size
        auroc_micro = float(roc_auc_score(gold.ravel(), scores.ravel())) if both else float("nan")
        f1_micro = float(f1_score(gold, (scores >= threshold).astype(np.int64), average="micro", zero_division=0))
        return {
            "auroc_macro": auroc_macro,
            "auroc_micro": auroc_micro,
            "f1_micro": f1_micro,
            "n_labels_scored": len(scorable),
            "n_labels_skipped": gold.shape[1] - len(scorable),
        }
