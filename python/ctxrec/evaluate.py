"""Splits, metrics and evaluation reports.

Splits (each returns a :class:`Split` of :class:`~ctxrec.data.Dataset` parts over the same
catalog): :func:`leave_last_out` (per-user temporal), :func:`temporal_split` (global
temporal), :func:`stratified_split` (per-user ratio, the Microsoft Recommenders protocol),
:func:`random_split`, :func:`item_cold_start` (held-out items are test-only and keep only
their text and attributes), :func:`frappe_nfm_split` (Frappe's official validation/test).

Ranking evaluation (:func:`evaluate_ranking`) ranks the **whole catalog** (or the split's
candidate items) minus each user's training items — no sampled negatives. Top-K comes
from the compiled core (``ctxrec._core.topk_full``) when the model is given as factors
and the core is importable, from numpy otherwise; both give identical lists (ties broken
by the smaller item index). Metrics: HR@K, Precision@K, Recall@K, NDCG@K, MAP@K, MRR,
per-user AUC, catalog coverage@K.

Pointwise metrics: :func:`auc` (global), :func:`user_auc` (per user, averaged),
:func:`logloss`, :func:`rmse`, :func:`mae`; :func:`evaluate_pointwise` bundles them.

Reports: :class:`EvaluationReport` → JSON + Markdown + PNG (matplotlib, Agg), saved
atomically with a checksummed manifest (:mod:`ctxrec._io`).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from ctxrec import csr
from ctxrec._io import jsonable
from ctxrec._log import get_logger, progress as _progress
from ctxrec.data import DataError, Dataset
from ctxrec.metrics import (RANKING_METRICS, TOPK_METRICS, as_1d, csr_contains, summarize_metrics, auc, logloss, mae,  # noqa: F401
                            per_query_metrics, ranking_metrics_from_topk, rmse, user_auc)

__all__ = [
    "Split",
    "leave_last_out",
    "temporal_split",
    "stratified_split",
    "random_split",
    "item_cold_start",
    "frappe_nfm_split",
    "Factors",
    "RankingResult",
    "evaluate_ranking",
    "topk_numpy",
    "ranking_metrics_from_topk",
    "per_query_metrics",
    "evaluate_pointwise",
    "auc",
    "user_auc",
    "logloss",
    "rmse",
    "mae",
    "EvaluationReport",
    "save_reports",
    "RANKING_METRICS",
]

log = get_logger("ctxrec.evaluate")

# --------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------


@dataclass
class Split:
    """A train/test (and optional validation) split of one dataset.

    Attributes
    ----------
    name : str
        Protocol name, e.g. ``"leave-last-out"``.
    train, test, validation : Dataset
        Parts sharing the source's catalog (dense ids, item text, attributes).
        ``validation`` may be None.
    train_rows, test_rows, validation_rows : int64 array or None
        Row indices into the source dataset (None for splits that are not row subsets,
        e.g. Frappe's labelled files).
    candidate_items : int64 array [n_candidates] or None
        Dense item indices to rank among (item cold start: the held-out items);
        None = the whole catalog.
    info : dict
        Protocol parameters and sizes.
    """

    name: str
    train: Dataset
    test: Dataset
    validation: Dataset | None = None
    train_rows: np.ndarray | None = None
    test_rows: np.ndarray | None = None
    validation_rows: np.ndarray | None = None
    candidate_items: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        v = f", validation={len(self.validation):,}" if self.validation is not None else ""
        c = f", candidates={len(self.candidate_items):,}" if self.candidate_items is not None else ""
        return f"Split({self.name!r}: train={len(self.train):,}, test={len(self.test):,}{v}{c})"


def _make_split(ds: Dataset, name: str, train: np.ndarray, test: np.ndarray, valid: np.ndarray | None = None,
                **info: Any) -> Split:
    train, test = np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)
    valid = None if valid is None or len(valid) == 0 else np.sort(valid).astype(np.int64)
    info = {"dataset": ds.name, "n_train": len(train), "n_test": len(test),
            "n_validation": 0 if valid is None else len(valid), **info}
    return Split(name, ds.subset(train, name=f"{ds.name}:{name}:train"),
                 ds.subset(test, name=f"{ds.name}:{name}:test"),
                 None if valid is None else ds.subset(valid, name=f"{ds.name}:{name}:validation"),
                 train, test, valid, info=info)


def _time_order(ds: Dataset, what: str) -> np.ndarray:
    if ds.timestamp is None:
        raise DataError(f"{what}: dataset {ds.name!r} has no timestamp column")
    return np.lexsort((np.arange(len(ds)), ds.timestamp))  # by time, ties by row order


def leave_last_out(ds: Dataset, *, n_test: int = 1, n_validation: int = 0) -> Split:
    """Per-user temporal leave-last-out.

    For each user, interactions sorted by (timestamp, row order): the last ``n_test`` go to
    test, the ``n_validation`` before them to validation, the rest to train. A user with
    ``n_test + n_validation`` interactions or fewer keeps them all in train.

    Parameters
    ----------
    ds : Dataset
        Needs a ``timestamp``.
    n_test : int
        Test interactions per user.
    n_validation : int
        Validation interactions per user.

    Returns
    -------
    Split
        ``"leave-last-out"``.

    Raises
    ------
    DataError
        The dataset has no timestamp column.
    """
    order = _time_order(ds, "leave_last_out")
    u = ds.users[order]
    by_user = order[np.argsort(u, kind="stable")]
    counts = np.bincount(ds.users, minlength=ds.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(ds)) - np.repeat(starts, counts)  # position within the user's history
    from_end = np.repeat(counts, counts) - pos  # 1 = last
    eligible = np.repeat(counts > n_test + n_validation, counts)
    test = by_user[eligible & (from_end <= n_test)]
    valid = by_user[eligible & (from_end > n_test) & (from_end <= n_test + n_validation)]
    train = by_user[~eligible | (from_end > n_test + n_validation)]
    return _make_split(ds, "leave-last-out", train, test, valid, n_test_per_user=n_test,
                       n_validation_per_user=n_validation)


def temporal_split(ds: Dataset, *, test_frac: float = 0.2, validation_frac: float = 0.0) -> Split:
    """Global temporal split.

    The latest ``test_frac`` of interactions (by timestamp, ties by row order) are test, the
    ``validation_frac`` before them validation, the rest train.

    Parameters
    ----------
    ds : Dataset
        Needs a ``timestamp``.
    test_frac, validation_frac : float
        Fractions of all interactions, each in [0, 1), summing to less than 1.

    Returns
    -------
    Split
        ``"temporal"``; ``info["test_from_timestamp"]`` is the earliest test timestamp.

    Raises
    ------
    DataError
        The dataset has no timestamp column.
    ValueError
        A fraction out of range.
    """
    _check_frac(test_frac, validation_frac)
    order = _time_order(ds, "temporal_split")
    n = len(ds)
    n_test = int(round(n * test_frac))
    n_val = int(round(n * validation_frac))
    train, valid, test = order[:n - n_test - n_val], order[n - n_test - n_val:n - n_test], order[n - n_test:]
    info = {"test_frac": test_frac, "validation_frac": validation_frac}
    if len(test):
        info["test_from_timestamp"] = int(ds.timestamp[test].min())
    return _make_split(ds, "temporal", train, test, valid, **info)


def _check_frac(*fracs: float) -> None:
    for f in fracs:
        if not 0 <= f < 1:
            raise ValueError(f"fraction must be in [0, 1), got {f}")
    if sum(fracs) >= 1:
        raise ValueError(f"fractions sum to {sum(fracs)} >= 1")


def stratified_split(ds: Dataset, *, ratio: float = 0.75, seed: int = 42, validation_frac: float = 0.0) -> Split:
    """Per-user stratified random split — the Microsoft Recommenders ``python_stratified_split``.

    For each user (in ascending raw-id order, rows in dataset order) the user's rows are
    shuffled with a fresh ``numpy.random.RandomState(seed)`` (as ``DataFrame.sample(frac=1,
    random_state=seed)`` does) and the first ``round(ratio * n_u)`` (Python rounding) go to
    train, the rest to test. Given the same row order (``u.data``'s for ml-100k) this
    reproduces that library's split.

    ``validation_frac > 0`` then moves that fraction of each user's *training* rows
    (``round(validation_frac * n_train_u)``, chosen with ``default_rng(seed + 1)``) to a
    validation set, for early stopping; the test set is unchanged.

    Parameters
    ----------
    ds : Dataset
    ratio : float
        Training fraction per user, in (0, 1).
    seed : int
        Shuffle seed.
    validation_frac : float
        Fraction of each user's training rows moved to validation, in [0, 1).

    Returns
    -------
    Split
        ``"stratified"``.

    Raises
    ------
    ValueError
        ``ratio`` or ``validation_frac`` out of range.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    by_user = np.argsort(ds.users, kind="stable")
    counts = np.bincount(ds.users, minlength=ds.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)])
    user_order = np.argsort(ds.user_ids, kind="stable") if ds.user_ids.dtype != object else \
        np.arange(ds.n_users)
    train_parts, test_parts = [], []
    perm_cache: dict[int, np.ndarray] = {}
    for u in user_order:
        n = int(counts[u])
        if n == 0:
            continue
        rows = by_user[starts[u]:starts[u + 1]]
        perm = perm_cache.get(n)
        if perm is None:
            perm = perm_cache[n] = np.random.RandomState(seed).permutation(n)
        cut = round(ratio * n)
        train_parts.append(rows[perm[:cut]])
        test_parts.append(rows[perm[cut:]])
    valid_parts = []
    if validation_frac > 0:
        _check_frac(validation_frac)
        rng = np.random.default_rng(seed + 1)
        for j, rows in enumerate(train_parts):
            n_val = round(validation_frac * len(rows))
            pick = rng.permutation(len(rows))
            valid_parts.append(rows[pick[:n_val]])
            train_parts[j] = rows[pick[n_val:]]
    train = np.concatenate(train_parts) if train_parts else np.zeros(0, np.int64)
    test = np.concatenate(test_parts) if test_parts else np.zeros(0, np.int64)
    valid = np.concatenate(valid_parts) if valid_parts else None
    return _make_split(ds, "stratified", train, test, valid, ratio=ratio, seed=seed,
                       validation_frac=validation_frac)


