"""Ranking and pointwise metrics: one implementation, used by early stopping and by reports.

Ranking metrics (binary relevance, averaged over queries with at least one relevant item;
ranks r are 1-based, K the cut-off):

* HR@K = 1[any hit in the top K]; Precision@K = hits / K; Recall@K = hits / n_rel;
* NDCG@K = sum of hit_r / log2(r + 1) over the top K, divided by the same sum for
  min(n_rel, K) hits at the top;
* MAP@K: AP@K = sum over r <= K of hit_r * Precision@r, divided by min(n_rel, K);
  MAP_nrel@K divides the same sum by n_rel (Microsoft Recommenders' ``map`` of its top-K
  lists, the MAP column its benchmark tables publish);
* coverage@K = distinct items in any top K / catalog size.

:class:`ctxrec.model.ContextFM` early-stops on these (``eval_metric="map@10"`` is the MAP@10
that :func:`ctxrec.evaluate.evaluate_ranking` reports) and :mod:`ctxrec.evaluate` builds its
reports from them.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["RANKING_METRICS", "TOPK_METRICS", "ranking_metrics_from_topk", "per_query_metrics", "auc", "user_auc",
           "logloss", "rmse", "mae"]

#: What a top-K list alone gives, per query (:func:`per_query_metrics`).
TOPK_METRICS = ("hr", "precision", "recall", "ndcg", "map", "map_nrel")
#: Every ranking metric of ctxrec.evaluate.evaluate_ranking: the top-K ones, coverage (of the catalog, from
#: the lists) and mrr / auc (they need the full-catalog scores, not a top-K list).
RANKING_METRICS = TOPK_METRICS + ("mrr", "auc", "coverage")


def _check_names(metrics: Sequence[str], allowed: tuple[str, ...]) -> None:
    bad = [m for m in metrics if m not in allowed]
    if bad:
        full = [m for m in bad if m in RANKING_METRICS]
        why = f" ({full} need the full-catalog scores: ctxrec.evaluate.evaluate_ranking)" if full else ""
        raise ValueError(f"metrics={list(metrics)!r}: {bad} not computed from top-K lists{why}; "
                         f"expected a subset of {list(allowed)}")


def csr_contains(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, items: np.ndarray,
                  n_items: int) -> np.ndarray:
    """Whether ``items[j]`` is in CSR row ``rows[j]``, for each j.

    Parameters
    ----------
    indptr : int array [n_rows + 1]
    indices : int64 array [nnz]
        The CSR rows (any order within a row).
    rows, items : int array [m]
        The (row, item) pairs to look up.
    n_items : int
        An upper bound (exclusive) of every item index.

    Returns
    -------
    bool array [m]
    """
    if len(indices) == 0:
        return np.zeros(len(items), dtype=bool)
    row_of = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    keys = np.sort(row_of * n_items + indices)  # rows may list their items in any order
    q = rows.astype(np.int64) * n_items + items
    pos = np.searchsorted(keys, q).clip(max=len(keys) - 1)
    return keys[pos] == q


def ranking_metrics_from_topk(topk: np.ndarray, rel_indptr: np.ndarray, rel_items: np.ndarray, ks: Sequence[int],
                              *, n_candidates: int, metrics: Sequence[str] = TOPK_METRICS + ("coverage",)
                              ) -> dict[str, float]:
    """HR/Precision/Recall/NDCG/MAP/coverage at each K from ranked lists.

    Definitions (averaged over queries): HR@K = 1[any hit in top K]; Precision@K =
    hits/K; Recall@K = hits/n_rel; NDCG@K = Σ hit_r/log2(r+1) / Σ_{r≤min(n_rel,K)} 1/log2(r+1)
    (r 1-based); MAP@K: AP@K = Σ_{r≤K} hit_r·Precision@r / min(n_rel, K); MAP_nrel@K: the same sum
    / n_rel — Microsoft Recommenders' ``map`` / ``map_at_k`` of its top-K lists, the MAP column
    its benchmark tables publish; coverage@K = distinct items in
    any top K / n_candidates.

    Parameters
    ----------
    topk : int64 array [m, K_max]
        Ranked item ids per query (-1 = padding).
    rel_indptr, rel_items : int arrays [m + 1], [nnz]
        CSR of each query's relevant items (binary relevance, no duplicates). Queries
        must have at least one relevant item.
    ks : sequence of int
        Cut-offs, each <= K_max.
    n_candidates : int
        Catalog size for coverage.
    metrics : sequence of str
        The metric names to compute: of :data:`TOPK_METRICS` and ``"coverage"`` (the default:
        all of them).

    Returns
    -------
    dict[str, float]
        ``"<metric>@<k>"`` -> mean over queries (coverage: over the catalog), K by K.

    Raises
    ------
    ValueError
        A query without relevant item, a K past ``K_max``, or a metric not computed from
        top-K lists (``mrr`` / ``auc``: :func:`ctxrec.evaluate.evaluate_ranking`).
    """
    _check_names(metrics, TOPK_METRICS + ("coverage",))
    per_q = per_query_metrics(topk, rel_indptr, rel_items, ks, metrics=[m for m in metrics if m != "coverage"])
    return summarize_metrics(per_q, topk, ks, n_candidates, metrics)


def summarize_metrics(per_q: dict[str, np.ndarray], topk: np.ndarray, ks: Sequence[int], n_candidates: int,
               metrics: Sequence[str]) -> dict[str, float]:
    """Means of the per-query metrics, plus coverage@K, in the order K by K.

    Parameters
    ----------
    per_q : dict[str, float64 array [m]]
        The output of :func:`per_query_metrics`.
    topk : int64 array [m, K_max]
        The ranked lists (-1 = padding), for coverage.
    ks : sequence of int
        Cut-offs.
    n_candidates : int
        Catalog size for coverage.
    metrics : sequence of str
        Metric names (coverage is added when ``"coverage"`` is among them).

    Returns
    -------
    dict[str, float]
        ``"<metric>@<k>"`` -> mean.
    """
    out: dict[str, float] = {}
    for k in ks:
        for name, v in per_q.items():
            if name.endswith(f"@{k}"):
                out[name] = float(np.mean(v))
        if "coverage" in metrics:
            ids = topk[:, :k]
            out[f"coverage@{k}"] = float(len(np.unique(ids[ids >= 0])) / max(n_candidates, 1))
    return out


def per_query_metrics(topk: np.ndarray, rel_indptr: np.ndarray, rel_items: np.ndarray, ks: Sequence[int], *,
                      metrics: Sequence[str] = TOPK_METRICS) -> dict[str, np.ndarray]:
    """The metrics of :func:`ranking_metrics_from_topk` for each query.

    Coverage, a catalog-level figure, is not among them.

    Parameters
    ----------
    topk : int64 array [m, K_max]
        Ranked item ids per query (-1 = padding).
    rel_indptr, rel_items : int arrays [m + 1], [nnz]
        CSR of each query's relevant items; every query needs at least one.
    ks : sequence of int
        Cut-offs, each <= K_max.
    metrics : sequence of str
        Metric names, of :data:`TOPK_METRICS` (the default: all of them).

    Returns
    -------
    dict[str, float64 array [m]]
        ``"<metric>@<k>"`` -> the value of each query.

    Raises
    ------
    ValueError
        A query without relevant item, a K past ``K_max``, or a metric name not in
        :data:`TOPK_METRICS`.
    """
    _check_names(metrics, TOPK_METRICS)
    m, kmax = topk.shape
    n_rel = np.diff(rel_indptr)
    if (n_rel <= 0).any():
        raise ValueError("every query needs at least one relevant item")
    n_items = int(max(topk.max(initial=0), rel_items.max(initial=0))) + 1
    q = np.repeat(np.arange(m, dtype=np.int64), kmax)
    flat = topk.reshape(-1)
    hits = np.zeros(m * kmax, dtype=bool)
    valid = flat >= 0
    hits[valid] = csr_contains(rel_indptr, rel_items.astype(np.int64), q[valid], flat[valid], n_items)
    hits = hits.reshape(m, kmax).astype(np.float64)
    cum = np.cumsum(hits, axis=1)
    ranks = np.arange(1, kmax + 1, dtype=np.float64)
    disc = 1.0 / np.log2(ranks + 1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k > kmax:
            raise ValueError(f"k={k} exceeds the ranked list length {kmax}")
        h = cum[:, k - 1]
        if "hr" in metrics:
            out[f"hr@{k}"] = (h > 0).astype(np.float64)
        if "precision" in metrics:
            out[f"precision@{k}"] = h / k
        if "recall" in metrics:
            out[f"recall@{k}"] = h / n_rel
        if "ndcg" in metrics:
            dcg = hits[:, :k] @ disc[:k]
            ideal = np.cumsum(disc[:k])[np.minimum(n_rel, k) - 1]
            out[f"ndcg@{k}"] = dcg / ideal
        if "map" in metrics or "map_nrel" in metrics:
            ap_sum = (hits[:, :k] * (cum[:, :k] / ranks[:k])).sum(axis=1)
            if "map" in metrics:
                out[f"map@{k}"] = ap_sum / np.minimum(n_rel, k)
            if "map_nrel" in metrics:
                out[f"map_nrel@{k}"] = ap_sum / n_rel
    return out


def as_1d(x: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    """``x`` flattened to a 1-D array of ``dtype``, checked finite when floating.

    Parameters
    ----------
    x : array-like
        The values.
    name : str
        Their name, for the error message.
    dtype : numpy dtype
        Element type (default float64).

    Returns
    -------
    array [x.size] of ``dtype``

    Raises
    ------
    ValueError
        A NaN or inf (its position named).
    """
    a = np.asarray(x, dtype=dtype).reshape(-1)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or inf at position {int(np.flatnonzero(~np.isfinite(a))[0])}")
    return a


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    avg = (boundaries[:-1] + boundaries[1:] + 1) / 2.0  # mean of 1-based positions in each tie run
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, np.diff(boundaries))
    return ranks


def auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count 1/2).

    Parameters
    ----------
    y_true : array-like [n]
        0/1 labels (> 0 counts as positive).
    y_score : array-like [n]
        Scores, higher = more likely positive.

    Returns
    -------
    float
        AUC in [0, 1].

    Raises
    ------
    ValueError
        When only one class is present, the lengths differ, or a value is not finite.
    """
    y = as_1d(y_true, "y_true")
    s = as_1d(y_score, "y_score")
    if y.shape != s.shape:
        raise ValueError(f"y_true has {len(y)} entries, y_score {len(s)}")
    pos = y > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    r = _average_ranks(s)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def user_auc(users: Any, y_true: Any, y_score: Any, *, weighted: bool = False) -> tuple[float, int]:
    """Per-user AUC averaged over users that have both classes.

    Parameters
    ----------
    users : array-like [n]
        User of each row.
    y_true : array-like [n]
        0/1 labels.
    y_score : array-like [n]
        Scores.
    weighted : bool
        Weight each user by their number of rows (the "GAUC" of CTR papers).

    Returns
    -------
    mean_auc : float
    n_users : int
        Number of users averaged.

    Raises
    ------
    ValueError
        Lengths differ, or no user has both positive and negative rows.
    """
    u = np.asarray(users).reshape(-1)
    y = as_1d(y_true, "y_true")
    s = as_1d(y_score, "y_score")
    if not (len(u) == len(y) == len(s)):
        raise ValueError(f"users/y_true/y_score lengths differ: {len(u)}, {len(y)}, {len(s)}")
    order = np.argsort(u, kind="stable")
    u, y, s = u[order], y[order], s[order]
    cuts = np.flatnonzero(np.r_[True, u[1:] != u[:-1], True])
    vals, weights = [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        yy = y[a:b]
        npos = int((yy > 0).sum())
        if 0 < npos < b - a:
            vals.append(auc(yy, s[a:b]))
            weights.append(b - a)
    if not vals:
        raise ValueError("no user has both positive and negative rows")
    w = np.asarray(weights, dtype=np.float64) if weighted else np.ones(len(vals))
    return float(np.average(vals, weights=w)), len(vals)


def logloss(y_true: Any, y_prob: Any, *, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy (natural log); probabilities clipped to [eps, 1 - eps].

    Parameters
    ----------
    y_true : array-like [n]
        0/1 labels.
    y_prob : array-like [n]
        Probabilities in [0, 1].
    eps : float
        Clipping bound.

    Returns
    -------
    float
        Nats per row.

    Raises
    ------
    ValueError
        Lengths differ, or a probability outside [0, 1].
    """
    y = as_1d(y_true, "y_true")
    p = as_1d(y_prob, "y_prob")
    if y.shape != p.shape:
        raise ValueError(f"y_true has {len(y)} entries, y_prob {len(p)}")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("y_prob must be probabilities in [0, 1] (apply a sigmoid to raw scores)")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def rmse(y_true: Any, y_pred: Any) -> float:
    """Root mean squared error.

    Parameters
    ----------
    y_true, y_pred : array-like [n]

    Returns
    -------
    float
        In the unit of ``y_true``.
    """
    y, p = as_1d(y_true, "y_true"), as_1d(y_pred, "y_pred")
    return float(np.sqrt(np.mean((y - p) ** 2)))


def mae(y_true: Any, y_pred: Any) -> float:
    """Mean absolute error.

    Parameters
    ----------
    y_true, y_pred : array-like [n]

    Returns
    -------
    float
        In the unit of ``y_true``.
    """
    y, p = as_1d(y_true, "y_true"), as_1d(y_pred, "y_pred")
    return float(np.mean(np.abs(y - p)))
