"""Frozen-feature probes of an encoder, layer by layer, plus bag-of-words baselines (no fine-tuning).

For each sequence task and model, every document is cut into the same windows the runner uses
(`eval.runner.sequence_features`), run through the frozen encoder once, and mean-pooled (attention-mask aware,
windows averaged per document). Feature sets:

- `emb`: the embedding output (token embeddings + LayerNorm), i.e. a bag of word vectors;
- `L1`..`L{n-1}`: the residual stream after each layer but the last, passed through the model's `final_norm`
  (the encoder's own output normalisation, so every layer is read the same way);
- `last`: the encoder output (`last_hidden_state` = final_norm(residual after the last layer)): what the task head
  sees; `last_raw` is the same residual without final_norm;
- `head`: the model's prediction head (dense + GELU + LayerNorm) applied to the mean-pooled `last`, exactly the
  vector that the sequence-classification head's linear layer reads.

Plus two model-free baselines on the same rows: `tfidf` (word 1-2-gram TF-IDF) and `bpe_bow` (TF-IDF over the
model's BPE token ids).

Each feature set is standardised and fed to a logistic regression (one-vs-rest for multi-label); C is picked on dev
from a small grid, test is scored once with the dev-best C. Also reports each feature set's anisotropy (mean pairwise
cosine of the pooled vectors, test rows): close to 1 means every document looks alike to a cosine.

    python -m eval.analysis.probe_layers --model outputs/demo --model outputs/demo-random-init \
        --tasks icd10cm_chapter,icd10cm_ccsr,radiology_findings --out outputs/analysis/probe.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from eval import runner
from eval.data import load_task_data
from eval.metrics import load_metric
from eval.tasks import get_task

logger = logging.getLogger(__name__)

C_GRID = (0.01, 0.1, 1.0, 10.0)


@torch.inference_mode()
def layer_features(model_source: str, spec, rows, config: runner.RunConfig) -> dict[str, np.ndarray]:
    """{feature set: (n_docs, dim)} of mean-pooled frozen states, windows averaged per document."""
    from transformers import AutoModelForMaskedLM

    tokenizer = runner.load_tokenizer(model_source)
    model_config = runner.load_config(model_source)
    mlm = AutoModelForMaskedLM.from_pretrained(model_source, trust_remote_code=True).eval()
    encoder, head = mlm.model, mlm.head
    max_length = runner.resolve_max_length(spec.max_length, model_config, tokenizer, config.max_length)
    # labels are not needed here: every label maps to 0
    features = runner.sequence_features(rows, spec, tokenizer, max_length, config.chunk_stride, _IdentityLabels())
    ids = features.dataset["input_ids"]
    sums: dict[str, np.ndarray] = {}
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batch = 64
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        width = max(len(ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            input_ids[row, :len(ids[index])] = torch.tensor(ids[index])
            mask[row, :len(ids[index])] = 1
        out = encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states  # embeddings, then the residual after each layer (padded)
        sets = {"emb": hidden[0]}
        for layer in range(1, len(hidden) - 1):
            sets[f"L{layer}"] = encoder.final_norm(hidden[layer])
        sets["last_raw"] = hidden[-1]
        sets["last"] = out.last_hidden_state
        pooled = {name: runner.mean_pool(value.float(), mask) for name, value in sets.items()}
        pooled["head"] = head(pooled["last"])
        for name, value in pooled.items():
            target = sums.setdefault(name, np.zeros((features.n_docs, value.shape[1])))
            for row, index in enumerate(chunk):
                target[features.doc_index[index]] += value[row].numpy()
    counts = np.bincount(features.doc_index, minlength=features.n_docs)[:, None]
    return {name: value / counts for name, value in sums.items()}


class _IdentityLabels(dict):
    """A label mapping that maps every label to 0 (features are label-free here)."""

    def __getitem__(self, key):  # noqa: D105
        return 0

    def __iter__(self):
        return iter(())


def anisotropy(vectors: np.ndarray) -> float:
    """Mean pairwise cosine similarity of the rows (diagonal excluded)."""
    normed = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = normed @ normed.T
    n = len(vectors)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def _targets(spec, rows, label_list):
    if spec.task_type == "single_label":
        index = {label: i for i, label in enumerate(label_list)}
        return np.array([index[str(v)] for v in rows[spec.label_field]])
    return np.array([[1 if label in set(map(str, v)) else 0 for label in label_list] for v in rows[spec.label_field]])


def fit_probe(spec, x: dict[str, np.ndarray], y: dict[str, np.ndarray], metric_modules) -> dict:
    """Logistic regression on standardised features; C chosen on dev; returns dev/test main metric."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x["train"])
    xs = {split: scaler.transform(value) for split, value in x.items()}
    best = None
    for c in C_GRID:
        base = LogisticRegression(C=c, max_iter=2000)
        if spec.task_type == "multi_label":
            keep = y["train"].std(axis=0) > 0
            clf = OneVsRestClassifier(base).fit(xs["train"], y["train"][:, keep])
        else:
            keep = None
            clf = base.fit(xs["train"], y["train"])
        scores = {}
        for split in ("dev", "test"):
            scores[split] = _score(spec, clf, xs[split], y[split], keep, metric_modules)
        if best is None or scores["dev"] > best["dev"]:
            best = {"C": c, **scores}
    return best


