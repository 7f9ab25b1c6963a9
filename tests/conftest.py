"""Shared fixtures. Every test runs offline: nothing may reach the Hugging Face Hub."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

from configuration_clinical_modernbert import ClinicalModernBertConfig  # noqa: E402

SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]  # ids 0..4, matching the "tiny" preset


def tiny_config(**overrides) -> ClinicalModernBertConfig:
    """3 layers (global, local, local), window +-8, 4 heads of 8: every structural feature, CPU-fast."""
    return ClinicalModernBertConfig.from_preset("tiny", **overrides)


def native_modernbert(model: torch.nn.Module, attn_implementation: str = "eager") -> torch.nn.Module:
    """transformers' own ModernBERT class matching `model`, holding identical weights: the numerical oracle."""
    import transformers

    name = type(model).__name__.replace("ClinicalModernBert", "ModernBert")
    config = transformers.ModernBertConfig(**model.config.to_modernbert_dict())
    config._attn_implementation = attn_implementation
    native = getattr(transformers, name)(config)
    native.load_state_dict(model.state_dict(), strict=True)
    return native.eval()


def make_tiny_tokenizer(path: Path, vocab_size: int = 128):
    """A WordLevel tokenizer over a small medical vocabulary with ModernBERT's special tokens and conventions."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = (
        "the patient has type diabetes mellitus without complications with acute chronic kidney disease heart "
        "failure pain of and in a an to is was for on left right lung lobe pneumonia fracture code icd chapter "
        "hypertension essential primary infection fever cough chest x ray normal findings history blood pressure"
    ).split()
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    assert len(vocab) <= vocab_size
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        unk_token="[UNK]", model_max_length=512,
    )
    fast.save_pretrained(path)
    return fast


@pytest.fixture
def tiny_tokenizer(tmp_path):
    return make_tiny_tokenizer(tmp_path / "tokenizer")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the device: see docs/gpu.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
