"""Any local text corpus (``.txt``, ``.jsonl``/``.json``, ``.csv``, ``.parquet``, plain or ``.gz``), and Hub datasets.

Local files are read with ``datasets.load_dataset`` and its packaged builders (``text``, ``json``, ``csv``,
``parquet``), which need no network. One report covers all files of a call; a file without the text field raises
an error naming the file and the columns it does have.

:func:`load_hub_dataset` is the path for real users with a Hub dataset id; offline it fails at once with an
actionable error instead of hanging or raising a bare connection error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
from datasets import Dataset, IterableDataset, concatenate_datasets

from train.corpora.common import COMMON_FEATURES, CorpusError, column_values
from train.corpora.report import SourceReport

logger = logging.getLogger(__name__)

#: File suffix (after removing ``.gz``) -> ``datasets`` packaged builder.
FILE_BUILDERS: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
_TEXT_MODES = ("line", "paragraph", "document")


def _builder_for(path: Path) -> str:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in FILE_BUILDERS:
        raise CorpusError(f"{path}: unsupported file type {suffix or '(none)'!r}; supported: {sorted(FILE_BUILDERS)}")
    return FILE_BUILDERS[suffix]


def load_file(
    path: str | Path, text_mode: str = "line", cache_dir: str | None = None
) -> Dataset:
    """Load one local file with the matching ``datasets`` builder (the ``train`` split, all columns).

    ``text_mode`` applies to ``.txt``: one document per ``"line"``, per blank-line separated ``"paragraph"``, or
    the whole file as one ``"document"``.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    builder = _builder_for(path)
    options = {}
    if builder == "text":
        if text_mode not in _TEXT_MODES:
            raise ValueError(f"text_mode must be one of {_TEXT_MODES}, got {text_mode!r}")
        options["sample_by"] = text_mode
    try:
        return datasets.load_dataset(builder, data_files=[str(path)], split="train", cache_dir=cache_dir, **options)
    except Exception as error:  # the builders raise many types (ArrowInvalid, DatasetGenerationError, ...)
        raise CorpusError(f"{path}: cannot be read as {builder} ({type(error).__name__}: {error})") from error


def build_text_files(
    paths: Sequence[str | Path],
    text_field: str = "text",
    source: str = "text",
    text_mode: str = "line",
    id_field: str | None = None,
    cache_dir: str | None = None,
) -> tuple[Dataset, SourceReport]:
    """Documents from local files: ``text`` from ``text_field`` (``.txt`` files always give ``text``).

    Args:
        paths: local files; the format comes from the suffix (see :data:`FILE_BUILDERS`).
        text_field: the column holding the document text in ``.jsonl``/``.csv``/``.parquet``.
        source: the ``source`` value of the documents (and the report name).
        text_mode: ``.txt`` documents: ``"line"``, ``"paragraph"`` (separated by an empty line, ``"\\n\\n"``)
            or ``"document"`` (the whole file).
        id_field: a column whose value becomes the doc_id (``"<source>:<value>"``); default ``<source>:<file>:<row>``.

    Rows whose text is empty or only whitespace are skipped (``empty_text``); a null text too (``null_text``).
    """
    if isinstance(paths, (str, Path)):
        raise TypeError(f"paths must be a list of files, got the single path {paths!r}")
    report = SourceReport(source=source)
    parts: list[Dataset] = []
    for path in paths:
        path = Path(path)
        report.files.append(str(path))
        loaded = load_file(path, text_mode=text_mode, cache_dir=cache_dir)
        field = "text" if _builder_for(path) == "text" else text_field
        if field not in loaded.column_names:
            raise CorpusError(f"{path}: no text field {field!r}; available columns: {loaded.column_names}")
        if id_field is not None and id_field not in loaded.column_names:
            raise CorpusError(f"{path}: no id field {id_field!r}; available columns: {loaded.column_names}")
        if not isinstance(loaded.features[field], datasets.Value) or loaded.features[field].dtype not in (
            "string", "large_string"
        ):
            raise CorpusError(f"{path}: text field {field!r} has type {loaded.features[field]}, expected strings")
        keep: list[int] = []
        for row, text in enumerate(column_values(loaded, field)):
            if text is None:
                report.skip("null_text")
            elif not text.strip():
                report.skip("empty_text")
            else:
                keep.append(row)
        report.read += len(loaded)
        if id_field is not None:
            ids = column_values(loaded, id_field)
            doc_ids = [f"{source}:{ids[row]}" for row in keep]
        else:
            doc_ids = [f"{source}:{path.name}:{row}" for row in keep]
        texts = loaded.select(keep).select_columns([field])
        if field != "text":
            texts = texts.rename_column(field, "text")
        texts = texts.add_column("source", [source] * len(keep)).add_column("doc_id", doc_ids)
        parts.append(texts if texts.features == COMMON_FEATURES else texts.cast(COMMON_FEATURES))
    report.kept = sum(len(part) for part in parts)
    report.check()
    report.log()
    dataset = concatenate_datasets(parts) if parts else Dataset.from_dict({}, features=COMMON_FEATURES)
    return dataset, report


