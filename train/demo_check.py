"""Does the trained model know medicine better than word frequencies? A fill-mask check on held-out ICD-10-CM.

Each held-out ICD-10-CM description (from the validation split, so never trained on) gets one word masked, e.g.
``ICD-10-CM code S72.91XA: Fracture of [MASK] femur, initial encounter`` (the code header stays, as in
training). Only words the tokenizer keeps as one token (``" word"`` -> one id)
are masked, since ``fill-mask`` predicts one token; masked words have >= 3 letters and follow a space.

Both contestants guess 5 words from that same candidate space, and a guess counts when it equals the masked word
(ignoring case):

* the model: its 5 best ``fill-mask`` predictions that are words (>= 3 letters), read from its top 50, so
  punctuation or word pieces cannot use up its 5 guesses; its plain top-5 is reported too (``model_raw_top5``);
* the unigram baseline: always the 5 most frequent such words of the training corpus; and a stronger in-domain
  unigram, the 5 most frequent words of the training split's ICD-10-CM descriptions (both are reported).

The model runs through the public ``pipeline("fill-mask", trust_remote_code=True)`` on the saved folder, so the check
also proves that the folder loads.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from train.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

_WORD = re.compile(r"(?<= )[A-Za-z]{3,}(?![A-Za-z])")
_GUESS = re.compile(r"[A-Za-z]{3,}")
_CANDIDATES = 50  # fill-mask predictions read per example to find the 5 best word guesses
_ICD10CM_HEADER = re.compile(r"^ICD-10-CM code [^:]+:\s*(.+)$")


@dataclass
class DemoCheckResult:
    n_examples: int
    model_top5_accuracy: float  # top-5 among predicted words (the baseline's candidate space)
    model_raw_top5_accuracy: float  # plain top-5 of fill-mask, punctuation and word pieces included
    baseline_top5_accuracy: float
    baseline_words: list[str]
    domain_baseline_top5_accuracy: float = 0.0  # unigram of the training ICD-10-CM descriptions (stronger)
    domain_baseline_words: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few, for the model card / log

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def icd10cm_descriptions(split: datasets.Dataset, source: str = "icd10cm") -> list[str]:
    """The first lines (``ICD-10-CM code X: description``) of ``source`` documents, as the model saw such lines."""
    descriptions = []
    for text, doc_source in zip(split["text"], split["source"]):
        if doc_source != source:
            continue
        line = text.split("\n", 1)[0].strip()
        if _ICD10CM_HEADER.match(line):
            descriptions.append(line)
    return descriptions


def is_single_token(tokenizer: PreTrainedTokenizerBase, word: str) -> bool:
    return len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1


def unigram_top_words(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, k: int = 5) -> list[str]:
    """The ``k`` most frequent maskable words (lower-cased) of ``texts``; ties broken alphabetically."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(match.group(0).lower() for match in _WORD.finditer(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    top: list[str] = []
    for word, _ in ranked:
        if is_single_token(tokenizer, word):
            top.append(word)
            if len(top) == k:
                break
    return top


def make_masked_examples(
    descriptions: list[str], tokenizer: PreTrainedTokenizerBase, n_examples: int, seed: int = 0
) -> list[tuple[str, str]]:
    """Up to ``n_examples`` ``(masked text, masked word)`` pairs, one random maskable word per description."""
    rng = random.Random(seed)
    order = list(range(len(descriptions)))
    rng.shuffle(order)
    examples = []
    for index in order:
        text = descriptions[index]
        description_start = text.index(":") + 1  # mask a word of the description, never of the code header
        candidates = [m for m in _WORD.finditer(text, description_start) if is_single_token(tokenizer, m.group(0))]
        if not candidates:
            continue
        match = rng.choice(candidates)
        examples.append((text[: match.start()] + tokenizer.mask_token + text[match.end():], match.group(0)))
        if len(examples) == n_examples:
            break
    return examples


def run_demo_check(
    model_dir: str | Path,
    held_out: datasets.Dataset,
    train: datasets.Dataset,
    n_examples: int = 300,
    seed: int = 0,
    max_train_texts: int = 200_000,
) -> DemoCheckResult:
    """Top-5 fill-mask accuracy of the model in ``model_dir`` vs the unigram baseline; logs both numbers."""
    from transformers import pipeline

    tokenizer = load_tokenizer(str(model_dir))
    descriptions = icd10cm_descriptions(held_out)
    if not descriptions:
        raise ValueError("the held-out split has no ICD-10-CM documents (source 'icd10cm'): nothing to check")
    examples = make_masked_examples(descriptions, tokenizer, n_examples, seed)
    n_train = min(len(train), max_train_texts)
    train_texts = train.select(range(n_train))
    baseline_words = unigram_top_words(train_texts["text"], tokenizer)  # the corpus unigram
    # A stronger, in-domain unigram: the most frequent words of the training ICD-10-CM descriptions themselves.
    train_descriptions = [line.split(":", 1)[1] for line in icd10cm_descriptions(train_texts)]
    domain_words = unigram_top_words(train_descriptions, tokenizer) if train_descriptions else baseline_words
    fill = pipeline("fill-mask", model=str(model_dir), tokenizer=tokenizer, trust_remote_code=True)
    predictions = fill([text for text, _ in examples], top_k=_CANDIDATES, batch_size=32)
    model_hits = raw_hits = baseline_hits = domain_hits = 0
    shown = []
    for (text, word), candidates in zip(examples, predictions):
        predicted = [candidate["token_str"].strip().lower() for candidate in candidates]
        guesses = [token for token in predicted if _GUESS.fullmatch(token)][:5]
        model_hits += word.lower() in guesses
        raw_hits += word.lower() in predicted[:5]
        baseline_hits += word.lower() in baseline_words
        domain_hits += word.lower() in domain_words
        if len(shown) < 5:
            shown.append({"text": text, "answer": word, "top5_words": guesses, "top5": predicted[:5]})
    n = len(examples)
    result = DemoCheckResult(
        n_examples=n,
        model_top5_accuracy=model_hits / n if n else 0.0,
        model_raw_top5_accuracy=raw_hits / n if n else 0.0,
        baseline_top5_accuracy=baseline_hits / n if n else 0.0,
        baseline_words=baseline_words,
        domain_baseline_top5_accuracy=domain_hits / n if n else 0.0,
        domain_baseline_words=domain_words,
        examples=shown,
    )
    logger.info(
        "fill-mask check on %d held-out ICD-10-CM descriptions: model top-5 words %.3f (raw top-5 %.3f), "
        "corpus unigram baseline %.3f (%s), in-domain unigram baseline %.3f (%s)",
        n, result.model_top5_accuracy, result.model_raw_top5_accuracy, result.baseline_top5_accuracy,
        ", ".join(baseline_words), result.domain_baseline_top5_accuracy, ", ".join(domain_words),
    )
    return result