def random_split(ds: Dataset, *, test_frac: float = 0.2, validation_frac: float = 0.0, seed: int = 0) -> Split:
    """Uniformly random split of interactions (numpy ``default_rng(seed)`` permutation).

    Parameters
    ----------
    ds : Dataset
    test_frac, validation_frac : float
        Fractions of all interactions, each in [0, 1), summing to less than 1.
    seed : int
        Permutation seed.

    Returns
    -------
    Split
        ``"random"``.

    Raises
    ------
    ValueError
        A fraction out of range.
    """
    _check_frac(test_frac, validation_frac)
    perm = np.random.default_rng(seed).permutation(len(ds))
    n_test, n_val = int(round(len(ds) * test_frac)), int(round(len(ds) * validation_frac))
    return _make_split(ds, "random", perm[n_test + n_val:], perm[:n_test], perm[n_test:n_test + n_val],
                       test_frac=test_frac, validation_frac=validation_frac, seed=seed)


def item_cold_start(ds: Dataset, *, frac: float = 0.1, seed: int = 0) -> Split:
    """Hold out ``round(frac * n)`` of the ``n`` items that have interactions, entirely.

    Every interaction with a held-out item is test; all others train. The held-out items
    keep their dense index, text and attributes (the catalog is shared), and they are the
    ranking candidates (``candidate_items``): a model must rank them from content alone.

    Parameters
    ----------
    ds : Dataset
    frac : float
        Fraction of the items with interactions held out, in [0, 1).
    seed : int
        Seed of the item draw.

    Returns
    -------
    Split
        ``"item-cold-start"``, ``candidate_items`` = the held-out items (int64, sorted).

    Raises
    ------
    ValueError
        ``frac`` out of range.
    """
    _check_frac(frac)
    active = np.flatnonzero(np.bincount(ds.items, minlength=ds.n_items) > 0)
    n_cold = int(round(len(active) * frac))
    cold = np.sort(np.random.default_rng(seed).choice(active, size=n_cold, replace=False)).astype(np.int64)
    is_cold = np.zeros(ds.n_items, dtype=bool)
    is_cold[cold] = True
    test_mask = is_cold[ds.items]
    sp = _make_split(ds, "item-cold-start", np.flatnonzero(~test_mask), np.flatnonzero(test_mask),
                     frac=frac, seed=seed, n_cold_items=n_cold)
    sp.candidate_items = cold
    return sp


