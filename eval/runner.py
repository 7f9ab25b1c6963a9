"""Fine-tune and score any `AutoModel`-loadable encoder on registered tasks with the HF `Trainer`.

Design choices:
- Everything goes through `AutoTokenizer` / `AutoModelFor*` with `trust_remote_code=True`, so our remote-code
  model, a BERT or a ModernBERT load the same way. A Hub id offline fails with a message that says what to do.
- Three modes: `full` fine-tuning, linear `probe` (the encoder is frozen, the head trains) and `lora` (peft adapters
  on the attention/MLP projections plus a fully trained head).
- Sequence tasks never truncate silently: a document longer than the window is cut into overlapping windows
  (`chunk_windows`) and the document's logits are the mean of its windows' logits (`pool_chunk_logits`), in
  training-time evaluation (early stopping) and at test time. Training uses every window with its document's label.
- Token tasks label the FIRST subword of each word (`align_labels_to_first_subword`); words cut off by the length
  limit are predicted "O" and counted in the results, so the entity scores stay honest.
- Extractive QA follows `run_qa.py`: question + context in sliding windows (`chunk_stride` tokens of overlap, offset
  mappings), start/end labels on the answer's tokens (the CLS position in windows without it), and answers
  post-processed per question: the best-scoring valid span over all its windows (n-best start/end logits, at most
  `max_answer_length` tokens), scored with SQuAD exact match / token F1.
- Multiple choice follows `run_swag.py`: one (question, choice) pair per choice, a collator that pads to
  (batch, num_choices, seq), and accuracy of the best-scoring choice.
- Retrieval tasks are not trained: attention-mask-aware mean pooling, cosine similarity, ranking metrics.
- Each seed trains a fresh model; results hold every seed's metrics and their mean and sample sd.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
import yaml
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)

from eval.data import DataError, TaskData, choice_label, load_task_data, qa_answers, row_choices, row_location
from eval.metrics import load_metric
from eval.tasks import MAX_SUPPORTED_LENGTH, RUNNABLE_TASK_TYPES, TaskSpec, get_task

logger = logging.getLogger(__name__)

MODES: dict[str, str] = {
    "full": "fine-tune every parameter",
    "probe": "linear probe: freeze the encoder, train only the task head",
    "lora": "LoRA adapters (peft) on the encoder's projections; the task head trains fully",
}

# Checked in order; the first whose module names all exist among the encoder's Linear layers wins.
LORA_TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "modernbert": ("Wqkv", "Wo", "Wi"),
    "bert": ("query", "value"),
    "llama-style": ("q_proj", "v_proj"),
}

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says what to pass instead."""


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class RunConfig:
    """Hyper-parameters of an evaluation run. Defaults live in `eval/configs/*.yaml`; the CLI overrides them."""

    mode: str = "full"
    seeds: tuple[int, ...] = (0,)
    learning_rate: float = 5e-5
    probe_learning_rate: float = 1e-3
    lora_learning_rate: float = 5e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    eval_steps: int | None = None
    early_stopping_patience: int = 3
    max_train: int | None = None
    max_eval: int | None = None
    max_corpus: int | None = None
    max_length: int | None = None
    chunk_stride: int = 32
    threshold: float = 0.5
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] | None = None
    retrieval_batch_size: int = 64
    retrieval_top_k: int = 100
    n_best_size: int = 20
    max_answer_length: int = 30
    save_models: bool = False
    disable_tqdm: bool = False
    extra_training_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}; expected one of {sorted(MODES)}")
        self.seeds = tuple(int(seed) for seed in self.seeds)
        if not self.seeds:
            raise ValueError("RunConfig.seeds must hold at least one seed")
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)
        if self.n_best_size < 1 or self.max_answer_length < 1:
            raise ValueError(f"RunConfig: n_best_size ({self.n_best_size}) and max_answer_length "
                             f"({self.max_answer_length}) must be positive")

    @property
    def mode_learning_rate(self) -> float:
        rates = {"full": self.learning_rate, "probe": self.probe_learning_rate, "lora": self.lora_learning_rate}
        return rates[self.mode]


def load_run_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Read a YAML run config (default `eval/configs/demo.yaml`) and apply non-None `overrides`."""
    path = Path(path) if path else CONFIG_DIR / "demo.yaml"
    values = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown run config key(s) {unknown}; known keys: {sorted(known)}")
    values.update({key: value for key, value in overrides.items() if value is not None})
    return RunConfig(**values)


# --------------------------------------------------------------------------------------------------------------
# Loading models


def model_name(model_source: str) -> str:
    """A file-system friendly name: a local folder's name, or a Hub id with '/' replaced by '__'."""
    path = Path(model_source).expanduser()
    name = path.name if path.is_dir() else model_source.replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model"


def _hub_error(model_source: str, error: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    state = "offline (HF_HUB_OFFLINE=1)" if offline else "not reachable, or the id does not exist"
    return ModelLoadError(
        f"Could not load model {model_source!r}: it is not a local folder and the Hugging Face Hub is {state} "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Pass a local folder with "
        f"config.json and the tokenizer, or download it first on a connected machine: "
        f"`hf download {model_source} --local-dir DIR`."
    )


def load_config(model_source: str) -> transformers.PretrainedConfig:
    """`AutoConfig` of a local folder or Hub id (trust_remote_code), with a clear error offline."""
    path = Path(model_source).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ModelLoadError(f"Model folder {path} has no config.json; save the model with save_pretrained(DIR)")
    try:
        return AutoConfig.from_pretrained(str(path) if path.exists() else model_source, trust_remote_code=True)
    except (OSError, ValueError) as error:
        if path.exists():
            raise ModelLoadError(f"Could not read the config of {path}: {error}") from error
        raise _hub_error(model_source, error) from error


def load_tokenizer(model_source: str) -> transformers.PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_source, trust_remote_code=True)
    except (OSError, ValueError) as error:
        if Path(model_source).exists():
            raise ModelLoadError(f"Could not load a tokenizer from {model_source}: {error}") from error
        raise _hub_error(model_source, error) from error
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{model_source}: a fast tokenizer is needed (word_ids for token tasks, offsets)")
    if tokenizer.pad_token_id is None:
        raise ModelLoadError(f"{model_source}: the tokenizer has no pad token; set one and save it again")
    return tokenizer


