"""Guarded upload of a model folder to the Hugging Face Hub.

Why a guard: this model is trained on MIMIC-IV notes, and the PhysioNet data use agreement forbids sharing
them. A training output folder easily collects things that must never leave the machine: corpus shards,
tokenizer training text, Trainer checkpoints with optimizer state, pickles. So the check is an allow-list:
only files named in :data:`ALLOWED_ARTIFACTS` (plus the remote-code ``.py`` files that ``config.json``'s
``auto_map`` references) are uploaded, some after a content check, and every other file is refused by name
with the reason. Caches (``__pycache__``, ``cache*/``, ``.git``) are left out silently.

The upload then passes the exact checked file list to ``upload_folder(allow_patterns=...)``, so a file that
appears after the check is never sent either. Repositories are private unless ``public=True``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

OUR_MODEL_TYPE = "clinical_modernbert"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HEAD_BYTES = 256 * 1024  # how much of a file the content heuristics read
_LARGE_TEXT_BYTES = 1024 * 1024
_METRICS_MAX_BYTES = 1024 * 1024
_METRICS_MAX_STRING = 200
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


# ----------------------------------------------------------------------------------------------------------
# Content checks: each returns None when the file is fine, else a sentence saying what is wrong.
# ----------------------------------------------------------------------------------------------------------

# De-identification placeholders: MIMIC-III writes ``[**Name**]``; MIMIC-IV writes ``___`` inside a line
# (a markdown rule ``___`` alone on a line does not count).
_DEID_MARKERS = re.compile(r"\[\*\*[^\]\n]{0,80}\*\*\]|(?<=[^\s_])[ \t]*___(?!_)|(?<!_)___[ \t]*(?=[^\s_])")
_NOTE_SECTIONS = re.compile(
    r"^[ \t]*(chief complaint|history of present illness|past medical history|brief hospital course"
    r"|medications on admission|discharge medications|discharge diagnos[ie]s|discharge disposition"
    r"|discharge condition|discharge instructions|followup instructions|pertinent results|physical exam"
    r"|admission date|discharge date|social history|family history|major surgical or invasive procedure)"
    r"[ \t]*:",
    re.IGNORECASE | re.MULTILINE,
)
CLINICAL_TEXT_THRESHOLD = 4
"""A text is flagged as clinical note text when de-identification placeholders plus distinct note section
headers (``Chief Complaint:``, ``Brief Hospital Course:``, ...) reach this count. One or two mentions in a
model card pass; an excerpt of a real note does not."""


def clinical_text_markers(text: str) -> tuple[int, list[str]]:
    """Count the signs that ``text`` is (de-identified) clinical note text.

    Returns ``(number of de-identification placeholders, distinct section headers found, lower-cased)``.
    """
    deid = len(_DEID_MARKERS.findall(text))
    sections = sorted({m.group(1).lower() for m in _NOTE_SECTIONS.finditer(text)})
    return deid, sections


def looks_like_clinical_text(text: str) -> str | None:
    """Return why ``text`` looks like clinical note text, or None (see :data:`CLINICAL_TEXT_THRESHOLD`)."""
    deid, sections = clinical_text_markers(text)
    if deid + len(sections) < CLINICAL_TEXT_THRESHOLD:
        return None
    shown = ", ".join(f"'{s}:'" for s in sections[:4])
    return (
        f"looks like clinical note text ({deid} de-identification placeholders such as [**...**] or ___, "
        f"{len(sections)} note section headers{': ' + shown if shown else ''}); the PhysioNet data use "
        "agreement forbids sharing MIMIC text"
    )


def _read_text_head(path: Path, limit: int = _HEAD_BYTES) -> str | None:
    """The first ``limit`` bytes of ``path`` as text, or None when it is not UTF-8 text."""
    with path.open("rb") as handle:
        head = handle.read(limit)
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start >= len(head) - 4:  # a multi-byte character cut at the read boundary
            return head[: err.start].decode("utf-8", errors="strict")
        return None


def check_not_clinical_text(path: Path) -> str | None:
    """Content check for text artifacts (the model card): refuse note-like text anywhere in the first 16 MiB."""
    text = _read_text_head(path, limit=16 * 1024 * 1024)
    return looks_like_clinical_text(text) if text is not None else None


def check_png(path: Path) -> str | None:
    """Content check for figures: the file must really be a PNG image, not renamed data."""
    with path.open("rb") as handle:
        magic = handle.read(8)
    return None if magic == b"\x89PNG\r\n\x1a\n" else "named .png but is not a PNG image"


def check_safetensors(path: Path) -> str | None:
    """Content check for weights: a safetensors header (8-byte length + JSON) whose offsets span the file, so a
    data file renamed to ``model.safetensors`` is caught."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"not a safetensors file ({size} bytes)"
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, _SAFETENSORS_MAX_HEADER):
            return f"not a safetensors file (header length {header_len} does not fit in {size} bytes)"
        header = handle.read(header_len)
    try:
        meta = json.loads(header)
        data_end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, IndexError, TypeError):
        return "not a safetensors file (malformed JSON header)"
    if 8 + header_len + data_end != size:
        return f"not a safetensors file (header describes {8 + header_len + data_end} bytes, file has {size})"
    return None