def hub_is_offline() -> bool:
    """True when the user asked for offline mode (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) at any time."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    configured = getattr(datasets.config, "HF_HUB_OFFLINE", False) or getattr(datasets.config, "HF_DATASETS_OFFLINE",
                                                                                False)
    return bool(configured) or any(flag.upper() in ("1", "ON", "YES", "TRUE") for flag in flags)


def _hub_error(dataset_id: str, reason: str) -> RuntimeError:
    return RuntimeError(
        f"cannot reach the Hugging Face Hub to load {dataset_id!r} ({reason}); download it elsewhere "
        f"(e.g. `huggingface-cli download {dataset_id} --repo-type dataset`) and pass the local files "
        "(--text-files / build_text_files)"
    )


def load_hub_dataset(
    dataset_id: str,
    split: str = "train",
    text_field: str = "text",
    streaming: bool = True,
    source: str | None = None,
    name: str | None = None,
) -> tuple[Dataset | IterableDataset, SourceReport]:
    """A Hub dataset as documents (``text, source, doc_id``), streamed by default.

    ``source`` defaults to the dataset id's last part. The doc_id is ``"<source>:<row>"``. With ``streaming`` the
    report cannot count rows (they have not been read yet): ``report.info["streaming"]`` is 1 and the counts are 0;
    empty texts are still filtered out. Raises ``RuntimeError`` naming the dataset when the Hub is unreachable
    (offline mode is detected before any network call) and :class:`CorpusError` when ``text_field`` is missing.
    """
    source = source or dataset_id.rsplit("/", 1)[-1]
    report = SourceReport(source=source, files=[f"hf://datasets/{dataset_id}"])
    if hub_is_offline():
        raise _hub_error(dataset_id, "offline: HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1")
    try:
        loaded = datasets.load_dataset(dataset_id, name, split=split, streaming=streaming)
    except (ConnectionError, TimeoutError) as error:
        raise _hub_error(dataset_id, f"no network: {type(error).__name__}") from error
    except OSError as error:  # huggingface_hub raises OSError subclasses for unreachable or unknown repos
        raise _hub_error(dataset_id, f"{type(error).__name__}: {error}") from error
    columns = loaded.column_names or []
    if columns and text_field not in columns:
        raise CorpusError(f"hf://datasets/{dataset_id} ({split}): no text field {text_field!r}; columns: {columns}")

    def to_document(row: dict, index: int) -> dict:
        return {"text": row[text_field], "source": source, "doc_id": f"{source}:{index}"}

    documents = loaded.map(to_document, with_indices=True, remove_columns=columns or None)
    documents = documents.filter(lambda row: bool(row["text"] and row["text"].strip()))
    if streaming:
        report.info["streaming"] = 1
        return documents, report
    report.read = len(loaded)
    report.kept = len(documents)
    if report.read > report.kept:
        report.skip("empty_text", report.read - report.kept)
    report.check()
    report.log()
    return documents, report