def frappe_nfm_split(source: Any = None, *, n_neg: int = 2, seed: int = 0) -> Split:
    """Frappe's official NFM/AFM validation and test, with the reconstructed train split.

    Parameters
    ----------
    source : FrappeNFM, str or path-like, optional
        A :class:`~ctxrec.data.FrappeNFM` or a data directory (default
        ``$CTXREC_DATA_DIR``); see :func:`ctxrec.data.load_frappe_nfm`.
    n_neg, seed : int
        Negatives per training positive and their seed (when loading).

    Returns
    -------
    Split
        ``"frappe-nfm"`` with train, validation and test (not row subsets: ``*_rows`` None).
    """
    from ctxrec.data import FrappeNFM, load_frappe_nfm

    nfm = source if isinstance(source, FrappeNFM) else load_frappe_nfm(source, n_neg=n_neg, seed=seed)
    return Split("frappe-nfm", nfm.train, nfm.test, nfm.validation,
                 info={"dataset": "frappe", "n_train": len(nfm.train), "n_validation": len(nfm.validation),
                       "n_test": len(nfm.test), "train": f"reconstructed: raw rows not in validation/test "
                       f"+ {n_neg} sampled negatives each (seed {seed})"})


# --------------------------------------------------------------------------------------
# Pointwise metrics
# --------------------------------------------------------------------------------------


def evaluate_pointwise(y_true: Any, y_score: Any, *, users: Any = None, kind: str = "binary",
                       name: str = "model", split: str = "") -> "EvaluationReport":
    """A report of pointwise metrics.

    Parameters
    ----------
    y_true : array-like [n]
        0/1 labels (``kind="binary"``) or ratings (``kind="rating"``).
    y_score : array-like [n]
        ``kind="binary"``: probabilities (or raw scores: logloss is then left out);
        ``kind="rating"``: predicted ratings.
    users : array-like [n], optional
        User of each row; adds user_auc (binary).
    kind : {"binary", "rating"}
        ``"binary"``: metrics auc, logloss and, with ``users``, user_auc. ``"rating"``: rmse, mae.
    name, split : str
        Labels of the report.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    ValueError
        An unknown ``kind``, or an error of the metric functions.
    """
    m: dict[str, float] = {}
    info: dict[str, Any] = {"n": int(np.size(y_true))}
    if kind == "binary":
        s = as_1d(y_score, "y_score")
        m["auc"] = auc(y_true, s)
        if s.min() >= 0 and s.max() <= 1:
            m["logloss"] = logloss(y_true, s)
        if users is not None:
            m["user_auc"], info["n_users_auc"] = user_auc(users, y_true, s)
    elif kind == "rating":
        m["rmse"] = rmse(y_true, y_score)
        m["mae"] = mae(y_true, y_score)
    else:
        raise ValueError(f"kind must be 'binary' or 'rating', got {kind!r}")
    return EvaluationReport(name=name, split=split, metrics=m, info=info)