def check_metrics_only(path: Path) -> str | None:
    """Content check for results files: a JSON object whose leaves are numbers, booleans or short strings."""
    size = path.stat().st_size
    if size > _METRICS_MAX_BYTES:
        return f"{size} bytes is too large for a metrics file (limit {_METRICS_MAX_BYTES})"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"not valid JSON ({err})"
    if not isinstance(data, dict):
        return f"top level is {type(data).__name__}, expected a JSON object of metrics"
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        key_path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{key_path}.{k}" if key_path else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{key_path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str) and len(value) > _METRICS_MAX_STRING:
            return (
                f"value at '{key_path}' is a {len(value)}-character string; metrics files may hold only numbers "
                f"and strings up to {_METRICS_MAX_STRING} characters (no predictions or example text)"
            )
    return None


# ----------------------------------------------------------------------------------------------------------
# The allow-list, the refusal explanations and the silent exclusions.
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowedArtifact:
    """An allow-list entry: why the file may be published, and an optional content check."""

    reason: str
    check: Callable[[Path], str | None] | None = None


_METRICS = AllowedArtifact("evaluation metrics (checked to hold metrics only)", check_metrics_only)
_FIGURE = AllowedArtifact("figure such as a training curve (checked to be a PNG image)", check_png)

ALLOWED_ARTIFACTS: dict[str, AllowedArtifact] = {
    # Patterns match the path relative to the folder; ``*`` never crosses a ``/``.
    "config.json": AllowedArtifact("model configuration"),
    "generation_config.json": AllowedArtifact("generation defaults written by save_pretrained"),
    "model.safetensors": AllowedArtifact("weights in safetensors (no code runs on load)", check_safetensors),
    "model-[0-9]*-of-[0-9]*.safetensors": AllowedArtifact("sharded safetensors weights", check_safetensors),
    "model.safetensors.index.json": AllowedArtifact("index of the safetensors shards"),
    "tokenizer.json": AllowedArtifact("fast tokenizer"),
    "tokenizer_config.json": AllowedArtifact("tokenizer configuration"),
    "special_tokens_map.json": AllowedArtifact("special tokens"),
    "added_tokens.json": AllowedArtifact("added tokens"),
    "vocab.txt": AllowedArtifact("WordPiece vocabulary"),
    "vocab.json": AllowedArtifact("BPE vocabulary"),
    "merges.txt": AllowedArtifact("BPE merges"),
    "README.md": AllowedArtifact("model card (checked for clinical note text)", check_not_clinical_text),
    ".gitattributes": AllowedArtifact("Git LFS attributes"),
    "*.png": _FIGURE,
    "figures/*.png": _FIGURE,
    "eval_results.json": _METRICS,
    "results.json": _METRICS,
    "training_summary.json": AllowedArtifact(
        "run summary written by `python -m train`: settings, metrics, document/token counts (checked like metrics)",
        check_metrics_only,
    ),
    "modules.json": AllowedArtifact("sentence-transformers module list"),
    "sentence_bert_config.json": AllowedArtifact("sentence-transformers settings"),
    "config_sentence_transformers.json": AllowedArtifact("sentence-transformers version and prompts"),
    "1_Pooling/config.json": AllowedArtifact("sentence-transformers pooling configuration"),
    "onnx/model.onnx": AllowedArtifact("ONNX export"),
    "onnx/model.onnx_data": AllowedArtifact("ONNX external weights (exports over 2 GB; Optimum naming)"),
    "onnx/model.onnx.data": AllowedArtifact("ONNX external weights (exports over 2 GB; torch.onnx naming)"),
    "onnx/parity.json": _METRICS,
}
"""Every file that may be uploaded, by relative-path pattern. Remote-code ``.py`` files are added per folder
from ``auto_map``; ``push --allow PATTERN`` adds user overrides."""

