"""Command line: ``python -m publish {push,sentence-transformers,onnx} ...``.

Examples::

    python -m publish push outputs/final --repo-id my-lab/clinical-modernbert --dry-run
    python -m publish sentence-transformers outputs/final outputs/final-st
    python -m publish onnx outputs/final outputs/final/onnx
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _push(args: argparse.Namespace) -> int:
    from publish.push import HubUnavailableError, PushRefused, push_to_hub

    try:
        result = push_to_hub(
            args.folder, args.repo_id, public=args.public, dry_run=args.dry_run, token=args.token, allow=args.allow
        )
    except PushRefused as err:
        print(err, file=sys.stderr)
        return 2
    except HubUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    visibility = "private" if result.private else "PUBLIC"
    if result.dry_run:
        print(f"dry run: would upload to {result.repo_id} ({visibility}):")
        print(result.check.listing())
    else:
        print(f"uploaded {len(result.check.files)} files to {result.repo_url} ({visibility})")
        if result.commit_url:
            print(result.commit_url)
    return 0


def _sentence_transformers(args: argparse.Namespace) -> int:
    from publish.sentence_transformers import write_sentence_transformers_folder

    try:
        out = write_sentence_transformers_folder(args.model_dir, args.out_dir, max_seq_length=args.max_seq_length)
    except (OSError, ValueError) as err:  # missing/non-empty folders, offline Hub ids, bad lengths
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote sentence-transformers folder {out}")
    return 0


def _onnx(args: argparse.Namespace) -> int:
    from publish.onnx import export_onnx

    try:
        report = export_onnx(args.model_dir, args.out_dir, opset=args.opset, head=args.head, tolerance=args.tolerance,
                             exporter=args.exporter)
    except (OSError, ValueError, TypeError) as err:  # missing folders, offline Hub ids, non-Clinical-ModernBERT models
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.describe())
    return 0 if report.passed else 1


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m publish`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m publish", description="Publish Clinical ModernBERT: guarded Hub push and export formats."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)

    push = commands.add_parser("push", help="check a model folder and upload only its model artifacts")
    push.add_argument("folder", help="save_pretrained output folder")
    push.add_argument("--repo-id", required=True, help="namespace/name on the Hub")
    push.add_argument("--public", action="store_true", help="create a public repository (default: private)")
    push.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded; no network")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN, then the cached login)")
    push.add_argument(
        "--allow", action="append", default=[], metavar="PATTERN",
        help="also upload files matching this glob (relative path, '*' does not cross '/'); repeatable, logged",
    )
    push.set_defaults(func=_push)

    st = commands.add_parser("sentence-transformers", help="write a sentence-transformers folder (mean pooling)")
    st.add_argument("model_dir")
    st.add_argument("out_dir")
    st.add_argument("--max-seq-length", type=int, default=None, help="default: the config's max_position_embeddings")
    st.set_defaults(func=_sentence_transformers)

    onnx = commands.add_parser("onnx", help="export to ONNX and check parity with onnxruntime")
    onnx.add_argument("model_dir")
    onnx.add_argument("out_dir", help="folder that receives model.onnx (e.g. MODEL_DIR/onnx)")
    onnx.add_argument("--opset", type=int, default=18)
    onnx.add_argument("--head", choices=["base", "masked-lm"], default="base",
                      help="base: last_hidden_state; masked-lm: also logits")
    onnx.add_argument("--exporter", choices=["auto", "torchscript", "dynamo"], default="auto",
                      help="auto: TorchScript (fast), falling back to dynamo (needs onnxscript)")
    onnx.add_argument("--tolerance", type=float, default=1e-4, help="max |torch - onnxruntime| allowed (fp32)")
    onnx.set_defaults(func=_onnx)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
