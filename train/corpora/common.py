"""Shared helpers of the corpus builders: the error type, file opening, stable hashing and key-based splits.

Splits and samples hash a key (``doc_id``, ``subject_id``) with the seed instead of drawing random numbers, so the
same document lands in the same split whatever the order, size or other content of the corpus, and a rebuild with
more data never moves a document from validation into train.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from datasets import Dataset, DatasetDict, Features, Value

logger = logging.getLogger(__name__)

#: The columns every builder produces; mixing keeps exactly these.
COMMON_COLUMNS: tuple[str, ...] = ("text", "source", "doc_id")
COMMON_FEATURES = Features({name: Value("string") for name in COMMON_COLUMNS})


class CorpusError(ValueError):
    """Bad or unreadable input; the message names the file (and line, column or field when known)."""


def describe_read_error(path: str | Path, error: BaseException) -> str:
    """A sentence saying why ``path`` could not be read, with a hint for the usual causes."""
    if isinstance(error, EOFError):
        return f"{path}: the compressed file ends too early (truncated download?); re-download it ({error})"
    if isinstance(error, (zlib.error, gzip.BadGzipFile)):
        return f"{path}: corrupt gzip data ({type(error).__name__}: {error}); re-download it"
    if isinstance(error, UnicodeDecodeError):
        return f"{path}: not valid {error.encoding} text at byte {error.start} ({error.reason})"
    return f"{path}: {type(error).__name__}: {error}"


# The errors a damaged or missing file raises while being read (CorpusError is none of them).
READ_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError, UnicodeDecodeError)


@contextmanager
def open_binary(path: str | Path) -> Iterator[IO[bytes]]:
    """Open ``path`` for binary reading, decompressing ``.gz`` transparently; a missing file names itself."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    handle: IO[bytes] = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    try:
        yield handle
    finally:
        handle.close()


@contextmanager
def open_text(path: str | Path, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """Open ``path`` as text (``newline=""`` so the csv module sees the raw line endings), ``.gz`` transparently."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    if path.suffix == ".gz":
        handle: IO[str] = gzip.open(path, "rt", encoding=encoding, newline="")  # noqa: SIM115
    else:
        handle = open(path, encoding=encoding, newline="")  # noqa: SIM115
    try:
        yield handle
    finally:
        handle.close()


def hash_fraction(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``(key, seed)``: the same on every machine and Python run (unlike ``hash``)."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def column_values(dataset: Dataset, column: str) -> list:
    """All values of one column as a list, read through Arrow (iterating ``dataset[column]`` goes row by row,
    ~100x slower)."""
    return dataset.select_columns([column]).with_format("arrow")[column].to_pylist()


def split_by_key(
    dataset: Dataset, key_column: str, validation_fraction: float, seed: int = 0
) -> DatasetDict:
    """Split into ``train`` / ``validation`` by hashing ``key_column``: rows sharing a key share a split.

    A row goes to validation when ``hash_fraction(key, seed) < validation_fraction``, so the validation share is
    ``validation_fraction`` in expectation (exactly so only for many keys).
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    if key_column not in dataset.column_names:
        raise CorpusError(f"cannot split by {key_column!r}: the dataset has columns {dataset.column_names}")
    train_rows: list[int] = []
    validation_rows: list[int] = []
    for row, key in enumerate(column_values(dataset, key_column)):
        is_validation = hash_fraction(str(key), seed) < validation_fraction
        (validation_rows if is_validation else train_rows).append(row)
    return DatasetDict(train=dataset.select(train_rows), validation=dataset.select(validation_rows))


def dataset_from_rows(rows: Sequence[dict], features: Features) -> Dataset:
    """A ``Dataset`` with exactly ``features`` (also when ``rows`` is empty, so column types never depend on data)."""
    columns = {name: [row[name] for row in rows] for name in features}
    return Dataset.from_dict(columns, features=features)
