"""Per-source accounting for corpus builders.

Every builder returns a :class:`SourceReport` next to its dataset: how many records it read, how many it kept,
and, for every record it did not keep, one reason. The invariant ``read == kept + sum(skipped.values())`` is what
makes "no silent data loss" checkable; :meth:`SourceReport.check` enforces it. Events that are not record skips
(a ``DeleteCitation`` that matched nothing, a broken file skipped in lenient mode) go to ``info`` and ``warnings``.

A :class:`CorpusReport` gathers the source reports of one corpus build and renders the markdown table that goes
into the model card and the JSON written next to the saved dataset.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _format_counter(counter: Counter[str]) -> str:
    """``Counter({"b": 1, "a": 3})`` -> ``"a=3, b=1"`` (largest first, ties by name) so summaries are stable."""
    items = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{name}={count}" for name, count in items)


@dataclass
class SourceReport:
    """What one builder read, kept and skipped (with reasons) for one source.

    Attributes:
        source: source name, e.g. ``"pubmed"``.
        read: records read (articles, CSV rows, codes, lines).
        kept: records that became documents.
        skipped: reason -> number of records not kept for that reason.
        tokens: tokens in the kept documents; filled later by the tokenizer step, 0 until then.
        files: the input files, in the order they were read.
        info: other counters that are not record skips (e.g. ``delete_citations``).
        warnings: file-level problems that were tolerated (lenient mode); each names the file.
    """

    source: str
    read: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    files: list[str] = field(default_factory=list)
    info: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def skip(self, reason: str, count: int = 1) -> None:
        """Count ``count`` records as skipped for ``reason``."""
        self.skipped[reason] += count

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def check(self) -> None:
        """Raise if the counts do not add up (a builder bug: some record was lost without a reason)."""
        if self.read != self.kept + self.n_skipped:
            raise AssertionError(
                f"{self.source}: read {self.read} != kept {self.kept} + skipped {self.n_skipped} ({dict(self.skipped)})"
            )

    def summary(self) -> str:
        """One line, e.g. ``pubmed: read 33012, kept 30100, skipped 2912 (no_abstract=2800, duplicate_pmid=112)``."""
        line = f"{self.source}: read {self.read}, kept {self.kept}, skipped {self.n_skipped}"
        if self.skipped:
            line += f" ({_format_counter(self.skipped)})"
        if self.info:
            line += f"; {_format_counter(self.info)}"
        if self.tokens:
            line += f"; {self.tokens} tokens"
        if self.warnings:
            line += f"; {len(self.warnings)} warning(s)"
        return line

    def log(self) -> None:
        """Log the summary line (and each warning) at INFO / WARNING level."""
        logger.info(self.summary())
        for warning in self.warnings:
            logger.warning("%s: %s", self.source, warning)

    def merge(self, other: SourceReport) -> SourceReport:
        """A new report adding ``other``'s counts to this one's (e.g. two MIMIC files of the same source)."""
        return SourceReport(
            source=self.source if self.source == other.source else f"{self.source}+{other.source}",
            read=self.read + other.read,
            kept=self.kept + other.kept,
            skipped=self.skipped + other.skipped,
            tokens=self.tokens + other.tokens,
            files=self.files + [f for f in other.files if f not in self.files],
            info=self.info + other.info,
            warnings=self.warnings + other.warnings,
        )

    __add__ = merge

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "read": self.read,
            "kept": self.kept,
            "skipped": dict(sorted(self.skipped.items())),
            "tokens": self.tokens,
            "files": list(self.files),
            "info": dict(sorted(self.info.items())),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceReport:
        return cls(
            source=data["source"],
            read=int(data["read"]),
            kept=int(data["kept"]),
            skipped=Counter(data.get("skipped", {})),
            tokens=int(data.get("tokens", 0)),
            files=list(data.get("files", [])),
            info=Counter(data.get("info", {})),
            warnings=list(data.get("warnings", [])),
        )


@dataclass
class CorpusReport:
    """The reports of all sources of one corpus build, plus split/mix counts and the build settings.

    Attributes:
        sources: source name -> report, in build order.
        splits: split name -> source -> number of documents in that split (after mixing).
        config: the settings the corpus was built with (used to detect a stale cache).
        mix: per-source documents in/out of the train mix (see :class:`~train.corpora.mix.MixReport`).
        build_seconds: wall time of the build.
    """

    sources: dict[str, SourceReport] = field(default_factory=dict)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    mix: dict[str, Any] = field(default_factory=dict)
    build_seconds: float = 0.0

    def add(self, report: SourceReport) -> None:
        """Add a source report; a second report of the same source is merged into the first."""
        if report.source in self.sources:
            self.sources[report.source] = self.sources[report.source].merge(report)
        else:
            self.sources[report.source] = report

    def set_tokens(self, source: str, tokens: int) -> None:
        """Record the token count of a source (called by the tokenizer step)."""
        if source not in self.sources:
            raise KeyError(f"no source {source!r} in this corpus report; known: {sorted(self.sources)}")
        self.sources[source].tokens = int(tokens)

    def summary(self) -> str:
        """One line per source."""
        return "\n".join(report.summary() for report in self.sources.values())

    def to_markdown(self) -> str:
        """A markdown table for the model card: one row per source, then the split sizes."""
        lines = [
            "| Source | Files | Read | Kept | Skipped | Skip reasons | Tokens |",
            "|---|---:|---:|---:|---:|---|---:|",
        ]
        total = SourceReport(source="total")
        for report in self.sources.values():
            reasons = _format_counter(report.skipped) or "-"
            tokens = str(report.tokens) if report.tokens else "-"
            lines.append(
                f"| {report.source} | {len(report.files)} | {report.read} | {report.kept} | {report.n_skipped} "
                f"| {reasons} | {tokens} |"
            )
            total = total.merge(report)
        total_tokens = str(total.tokens) if total.tokens else "-"
        lines.append(
            f"| **total** | {len(total.files)} | {total.read} | {total.kept} | {total.n_skipped} | | {total_tokens} |"
        )
        if self.splits:
            sources = sorted({source for counts in self.splits.values() for source in counts})
            lines += ["", "| Split | " + " | ".join(sources) + " | total |", "|---|" + "---:|" * (len(sources) + 1)]
            for split, counts in self.splits.items():
                cells = [str(counts.get(source, 0)) for source in sources]
                lines.append(f"| {split} | " + " | ".join(cells) + f" | {sum(counts.values())} |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": {name: report.to_dict() for name, report in self.sources.items()},
            "splits": self.splits,
            "config": self.config,
            "mix": self.mix,
            "build_seconds": round(self.build_seconds, 3),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusReport:
        return cls(
            sources={name: SourceReport.from_dict(item) for name, item in data.get("sources", {}).items()},
            splits={split: dict(counts) for split, counts in data.get("splits", {}).items()},
            config=dict(data.get("config", {})),
            mix=dict(data.get("mix", {})),
            build_seconds=float(data.get("build_seconds", 0.0)),
        )

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``corpus_report.json`` and ``corpus_report.md`` into ``out_dir``; return their paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out_dir / "corpus_report.json", out_dir / "corpus_report.md"
        json_path.write_text(self.to_json() + "\n", encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return json_path, md_path

    @classmethod
    def load(cls, path: str | Path) -> CorpusReport:
        """Read a ``corpus_report.json`` (or the directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "corpus_report.json"
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"cannot read corpus report {path}: {error}") from error