REMOTE_CODE_REASON = "remote code referenced by auto_map"

_DATA_REASON = "data file: may hold corpus text (MIMIC text must not be shared under the PhysioNet agreement)"
_STATE_REASON = "training state, not a model artifact: upload only the final save_pretrained folder"
_PICKLE_REASON = (
    "pickle: runs arbitrary code when loaded and may hold training state; only safetensors weights are "
    "published (save_pretrained(..., safe_serialization=True))"
)
_ARCHIVE_REASON = "archive: its contents cannot be checked"

REFUSAL_REASONS: dict[str, str] = {
    # File-name pattern (lower-cased, first match wins) -> why a file outside the allow-list is refused.
    "optimizer.pt": _STATE_REASON + " (optimizer state)",
    "scheduler.pt": _STATE_REASON + " (LR scheduler state)",
    "rng_state*.pth": _STATE_REASON + " (RNG state)",
    "trainer_state.json": _STATE_REASON + " (Trainer log and state)",
    "training_args.bin": _STATE_REASON + " (pickled TrainingArguments)",
    "*.csv": _DATA_REASON,
    "*.csv.gz": _DATA_REASON,
    "*.tsv": _DATA_REASON,
    "*.jsonl": _DATA_REASON,
    "*.jsonl.gz": _DATA_REASON,
    "*.parquet": _DATA_REASON,
    "*.arrow": _DATA_REASON,
    "*.xml": _DATA_REASON,
    "*.xml.gz": _DATA_REASON,
    "*.json": "JSON file that is not a known config, tokenizer, index or metrics file (could be data)",
    "*.txt": "text file that is not a known tokenizer vocabulary or merges file (could be corpus text)",
    "*.tar": _ARCHIVE_REASON,
    "*.tar.*": _ARCHIVE_REASON,
    "*.tgz": _ARCHIVE_REASON,
    "*.gz": _ARCHIVE_REASON,
    "*.zip": _ARCHIVE_REASON,
    "*.bz2": _ARCHIVE_REASON,
    "*.xz": _ARCHIVE_REASON,
    "*.7z": _ARCHIVE_REASON,
    "*.pt": _PICKLE_REASON,
    "*.pth": _PICKLE_REASON,
    "*.pkl": _PICKLE_REASON,
    "*.pickle": _PICKLE_REASON,
    "*.bin": _PICKLE_REASON,
    "*.ckpt": _PICKLE_REASON,
    "*.npy": "numpy array: not a model artifact (could hold embeddings of notes)",
    "*.npz": "numpy arrays: not a model artifact (could hold embeddings of notes)",
    "*.py": "Python file not referenced by auto_map in config.json or tokenizer_config.json",
}
CHECKPOINT_DIR_PATTERN = "checkpoint-*"
CHECKPOINT_REASON = "inside a Trainer checkpoint directory (optimizer/scheduler/RNG state): upload the final model"
DEFAULT_REFUSAL = "not a known model artifact"

EXCLUDED_DIRS: dict[str, str] = {
    "__pycache__": "Python bytecode cache",
    "cache*": "cache directory",
    ".cache": "cache directory (huggingface_hub upload metadata)",
    ".git": "git metadata",
    ".ipynb_checkpoints": "notebook autosaves",
}
EXCLUDED_FILES: dict[str, str] = {"*.pyc": "Python bytecode", ".DS_Store": "macOS folder metadata"}


def glob_match(rel_path: str, pattern: str) -> bool:
    """Match a relative POSIX path against a glob whose ``*`` does not cross ``/`` (same number of parts)."""
    parts, pattern_parts = rel_path.split("/"), pattern.split("/")
    return len(parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(part, pat) for part, pat in zip(parts, pattern_parts, strict=True)
    )


def _first_match(name: str, table: dict[str, str]) -> str | None:
    return next((reason for pattern, reason in table.items() if fnmatch.fnmatchcase(name, pattern)), None)


