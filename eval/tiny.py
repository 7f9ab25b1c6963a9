"""Tiny random encoders with a real fast tokenizer, for tests, demos and timing the suite.

`make_tiny_model` trains a small WordPiece tokenizer on the given texts (or on a sample of the default suite),
builds a random BERT or ModernBERT of a few thousand parameters per layer and saves both with `save_pretrained`,
so the folder loads with `AutoTokenizer` / `AutoModelFor*` like any checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

ARCHITECTURES: dict[str, str] = {
    "bert": "transformers BertConfig (absolute positions, query/key/value projections)",
    "modernbert": "transformers ModernBertConfig (RoPE, Wqkv/Wo/Wi projections, local+global attention)",
}


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 2000, max_length: int = 512
                              ) -> PreTrainedTokenizerFast:
    """A lower-casing BERT-style WordPiece tokenizer ([CLS] text [SEP]) trained on `texts`."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_length,
    )


def tiny_config(arch: str, vocab_size: int, max_position_embeddings: int = 512, hidden_size: int = 32,
                num_layers: int = 2) -> transformers.PretrainedConfig:
    """A small config of `arch` (see `ARCHITECTURES`); token ids match `SPECIAL_TOKENS`."""
    common = {"vocab_size": vocab_size, "hidden_size": hidden_size, "num_hidden_layers": num_layers,
              "num_attention_heads": 4, "intermediate_size": 2 * hidden_size,
              "max_position_embeddings": max_position_embeddings, "pad_token_id": 0}
    if arch == "bert":
        return transformers.BertConfig(**common)
    if arch == "modernbert":
        return transformers.ModernBertConfig(**common, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3,
                                             local_attention=16, global_attn_every_n_layers=2)
    raise ValueError(f"Unknown tiny architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")


def suite_sample_texts(per_task: int = 2000) -> list[str]:
    """Texts from every default-suite dataset's train split (built on demand), to train a demo tokenizer."""
    from eval import suite

    texts: list[str] = []
    for name in suite.BUILDERS:
        paths = suite.build(name)
        split = "train" if "train" in paths else "corpus"
        with open(paths[split], encoding="utf-8") as handle:
            for line in islice(handle, per_task):
                row = json.loads(line)
                texts.append(" ".join(row["tokens"]) if "tokens" in row else row["text"])
    return texts


def make_tiny_model(out_dir: str | Path, arch: str = "bert", texts: Sequence[str] | None = None,
                    vocab_size: int = 2000, max_position_embeddings: int = 512, hidden_size: int = 32,
                    num_layers: int = 2, seed: int = 0) -> Path:
    """Save a random tiny `arch` masked-LM encoder and its tokenizer into `out_dir`; returns the folder."""
    out_dir = Path(out_dir)
    texts = list(texts) if texts is not None else suite_sample_texts()
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=vocab_size, max_length=max_position_embeddings)
    for index, token in enumerate(SPECIAL_TOKENS):  # the configs' special ids assume this order
        if tokenizer.convert_tokens_to_ids(token) != index:
            raise AssertionError(f"special token {token} got id {tokenizer.convert_tokens_to_ids(token)}, not {index}")
    transformers.set_seed(seed)
    config = tiny_config(arch, len(tokenizer), max_position_embeddings, hidden_size, num_layers)
    model = transformers.AutoModelForMaskedLM.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.info("Saved tiny %s (%d parameters, vocab %d) to %s", arch, model.num_parameters(), len(tokenizer), out_dir)
    return out_dir
