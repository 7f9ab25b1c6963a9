"""Tokenizer for Clinical ModernBERT: load ModernBERT's own, or train a byte-level BPE with its conventions.

The real default is the tokenizer of ``answerdotai/ModernBERT-base`` (an OLMo-derived byte-level BPE, 50,368 ids
with ``[CLS] A [SEP]`` post-processing). Offline, the Hub cannot be reached, so :func:`train_bpe_tokenizer` trains
a small byte-level BPE on the corpus that follows the same conventions, so the rest of the pipeline (packing,
masking, the model, the fill-mask pipeline) cannot tell the difference:

* special tokens ``[PAD] [CLS] [SEP] [MASK] [UNK]`` (``[MASK]`` strips the space on its left, so
  ``"of [MASK] wall"`` predicts the ``"Ġfoo"`` form of a word, as in ModernBERT);
* byte-level pre-tokenizer with ``add_prefix_space=False`` and an NFC normalizer;
* post-processor ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]``;
* vocabulary size a multiple of 64 (padded with ``[unusedN]`` tokens, like ModernBERT's ``[unused0..82]``);
* ``model_max_length`` 8192, no ``token_type_ids``.

Trained tokenizers put the five special tokens at ids 0..4 in that order (stable whatever the vocabulary size, and
the ids of the model's ``tiny`` preset); ModernBERT's own puts them at 50280..50284. Nothing may hard-code either:
the model config takes its ids from the tokenizer (:func:`special_token_ids`), and
:func:`check_tokenizer_matches_config` refuses a mismatch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

MODERNBERT_TOKENIZER_ID = "answerdotai/ModernBERT-base"
MODEL_MAX_LENGTH = 8192
VOCAB_MULTIPLE = 64

# Role -> token, in the order they get ids 0..4 in a trained tokenizer.
SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
    "unk_token": "[UNK]",
}


class TokenizerUnavailableError(OSError):
    """The requested tokenizer could not be loaded (typically a Hub id while offline)."""


class TokenizerModelMismatchError(ValueError):
    """The tokenizer and the model config disagree on vocabulary size or special token ids."""


def round_up_to_multiple(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n`` (embedding sizes that are multiples of 64 run faster)."""
    return -(-n // multiple) * multiple


def _batched_texts(texts: Iterable[str], batch_size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    model_max_length: int = MODEL_MAX_LENGTH,
    show_progress: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` with ModernBERT's special tokens and post-processing.

    ``vocab_size`` is an upper bound: a small corpus may run out of merges first. Either way the final size
    (``len(tokenizer)``) is padded with ``[unusedN]`` special tokens to a multiple of 64.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least 256 + 5 ids")
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    special = [
        AddedToken(token, special=True, normalized=False, lstrip=(role == "mask_token"))
        for role, token in SPECIAL_TOKENS.items()
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    n_texts = 0

    def counted(batches: Iterator[list[str]]) -> Iterator[list[str]]:
        nonlocal n_texts
        for batch in batches:
            n_texts += len(batch)
            yield batch

    backend.train_from_iterator(counted(_batched_texts(texts)), trainer=trainer)
    if n_texts == 0:
        raise ValueError("cannot train a tokenizer on an empty corpus (no texts were given)")
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    trained_size = backend.get_vocab_size()
    n_unused = round_up_to_multiple(trained_size) - trained_size
    backend.add_special_tokens([AddedToken(f"[unused{i}]", special=True, normalized=False) for i in range(n_unused)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        **SPECIAL_TOKENS,
    )
    logger.info(
        "trained byte-level BPE on %d texts: %d learned ids + %d [unused] = %d (requested %d)",
        n_texts, trained_size, n_unused, len(tokenizer), vocab_size,
    )
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike) -> list[str]:
    """Save ``tokenizer`` as a Hub-ready fast tokenizer that older transformers (4.x) can also load.

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` and no ``special_tokens_map.json``; 4.x knows
    neither, so we write the portable ``PreTrainedTokenizerFast`` class name and the map ourselves.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") in (None, "TokenizersBackend"):
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.setdefault("model_input_names", ["input_ids", "attention_mask"])
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special_map = {role: str(getattr(tokenizer, role)) for role in SPECIAL_TOKENS if getattr(tokenizer, role, None)}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return sorted(p.name for p in out.iterdir() if p.name.startswith(("tokenizer", "special_tokens")))


def load_tokenizer(name_or_path: str = MODERNBERT_TOKENIZER_ID) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder or a Hub id, and check it has every special token we need.

    Offline (or with the Hub unreachable) a Hub id raises :class:`TokenizerUnavailableError` that says what to do.
    """
    local = Path(name_or_path).expanduser()
    if local.exists():
        if not local.is_dir() or not any((local / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise TokenizerUnavailableError(
                f"{local} is not a tokenizer folder: expected tokenizer.json / tokenizer_config.json inside it"
            )
        if (local / "tokenizer.json").is_file():
            # A fast tokenizer needs no model config: AutoTokenizer would read config.json, and for a model folder
            # with remote code (ours) that means asking to trust it just to tokenize.
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(local))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(local))
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except OSError as err:
            raise TokenizerUnavailableError(
                f"could not load tokenizer {name_or_path!r}: it is not a local folder and the Hugging Face Hub is "
                f"unreachable or offline (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}). Pass a local "
                f"folder that holds tokenizer.json (e.g. a downloaded copy of {MODERNBERT_TOKENIZER_ID}) with "
                f"--tokenizer /path/to/folder, or train one on the corpus with --train_tokenizer true."
            ) from err
    missing = [role for role in SPECIAL_TOKENS if getattr(tokenizer, role, None) is None]
    if missing:
        raise TokenizerUnavailableError(f"tokenizer {name_or_path!r} lacks the special tokens {missing}")
    return tokenizer


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Model-config keyword arguments for the tokenizer's special ids (ModernBERT: bos = [CLS], eos = [SEP])."""
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "mask_token_id": tokenizer.mask_token_id,
    }


def check_tokenizer_matches_config(tokenizer: PreTrainedTokenizerBase, config: Any) -> None:
    """Raise :class:`TokenizerModelMismatchError` if ``tokenizer`` cannot be used with a model built from ``config``.

    The model embedding may be larger than the tokenizer (ModernBERT pads to a multiple of 64), never smaller; and
    every special token id the config declares must be the tokenizer's id for that token.
    """
    n_tokens = len(tokenizer)
    if n_tokens > config.vocab_size:
        raise TokenizerModelMismatchError(
            f"tokenizer has {n_tokens} tokens but the model embedding has vocab_size={config.vocab_size}: "
            f"ids >= {config.vocab_size} would index past the embedding. Build the model with "
            f"vocab_size >= {round_up_to_multiple(n_tokens)} or use the model's own tokenizer."
        )
    disagreements = []
    for key, token_id in special_token_ids(tokenizer).items():
        config_id = getattr(config, key, None)
        if isinstance(config_id, (list, tuple)):  # eos_token_id may be a list in transformers configs
            config_id = token_id if token_id in config_id else config_id
        if config_id is not None and token_id is not None and config_id != token_id:
            token = tokenizer.convert_ids_to_tokens(token_id)
            disagreements.append(f"{key}: config={config_id}, tokenizer={token_id} ({token})")
    if disagreements:
        raise TokenizerModelMismatchError(
            "tokenizer and model config disagree on special token ids: " + "; ".join(disagreements)
        )
