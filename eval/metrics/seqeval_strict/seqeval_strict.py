"""Entity-level precision/recall/F1 with seqeval in strict mode (local `evaluate` module).

Strict mode counts an entity only when its type, start and end all match, and an entity that does not start with
B- (IOB2) is not an entity at all, unlike seqeval's default CoNLL-script mode that repairs bad I- starts.
"""

import datasets
import evaluate
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2, IOBES

SCHEMES = {"IOB2": IOB2, "IOBES": IOBES}

_KWARGS = """
Args:
    predictions (list of list of str): predicted tags per sentence.
    references (list of list of str): gold tags per sentence.
    scheme (str): "IOB2" (default) or "IOBES".
Returns:
    precision, recall, f1 (float) over all entities (micro average), and f1_<TYPE> for each gold entity type.
"""


class SeqevalStrict(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="seqeval entity-level scores in strict mode.",
            citation="Nakayama, seqeval (2018), https://github.com/chakki-works/seqeval",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, scheme="IOB2"):
        if scheme not in SCHEMES:
            raise ValueError(f"seqeval_strict: unknown scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
        for index, (pred, gold) in enumerate(zip(predictions, references)):
            if len(pred) != len(gold):
                raise ValueError(
                    f"seqeval_strict: sentence {index} has {len(pred)} predicted and {len(gold)} gold tags"
                )
        kwargs = {"mode": "strict", "scheme": SCHEMES[scheme], "zero_division": 0}
        result = {
            "precision": float(precision_score(references, predictions, **kwargs)),
            "recall": float(recall_score(references, predictions, **kwargs)),
            "f1": float(f1_score(references, predictions, **kwargs)),
        }
        report = classification_report(references, predictions, output_dict=True, **kwargs)
        for entity_type, row in report.items():
            if not entity_type.endswith(" avg"):
                result[f"f1_{entity_type}"] = float(row["f1-score"])
        return result
