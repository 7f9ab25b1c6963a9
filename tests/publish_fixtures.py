"""Tiny synthetic fixtures for the publish tests (and anyone else who needs a small model folder).

- :func:`write_fake_model_folder` writes the file layout of a save_pretrained folder with tiny placeholder
  files: enough for the push guard, which checks names, structure and content, never the numbers.
- :func:`train_tiny_tokenizer` trains a WordLevel tokenizer on a few synthetic clinical-style sentences.
- :func:`build_tiny_model_folder` saves a tiny random Clinical ModernBERT (any head) plus that tokenizer.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Synthetic sentences in the style of clinical text; no real notes.
TINY_CORPUS = [
    "patient presents with chest pain and shortness of breath",
    "no fever or chills reported by the patient today",
    "history of hypertension and type two diabetes",
    "ct scan of the chest shows no acute findings",
    "discharged home in stable condition with follow up",
    "the patient denies nausea vomiting or abdominal pain",
    "blood pressure was elevated on admission",
    "started on aspirin and metoprolol for the heart",
]

FAKE_CONFIG = {
    "model_type": "clinical_modernbert",
    "architectures": ["ClinicalModernBertForMaskedLM"],
    "auto_map": {
        "AutoConfig": "configuration_clinical_modernbert.ClinicalModernBertConfig",
        "AutoModel": "modeling_clinical_modernbert.ClinicalModernBertModel",
        "AutoModelForMaskedLM": "modeling_clinical_modernbert.ClinicalModernBertForMaskedLM",
    },
    "hidden_size": 32,
}

# File name -> exact bytes of the fake folder, so tests know every size by hand.
FAKE_FILES: dict[str, bytes] = {
    "config.json": json.dumps(FAKE_CONFIG).encode(),
    "model.safetensors": struct.pack("<Q", 2) + b"{}",  # a valid safetensors file holding no tensors
    "configuration_clinical_modernbert.py": b"class ClinicalModernBertConfig: ...\n",
    "modeling_clinical_modernbert.py": b"from .configuration_clinical_modernbert import ClinicalModernBertConfig\n",
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer_config.json": b'{"tokenizer_class": "PreTrainedTokenizerFast"}',
    "special_tokens_map.json": b'{"mask_token": "[MASK]"}',
    "README.md": b"# Clinical ModernBERT\n\nA long-context clinical encoder.\n",
}


def write_fake_model_folder(folder: Path, files: dict[str, bytes] | None = None) -> Path:
    """Write :data:`FAKE_FILES` (or ``files``) into ``folder``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (FAKE_FILES if files is None else files).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return folder


def train_tiny_tokenizer(corpus: list[str] | None = None):
    """A WordLevel ``PreTrainedTokenizerFast`` over ``corpus`` with [CLS]/[SEP] post-processing."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(corpus or TINY_CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_max_length=512,
    )


TINY_MODEL_CARD = "# Tiny Clinical ModernBERT\n\nRandom weights, for tests only.\n"
TINY_DIMS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
             "max_position_embeddings": 512}
HEAD_CLASSES = {
    "base": "ClinicalModernBertModel",
    "masked-lm": "ClinicalModernBertForMaskedLM",
    "sequence-classification": "ClinicalModernBertForSequenceClassification",
    "token-classification": "ClinicalModernBertForTokenClassification",
}


def tiny_config(tokenizer, **overrides):
    """A tiny ``ClinicalModernBertConfig`` whose vocabulary and special ids are the tokenizer's."""
    from configuration_clinical_modernbert import ClinicalModernBertConfig

    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "mask_token_id": tokenizer.mask_token_id,
    }
    return ClinicalModernBertConfig(**{**TINY_DIMS, **special, "vocab_size": len(tokenizer), **overrides})


def build_tiny_model_folder(folder: Path, head: str = "masked-lm", seed: int = 0, **config_overrides) -> Path:
    """Save a tiny random model with ``head`` and the tiny tokenizer into ``folder``; returns ``folder``.

    Our model registers itself for the auto classes, so the folder carries its remote code and the full
    auto_map, exactly as a training run would publish it.
    """
    import torch

    import modeling_clinical_modernbert

    tokenizer = train_tiny_tokenizer()
    config = tiny_config(tokenizer, **config_overrides)
    torch.manual_seed(seed)
    model = getattr(modeling_clinical_modernbert, HEAD_CLASSES[head])(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(TINY_MODEL_CARD, encoding="utf-8")
    return folder
