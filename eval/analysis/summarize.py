"""Markdown tables from the JSON files that `eval.analysis.variants` writes (dev and test, mean ± sd over seeds).

    python -m eval.analysis.summarize outputs/analysis/e1_lr.json outputs/analysis/e1_pool.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows_of(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        rows += json.loads(Path(path).read_text())
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | variant | overrides | task | dev | test (mean ± sd) | seeds |",
             "|---|---|---|---|---:|---:|---:|"]
    for row in sorted(rows, key=lambda r: (r["task"], r["model"], r["variant"], json.dumps(r["overrides"]))):
        overrides = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "-"
        lines.append(f"| {row['model']} | {row['variant'] or '-'} | {overrides} | {row['task']} | "
                     f"{row['dev_mean']:.3f} | {row['test_mean']:.3f} ± {row['test_sd']:.3f} | {len(row['test'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    print(table(rows_of(argv if argv is not None else sys.argv[1:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