# --------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------



@dataclass
class Factors:
    """A model in factor form: score(q, i) = query[q] · item_vecs[i] + item_bias[i].

    Attributes
    ----------
    item_vecs : float32 array [n_items, d]
    user_vecs : float32 array [n_users, d] or None
        The query of a user (per-user evaluation); None when ``query_fn`` is given.
    item_bias : float32 array [n_items] or None
    query_fn : callable, optional
        ``(users int64 [b], rows int64 [b] or None) -> float32 [b, d]`` building queries
        per evaluation query (e.g. with the test row's context; ``rows`` index the test
        dataset when ``group="row"``, None when ``group="user"``).
    """

    item_vecs: np.ndarray
    user_vecs: np.ndarray | None = None
    item_bias: np.ndarray | None = None
    query_fn: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.item_vecs = np.ascontiguousarray(self.item_vecs, dtype=np.float32)
        if self.user_vecs is not None:
            self.user_vecs = np.ascontiguousarray(self.user_vecs, dtype=np.float32)
            if self.user_vecs.shape[1] != self.item_vecs.shape[1]:
                raise ValueError(f"user_vecs has {self.user_vecs.shape[1]} columns, item_vecs {self.item_vecs.shape[1]}")
        if self.item_bias is not None:
            self.item_bias = np.ascontiguousarray(self.item_bias, dtype=np.float32).reshape(-1)
            if len(self.item_bias) != len(self.item_vecs):
                raise ValueError(f"item_bias has {len(self.item_bias)} entries, item_vecs {len(self.item_vecs)} rows")
        if self.user_vecs is None and self.query_fn is None:
            raise ValueError("Factors needs user_vecs or query_fn")

    def queries(self, users: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """The query vectors of a batch of evaluation queries.

        Parameters
        ----------
        users : int64 array [b]
            Dense user indices.
        rows : int64 array [b] or None
            Test rows (``group="row"``), passed to ``query_fn``.

        Returns
        -------
        float32 array [b, d]

        Raises
        ------
        ValueError
            ``query_fn`` returned another shape.
        """
        if self.query_fn is not None:
            q = np.ascontiguousarray(self.query_fn(users, rows), dtype=np.float32)
        else:
            q = self.user_vecs[users]
        if q.shape != (len(users), self.item_vecs.shape[1]):
            raise ValueError(f"queries have shape {q.shape}, expected ({len(users)}, {self.item_vecs.shape[1]})")
        return q

    def scores(self, users: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """All item scores of the queries.

        Parameters
        ----------
        users : int64 array [b]
            Dense user indices.
        rows : int64 array [b] or None
            Test rows (``group="row"``), passed to ``query_fn``.

        Returns
        -------
        float32 array [b, n_items]
        """
        return self.score(self.queries(users, rows))

    def score(self, queries: np.ndarray) -> np.ndarray:
        """Every item's score for given query vectors: ``queries @ item_vecs.T + item_bias``.

        Parameters
        ----------
        queries : float32 array [b, d]

        Returns
        -------
        float32 array [b, n_items]
        """
        s = queries @ self.item_vecs.T
        if self.item_bias is not None:
            s += self.item_bias[None, :]
        return s


ScoreFn = Callable[[np.ndarray, Union[np.ndarray, None]], np.ndarray]


def _core_module() -> Any:
    try:
        from ctxrec import _core
        return _core if hasattr(_core, "topk_full") else None
    except ImportError:
        return None


def topk_numpy(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row of ``scores`` (``-inf`` = ineligible), as the core does it.

    Parameters
    ----------
    scores : float32 array [b, n]
    k : int

    Returns
    -------
    ids : int64 array [b, k]
    scores : float32 array [b, k]
        Sorted by score descending, ties by smaller item index; rows with fewer than k
        eligible items padded with -1 / -inf.
    """
    b, n = scores.shape
    ids = np.full((b, k), -1, dtype=np.int64)
    out = np.full((b, k), -np.inf, dtype=np.float32)
    kk = min(k, n)
    if kk == 0 or b == 0:
        return ids, out
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
    for r in range(b):
        row = scores[r]
        above = np.flatnonzero(row > kth[r])
        if kth[r] > -np.inf:
            ties = np.flatnonzero(row == kth[r])[:kk - len(above)]
            cand = np.concatenate([above, ties])
        else:
            cand = above
        cand = cand[np.lexsort((cand, -row[cand]))]
        ids[r, :len(cand)] = cand
        out[r, :len(cand)] = row[cand]
    return ids, out


@dataclass
class RankingResult:
    """Per-query outputs of :func:`evaluate_ranking` (for further analysis) and the metrics."""

    metrics: dict[str, float]
    query_users: np.ndarray  # int64 [m] user of each evaluated query
    topk: np.ndarray  # int64 [m, max_k] ranked item ids (-1 padding)
    first_rank: np.ndarray | None  # int64 [m] full-catalog rank (1-based) of the best relevant item
    info: dict[str, Any]
    per_query: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> float64 [m] (e.g. paired tests)


def evaluate_ranking(
    model: Factors | ScoreFn,
    train: Dataset,
    test: Dataset,
    *,
    ks: Sequence[int] = (1, 5, 10, 20),
    metrics: Sequence[str] = RANKING_METRICS,
    group: str = "user",
    candidates: np.ndarray | None = None,
    exclude_train: bool = True,
    relevance_threshold: float | None = None,
    backend: str = "auto",
    batch_size: int = 1024,
    num_threads: int = 0,
    name: str = "model",
    split: str = "",
    progress: bool | None = False,
) -> "EvaluationReport":
    """Full-ranking evaluation of ``model`` on ``test`` after training on ``train``.

    Parameters
    ----------
    model : Factors or callable
        :class:`Factors`, or a callable ``score_fn(users int64 [b], rows int64 [b] |
        None) -> float32 [b, n_items]`` (finite scores; higher = better).
    train : Dataset
        Items a user has in ``train`` (label-1 rows) are excluded from their ranking
        (``exclude_train``) and never count as relevant.
    test : Dataset
        The relevant items. ``group="user"``: one query per test user, relevant = the
        user's distinct test items; ``group="row"``: one query per test row (its own
        context), relevant = that row's item (``rows`` passed to the model index ``test``).
    ks : sequence of int
        Cut-offs of the @K metrics.
    metrics : sequence of str
        Subset of :data:`RANKING_METRICS`. ``mrr`` and ``auc`` use full-catalog
        ranks (ties count against the relevant item only for smaller item indices, as in
        the top-K lists): MRR = mean 1/rank of the best relevant item; AUC = mean over
        queries of the fraction of (relevant, eligible non-relevant) pairs ordered right.
    group : {"user", "row"}
        One query per test user or per test row.
    candidates : int64 array, optional
        Item indices to rank among (default: all items; item cold start passes the
        held-out items). Relevant items outside it are dropped.
    exclude_train : bool
        Leave each user's training items out of their ranking.
    relevance_threshold : float, optional
        Keep only test rows with rating >= threshold (or label 1 rows when the test set
        is labelled).
    backend : {"auto", "core", "numpy"}
        ``"auto"``: core for Factors when importable, numpy otherwise. Results are identical.
    batch_size : int
        Queries scored per batch.
    num_threads : int
        Threads of the core top-K (0 = all cores).
    name, split : str
        Labels of the report.
    progress : bool or None
        A progress bar over the queries (rate, ETA) on stderr: True / False, or None
        for one only when stderr is a terminal and there is more than one batch. The
        query count and the time taken are logged to ``ctxrec.evaluate`` at DEBUG.

    Returns
    -------
    EvaluationReport
        ``report.result`` holds the per-query :class:`RankingResult`.

    Raises
    ------
    ValueError
        Unknown metrics, backend or group; train and test from different catalogs; no
        test query with a relevant item left; scores of the wrong shape or not finite.
    RuntimeError
        ``backend="core"`` without ``ctxrec._core.topk_full``.
    """
    unknown = set(metrics) - set(RANKING_METRICS)
    if unknown:
        raise ValueError(f"unknown ranking metrics {sorted(unknown)}; choose from {RANKING_METRICS}")
    if train.n_items != test.n_items or train.n_users != test.n_users:
        raise ValueError("train and test must share a catalog (use Split parts or Dataset.subset)")
    ks = sorted(set(int(k) for k in ks))
    kmax = ks[-1]
    n_items = train.n_items
    is_factors = isinstance(model, Factors)
    core = _core_module() if is_factors else None
    if backend == "core":
        if not is_factors:
            raise ValueError("backend='core' needs a Factors model (a score callback ranks with numpy)")
        if core is None:
            raise RuntimeError("backend='core' requested but ctxrec._core.topk_full is not importable")
    elif backend == "numpy":
        core = None
    elif backend != "auto":
        raise ValueError(f"backend must be 'auto', 'core' or 'numpy', got {backend!r}")
    if is_factors and model.item_vecs.shape[0] != n_items:
        raise ValueError(f"item_vecs has {model.item_vecs.shape[0]} rows, the catalog {n_items} items")

    # relevant items per query
    keep = np.ones(len(test), dtype=bool)
    if relevance_threshold is not None and test.rating is not None:
        keep &= test.rating >= relevance_threshold
    if test.label is not None:
        keep &= test.label > 0
    t_users, t_items, t_rows = test.users[keep].astype(np.int64), test.items[keep].astype(np.int64), \
        np.flatnonzero(keep)
    ex_ptr, ex_idx = train.user_items() if exclude_train else (np.zeros(train.n_users + 1, np.int64),
                                                               np.zeros(0, np.int64))
    cand_mask = None
    if candidates is not None:
        candidates = np.unique(np.asarray(candidates, dtype=np.int64))
        cand_mask = np.zeros(n_items, dtype=bool)
        cand_mask[candidates] = True
    drop = csr_contains(ex_ptr, ex_idx, t_users, t_items, n_items)
    if cand_mask is not None:
        drop |= ~cand_mask[t_items]
    n_dropped = int(drop.sum())
    t_users, t_items, t_rows = t_users[~drop], t_items[~drop], t_rows[~drop]
    if group == "user":
        key = np.unique(t_users * n_items + t_items)
        q_users_all = key // n_items
        q_users, first = np.unique(q_users_all, return_index=True)
        rel_ptr = np.append(first, len(key)).astype(np.int64)
        rel_items = key % n_items
        q_rows = None
    elif group == "row":
        q_users = t_users
        rel_ptr = np.arange(len(t_items) + 1, dtype=np.int64)
        rel_items = t_items
        q_rows = t_rows
    else:
        raise ValueError(f"group must be 'user' or 'row', got {group!r}")
    m = len(q_users)
    if m == 0:
        raise ValueError("no test query has a relevant item left to rank")
    n_cand = n_items if candidates is None else len(candidates)
    want_ranks = "mrr" in metrics or "auc" in metrics

    topk = np.full((m, kmax), -1, dtype=np.int64)
    first_rank = np.zeros(m, dtype=np.int64) if want_ranks else None
    auc_q = np.zeros(m, dtype=np.float64) if "auc" in metrics else None
    allow_ptr = allow_idx = None
    if candidates is not None:
        allow_ptr, allow_idx = np.array([0, len(candidates)], dtype=np.int64), candidates
    t_eval = time.perf_counter()
    auto = progress is None and m <= batch_size  # one batch: never worth a bar
    with _progress(m, f"evaluate {name}", unit="query", enabled=False if auto else progress) as bar:
        for a in range(0, m, batch_size):
            b = min(a + batch_size, m)
            users = q_users[a:b]
            rows = None if q_rows is None else q_rows[a:b]
            bex_ptr, bex_idx = csr.take(ex_ptr, ex_idx, users)
            scores = None
            qv = model.queries(users, rows) if is_factors else None
            if core is not None:
                ids, _ = core.topk_full(qv, model.item_vecs, model.item_bias, kmax, exclude_indptr=bex_ptr,
                                        exclude_indices=bex_idx, allow_indptr=allow_ptr, allow_indices=allow_idx,
                                        num_threads=num_threads)
                topk[a:b] = ids
            if core is None or want_ranks:
                scores = _eligible_scores(model, qv, users, rows, bex_ptr, bex_idx, cand_mask, n_items)
                if core is None:
                    topk[a:b] = topk_numpy(scores, kmax)[0]
            if want_ranks:
                _full_ranks(scores, rel_ptr[a:b + 1] - rel_ptr[a], rel_items[rel_ptr[a]:rel_ptr[b]], first_rank,
                            auc_q, a)
            bar.update(b - a)
    log.debug("evaluate_ranking %s: %d queries over %d candidates in %.2f s", name, m, n_cand,
              time.perf_counter() - t_eval)
    per_q = per_query_metrics(topk, rel_ptr, rel_items, ks, metrics=[x for x in metrics if x in TOPK_METRICS])
    res = summarize_metrics(per_q, topk, ks, n_cand, metrics)
    if "mrr" in metrics:
        res["mrr"] = float(np.mean(1.0 / first_rank))
    if "auc" in metrics:
        res["auc"] = float(np.mean(auc_q))
    info = {"n_queries": m, "group": group, "n_relevant": int(len(rel_items)),
            "n_relevant_dropped": n_dropped, "n_candidates": n_cand, "exclude_train": exclude_train,
            "backend": "core" if core is not None else "numpy", "ks": ks}
    rep = EvaluationReport(name=name, split=split, metrics=res, info=info, ks=ks)
    rep.result = RankingResult(res, q_users, topk, first_rank, info, per_q)
    return rep


def _eligible_scores(model: Any, qv: np.ndarray | None, users: np.ndarray, rows: np.ndarray | None,
                     ex_ptr: np.ndarray, ex_idx: np.ndarray, cand_mask: np.ndarray | None,
                     n_items: int) -> np.ndarray:
    """float32 [b, n_items] scores with excluded / non-candidate items at -inf (qv: Factors queries)."""
    if isinstance(model, Factors):
        s = model.score(qv)
        if not np.isfinite(s).all():
            r, c = np.argwhere(~np.isfinite(s))[0]
            raise ValueError(f"the factors give a non-finite score for user {int(users[r])}, item {int(c)} "
                             "(NaN or inf in user/item vectors or biases)")
    else:
        s = np.array(model(users, rows), dtype=np.float32)
        if s.shape != (len(users), n_items):
            raise ValueError(f"score_fn returned shape {s.shape}, expected ({len(users)}, {n_items})")
        if not np.isfinite(s).all():
            r, c = np.argwhere(~np.isfinite(s))[0]
            raise ValueError(f"score_fn returned a non-finite score for user {int(users[r])}, item {int(c)}")
    s = np.ascontiguousarray(s, dtype=np.float32)
    rr = np.repeat(np.arange(len(users)), np.diff(ex_ptr))
    s[rr, ex_idx] = -np.inf
    if cand_mask is not None:
        s[:, ~cand_mask] = -np.inf
    return s


def _full_ranks(scores: np.ndarray, rel_ptr: np.ndarray, rel_items: np.ndarray, first_rank: np.ndarray,
                auc_q: np.ndarray | None, offset: int) -> None:
    """Fill first_rank / auc_q for a block of queries from their full eligible score rows.

    Rank (1-based, among eligible items) of a relevant item with score s at index j =
    1 + #(score > s) + #(score == s and index < j) — the order of the top-K lists.
    """
    for r in range(scores.shape[0]):
        row = scores[r]
        rel = rel_items[rel_ptr[r]:rel_ptr[r + 1]]
        s_rel = row[rel]
        srt = np.sort(row)
        n = len(row)
        above = n - np.searchsorted(srt, s_rel, side="right")
        n_eq = np.searchsorted(srt, s_rel, side="right") - np.searchsorted(srt, s_rel, side="left")
        ties_before = np.zeros(len(rel), dtype=np.int64)
        for t in np.flatnonzero(n_eq > 1):
            ties_before[t] = np.count_nonzero(row[:rel[t]] == s_rel[t])
        ranks = above + ties_before + 1
        first_rank[offset + r] = ranks.min()
        if auc_q is not None:
            n_elig = n - int(np.searchsorted(srt, -np.inf, side="right"))
            n_rel = len(rel)
            n_neg = n_elig - n_rel
            if n_neg <= 0:
                auc_q[offset + r] = 1.0
                continue
            neg_above = np.sort(ranks) - 1 - np.arange(n_rel)  # non-relevant items ranked above each
            auc_q[offset + r] = 1.0 - neg_above.sum() / (n_rel * n_neg)


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------

REPORT_FORMAT = "ctxrec.evaluation_report"
REPORT_VERSION = 1


@dataclass
class EvaluationReport:
    """Metrics of one model on one split, with optional training curves.

    Attributes
    ----------
    name : str
        The model's label.
    split : str
        The split's label.
    metrics : dict[str, float]
        Flat, e.g. ``{"ndcg@10": 0.41, "mrr": 0.33, "auc": 0.91}``.
    info : dict
        Sizes and settings (number of queries, backend, ...).
    ks : list of int
        The cut-offs of the @K metrics.
    curves : dict[str, list of float]
        Optional training curves, one value per epoch
        (e.g. ``{"train_loss": [...], "val_ndcg@10": [...]}``).
    timings : dict[str, float]
        Optional seconds, e.g. ``{"fit_s": 12.3, "epoch_s": 0.8}``.
    """

    name: str
    split: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    ks: list[int] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    result: RankingResult | None = field(default=None, repr=False)

    def at_k(self, metric: str) -> dict[int, float]:
        """The values of one @K metric.

        Parameters
        ----------
        metric : str
            A metric name without ``@K`` (e.g. ``"ndcg"``).

        Returns
        -------
        dict[int, float]
            ``{K: value}`` for the cut-offs the report has.
        """
        return {k: self.metrics[f"{metric}@{k}"] for k in self.ks if f"{metric}@{k}" in self.metrics}

    def to_dict(self) -> dict[str, Any]:
        """dict: the report as JSON-able data (without ``result``); :meth:`from_dict` reads it back."""
        return {"name": self.name, "split": self.split, "metrics": self.metrics, "info": jsonable(self.info),
                "ks": list(self.ks), "curves": self.curves, "timings": self.timings}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EvaluationReport":
        """A report from :meth:`to_dict`'s output.

        Parameters
        ----------
        d : mapping
            Needs ``name`` and ``metrics``; the other keys default to empty.

        Returns
        -------
        EvaluationReport
        """
        return cls(name=d["name"], split=d.get("split", ""), metrics=dict(d["metrics"]), info=dict(d.get("info", {})),
                   ks=list(d.get("ks", [])), curves=dict(d.get("curves", {})), timings=dict(d.get("timings", {})))

    def to_json(self) -> str:
        """str: :meth:`to_dict` as indented JSON with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_markdown(self, digits: int = 4) -> str:
        """The report as a one-row Markdown table (see :func:`reports_markdown`).

        Parameters
        ----------
        digits : int
            Decimals of the metric values.

        Returns
        -------
        str
        """
        return reports_markdown([self], digits=digits)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write report.json, report.md and report.png into ``directory`` (atomic, with manifest).

        Parameters
        ----------
        directory : str or path-like

        Returns
        -------
        Path
            The directory.
        """
        return save_reports([self], directory)


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def reports_markdown(reports: Sequence[EvaluationReport], *, metrics: Sequence[str] | None = None,
                     digits: int = 4) -> str:
    """A Markdown table: one row per report, one column per metric (union, in first-seen order).

    Parameters
    ----------
    reports : sequence of EvaluationReport
    metrics : sequence of str, optional
        Metric names or bases (``"ndcg"`` selects every ``ndcg@K``); default all of the
        reports' metrics. A second table lists the timings when any report has them.
    digits : int
        Decimals of the values (missing or NaN: "—").

    Returns
    -------
    str
    """
    cols: list[str] = []
    for r in reports:
        for k in r.metrics:
            if k not in cols and (metrics is None or k in metrics or k.split("@")[0] in metrics):
                cols.append(k)
    head = "| model | split | " + " | ".join(cols) + " |"
    sep = "|---|---|" + "---:|" * len(cols)
    lines = [head, sep]
    for r in reports:
        lines.append(f"| {r.name} | {r.split} | " + " | ".join(_fmt(r.metrics.get(c, float("nan")), digits)
                                                             for c in cols) + " |")
    timing = [r for r in reports if r.timings]
    if timing:
        tcols = sorted({k for r in timing for k in r.timings})
        lines += ["", "| model | split | " + " | ".join(tcols) + " |", "|---|---|" + "---:|" * len(tcols)]
        for r in timing:
            lines.append(f"| {r.name} | {r.split} | " + " | ".join(_fmt(float(r.timings.get(c, float('nan'))), 2)
                                                                 for c in tcols) + " |")
    return "\n".join(lines) + "\n"


def plot_reports(reports: Sequence[EvaluationReport], path: str | os.PathLike, *,
                 metrics: Sequence[str] = ("hr", "recall", "ndcg", "precision")) -> Path:
    """PNG: each @K metric vs K (one line per report), plus training curves when any report has them.

    Parameters
    ----------
    reports : sequence of EvaluationReport
    path : str or path-like
        The PNG file to write.
    metrics : sequence of str
        The @K metrics plotted, one panel each.

    Returns
    -------
    Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    at_k = [m for m in metrics if any(r.at_k(m) for r in reports)]
    curves = [(r, c) for r in reports for c in r.curves]
    scalar = sorted({k for r in reports for k in r.metrics if "@" not in k})
    n_panels = max(len(at_k) + (1 if curves else 0) + (1 if (scalar and not at_k) else 0), 1)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.6), squeeze=False)
    axes = axes[0]
    p = 0
    for m in at_k:
        ax = axes[p]
        p += 1
        for r in reports:
            pts = r.at_k(m)
            if pts:
                ax.plot(list(pts), list(pts.values()), marker="o", label=f"{r.name} {r.split}".strip())
        ax.set_xlabel("K")
        ax.set_title(f"{m}@K")
        ax.grid(alpha=0.3)
    if scalar and not at_k:
        ax = axes[p]
        p += 1
        labels = [f"{r.name} {r.split}".strip() for r in reports]
        width = 0.8 / max(len(scalar), 1)
        for j, s in enumerate(scalar):
            ax.bar(np.arange(len(reports)) + j * width, [r.metrics.get(s, np.nan) for r in reports], width, label=s)
        ax.set_xticks(np.arange(len(reports)) + width * (len(scalar) - 1) / 2, labels, rotation=20, fontsize=7)
        ax.set_title("metrics")
        ax.legend(fontsize=7)
    if curves:
        ax = axes[p]
        for r, c in curves:
            ax.plot(np.arange(1, len(r.curves[c]) + 1), r.curves[c], label=f"{r.name}: {c}")
        ax.set_xlabel("epoch")
        ax.set_title("training curves")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if at_k and len(reports) > 0:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_reports(reports: Sequence[EvaluationReport], directory: str | os.PathLike, *,
                 stem: str = "report") -> Path:
    """Write ``{stem}.json`` (list of reports), ``{stem}.md`` and ``{stem}.png`` into ``directory``.

    Written atomically with a checksummed ``manifest.json`` (format
    ``ctxrec.evaluation_report`` v1); :func:`load_reports` reads it back.

    Parameters
    ----------
    reports : sequence of EvaluationReport
    directory : str or path-like
    stem : str
        File name stem.

    Returns
    -------
    Path
        The directory.
    """
    from ctxrec._io import atomic_dir

    with atomic_dir(directory, REPORT_FORMAT, REPORT_VERSION, {"n_reports": len(reports)}) as tmp:
        (tmp / f"{stem}.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2, sort_keys=True))
        (tmp / f"{stem}.md").write_text(reports_markdown(reports))
        plot_reports(reports, tmp / f"{stem}.png")
    return Path(directory)


def load_reports(directory: str | os.PathLike, *, stem: str = "report") -> list[EvaluationReport]:
    """Reports saved by :func:`save_reports` (manifest and checksums verified).

    Parameters
    ----------
    directory : str or path-like
    stem : str
        File name stem.

    Returns
    -------
    list of EvaluationReport

    Raises
    ------
    CorruptArtifactError
        A missing or altered manifest or file.
    """
    from ctxrec._io import read_manifest

    read_manifest(directory, REPORT_FORMAT, REPORT_VERSION)
    return [EvaluationReport.from_dict(d) for d in json.loads((Path(directory) / f"{stem}.json").read_text())]