def resolve_max_length(task_max_length: int, config: Any, tokenizer: Any = None, override: int | None = None) -> int:
    """The window length: the task's (or `override`), capped by the model's positions and 8,192.

    `tokenizer.model_max_length` also caps it when it is a real limit (tokenizers without one report ~1e30).
    """
    wanted = override or task_max_length
    limits = [wanted, MAX_SUPPORTED_LENGTH]
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        limits.append(int(positions))
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer_limit and tokenizer_limit < 1_000_000:
        limits.append(int(tokenizer_limit))
    return min(limits)


def _model_class(task_type: str) -> type:
    classes = {
        "single_label": AutoModelForSequenceClassification,
        "multi_label": AutoModelForSequenceClassification,
        "regression": AutoModelForSequenceClassification,
        "token": AutoModelForTokenClassification,
        "qa": AutoModelForQuestionAnswering,
        "multiple_choice": AutoModelForMultipleChoice,
    }
    if task_type not in classes:
        raise NotImplementedError(
            f"The runner cannot fine-tune task_type {task_type!r} yet; runnable types: {RUNNABLE_TASK_TYPES}"
        )
    return classes[task_type]


def load_task_model(model_source: str, spec: TaskSpec, label_list: Sequence[str]) -> PreTrainedModel:
    """A fresh model with a task head sized for `label_list` (random head; the seed must be set before).

    The names of parameters that the checkpoint did not provide are kept in `model.eval_new_parameters`.
    """
    problem_types = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
                     "regression": "regression"}
    kwargs: dict[str, Any] = {"trust_remote_code": True, "ignore_mismatched_sizes": True}
    if spec.task_type in ("qa", "multiple_choice"):
        pass  # fixed-size heads: start/end logits per token, one score per choice
    elif spec.task_type == "regression":
        kwargs.update(num_labels=1)
    else:
        kwargs.update(num_labels=len(label_list), id2label=dict(enumerate(label_list)),
                      label2id={label: index for index, label in enumerate(label_list)})
    if spec.task_type in problem_types:
        kwargs["problem_type"] = problem_types[spec.task_type]
    try:
        model, info = _model_class(spec.task_type).from_pretrained(model_source, output_loading_info=True, **kwargs)
    except OSError as error:
        if Path(model_source).exists():
            raise ModelLoadError(f"Could not load weights from {model_source}: {error}") from error
        raise _hub_error(model_source, error) from error
    mismatched = {key if isinstance(key, str) else key[0] for key in info.get("mismatched_keys", ())}
    # Parameters the checkpoint did not provide (the head; a BERT pooler saved without one) start random: they must
    # train in every mode, and LoRA must save them, or a reloaded adapter would not reproduce the model.
    model.eval_new_parameters = sorted(set(info.get("missing_keys", ())) | mismatched)
    return model


def new_encoder_modules(model: PreTrainedModel) -> list[str]:
    """Modules inside the encoder that hold newly initialised parameters (e.g. `bert.pooler.dense`)."""
    heads = set(head_module_names(model))
    modules = {key.rsplit(".", 1)[0] for key in getattr(model, "eval_new_parameters", [])}
    return sorted(name for name in modules if name.split(".", 1)[0] not in heads)


def head_module_names(model: torch.nn.Module) -> list[str]:
    """Top-level children that are not the encoder (e.g. BERT: `classifier`; ModernBERT: `head`, `classifier`)."""
    prefix = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children()
            if name != prefix and any(True for _ in child.parameters())]


def encoder_of(model: PreTrainedModel) -> torch.nn.Module:
    prefix = getattr(model, "base_model_prefix", "")
    encoder = getattr(model, prefix, None) if prefix else None
    if encoder is None:
        raise ValueError(f"{type(model).__name__}: cannot find the encoder (base_model_prefix={prefix!r})")
    return encoder


def detect_lora_targets(model: PreTrainedModel) -> list[str]:
    """Module names for LoRA: the first `LORA_TARGET_PRESETS` entry whose names all name Linear layers."""
    linear_names = {name.rsplit(".", 1)[-1] for name, module in encoder_of(model).named_modules()
                    if isinstance(module, torch.nn.Linear)}
    for targets in LORA_TARGET_PRESETS.values():
        if set(targets) <= linear_names:
            return list(targets)
    raise ValueError(
        f"Cannot detect LoRA target modules for {type(model).__name__}; its encoder's Linear layers are named "
        f"{sorted(linear_names)}. Pass them with --lora-targets (RunConfig.lora_targets)."
    )