def explain_refusal(rel_path: str, path: Path | None = None) -> str:
    """Why a file outside the allow-list is refused: by name, then (when readable) by content."""
    parts = rel_path.split("/")
    if any(fnmatch.fnmatchcase(part, CHECKPOINT_DIR_PATTERN) for part in parts[:-1]):
        return CHECKPOINT_REASON
    reason = _first_match(parts[-1].lower(), REFUSAL_REASONS) or DEFAULT_REFUSAL
    if path is not None and path.is_file():
        text = _read_text_head(path)
        if text is not None:
            clinical = looks_like_clinical_text(text)
            if clinical:
                return f"{clinical}; {reason}"
            size = path.stat().st_size
            if size > _LARGE_TEXT_BYTES:
                return f"large text file ({size / 2**20:.1f} MiB), could be corpus text; {reason}"
    return reason


# ----------------------------------------------------------------------------------------------------------
# The check.
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactFile:
    """A file that will be uploaded: relative POSIX path, size in bytes, and why it is allowed."""

    path: str
    size: int
    reason: str


@dataclass(frozen=True)
class Refusal:
    """A file that blocks the upload, and why."""

    path: str
    reason: str


@dataclass
class ArtifactCheck:
    """What :func:`check_model_folder` read, kept, left out and refused in a folder."""

    folder: Path
    files: list[ArtifactFile] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    excluded: list[Refusal] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is refused and the folder is a complete model repository."""
        return not self.refused and not self.errors

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def problems(self) -> list[str]:
        """Every reason the upload is blocked, one line each, naming the file."""
        return [f"{r.path}: {r.reason}" for r in self.refused] + list(self.errors)

    def listing(self) -> str:
        """The files that would be uploaded with their sizes in bytes (the ``--dry-run`` output)."""
        width = max((len(f.path) for f in self.files), default=0)
        lines = [f"{f.path:<{width}}  {f.size:>12d}  {f.reason}" for f in self.files]
        lines.append(f"{len(self.files)} files, {self.total_bytes} bytes ({_human_size(self.total_bytes)})")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for the log: read, kept, excluded, refused, errors, warnings."""
        read = len(self.files) + len(self.refused) + len(self.excluded)
        return (
            f"{self.folder}: read {read} files; keep {len(self.files)} ({_human_size(self.total_bytes)}), "
            f"silently excluded {len(self.excluded)} (caches), refused {len(self.refused)}, "
            f"{len(self.errors)} structural errors, {len(self.warnings)} warnings"
        )


class PushRefused(RuntimeError):
    """The folder failed the check; ``.check`` holds the details and the message names every file."""

    def __init__(self, check: ArtifactCheck):
        self.check = check
        lines = "\n".join(f"  - {p}" for p in check.problems())
        super().__init__(
            f"refusing to publish {check.folder}:\n{lines}\n"
            "Remove or move these files (or write the model with save_pretrained into a clean folder). "
            "Use --allow PATTERN only for a file you have checked holds no patient data."
        )


class HubUnavailableError(RuntimeError):
    """The Hub cannot be reached (offline mode or no network) or rejected the request."""


