"""Local `evaluate` metric modules: one folder per metric, loaded by path so nothing is fetched from the Hub.

`METRICS` is the registry (name -> what the module returns). `load_metric(name)` resolves the module file and
calls `evaluate.load` on it; it works with `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent

METRICS: dict[str, str] = {
    "accuracy": "accuracy: share of exact label matches",
    "f1": "f1_macro, f1_micro, f1_weighted over single-label classes",
    "multilabel": "auroc_macro (labels with both classes in the references), auroc_micro, f1_micro at a threshold",
    "seqeval_strict": "entity-level precision, recall, f1 (seqeval strict mode, IOB2 or IOBES), f1 per entity type",
    "correlation": "pearson and spearman correlation",
    "retrieval": "ndcg@k, mrr@k, recall@k for ranked document ids against relevant ids",
    "squad": "exact_match and token f1 of answer strings (SQuAD normalisation; best over gold answers), fractions",
}


def metric_path(name: str) -> Path:
    """The `<name>/<name>.py` file of a local metric; a ValueError lists the known metrics otherwise."""
    path = METRICS_DIR / name / f"{name}.py"
    if name not in METRICS or not path.is_file():
        raise ValueError(f"Unknown metric {name!r}. Local metrics: {', '.join(sorted(METRICS))}")
    return path


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load the local metric module `name` with `evaluate.load` (by file path, so offline)."""
    return evaluate.load(str(metric_path(name)))