def apply_mode(model: PreTrainedModel, spec: TaskSpec, config: RunConfig) -> torch.nn.Module:
    """Freeze the encoder (probe), wrap with LoRA (lora), or leave as is (full). Logs trainable parameters."""
    new_parameters = set(getattr(model, "eval_new_parameters", []))
    if config.mode == "probe":
        for parameter in encoder_of(model).parameters():
            parameter.requires_grad = False
        for name, parameter in model.named_parameters():
            if name in new_parameters:  # a random pooler is part of the head, not of the pretrained encoder
                parameter.requires_grad = True
    elif config.mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        # qa and multiple_choice use the generic PeftModel, which passes every input through: peft has no
        # multiple-choice type, and PeftModelForQuestionAnswering drops token_type_ids (BERT's segment ids).
        task_type = {"token": TaskType.TOKEN_CLS, "qa": None, "multiple_choice": None}.get(spec.task_type,
                                                                                          TaskType.SEQ_CLS)
        lora_config = LoraConfig(
            task_type=task_type,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_targets or detect_lora_targets(model)),
            modules_to_save=head_module_names(model) + new_encoder_modules(model),
        )
        model = get_peft_model(model, lora_config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("mode=%s: %d of %d parameters trainable (%.2f%%)", config.mode, trainable, total,
                100 * trainable / max(total, 1))
    return model


# --------------------------------------------------------------------------------------------------------------
# Chunking and label alignment (pure functions)


def chunk_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) windows of at most `window` tokens covering `n_tokens`, consecutive ones overlapping by `stride`.

    `window` counts content tokens only (the model's limit minus its special tokens). A text that fits gives one
    window; an empty text gives [(0, 0)] so every document still gets a prediction.
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if not 0 <= stride < window:
        raise ValueError(f"stride must be in [0, window={window}), got {stride}")
    if n_tokens <= window:
        return [(0, n_tokens)]
    step = window - stride
    windows = []
    start = 0
    while True:
        end = min(start + window, n_tokens)
        windows.append((start, end))
        if end == n_tokens:
            return windows
        start += step


def special_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Ids to put before and after each window: [CLS]/[SEP] (or BOS/EOS) where the tokenizer has them."""
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return ([first] if first is not None else []), ([last] if last is not None else [])


def pool_chunk_logits(logits: np.ndarray, doc_index: Sequence[int], n_docs: int) -> np.ndarray:
    """Mean of the chunk logits of each document: (n_chunks, n_out) -> (n_docs, n_out)."""
    logits = np.asarray(logits, dtype=np.float64)
    doc_index = np.asarray(doc_index)
    counts = np.bincount(doc_index, minlength=n_docs)
    if (counts == 0).any():
        raise ValueError(f"documents without chunks: {np.flatnonzero(counts == 0)[:10].tolist()}")
    sums = np.zeros((n_docs, logits.shape[1]), dtype=np.float64)
    np.add.at(sums, doc_index, logits)  # (n_docs, n_out)
    return sums / counts[:, None]


def align_labels_to_first_subword(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Per-token labels: a word's label on its first subword, -100 on special tokens and later subwords."""
    labels = []
    previous = None
    for word_id in word_ids:
        if word_id is None or word_id == previous:
            labels.append(-100)
        else:
            labels.append(word_labels[word_id])
        previous = word_id
    return labels


# --------------------------------------------------------------------------------------------------------------
# Features


@dataclass
class Features:
    """Model inputs of one split plus what is needed to map predictions back to documents/words."""

    dataset: datasets.Dataset
    n_docs: int
    doc_index: list[int] = field(default_factory=list)  # sequence tasks: chunk -> document
    word_positions: list[list[int]] = field(default_factory=list)  # token tasks: words with a first subword
    n_truncated_words: int = 0
    # qa: per window, the (start, end) character offsets of context tokens in the context (None elsewhere) and
    # the position of its CLS token (the "no answer here" label)
    offset_mapping: list[list[tuple[int, int] | None]] = field(default_factory=list)
    cls_index: list[int] = field(default_factory=list)


def _encode_label(spec: TaskSpec, value: Any, label_to_id: Mapping[str, int]) -> Any:
    if spec.task_type == "single_label":
        return label_to_id[str(value)]
    if spec.task_type == "multi_label":
        present = {str(label) for label in value}
        return [1.0 if label in present else 0.0 for label in label_to_id]
    if spec.task_type == "regression":
        return float(value)
    raise ValueError(f"no sequence label encoding for task_type {spec.task_type!r}")


def sequence_features(rows: datasets.Dataset, spec: TaskSpec, tokenizer: Any, max_length: int, stride: int,
                      label_to_id: Mapping[str, int]) -> Features:
    """Tokenize documents into windows of `max_length` tokens (pairs are truncated, not chunked)."""
    input_ids: list[list[int]] = []
    labels: list[Any] = []
    doc_index: list[int] = []
    n_truncated_pairs = 0
    if spec.is_pair:
        first, second = spec.text_fields
        for index, row in enumerate(rows):
            full = tokenizer(row[first], row[second])["input_ids"]
            encoded = tokenizer(row[first], row[second], truncation="longest_first", max_length=max_length)
            n_truncated_pairs += len(full) > max_length
            input_ids.append(encoded["input_ids"])
            labels.append(_encode_label(spec, row[spec.label_field], label_to_id))
            doc_index.append(index)
        if n_truncated_pairs:
            logger.warning("%s: %d text pairs truncated to %d tokens", spec.name, n_truncated_pairs, max_length)
    else:
        before, after = special_token_ids(tokenizer)
        window = max_length - len(before) - len(after)
        texts = list(rows[spec.text_fields[0]])
        encoded_texts = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for index, (ids, row_label) in enumerate(zip(encoded_texts, list(rows[spec.label_field]))):
            label = _encode_label(spec, row_label, label_to_id)
            for start, end in chunk_windows(len(ids), window, min(stride, window - 1)):
                input_ids.append(before + ids[start:end] + after)
                labels.append(label)
                doc_index.append(index)
    dataset = datasets.Dataset.from_dict(
        {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids], "labels": labels}
    )
    return Features(dataset=dataset, n_docs=len(rows), doc_index=doc_index)


