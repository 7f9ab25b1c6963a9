"""Command line of the evaluation suite: `python -m eval {list,build,make-tiny,run,suite,report}`.

Examples:
    python -m eval list
    python -m eval make-tiny --arch bert --out outputs/tiny-bert
    python -m eval run --model outputs/tiny-bert --tasks icd10cm_chapter,radiology_findings --seeds 0,1,2 --mode lora
    python -m eval suite --model outputs/tiny-bert --model outputs/tiny-modernbert --out outputs/eval
    python -m eval report --out outputs/eval --model-card README.md --model tiny-bert
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from eval import report, runner, suite, tasks
from eval.data import DataError
from eval.metrics import METRICS
from eval.runner import CONFIG_DIR, MODES, ModelLoadError
from eval.suite import SuiteDataError
from eval.tasks import UnknownTaskError


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True,
                        help="local folder or Hub id; repeat for several models")
    parser.add_argument("--out", default="outputs/eval", help="results folder (default outputs/eval)")
    parser.add_argument("--config", help="run config YAML (default eval/configs/demo.yaml; --full: full.yaml)")
    parser.add_argument("--full", action="store_true", help="full data sizes, 3 seeds, more epochs (full.yaml)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--mode", choices=sorted(MODES), help="full fine-tuning, linear probe or LoRA")
    parser.add_argument("--lora-targets", type=_csv, help="LoRA module names (default: detected)")
    parser.add_argument("--max-length", type=int, help="window length override (capped by the model)")
    parser.add_argument("--max-train", type=int, help="override the number of train rows")
    parser.add_argument("--epochs", type=float, help="override num_train_epochs")
    parser.add_argument("--task-file", action="append", default=[], help="YAML file of extra tasks to register")
    parser.add_argument("--cache", help="suite data cache folder (default cache/eval or $CLINICAL_EVAL_CACHE)")


def _config(args: argparse.Namespace) -> runner.RunConfig:
    path = args.config or (CONFIG_DIR / ("full.yaml" if args.full else "demo.yaml"))
    return runner.load_run_config(path, seeds=args.seeds, mode=args.mode, lora_targets=args.lora_targets,
                                  max_length=args.max_length, max_train=args.max_train,
                                  num_train_epochs=args.epochs)


def _run(args: argparse.Namespace, task_names: list[str]) -> int:
    for task_file in args.task_file:
        tasks.load_task_file(task_file)
    config = _config(args)
    started = time.perf_counter()
    results = runner.run_models(args.model, task_names, config, args.out, cache_dir=args.cache)
    paths = report.write_reports(args.out, results)
    print(report.comparison_table(results))
    print(f"\n{len(results)} run(s) in {time.perf_counter() - started:.1f} s; table {paths['table']}, "
          f"plot {paths['plot']}, results {paths['json']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="also show transformers' info/warnings")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (on a busy shared CPU, 1 is often faster than oversubscribing)")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("list", help="list registered tasks, metrics and modes")

    build = commands.add_parser("build", help="build (cache) the default suite's datasets")
    build.add_argument("--tasks", type=_csv, default=list(suite.BUILDERS))
    build.add_argument("--cache")
    build.add_argument("--force", action="store_true")

    tiny = commands.add_parser("make-tiny", help="save a tiny random encoder + tokenizer (for demos and timing)")
    tiny.add_argument("--arch", default="bert", choices=["bert", "modernbert"])
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--vocab-size", type=int, default=4000)
    tiny.add_argument("--max-position-embeddings", type=int, default=512)
    tiny.add_argument("--hidden-size", type=int, default=64)
    tiny.add_argument("--layers", type=int, default=2)

    run = commands.add_parser("run", help="fine-tune and score models on tasks")
    _add_run_options(run)
    run.add_argument("--tasks", type=_csv, required=True, help="comma-separated task names (see `list`)")

    suite_command = commands.add_parser("suite", help="run the default offline suite on one or more models")
    _add_run_options(suite_command)

    report_command = commands.add_parser("report", help="rebuild table/plot/results.json from results files")
    report_command.add_argument("--out", default="outputs/eval")
    report_command.add_argument("--model-card", help="README.md whose model-index to insert or replace")
    report_command.add_argument("--model", help="model (column) name for --model-card")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.verbose:
        import datasets
        import transformers

        datasets.disable_progress_bars()

        transformers.logging.set_verbosity_error()

    try:
        return _dispatch(args, parser)
    except (ModelLoadError, DataError, UnknownTaskError, SuiteDataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "list":
        for spec in tasks.TASKS.values():
            print(f"{spec.name:28s} {spec.task_type:14s} {spec.main_metric:12s} {spec.description}")
        print("\nmetrics:", ", ".join(sorted(METRICS)))
        print("modes:", ", ".join(f"{name} ({text})" for name, text in MODES.items()))
        return 0
    if args.command == "build":
        for name in args.tasks:
            paths = suite.build(name, cache_dir=args.cache, force=args.force)
            print(name, paths)
        return 0
    if args.command == "make-tiny":
        path = _make_tiny(args)
        print(path)
        return 0
    if args.command == "run":
        return _run(args, args.tasks)
    if args.command == "suite":
        return _run(args, list(tasks.DEFAULT_SUITE))
    if args.command == "report":
        paths = report.write_reports(args.out)
        results = report.load_results(args.out)
        print(report.comparison_table(results))
        if args.model_card:
            if not args.model:
                parser.error("--model-card needs --model NAME")
            report.update_model_card(args.model_card, report.model_index(results, args.model))
            print(f"updated model-index in {args.model_card}")
        print(f"table {paths['table']}, plot {paths['plot']}, results {paths['json']}")
        return 0
    return 2


def _make_tiny(args: argparse.Namespace) -> Path:
    from eval.tiny import make_tiny_model

    return make_tiny_model(args.out, arch=args.arch, vocab_size=args.vocab_size,
                           max_position_embeddings=args.max_position_embeddings, hidden_size=args.hidden_size,
                           num_layers=args.layers)


if __name__ == "__main__":
    sys.exit(main())
