"""Pearson and Spearman correlation between predicted and gold scores (local `evaluate` module)."""

import datasets
import evaluate
from scipy.stats import pearsonr, spearmanr

_KWARGS = """
Args:
    predictions (list of float): predicted scores.
    references (list of float): gold scores.
Returns:
    pearson, spearman (float): in [-1, 1].
"""


class Correlation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Pearson's r and Spearman's rho.",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) < 2:
            raise ValueError("correlation: needs at least 2 examples")
        return {
            "pearson": float(pearsonr(predictions, references)[0]),
            "spearman": float(spearmanr(predictions, references)[0]),
        }
