"""Reports over results JSON files: a markdown comparison table, a bar chart, an aggregated JSON and the
`model-index` metadata of a Hugging Face model card.

Results are the dicts written by `eval.runner.run_task` (`<out>/<model>/<task>[__<mode>].json`). Rows of the
table are tasks, columns are models (with the mode when it is not full fine-tuning), cells are `mean ± sd` of the
task's main metric over seeds.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

# task_type -> Hugging Face pipeline task id used in model-index metadata.
HF_TASK_TYPES: dict[str, str] = {
    "single_label": "text-classification",
    "multi_label": "text-classification",
    "regression": "text-classification",
    "token": "token-classification",
    "qa": "question-answering",
    "multiple_choice": "multiple-choice",
    "retrieval": "sentence-similarity",
}

RESULTS_FILE = "results.json"
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?\n)?---\s*(\n|\Z)", re.DOTALL)


def load_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every `<out>/<model>/<task>*.json` results file, sorted by model then task."""
    results = []
    for path in sorted(Path(out_dir).glob("*/*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and {"model", "task", "mean"} <= set(data):
            results.append(data)
    return results


def column_name(result: dict[str, Any]) -> str:
    mode = result.get("mode", "full")
    return result["model"] if mode in ("full", "embedding") else f"{result['model']} ({mode})"


def _columns(results: Sequence[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for result in results:
        if column_name(result) not in columns:
            columns.append(column_name(result))
    return columns


def _tasks(results: Sequence[dict[str, Any]]) -> list[str]:
    tasks: list[str] = []
    for result in results:
        if result["task"] not in tasks:
            tasks.append(result["task"])
    return tasks


def format_cell(mean: float | None, sd: float | None, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.{digits}f} ± {(sd or 0.0):.{digits}f}"


def comparison_table(results: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """Markdown table: one row per task (with its main metric), one column per model, `mean ± sd` cells."""
    columns = _columns(results)
    by_key = {(r["task"], column_name(r)): r for r in results}
    header = "| task | metric | " + " | ".join(columns) + " |"
    lines = [header, "|" + " --- |" * (len(columns) + 2)]
    for task in _tasks(results):
        any_result = next(r for r in results if r["task"] == task)
        metric = any_result["main_metric"]
        cells = []
        for column in columns:
            result = by_key.get((task, column))
            cells.append(format_cell(result["mean"].get(metric), result["sd"].get(metric), digits) if result else "—")
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    seeds = sorted({len(r.get("seeds") or []) for r in results if r.get("seeds")})
    if seeds:
        lines.append("")
        lines.append(f"mean ± sample sd over {'/'.join(map(str, seeds))} seed(s); retrieval is deterministic (sd 0).")
    return "\n".join(lines)


def plot_comparison(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bar chart of each task's main metric per model, with sd error bars (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns, tasks = _columns(results), _tasks(results)
    by_key = {(r["task"], column_name(r)): r for r in results}
    width = 0.8 / max(len(columns), 1)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.4 * len(tasks) + 2), 4.5))
    positions = np.arange(len(tasks))
    for index, column in enumerate(columns):
        means, sds = [], []
        for task in tasks:
            result = by_key.get((task, column))
            metric = result["main_metric"] if result else None
            means.append(result["mean"].get(metric, np.nan) if result else np.nan)
            sds.append(result["sd"].get(metric, 0.0) if result else 0.0)
        axis.bar(positions + index * width - 0.4 + width / 2, means, width, yerr=sds, capsize=3, label=column)
    axis.set_xticks(positions)
    labels = [f"{task}\n({next(r['main_metric'] for r in results if r['task'] == task)})" for task in tasks]
    axis.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("main metric (mean ± sd)")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8)
    axis.set_title("Clinical evaluation suite")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{model column: {task: {main_metric, mean, sd, seeds, mode}}} for a single machine-readable file."""
    table: dict[str, Any] = {}
    for result in results:
        table.setdefault(column_name(result), {})[result["task"]] = {
            "main_metric": result["main_metric"],
            "mean": result["mean"],
            "sd": result["sd"],
            "seeds": result.get("seeds", []),
            "mode": result.get("mode"),
            "runtime_s": result.get("runtime_s"),
        }
    return {"models": table}


def write_reports(out_dir: str | Path, results: Sequence[dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write `comparison.md`, `comparison.png` and `results.json` into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    results = list(results) if results is not None else load_results(out_dir)
    if not results:
        raise ValueError(f"No results JSON files under {out_dir}; run `python -m eval run ...` first")
    paths = {"table": out_dir / "comparison.md", "plot": out_dir / "comparison.png", "json": out_dir / RESULTS_FILE}
    paths["table"].write_text(comparison_table(results) + "\n")
    plot_comparison(results, paths["plot"])
    paths["json"].write_text(json.dumps(aggregate(results), indent=2, default=str))
    logger.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def model_index(results: Sequence[dict[str, Any]], model_name: str) -> list[dict[str, Any]]:
    """The `model-index` list of a model card for `model_name` (a results' `model` or column name).

    Structure: `[{name, results: [{task: {type, name}, dataset: {type, name}, metrics: [{type, value, name}]}]}]`.
    Metric values are the seed means; NaN metrics and counts (`n_*`) are left out; the main metric comes first.
    """
    entries = []
    for result in results:
        if model_name not in (result["model"], column_name(result)):
            continue
        metrics = []
        ordered = [result["main_metric"]] + [key for key in result["mean"] if key != result["main_metric"]]
        for key in ordered:
            value = result["mean"].get(key)
            if value is None or key.startswith("n_") or (isinstance(value, float) and math.isnan(value)):
                continue
            seeds = len(result.get("seeds") or []) or 1
            metrics.append({"type": key, "value": round(float(value), 4),
                            "name": f"{key} (mean of {seeds} seed{'s' if seeds > 1 else ''}, {result.get('mode')})"})
        entries.append({
            "task": {"type": HF_TASK_TYPES.get(result["task_type"], result["task_type"]), "name": result["task"]},
            "dataset": {"type": result["task"], "name": result.get("description") or result["task"]},
            "metrics": metrics,
        })
    if not entries:
        known = sorted({column_name(r) for r in results})
        raise ValueError(f"No results for model {model_name!r}; models with results: {known}")
    return [{"name": model_name, "results": entries}]


def update_model_card(readme_path: str | Path, index: list[dict[str, Any]]) -> Path:
    """Insert or replace `model-index` in the YAML front matter of a README.md, keeping all other content.

    A README without front matter gets one. Other front-matter keys keep their order and values.
    """
    path = Path(readme_path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    match = FRONT_MATTER.match(text)
    if match:
        metadata = yaml.safe_load(match.group(1) or "") or {}
        if not isinstance(metadata, dict):
            raise ValueError(f"{path}: the YAML front matter is not a mapping")
        body = text[match.end():]
    else:
        metadata, body = {}, text
    metadata["model-index"] = index
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=120)
    path.write_text(f"---\n{front}---\n{body}", encoding="utf-8")
    return path