def token_features(rows: datasets.Dataset, spec: TaskSpec, tokenizer: Any, max_length: int,
                   label_to_id: Mapping[str, int]) -> Features:
    """Tokenize pre-split words; label the first subword of each word (see `align_labels_to_first_subword`)."""
    words = [list(row_words) for row_words in rows[spec.tokens_field]]
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    all_labels = []
    word_positions = []
    n_truncated = 0
    for row_index, (row_words, row_tags) in enumerate(zip(words, rows[spec.label_field])):
        word_ids = encoded.word_ids(row_index)
        all_labels.append(align_labels_to_first_subword(word_ids, [label_to_id[tag] for tag in row_tags]))
        present = sorted({w for w in word_ids if w is not None})
        word_positions.append(present)
        n_truncated += len(row_words) - len(present)
    if n_truncated:
        logger.warning("%s: %d words lost to truncation at %d tokens (predicted 'O')", spec.name, n_truncated,
                       max_length)
    dataset = datasets.Dataset.from_dict(
        {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": all_labels}
    )
    return Features(dataset=dataset, n_docs=len(rows), word_positions=word_positions, n_truncated_words=n_truncated)


def answer_token_span(offsets: Sequence[tuple[int, int] | None], start_char: int, end_char: int
                      ) -> tuple[int, int] | None:
    """Token positions (start, end) covering characters [start_char, end_char) of the context, or None.

    `offsets` holds each token's character span in the context, None for tokens outside it (question, special
    tokens). None when the window does not hold the whole answer. As in `run_qa.py`, the start token is the last
    context token starting at or before `start_char`, the end token the first one ending at or after `end_char`.
    """
    context_positions = [position for position, offset in enumerate(offsets) if offset is not None]
    if not context_positions:
        return None
    first, last = context_positions[0], context_positions[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return None
    start = max(position for position in context_positions if offsets[position][0] <= start_char)
    end = min(position for position in context_positions if position >= start and offsets[position][1] >= end_char)
    return start, end


def qa_features(rows: datasets.Dataset, spec: TaskSpec, tokenizer: Any, max_length: int, stride: int,
                split: str = "?") -> Features:
    """Question + context windows of at most `max_length` tokens with start/end labels (`run_qa.py`'s preparation).

    A context that does not fit is cut into windows overlapping by `stride` tokens (`return_overflowing_tokens`);
    the question is repeated in each. The label of a window is the token span of the row's first answer, or the
    CLS position (0 without a CLS token) when the window does not hold the whole answer (and for unanswerable rows).
    Every split gets labels, so dev/test also report a loss; offsets and the window -> row map are kept for
    post-processing. Tokenizers without token_type_ids (ModernBERT) and with left padding are handled.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"Task {spec.name!r}: extractive QA needs a fast tokenizer (offset mappings); "
                             f"{type(tokenizer).__name__} is not one")
    question_field, context_field = spec.text_fields
    questions = [question.lstrip() for question in rows[question_field]]  # leading spaces only waste the window
    contexts = list(rows[context_field])
    answers = list(rows[spec.label_field])
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    question_lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    for index, n_question in enumerate(question_lengths):
        if max_length - n_special - n_question <= stride:
            raise DataError(
                f"{row_location(spec.name, split, index, rows[index])}: the question has {n_question} tokens, which "
                f"leaves {max_length - n_special - n_question} of max_length={max_length} for the context, not more "
                f"than the window overlap chunk_stride={stride}. Raise max_length or lower chunk_stride."
            )
    pad_on_right = tokenizer.padding_side == "right"
    context_sequence = 1 if pad_on_right else 0
    encoded = tokenizer(
        questions if pad_on_right else contexts,
        contexts if pad_on_right else questions,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    columns: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "start_positions": [], "end_positions": []}
    if "token_type_ids" in encoded:
        columns["token_type_ids"] = []
    doc_index, offset_mapping, cls_index = [], [], []
    n_with_answer = 0
    for window, sample in enumerate(encoded["overflow_to_sample_mapping"]):
        input_ids = encoded["input_ids"][window]
        sequence_ids = encoded.sequence_ids(window)
        offsets = [tuple(offset) if sequence == context_sequence else None
                   for offset, sequence in zip(encoded["offset_mapping"][window], sequence_ids)]
        cls = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        texts, starts = qa_answers(answers[sample])
        span = answer_token_span(offsets, starts[0], starts[0] + len(texts[0])) if texts else None
        n_with_answer += span is not None
        start, end = span if span is not None else (cls, cls)
        for key in columns:
            if key not in ("start_positions", "end_positions"):
                columns[key].append(encoded[key][window])
        columns["start_positions"].append(start)
        columns["end_positions"].append(end)
        doc_index.append(sample)
        offset_mapping.append(offsets)
        cls_index.append(cls)
    logger.info("%s: %d questions in %d windows of <= %d tokens, %d windows hold their answer", spec.name,
                len(rows), len(doc_index), max_length, n_with_answer)
    return Features(dataset=datasets.Dataset.from_dict(columns), n_docs=len(rows), doc_index=doc_index,
                    offset_mapping=offset_mapping, cls_index=cls_index)


def multiple_choice_features(rows: datasets.Dataset, spec: TaskSpec, tokenizer: Any, max_length: int,
                             split: str = "?") -> Features:
    """One (first, second) pair per choice, `run_swag.py` style: (question, choice), or with two text fields
    (context, "question choice"). Pairs longer than `max_length` are truncated longest-first (logged)."""
    firsts: list[str] = []
    seconds: list[str] = []
    labels: list[int] = []
    n_choices = None
    for index, row in enumerate(rows):
        choices, keys = row_choices(spec, row)
        if n_choices is not None and len(choices) != n_choices:
            raise DataError(f"{row_location(spec.name, split, index, row)}: {len(choices)} choices, but the rows "
                            f"before it have {n_choices}; every row needs the same number of choices")
        n_choices = len(choices)
        labels.append(choice_label(row[spec.label_field], choices, keys))
        firsts += [row[spec.text_fields[0]]] * n_choices
        seconds += [f"{row[spec.text_fields[1]]} {choice}" for choice in choices] if spec.is_pair else list(choices)
    full_lengths = [len(ids) for ids in tokenizer(firsts, seconds)["input_ids"]]
    encoded = tokenizer(firsts, seconds, truncation="longest_first", max_length=max_length)
    n_truncated = sum(length > max_length for length in full_lengths)
    if n_truncated:
        logger.warning("%s: %d of %d (question, choice) pairs truncated to %d tokens", spec.name, n_truncated,
                       len(full_lengths), max_length)
    n_choices = n_choices or 0
    keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded]
    columns: dict[str, list[Any]] = {
        key: [encoded[key][start:start + n_choices] for start in range(0, len(firsts), n_choices)] for key in keys
    }
    columns["labels"] = labels
    return Features(dataset=datasets.Dataset.from_dict(columns), n_docs=len(rows), doc_index=list(range(len(rows))))


@dataclass
class MultipleChoiceCollator:
    """Pads a list of rows of `num_choices` encoded pairs into (batch, num_choices, seq) tensors (`run_swag.py`).

    Every choice of every row is padded to the longest pair of the batch; `labels` (the correct choice) stay
    (batch,). Rows with different numbers of choices cannot share a batch and raise a ValueError.
    """

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [dict(row) for row in rows]
        labels = [row.pop("labels") for row in rows] if "labels" in rows[0] else None
        counts = sorted({len(row["input_ids"]) for row in rows})
        if len(counts) != 1:
            raise ValueError(f"multiple choice batch mixes rows with {counts} choices; every row needs the same number")
        n_choices = counts[0]
        flat = [{key: values[choice] for key, values in row.items()} for row in rows for choice in range(n_choices)]
        padded = self.tokenizer.pad(flat, padding=True, pad_to_multiple_of=self.pad_to_multiple_of,
                                    return_tensors="pt")
        batch = {key: value.view(len(rows), n_choices, -1) for key, value in padded.items()}
        if labels is not None:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch


# --------------------------------------------------------------------------------------------------------------
# Scoring


def postprocess_qa_predictions(
    contexts: Sequence[str],
    doc_index: Sequence[int],
    offset_mapping: Sequence[Sequence[tuple[int, int] | None]],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    cls_index: Sequence[int] | None = None,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """Answer text per question from window logits (`run_qa.py`'s `postprocess_qa_predictions`).

    For every window of a question, the `n_best_size` best start and end positions among its context tokens are
    paired; a pair is valid when end >= start and it spans at most `max_answer_length` tokens, and it scores
    start_logit + end_logit. The answer is the context text of the best valid pair over all windows ("" if none).
    With `version_2_with_negative`, the answer is "" when the lowest CLS score (start + end logit at the CLS
    position) over the windows beats the best span by more than `null_score_diff_threshold`.
    Logit rows may be longer than their window (the Trainer pads with -100); positions past the window are ignored.

    Returns (answers, n-best lists of {"text", "score", "start_logit", "end_logit", "offsets"}, best first).
    """
    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    windows_of: list[list[int]] = [[] for _ in contexts]
    for window, doc in enumerate(doc_index):
        windows_of[doc].append(window)
    answers, all_nbest = [], []
    for doc, context in enumerate(contexts):
        candidates: list[dict[str, Any]] = []
        null_score = math.inf
        for window in windows_of[doc]:
            offsets = offset_mapping[window]
            starts, ends = start_logits[window, :len(offsets)], end_logits[window, :len(offsets)]
            cls = cls_index[window] if cls_index is not None else 0
            null_score = min(null_score, starts[cls] + ends[cls])
            in_context = np.array([offset is not None for offset in offsets], dtype=bool)
            if not in_context.any():
                continue
            n_best = min(n_best_size, int(in_context.sum()))
            best_starts = np.argsort(-np.where(in_context, starts, -np.inf), kind="stable")[:n_best]
            best_ends = np.argsort(-np.where(in_context, ends, -np.inf), kind="stable")[:n_best]
            for start in best_starts:
                for end in best_ends:
                    if end < start or end - start + 1 > max_answer_length:
                        continue
                    char_start, char_end = offsets[start][0], offsets[end][1]
                    candidates.append({"text": context[char_start:char_end], "score": float(starts[start] + ends[end]),
                                       "start_logit": float(starts[start]), "end_logit": float(ends[end]),
                                       "offsets": (char_start, char_end)})
        candidates.sort(key=lambda candidate: candidate["score"], reverse=True)
        nbest = candidates[:n_best_size]
        answer = nbest[0]["text"] if nbest else ""
        if version_2_with_negative and (not nbest or null_score - nbest[0]["score"] > null_score_diff_threshold):
            answer = ""
        answers.append(answer)
        all_nbest.append(nbest)
    return answers, all_nbest



def _main_output(predictions: Any) -> np.ndarray:
    return np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)


def token_predictions_to_tags(logits: np.ndarray, label_ids: np.ndarray, features: Features,
                              id_to_label: Sequence[str], n_words: Sequence[int]) -> list[list[str]]:
    """Word-level tags from token logits: read at first-subword positions; words without one get 'O'."""
    predicted = logits.argmax(-1)
    sentences = []
    for row, (row_pred, row_labels) in enumerate(zip(predicted, label_ids)):
        tags = ["O"] * n_words[row]
        positions = np.flatnonzero(row_labels != -100)
        for word, position in zip(features.word_positions[row], positions):
            tags[word] = id_to_label[int(row_pred[position])]
        sentences.append(tags)
    return sentences


def score(spec: TaskSpec, metric_modules: Mapping[str, Any], outputs: np.ndarray, references: Any,
          threshold: float = 0.5) -> dict[str, float]:
    """Run the task's metric modules on document-level outputs (or word-level tags for token tasks)."""
    if spec.task_type == "single_label":
        inputs = {"predictions": outputs.argmax(-1).tolist(), "references": list(references)}
    elif spec.task_type == "multi_label":
        probabilities = 1.0 / (1.0 + np.exp(-outputs))
        inputs = {"predictions": probabilities.tolist(), "references": np.asarray(references, dtype=int).tolist()}
    elif spec.task_type == "regression":
        inputs = {"predictions": outputs[:, 0].tolist(), "references": list(references)}
    elif spec.task_type == "token":
        inputs = {"predictions": outputs, "references": references}
    elif spec.task_type == "qa":  # outputs: answer strings; references: gold answer texts per question
        inputs = {"predictions": list(outputs), "references": [list(answers) for answers in references]}
    elif spec.task_type == "multiple_choice":
        inputs = {"predictions": np.asarray(outputs).argmax(-1).tolist(), "references": list(references)}
    else:
        raise NotImplementedError(f"no scoring for task_type {spec.task_type!r}")
    result: dict[str, float] = {}
    for name, module in metric_modules.items():
        kwargs = {"threshold": threshold} if name == "multilabel" else {}
        result.update(module.compute(**inputs, **kwargs))
    return {key: float(value) for key, value in result.items()}


def _document_references(spec: TaskSpec, rows: datasets.Dataset, label_to_id: Mapping[str, int]) -> Any:
    if spec.task_type == "token":
        return [list(tags) for tags in rows[spec.label_field]]
    if spec.task_type == "qa":
        return [qa_answers(value)[0] for value in rows[spec.label_field]]
    if spec.task_type == "multiple_choice":
        return [choice_label(row[spec.label_field], *row_choices(spec, row)) for row in rows]
    return [_encode_label(spec, value, label_to_id) for value in rows[spec.label_field]]


def make_compute_metrics(spec: TaskSpec, metric_modules: Mapping[str, Any], features: Features, rows: datasets.Dataset,
                         label_list: Sequence[str], threshold: float, n_best_size: int = 20,
                         max_answer_length: int = 30) -> Callable[[Any], dict[str, float]]:
    """`Trainer` compute_metrics for one evaluation split, scored per document (pooled), per word, per question
    (qa: answers post-processed from all windows) or per row (multiple choice)."""
    label_to_id = {label: index for index, label in enumerate(label_list)}
    references = _document_references(spec, rows, label_to_id)
    n_words = [len(tokens) for tokens in rows[spec.tokens_field]] if spec.task_type == "token" else []
    contexts = list(rows[spec.text_fields[1]]) if spec.task_type == "qa" else []

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        if spec.task_type == "qa":
            start_logits, end_logits = eval_pred.predictions[:2]
            answers, _ = postprocess_qa_predictions(
                contexts, features.doc_index, features.offset_mapping, start_logits, end_logits,
                cls_index=features.cls_index, n_best_size=n_best_size,
                max_answer_length=int(spec.extra.get("max_answer_length", max_answer_length)),
                version_2_with_negative=bool(spec.extra.get("version_2_with_negative", False)),
                null_score_diff_threshold=float(spec.extra.get("null_score_diff_threshold", 0.0)),
            )
            return score(spec, metric_modules, answers, references)
        logits = _main_output(eval_pred.predictions)
        if spec.task_type == "multiple_choice":
            return score(spec, metric_modules, logits, references)
        if spec.task_type == "token":
            tags = token_predictions_to_tags(logits, np.asarray(eval_pred.label_ids), features, label_list, n_words)
            return score(spec, metric_modules, tags, references, threshold)
        pooled = pool_chunk_logits(logits, features.doc_index, features.n_docs)
        return score(spec, metric_modules, pooled, references, threshold)

    return compute_metrics


# --------------------------------------------------------------------------------------------------------------
# Training one seed


@dataclass
class SeedResult:
    seed: int
    metrics: dict[str, float]
    dev_metrics: dict[str, float]
    runtime_s: float
    train_steps: int
    trainable_params: int
    total_params: int


def _training_args(config: RunConfig, spec: TaskSpec, output_dir: Path, seed: int) -> TrainingArguments:
    strategy = "steps" if config.eval_steps else "epoch"
    greater_is_better = not spec.main_metric.startswith(("loss", "mse", "mae"))
    args: dict[str, Any] = {
        "output_dir": str(output_dir),
        "learning_rate": config.mode_learning_rate,
        "num_train_epochs": config.num_train_epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "per_device_eval_batch_size": config.per_device_eval_batch_size,
        "weight_decay": config.weight_decay,
        "eval_strategy": strategy,
        "save_strategy": strategy,
        "logging_strategy": strategy,
        "load_best_model_at_end": True,
        "metric_for_best_model": spec.main_metric,
        "greater_is_better": greater_is_better,
        "save_total_limit": 1,
        "save_only_model": True,
        "report_to": "none",
        "seed": seed,
        "data_seed": seed,
        "disable_tqdm": config.disable_tqdm,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }
    # transformers 5 reads a float warmup_steps in [0, 1) as a ratio and dropped warmup_ratio; 4.x has both.
    warmup_key = "warmup_ratio" if "warmup_ratio" in inspect.signature(TrainingArguments.__init__).parameters else (
        "warmup_steps")
    args[warmup_key] = config.warmup_ratio
    if config.eval_steps:
        args.update(eval_steps=config.eval_steps, save_steps=config.eval_steps, logging_steps=config.eval_steps)
    args.update(config.extra_training_args)
    return TrainingArguments(**args)


@dataclass
class PreparedTask:
    """A task's data turned into model inputs for one model/tokenizer."""

    spec: TaskSpec
    data: TaskData
    max_length: int
    features: dict[str, Features]


def prepare_task(spec: TaskSpec, data: TaskData, tokenizer: Any, model_config: Any, config: RunConfig) -> PreparedTask:
    max_length = resolve_max_length(spec.max_length, model_config, tokenizer, config.max_length)
    label_to_id = {label: index for index, label in enumerate(data.label_list)}
    features = {}
    for split in ("train", "dev", "test"):
        rows = data.splits[split]
        if spec.task_type == "token":
            features[split] = token_features(rows, spec, tokenizer, max_length, label_to_id)
        elif spec.task_type == "qa":
            features[split] = qa_features(rows, spec, tokenizer, max_length, config.chunk_stride, split)
        elif spec.task_type == "multiple_choice":
            features[split] = multiple_choice_features(rows, spec, tokenizer, max_length, split)
        else:
            features[split] = sequence_features(rows, spec, tokenizer, max_length, config.chunk_stride, label_to_id)
    return PreparedTask(spec=spec, data=data, max_length=max_length, features=features)


def _collator(spec: TaskSpec, tokenizer: Any) -> Any:
    if spec.task_type == "token":
        return DataCollatorForTokenClassification(tokenizer)
    if spec.task_type == "multiple_choice":
        return MultipleChoiceCollator(tokenizer)
    return DataCollatorWithPadding(tokenizer)  # qa: start/end positions are one number per window


def train_one_seed(model_source: str, prepared: PreparedTask, tokenizer: Any, config: RunConfig, seed: int,
                   work_dir: Path, metric_modules: Mapping[str, Any]) -> tuple[SeedResult, Trainer]:
    """Fine-tune a fresh model with `seed`, early-stopping on dev, and score the best model on test."""
    spec, data = prepared.spec, prepared.data
    started = time.perf_counter()
    transformers.set_seed(seed)
    model = apply_mode(load_task_model(model_source, spec, data.label_list), spec, config)
    trainer = Trainer(
        model=model,
        args=_training_args(config, spec, work_dir / f"seed{seed}", seed),
        train_dataset=prepared.features["train"].dataset,
        eval_dataset=prepared.features["dev"].dataset,
        data_collator=_collator(spec, tokenizer),
        processing_class=tokenizer,
        compute_metrics=make_compute_metrics(spec, metric_modules, prepared.features["dev"], data.splits["dev"],
                                             data.label_list, config.threshold, config.n_best_size,
                                             config.max_answer_length),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)],
    )
    train_output = trainer.train()
    dev_metrics = trainer.evaluate()
    test_features = prepared.features["test"]
    trainer.compute_metrics = None  # the dev scorer knows only dev's documents; test is scored below
    test_output = trainer.predict(test_features.dataset)
    test_metrics = make_compute_metrics(spec, metric_modules, test_features, data.splits["test"], data.label_list,
                                        config.threshold, config.n_best_size, config.max_answer_length)(test_output)
    result = SeedResult(
        seed=seed,
        metrics=test_metrics,
        dev_metrics={key.removeprefix("eval_"): float(value) for key, value in dev_metrics.items()
                     if isinstance(value, (int, float))},
        runtime_s=time.perf_counter() - started,
        train_steps=int(train_output.global_step),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()),
    )
    return result, trainer


