"""Sentence embeddings: a sentence-transformers folder (mean pooling) and a transformers-only reference.

:func:`write_sentence_transformers_folder` writes the encoder (``AutoModel``, task heads dropped) and its
tokenizer, plus the four files that make ``SentenceTransformer(folder, trust_remote_code=True)`` load it as
Transformer -> mean Pooling. It writes the classic file format (``sentence_transformers.models.Transformer``,
``pooling_mode_mean_tokens``), which every sentence-transformers release from 2.x to 6.x reads, so the
package is not needed to write the folder.

:func:`encode` is the reference those embeddings must match: tokenize, run ``AutoModel``, average the token
states over the attention mask.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

POOLING_DIR = "1_Pooling"
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
            f"{POOLING_DIR}/config.json")
"""The files that turn a model folder into a sentence-transformers folder."""


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _load(model_dir: str | Path):
    """(tokenizer, encoder in eval mode) from a local folder or Hub id, with a clear error offline."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
        model = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    except OSError as err:
        raise OSError(
            f"cannot load a model and tokenizer from {model_dir!s}: {err}. Pass a local save_pretrained folder, "
            "or a Hub id with network access (HF_HUB_OFFLINE unset)."
        ) from err
    return tokenizer, model.eval()


def mean_pool(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Average ``(batch, seq, hidden)`` token vectors over real tokens (``attention_mask == 1``)."""
    weights = attention_mask[..., None].astype(token_embeddings.dtype)
    return (token_embeddings * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)


def encode(
    texts: Sequence[str],
    model_dir: str | Path,
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool = False,
) -> np.ndarray:
    """Mean-pooled sentence embeddings ``(len(texts), hidden_size)`` in float32, using transformers only.

    ``max_length`` truncates (default: the tokenizer's ``model_max_length``, capped by the config's
    ``max_position_embeddings``); ``normalize`` scales each row to unit L2 norm.
    """
    import torch
    from tqdm.auto import tqdm

    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    tokenizer, model = _load(model_dir)
    max_length = max_length or _default_max_length(tokenizer, model.config)
    batches = range(0, len(texts), batch_size)
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in tqdm(batches, desc="encode", disable=len(batches) < 8):
            batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            out.append(mean_pool(hidden.float().numpy(), batch["attention_mask"].numpy()))
    embeddings = np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), dtype=np.float32)
    if normalize:
        embeddings = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
    return embeddings.astype(np.float32)


def _default_max_length(tokenizer, config) -> int:
    limit = config.max_position_embeddings
    model_max = getattr(tokenizer, "model_max_length", None)
    return min(limit, model_max) if isinstance(model_max, int) and model_max > 0 else limit


def sentence_transformers_files(hidden_size: int, max_seq_length: int) -> dict[str, dict | list]:
    """The JSON content of :data:`ST_FILES` for a mean-pooling model (pure; used by the writer and tests)."""
    versions = {"transformers": _installed_version("transformers"), "pytorch": _installed_version("torch"),
                "sentence_transformers": _installed_version("sentence-transformers")}
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
        ],
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "__version__": {k: v for k, v in versions.items() if v is not None},
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        f"{POOLING_DIR}/config.json": {
            "word_embedding_dimension": hidden_size,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    }


def write_sentence_transformers_folder(
    model_dir: str | Path, out_dir: str | Path, *, max_seq_length: int | None = None
) -> Path:
    """Write a sentence-transformers folder for the encoder in ``model_dir`` into ``out_dir``; returns it.

    The encoder is re-saved with ``save_pretrained`` (safetensors, remote code and auto_map included), so
    MLM or classifier heads in ``model_dir`` are dropped. ``README.md`` is copied when present.
    ``max_seq_length`` defaults to the tokenizer/config limit.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: output folder exists and is not empty; choose a new folder")
    tokenizer, model = _load(model_dir)
    max_seq_length = max_seq_length or _default_max_length(tokenizer, model.config)
    if max_seq_length > model.config.max_position_embeddings:
        raise ValueError(
            f"max_seq_length={max_seq_length} exceeds max_position_embeddings={model.config.max_position_embeddings}"
        )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    readme = Path(model_dir) / "README.md"
    if readme.is_file():
        shutil.copyfile(readme, out / "README.md")
    for name, content in sentence_transformers_files(model.config.hidden_size, max_seq_length).items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote sentence-transformers folder %s (hidden %d, max_seq_length %d, mean pooling)",
                out, model.config.hidden_size, max_seq_length)
    return out