def _human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _walk(folder: Path, check: ArtifactCheck) -> list[str]:
    """Relative POSIX paths of all files, pruning silently excluded directories (recorded in ``check``)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        kept_dirs = []
        for name in sorted(dirnames):
            reason = _first_match(name, EXCLUDED_DIRS)
            if reason:
                check.excluded.append(Refusal(prefix + name + "/", reason))
            elif (Path(dirpath) / name).is_symlink():
                check.refused.append(Refusal(prefix + name + "/", "symlinked directory: copy the artifacts in"))
            else:
                kept_dirs.append(name)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            reason = _first_match(name, EXCLUDED_FILES)
            if reason:
                check.excluded.append(Refusal(prefix + name, reason))
            else:
                found.append(prefix + name)
    return found


def _load_json(folder: Path, name: str, check: ArtifactCheck) -> dict | None:
    path = folder / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        check.errors.append(f"{name}: not valid JSON ({err})")
        return None
    if not isinstance(data, dict):
        check.errors.append(f"{name}: expected a JSON object, found {type(data).__name__}")
        return None
    return data


_RELATIVE_IMPORT = re.compile(r"^\s*(?:from\s+\.(\w+)\s+import|import\s+\.(\w+))", re.MULTILINE)


def _remote_code_files(folder: Path, auto_maps: dict[str, dict], check: ArtifactCheck) -> set[str]:
    """The ``.py`` files that ``auto_map`` entries reference, plus their relative imports (as transformers
    copies them). A missing file is a structural error naming the config key."""
    needed: dict[str, str] = {}
    for source, auto_map in auto_maps.items():
        for auto_class, targets in auto_map.items():
            for target in targets if isinstance(targets, list) else [targets]:
                if not isinstance(target, str) or "--" in target:  # None slot or code in another repo
                    continue
                module = target.rsplit(".", 1)[0]
                needed.setdefault(module.replace(".", "/") + ".py", f"{source} auto_map['{auto_class}']")
    found: set[str] = set()
    queue = list(needed)
    while queue:
        rel = queue.pop()
        if rel in found:
            continue
        if not (folder / rel).is_file():
            check.errors.append(f"{rel}: referenced by {needed[rel]} but missing from the folder")
            continue
        found.add(rel)
        for match in _RELATIVE_IMPORT.finditer((folder / rel).read_text(encoding="utf-8")):
            imported = (match.group(1) or match.group(2)) + ".py"
            needed.setdefault(imported, f"a relative import in {rel}")
            queue.append(imported)
    return found


def _check_structure(folder: Path, present: set[str], check: ArtifactCheck) -> set[str]:
    """Check that the folder is a loadable model repository; returns the remote-code files it needs."""
    config = _load_json(folder, "config.json", check)
    if "config.json" not in present:
        check.errors.append("config.json: missing; this is not a save_pretrained model folder")
    auto_maps: dict[str, dict] = {}
    if config is not None:
        model_type = config.get("model_type")
        if not model_type:
            check.errors.append("config.json: no model_type, so AutoConfig cannot load it")
        if isinstance(config.get("auto_map"), dict):
            auto_maps["config.json"] = config["auto_map"]
        elif model_type == OUR_MODEL_TYPE:
            check.errors.append(
                f"config.json: model_type '{OUR_MODEL_TYPE}' needs an auto_map so that "
                "AutoModel.from_pretrained(..., trust_remote_code=True) finds the code; call "
                "register_for_auto_class() on the config and model classes before save_pretrained"
            )
    tokenizer_config = _load_json(folder, "tokenizer_config.json", check)
    if tokenizer_config is not None and isinstance(tokenizer_config.get("auto_map"), dict):
        auto_maps["tokenizer_config.json"] = tokenizer_config["auto_map"]

    if "model.safetensors.index.json" in present:
        index = _load_json(folder, "model.safetensors.index.json", check) or {}
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            check.errors.append("model.safetensors.index.json: empty or missing weight_map")
        for shard in shards:
            if shard not in present:
                check.errors.append(f"{shard}: listed in model.safetensors.index.json but missing")
    elif "model.safetensors" not in present:
        pickles = sorted(p for p in present if p.endswith((".bin", ".pt", ".pth")))
        hint = f" (found only pickle weights: {', '.join(pickles)})" if pickles else ""
        check.errors.append(
            f"model.safetensors: missing{hint}; save with save_pretrained(..., safe_serialization=True)"
        )

    if not present & {"tokenizer.json", "vocab.txt", "vocab.json"}:
        check.errors.append("tokenizer.json: missing (nor vocab.txt/vocab.json); save the tokenizer too")
    elif "tokenizer_config.json" not in present:
        check.warnings.append("tokenizer_config.json: missing; AutoTokenizer may pick the wrong class")
    if "README.md" not in present:
        check.warnings.append(
            "README.md: no model card; write one (intended use, training data, license, limitations) before "
            "making the repository public"
        )
    return _remote_code_files(folder, auto_maps, check)


def check_model_folder(folder: str | Path, allow: Sequence[str] = ()) -> ArtifactCheck:
    """Check that ``folder`` is a model repository holding only publishable artifacts.

    Every file is either kept (allow-listed, content check passed), silently excluded (caches) or refused
    with a reason naming it. ``allow`` holds user glob patterns (``*`` does not cross ``/``) that override
    the name rules; they are logged, and the clinical-text check still applies to them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    check = ArtifactCheck(folder=folder)
    paths = _walk(folder, check)
    remote_code = _check_structure(folder, set(paths), check)
    for rel in paths:
        path = folder / rel
        rule = next((r for pattern, r in ALLOWED_ARTIFACTS.items() if glob_match(rel, pattern)), None)
        if rule is None and rel in remote_code:
            rule = AllowedArtifact(REMOTE_CODE_REASON)
        if rule is None:
            user_pattern = next((p for p in allow if glob_match(rel, p)), None)
            if user_pattern is not None:
                refused_for = explain_refusal(rel)
                logger.warning("%s: allowed by --allow %r, overriding the rule: %s", rel, user_pattern, refused_for)
                check.overrides.append(f"{rel} (--allow {user_pattern}; would be refused: {refused_for})")
                rule = AllowedArtifact(f"user override --allow {user_pattern}", check_not_clinical_text)
        if rule is None:
            check.refused.append(Refusal(rel, explain_refusal(rel, path)))
            continue
        problem = rule.check(path) if rule.check else None
        if problem:
            check.refused.append(Refusal(rel, problem))
        else:
            check.files.append(ArtifactFile(rel, path.stat().st_size, rule.reason))
    for warning in check.warnings:
        logger.warning("%s", warning)
    for refusal in check.refused:
        logger.error("refused %s: %s", refusal.path, refusal.reason)
    for error in check.errors:
        logger.error("%s", error)
    logger.info("%s", check.summary())
    return check


