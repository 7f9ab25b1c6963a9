"""Command line for the corpus builders (``python -m train.corpora ...``).

    python -m train.corpora build-sample --out outputs/corpus [--max-pubmed N] [--with-hpo] [--overwrite]
    python -m train.corpora build --pubmed F.xml.gz ... --icd10cm F.xml --mimic discharge.csv.gz \\
        --weights pubmed=1,icd10cm=2 --out outputs/my_corpus
    python -m train.corpora list-sources

The ``build`` flags come from the source registry (:data:`~train.corpora.registry.SOURCES`), one per source.
Results are printed: one line per source (read / kept / skipped with reasons), the split sizes and the build time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

import datasets

from train.corpora.common import CorpusError
from train.corpora.registry import SOURCES, BuildOptions
from train.corpora.report import CorpusReport
from train.corpora.sample import build_corpus, build_sample_corpus


def parse_weights(value: str) -> dict[str, float]:
    """``"pubmed=1,icd10cm=2"`` -> ``{"pubmed": 1.0, "icd10cm": 2.0}``; a bad item raises naming it."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, number = item.partition("=")
        try:
            if not sep:
                raise ValueError
            weights[name.strip()] = float(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad weight {item!r}: expected NAME=NUMBER, e.g. pubmed=1") from None
    return weights


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (DatasetDict + corpus_report.json/.md)")
    parser.add_argument("--weights", type=parse_weights, default={}, help="e.g. pubmed=1,icd10cm=2 (default 1 each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation-fraction", type=float, default=0.01)
    parser.add_argument("--max-pubmed", type=int, default=None, help="cap on PubMed articles read")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if --out holds this corpus")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.corpora", description="Build pretraining corpora.")
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("build-sample", help="the embedded default corpus from shipped real data")
    _common_arguments(sample)
    sample.add_argument("--with-hpo", action="store_true", help="add Human Phenotype Ontology terms")

    build = commands.add_parser("build", help="a corpus from your files")
    _common_arguments(build)
    for spec in SOURCES.values():
        build.add_argument(spec.cli_flag, *spec.cli_aliases, nargs="+", metavar="FILE", dest=f"files_{spec.name}",
                           help=f"{spec.description}: {spec.file_help}")
    build.add_argument("--languages", nargs="+", default=None, help="PubMed language filter, e.g. eng")
    build.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="broken PubMed files")
    build.add_argument("--text-field", default="text", help="text column of --text-files (.jsonl/.csv/.parquet)")
    build.add_argument("--text-mode", choices=("line", "paragraph", "document"), default="line",
                       help="documents of .txt files")

    commands.add_parser("list-sources", help="print the source registry")
    return parser


def _print_report(report: CorpusReport, seconds: float) -> None:
    print(report.summary())
    for split, counts in report.splits.items():
        print(f"{split}: {sum(counts.values())} documents ({', '.join(f'{k}={v}' for k, v in sorted(counts.items()))})")
    print(f"done in {seconds:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "list-sources":
        for spec in SOURCES.values():
            shipped = "shipped" if spec.shipped else "bring your own"
            print(f"{spec.name:14s} {spec.cli_flag:18s} {spec.description} [{shipped}; {spec.license}]")
        return 0
    if args.no_progress:
        datasets.disable_progress_bars()
    start = time.perf_counter()
    try:
        if args.command == "build-sample":
            _, report = build_sample_corpus(
                args.out,
                max_pubmed=args.max_pubmed,
                seed=args.seed,
                include_hpo=args.with_hpo,
                validation_fraction=args.validation_fraction,
                weights=args.weights,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
        else:
            source_files = {
                name: getattr(args, f"files_{name}") for name in SOURCES if getattr(args, f"files_{name}")
            }
            if not source_files:
                print("error: give at least one source, e.g. --pubmed FILES (see list-sources)", file=sys.stderr)
                return 2
            options = BuildOptions(
                progress=not args.no_progress,
                max_pubmed=args.max_pubmed,
                pubmed_languages=tuple(args.languages) if args.languages else None,
                on_error=args.on_error,
                text_field=args.text_field,
                text_mode=args.text_mode,
            )
            _, report = build_corpus(
                source_files,
                args.out,
                weights=args.weights,
                seed=args.seed,
                validation_fraction=args.validation_fraction,
                options=options,
                overwrite=args.overwrite,
            )
    except (CorpusError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _print_report(report, time.perf_counter() - start)
    return 0
