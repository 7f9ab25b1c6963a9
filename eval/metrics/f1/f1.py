"""F1 for single-label classification: macro, micro and weighted averages in one call (local `evaluate` module).

Macro averages the per-class F1 over the classes present in the references or the predictions (scikit-learn's
convention), so a class that is never predicted counts with F1 = 0.
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_KWARGS = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): gold class ids.
Returns:
    f1_macro, f1_micro, f1_weighted (float): in [0, 1].
"""


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="F1 with macro, micro and weighted averaging.",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("f1: no predictions to score")
        return {
            f"f1_{average}": float(f1_score(references, predictions, average=average, zero_division=0))
            for average in ("macro", "micro", "weighted")
        }
