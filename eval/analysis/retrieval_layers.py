"""icd10cm_synonym_retrieval with embeddings from every layer, with and without mean-centring, plus TF-IDF.

The suite scores retrieval with the mean-pooled last layer and cosine similarity (`eval.runner.run_retrieval`).
This script scores the same queries and corpus (same subsample) with:

- each layer's mean-pooled states (`emb`, `L1`.., `last`; see `probe_layers` for the definitions);
- the same vectors centred (the corpus mean vector subtracted before normalising): a one-line remedy for
  anisotropy, i.e. for every vector sharing one dominant direction;
- TF-IDF cosine over words and over the model's BPE tokens: how far pure lexical overlap gets.

    python -m eval.analysis.retrieval_layers --model outputs/demo --model outputs/demo-random-init
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from eval import runner
from eval.data import load_task_data
from eval.metrics import load_metric
from eval.tasks import get_task


@torch.inference_mode()
def embed_layers(model_source: str, texts: list[str], max_length: int, batch_size: int = 128) -> dict[str, np.ndarray]:
    from transformers import AutoModel

    tokenizer = runner.load_tokenizer(model_source)
    encoder = AutoModel.from_pretrained(model_source, trust_remote_code=True).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        inputs = tokenizer([texts[i] for i in chunk], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")
        inputs.pop("token_type_ids", None)
        result = encoder(**inputs, output_hidden_states=True, return_dict=True)
        hidden = result.hidden_states
        sets = {"emb": hidden[0], **{f"L{i}": encoder.final_norm(hidden[i]) for i in range(1, len(hidden) - 1)},
                "last": result.last_hidden_state}
        for name, value in sets.items():
            pooled = runner.mean_pool(value.float(), inputs["attention_mask"]).numpy()
            target = out.setdefault(name, np.zeros((len(texts), pooled.shape[1]), dtype=np.float32))
            target[chunk] = pooled
    return out


def ndcg(metric, query_vectors, doc_vectors, doc_ids, relevant, top_k=100) -> float:
    def norm(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    ranked = runner.rank_documents(norm(query_vectors), norm(doc_vectors), doc_ids, top_k)
    return metric.compute(predictions=ranked, references=relevant)["ndcg@10"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--max-eval", type=int, default=300)
    parser.add_argument("--max-corpus", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    spec = get_task("icd10cm_synonym_retrieval")
    data = load_task_data(spec, max_eval=args.max_eval)
    queries = data.splits["test"]
    corpus = runner.subsample_corpus(data.splits["corpus"], queries, spec.label_field, args.max_corpus)
    q_texts, d_texts = list(queries["text"]), list(corpus["text"])
    doc_ids, relevant = list(corpus["doc_id"]), list(queries[spec.label_field])
    metric = load_metric("retrieval")
    results: dict = {}

    from sklearn.feature_extraction.text import TfidfVectorizer

    words = TfidfVectorizer(sublinear_tf=True).fit(d_texts + q_texts)
    results["tfidf_words"] = ndcg(metric, words.transform(q_texts).toarray(), words.transform(d_texts).toarray(),
                                  doc_ids, relevant)
    tokenizer = runner.load_tokenizer(args.model[0])

    def bpe(texts):
        return [" ".join(map(str, ids)) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    bpe_vec = TfidfVectorizer(token_pattern=r"\S+", sublinear_tf=True).fit(bpe(d_texts + q_texts))
    results["tfidf_bpe"] = ndcg(metric, bpe_vec.transform(bpe(q_texts)).toarray(),
                                bpe_vec.transform(bpe(d_texts)).toarray(), doc_ids, relevant)
    print(json.dumps(results))
    for model_source in args.model:
        config = runner.load_config(model_source)
        max_length = runner.resolve_max_length(spec.max_length, config, tokenizer)
        q, d = embed_layers(model_source, q_texts, max_length), embed_layers(model_source, d_texts, max_length)
        model_results = results.setdefault(runner.model_name(model_source), {})
        for name in q:
            mean = d[name].mean(axis=0, keepdims=True)
            model_results[name] = {"raw": ndcg(metric, q[name], d[name], doc_ids, relevant),
                                   "centred": ndcg(metric, q[name] - mean, d[name] - mean, doc_ids, relevant)}
            print(f"{runner.model_name(model_source):28s} {name:5s} ndcg@10 raw {model_results[name]['raw']:.3f} "
                  f"centred {model_results[name]['centred']:.3f}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