def _score(spec, clf, x, y, keep, metric_modules) -> float:
    if spec.task_type == "single_label":
        logits = np.full((len(x), int(max(y.max(), clf.classes_.max())) + 1), -1e9)
        logits[:, clf.classes_] = clf.decision_function(x)
        return runner.score(spec, metric_modules, logits, y.tolist())[spec.main_metric]
    logits = np.full(y.shape, -1e9)
    logits[:, keep] = clf.decision_function(x)
    return runner.score(spec, metric_modules, logits, y.tolist())[spec.main_metric]


def bow_features(spec, splits, tokenizer=None) -> dict[str, dict[str, np.ndarray]]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = {split: list(rows[spec.text_fields[0]]) for split, rows in splits.items()}
    out = {}
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True).fit(texts["train"])
    out["tfidf"] = {split: words.transform(value).toarray() for split, value in texts.items()}
    if tokenizer is not None:
        def ids(batch):
            return [" ".join(map(str, row)) for row in tokenizer(batch, add_special_tokens=False)["input_ids"]]
        bpe = TfidfVectorizer(token_pattern=r"\S+", sublinear_tf=True).fit(ids(texts["train"]))
        out["bpe_bow"] = {split: bpe.transform(ids(value)).toarray() for split, value in texts.items()}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--tasks", default="icd10cm_chapter,icd10cm_ccsr,radiology_findings")
    parser.add_argument("--max-train", type=int, default=1000)
    parser.add_argument("--max-eval", type=int, default=300)
    parser.add_argument("--no-bow", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = runner.load_run_config(max_train=args.max_train, max_eval=args.max_eval)
    results: dict = {}
    for task in args.tasks.split(","):
        spec = get_task(task)
        data = load_task_data(spec, max_train=args.max_train, max_eval=args.max_eval)
        metric_modules = {name: load_metric(name) for name in spec.metrics}
        y = {split: _targets(spec, data.splits[split], data.label_list) for split in ("train", "dev", "test")}
        splits = {split: data.splits[split] for split in ("train", "dev", "test")}
        task_results = results.setdefault(task, {})
        if not args.no_bow:
            tokenizer = runner.load_tokenizer(args.model[0])
            for name, x in bow_features(spec, splits, tokenizer).items():
                task_results[name] = fit_probe(spec, x, y, metric_modules)
                print(f"{task:20s} {'(baseline)':28s} {name:9s} dev {task_results[name]['dev']:.3f} "
                      f"test {task_results[name]['test']:.3f}", flush=True)
        for model_source in args.model:
            started = time.perf_counter()
            x_by_split = {split: layer_features(model_source, spec, rows, config) for split, rows in splits.items()}
            model_results = task_results.setdefault(runner.model_name(model_source), {})
            for name in x_by_split["train"]:
                x = {split: x_by_split[split][name] for split in x_by_split}
                probe = fit_probe(spec, x, y, metric_modules)
                probe["anisotropy"] = anisotropy(x["test"])
                model_results[name] = probe
                print(f"{task:20s} {runner.model_name(model_source):28s} {name:9s} dev {probe['dev']:.3f} "
                      f"test {probe['test']:.3f}  C={probe['C']:<5} cos {probe['anisotropy']:.3f}", flush=True)
            logger.warning("%s on %s: %.0f s", model_source, task, time.perf_counter() - started)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