# --------------------------------------------------------------------------------------------------------------
# Retrieval


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors where attention_mask is 1: (batch, seq, dim) -> (batch, dim)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@torch.inference_mode()
def embed_texts(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 64,
                desc: str = "embed") -> np.ndarray:
    """L2-normalised mean-pooled embeddings, batched by length for speed; returns (n, dim) in input order."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    vectors: list[torch.Tensor] = [None] * len(texts)  # type: ignore[list-item]
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", mininterval=2, leave=False):
        batch = [texts[index] for index in order[start:start + batch_size]]
        inputs = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        if "token_type_ids" in inputs and "token_type_ids" not in _forward_args(model):
            inputs.pop("token_type_ids")
        hidden = model(**inputs)[0]  # (batch, seq, dim)
        pooled = torch.nn.functional.normalize(mean_pool(hidden.float(), inputs["attention_mask"]), dim=-1)
        for offset, index in enumerate(order[start:start + batch_size]):
            vectors[index] = pooled[offset]
    return torch.stack(vectors).numpy() if vectors else np.zeros((0, 0))


def _forward_args(model: torch.nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def rank_documents(query_vectors: np.ndarray, doc_vectors: np.ndarray, doc_ids: Sequence[str], top_k: int) -> list:
    """Doc ids per query by cosine similarity (vectors are normalised), best first, `top_k` of them."""
    similarity = query_vectors @ doc_vectors.T  # (n_queries, n_docs)
    top_k = min(top_k, similarity.shape[1])
    top = np.argpartition(-similarity, top_k - 1, axis=1)[:, :top_k]
    ranked = []
    for row, candidates in enumerate(top):
        best_first = candidates[np.argsort(-similarity[row, candidates], kind="stable")]
        ranked.append([doc_ids[index] for index in best_first])
    return ranked


def subsample_corpus(corpus: datasets.Dataset, queries: datasets.Dataset, relevant_field: str, limit: int | None,
                     seed: int = 0) -> datasets.Dataset:
    """Keep every document relevant to a kept query, then fill up to `limit` with a fixed random sample."""
    if limit is None or len(corpus) <= limit:
        return corpus
    relevant = {doc for ids in queries[relevant_field] for doc in ids}
    doc_ids = list(corpus["doc_id"])
    keep = [index for index, doc in enumerate(doc_ids) if doc in relevant]
    others = [index for index, doc in enumerate(doc_ids) if doc not in relevant]
    rng = np.random.default_rng(seed)
    extra = max(0, limit - len(keep))
    keep += rng.choice(others, size=min(extra, len(others)), replace=False).tolist()
    return corpus.select(sorted(keep))


def run_retrieval(model_source: str, spec: TaskSpec, data: TaskData, config: RunConfig) -> dict[str, Any]:
    started = time.perf_counter()
    model_config = load_config(model_source)
    tokenizer = load_tokenizer(model_source)
    model = AutoModel.from_pretrained(model_source, trust_remote_code=True)
    max_length = resolve_max_length(spec.max_length, model_config, tokenizer, config.max_length)
    queries = data.splits["test"]
    corpus = subsample_corpus(data.splits["corpus"], queries, spec.label_field, config.max_corpus)
    batch_size = config.retrieval_batch_size
    doc_vectors = embed_texts(model, tokenizer, list(corpus["text"]), max_length, batch_size, "corpus")
    query_vectors = embed_texts(model, tokenizer, list(queries["text"]), max_length, batch_size, "queries")
    ranked = rank_documents(query_vectors, doc_vectors, list(corpus["doc_id"]), config.retrieval_top_k)
    metrics: dict[str, float] = {}
    for name in spec.metrics:
        metrics.update(load_metric(name).compute(predictions=ranked, references=list(queries[spec.label_field])))
    return {"metrics": metrics, "runtime_s": time.perf_counter() - started, "max_length": max_length,
            "sizes": {"queries": len(queries), "corpus": len(corpus)}}


# --------------------------------------------------------------------------------------------------------------
# Public entry points


def summarize(per_seed: Mapping[int, Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (0 for one seed) of every metric over seeds."""
    keys = sorted({key for metrics in per_seed.values() for key in metrics})
    mean, sd = {}, {}
    for key in keys:
        values = [metrics[key] for metrics in per_seed.values() if key in metrics]
        mean[key] = float(statistics.fmean(values))
        sd[key] = float(statistics.stdev(values)) if len(values) > 1 else 0.0
    return mean, sd


