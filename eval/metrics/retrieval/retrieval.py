"""Ranking metrics with binary relevance: NDCG@k, MRR@k and Recall@k (local `evaluate` module).

For one query with ranked ids d_1..d_n and relevant set R:
    DCG@k   = sum_{i<=k, d_i in R} 1 / log2(i + 1)
    IDCG@k  = sum_{i<=min(k, |R|)} 1 / log2(i + 1)
    NDCG@k  = DCG@k / IDCG@k
    MRR@k   = 1 / (rank of the first relevant id) if that rank <= k, else 0
    Recall@k = |{d_1..d_k} & R| / |R|
Each is averaged over queries. Queries without relevant ids are an error, not a silent zero.
"""

import math

import datasets
import evaluate

_KWARGS = """
Args:
    predictions (list of list of str): ranked document ids per query, best first.
    references (list of list of str): relevant document ids per query.
    k_values (list of int): cut-offs for recall (default [1, 5, 10]); NDCG and MRR use `ndcg_k` (default 10).
    ndcg_k (int): cut-off for NDCG and MRR.
Returns:
    ndcg@<ndcg_k>, mrr@<ndcg_k>, recall@<k> for each k (float).
"""


def _dcg(hits):
    return sum(hit / math.log2(rank + 1) for rank, hit in enumerate(hits, start=1))


class Retrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="NDCG@k, MRR@k and Recall@k with binary relevance.",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, k_values=(1, 5, 10), ndcg_k=10):
        if not predictions:
            raise ValueError("retrieval: no queries to score")
        ndcg = mrr = 0.0
        recall = {k: 0.0 for k in k_values}
        for index, (ranked, relevant) in enumerate(zip(predictions, references)):
            relevant = set(relevant)
            if not relevant:
                raise ValueError(f"retrieval: query {index} has no relevant document ids")
            hits = [int(doc in relevant) for doc in ranked]
            ideal = _dcg([1] * min(ndcg_k, len(relevant)))
            ndcg += _dcg(hits[:ndcg_k]) / ideal
            first = next((rank for rank, hit in enumerate(hits[:ndcg_k], start=1) if hit), None)
            mrr += 1.0 / first if first else 0.0
            for k in k_values:
                recall[k] += sum(hits[:k]) / len(relevant)
        n = len(predictions)
        result = {f"ndcg@{ndcg_k}": ndcg / n, f"mrr@{ndcg_k}": mrr / n}
        result.update({f"recall@{k}": value / n for k, value in recall.items()})
        return result
