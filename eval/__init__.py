"""Evaluation suite of Clinical ModernBERT: fine-tune and score any `AutoModel` encoder on clinical tasks.

Entry points: `python -m eval run|suite|report|list|build|make-tiny` (see `eval/README.md`), or in Python
`eval.runner.run_task`, `eval.runner.run_models`, `eval.report.write_reports`.
"""