def results_path(out_dir: str | Path, model_source: str, task: str, mode: str) -> Path:
    """`<out>/<model_name>/<task>.json` for full fine-tuning, `<task>__<mode>.json` for probe/lora."""
    suffix = "" if mode == "full" else f"__{mode}"
    return Path(out_dir) / model_name(model_source) / f"{task}{suffix}.json"


def _versions() -> dict[str, str]:
    import peft

    return {"transformers": transformers.__version__, "torch": torch.__version__, "datasets": datasets.__version__,
            "peft": peft.__version__}


def run_task(model_source: str, task: str | TaskSpec, config: RunConfig, out_dir: str | Path | None = None,
             cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune (or, for retrieval, embed) `model_source` on `task` for every seed and return the results dict.

    With `out_dir`, the results are also written to `results_path(out_dir, model_source, task, mode)`.
    """
    spec = get_task(task) if isinstance(task, str) else task
    if spec.task_type not in RUNNABLE_TASK_TYPES:
        raise NotImplementedError(f"Task {spec.name!r}: the runner cannot run task_type {spec.task_type!r} yet; "
                                  f"runnable types: {RUNNABLE_TASK_TYPES}")
    started = time.perf_counter()
    data = load_task_data(spec, cache_dir=cache_dir, max_train=config.max_train, max_eval=config.max_eval)
    result: dict[str, Any] = {
        "model": model_name(model_source),
        "model_source": str(model_source),
        "task": spec.name,
        "task_type": spec.task_type,
        "description": spec.description,
        "main_metric": spec.main_metric,
        "mode": "embedding" if spec.task_type == "retrieval" else config.mode,
        "data": data.report.to_dict(),
        "config": dataclasses.asdict(config),
        "versions": _versions(),
    }
    if spec.task_type == "retrieval":
        retrieval = run_retrieval(model_source, spec, data, config)
        per_seed = {"-": retrieval["metrics"]}  # deterministic: no seeds
        result.update(seeds=[], per_seed=per_seed, max_length=retrieval["max_length"], sizes=retrieval["sizes"])
    else:
        model_config = load_config(model_source)
        tokenizer = load_tokenizer(model_source)
        prepared = prepare_task(spec, data, tokenizer, model_config, config)
        metric_modules = {name: load_metric(name) for name in spec.metrics}
        per_seed, seed_details = {}, {}
        work_root = Path(out_dir) / "_work" if out_dir else None
        if work_root:
            work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"eval-{spec.name}-", dir=work_root) as work_dir:
            for seed in config.seeds:
                seed_result, trainer = train_one_seed(model_source, prepared, tokenizer, config, seed, Path(work_dir),
                                                      metric_modules)
                per_seed[str(seed)] = seed_result.metrics
                seed_details[str(seed)] = {k: v for k, v in dataclasses.asdict(seed_result).items() if k != "metrics"}
                if config.save_models and out_dir:
                    target = results_path(out_dir, model_source, spec.name, config.mode).with_suffix("") / f"seed{seed}"
                    trainer.save_model(str(target))
                    tokenizer.save_pretrained(str(target))
                del trainer
        if work_root and not any(work_root.iterdir()):
            shutil.rmtree(work_root, ignore_errors=True)
        result.update(
            seeds=list(config.seeds),
            per_seed=per_seed,
            seed_details=seed_details,
            max_length=prepared.max_length,
            sizes={split: len(rows) for split, rows in data.splits.items()},
            n_windows={split: len(features.dataset) for split, features in prepared.features.items()},
            n_truncated_words={split: f.n_truncated_words for split, f in prepared.features.items()},
            labels=list(data.label_list),
        )
    mean, sd = summarize(per_seed)
    result.update(mean=mean, sd=sd, runtime_s=time.perf_counter() - started)
    main = spec.main_metric
    logger.info("%s on %s (%s): %s = %.4f ± %.4f", result["model"], spec.name, result["mode"], main,
                mean.get(main, math.nan), sd.get(main, math.nan))
    if out_dir:
        path = results_path(out_dir, model_source, spec.name, "full" if spec.task_type == "retrieval" else config.mode)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))
        logger.info("wrote %s", path)
    return result


def run_models(models: Sequence[str], tasks: Sequence[str], config: RunConfig, out_dir: str | Path,
               cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Run every task on every model, write each results JSON, and return all results."""
    specs = [get_task(task) for task in tasks]  # fail on a typo before any training
    for model_source in models:  # fail on an unloadable model before any training
        load_config(model_source)
    results = []
    for model_source in models:
        for spec in specs:
            results.append(run_task(model_source, spec, config, out_dir=out_dir, cache_dir=cache_dir))
    return results