# ----------------------------------------------------------------------------------------------------------
# The upload.
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    """What :func:`push_to_hub` did: the check, and (unless a dry run) where the files went."""

    check: ArtifactCheck
    repo_id: str
    private: bool
    dry_run: bool
    repo_url: str | None = None
    commit_url: str | None = None


def hub_offline() -> bool:
    """True when huggingface_hub offline mode is on (the constant, or the env var set after import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE) or env


def _escape_glob(rel_path: str) -> str:
    """An fnmatch pattern matching exactly ``rel_path`` (``[``, ``*``, ``?`` are escaped)."""
    return re.sub(r"([\[\]*?])", r"[\1]", rel_path)


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    from huggingface_hub.errors import OfflineModeIsEnabled

    return (*errors, OfflineModeIsEnabled)


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    public: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    allow: Sequence[str] = (),
    commit_message: str = "Upload Clinical ModernBERT",
) -> PushResult:
    """Check ``folder`` and upload exactly the checked files to ``repo_id`` (private unless ``public``).

    Raises :class:`PushRefused` when the check fails (dry run included: it previews the real push) and
    :class:`HubUnavailableError` when offline, without a token, or when the Hub cannot be reached. The token
    comes from ``token``, else ``HF_TOKEN``, else the cached ``hf auth login``.
    """
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"repo_id {repo_id!r}: expected 'namespace/name', e.g. 'my-lab/clinical-modernbert'")
    check = check_model_folder(folder, allow=allow)
    if not check.ok:
        raise PushRefused(check)
    private = not public
    if dry_run:
        logger.info("dry run: would upload %d files to %s (%s)", len(check.files), repo_id,
                    "private" if private else "PUBLIC")
        return PushResult(check, repo_id, private, dry_run=True)
    if hub_offline():
        raise HubUnavailableError(
            f"cannot push to {repo_id}: HF_HUB_OFFLINE is set, so huggingface_hub will not connect. Unset it "
            "(e.g. `env -u HF_HUB_OFFLINE python -m publish push ...`) on a machine with network access, or "
            "use --dry-run to see what would be uploaded."
        )
    import huggingface_hub

    token = token or os.environ.get("HF_TOKEN") or huggingface_hub.get_token()
    if not token:
        raise HubUnavailableError(
            "no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login` (write access needed)"
        )
    try:
        repo_url = huggingface_hub.create_repo(repo_id, private=private, exist_ok=True, token=token)
        commit = huggingface_hub.upload_folder(
            folder_path=str(check.folder),
            repo_id=repo_id,
            allow_patterns=[_escape_glob(f.path) for f in check.files],
            commit_message=commit_message,
            token=token,
        )
    except _network_errors() as err:
        raise HubUnavailableError(
            f"cannot reach the Hugging Face Hub to push {repo_id} ({type(err).__name__}: {err}). Check the "
            "network (HF_ENDPOINT, proxy settings) or run with --dry-run to see what would be uploaded."
        ) from err
    except huggingface_hub.errors.HfHubHTTPError as err:
        raise HubUnavailableError(
            f"the Hub refused the push to {repo_id}: {err}. Check that the token has write access to the namespace."
        ) from err
    logger.info("pushed %d files to %s (%s)", len(check.files), repo_url, "private" if private else "public")
    return PushResult(
        check, repo_id, private, dry_run=False, repo_url=str(repo_url), commit_url=getattr(commit, "commit_url", None)
    )
