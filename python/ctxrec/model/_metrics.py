"""Small metric helpers used by ContextFM for validation / early stopping.

Ranking metrics follow the Microsoft Recommenders definitions (binary relevance, averaged
over queries that have at least one relevant item):

* precision@k = hits / k; recall@k = hits / |relevant|;
* ndcg@k = DCG / IDCG with gains 1 / log2(rank + 1), IDCG over min(|relevant|, k) items;
* map = sum over hits of (hits so far / rank) / |relevant| (Recommenders' ``map``, the
  column published as MAP); map@k divides by min(|relevant|, k) instead.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["ranking_metrics", "auc_score", "logloss_score"]


@njit(parallel=True, cache=True)
def _rank_kernel(ids, rel_ptr, rel_idx, k, out):
    b = ids.shape[0]
    for q in prange(b):
        lo, hi = rel_ptr[q], rel_ptr[q + 1]
        nrel = hi - lo
        if nrel == 0:
            out[q, 0] = -1.0
            continue
        hits = 0
        dcg = 0.0
        ap = 0.0
        for r in range(min(k, ids.shape[1])):
            it = ids[q, r]
            if it < 0:
                continue
            found = False
            for p in range(lo, hi):
                if rel_idx[p] == it:
                    found = True
                    break
            if found:
                hits += 1
                dcg += 1.0 / np.log2(r + 2.0)
                ap += hits / (r + 1.0)
        idcg = 0.0
        for r in range(min(nrel, k)):
            idcg += 1.0 / np.log2(r + 2.0)
        out[q, 0] = 1.0
        out[q, 1] = hits / k
        out[q, 2] = hits / nrel
        out[q, 3] = dcg / idcg
        out[q, 4] = ap / nrel
        out[q, 5] = ap / min(nrel, k)
        out[q, 6] = 1.0 if hits > 0 else 0.0


def ranking_metrics(ids: np.ndarray, rel_ptr: np.ndarray, rel_idx: np.ndarray, k: int) -> dict[str, float]:
    """Mean precision / recall / ndcg / map / map_at_k / hit rate at ``k``.

    ids: int64 [b, >=k] ranked item ids per query (-1 = padding); relevant items of query q
    are ``rel_idx[rel_ptr[q]:rel_ptr[q+1]]``. Queries without relevant items are skipped.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    out = np.zeros((ids.shape[0], 7), np.float64)
    _rank_kernel(ids, np.asarray(rel_ptr, np.int64), np.asarray(rel_idx, np.int64), int(k), out)
    m = out[out[:, 0] > 0]
    if len(m) == 0:
        return {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0, "map_at_k": 0.0, "hr": 0.0, "n_queries": 0}
    return {"precision": float(m[:, 1].mean()), "recall": float(m[:, 2].mean()), "ndcg": float(m[:, 3].mean()),
            "map": float(m[:, 4].mean()), "map_at_k": float(m[:, 5].mean()), "hr": float(m[:, 6].mean()),
            "n_queries": int(len(m))}


def auc_score(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC of scores ``s`` for 0/1 labels ``y`` (ties get half credit)."""
    y = np.asarray(y) > 0
    s = np.asarray(s, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auc: needs both classes, got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ranks = np.empty(len(s), np.float64)
    # average ranks over ties
    _, first, counts = np.unique(ss, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss_score(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``p`` for 0/1 labels ``y``."""
    y = np.asarray(y, np.float64)
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
