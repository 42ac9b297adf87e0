"""Warm-up: compile (or load from numba's cache) every kernel a service runs, before its
first request.

The numba kernels of :mod:`ctxrec.model._kernels` are compiled on first use: about a minute
of CPU the first time on a machine (then written to numba's on-disk cache), about a second
to load in a later process. Without a warm-up the first request or feedback of a fresh
service pays that. :func:`warmup` runs every code path serving uses (a live query for one
user, a batch of queries, scoring, the item table, a fold-in of an existing and of a new
user, a top-K) on throw-away models, so the time is spent at start-up instead.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Sequence

import numba
import numpy as np

from ctxrec._log import get_logger
from ctxrec.model import _kernels as K
from ctxrec.model.fm import ContextFM, Interactions, SideInfo

__all__ = ["warmup", "KERNELS"]

log = get_logger("ctxrec.model")

#: the compiled entry points of ``ctxrec.model._kernels`` that warm-up makes ready
KERNELS: tuple[str, ...] = ("train_epoch", "predict_full", "item_table", "query_table", "query_table_serial")

#: one configuration per loss a service may run, covering the optional parts of the model
#: (three-way factors, history features with a time window, dropout, sampled negatives)
_VARIANTS: dict[str, dict[str, Any]] = {
    "bpr": dict(loss="bpr", n_tri_factors=2, user_history=True, history_window=2, dropout=0.1),
    "softmax": dict(loss="softmax", n_negatives=4),
    "mse": dict(loss="mse", user_history=True),
    "logloss": dict(loss="logloss", n_negatives=1, n_tri_factors=2),
}

_N_USERS, _N_ITEMS, _N_ROWS, _BATCH = 12, 10, 60, 64  # _BATCH >= fm's batch threshold (parallel query kernel)


def _problem(loss: str, n_ctx: int, d_item: int, d_user: int, d_query: int, n_item_attrs: int,
             n_user_attrs: int, seed: int = 0) -> tuple[Interactions, SideInfo]:
    """A tiny random training set with the given fields (labels fitting ``loss``)."""
    rng = np.random.default_rng(seed)
    nU, nI, n = _N_USERS, _N_ITEMS, _N_ROWS
    side = SideInfo(
        nU, nI, (3,) * n_ctx,
        item_attrs=(rng.random((nI, n_item_attrs)) < 0.5).astype(np.float32) if n_item_attrs else None,
        user_attrs=(rng.random((nU, n_user_attrs)) < 0.5).astype(np.float32) if n_user_attrs else None,
        item_text=rng.normal(size=(nI, d_item)).astype(np.float32) if d_item else None,
        user_text=rng.normal(size=(nU, d_user)).astype(np.float32) if d_user else None,
        context_text_dim=d_query,
    )
    users = np.arange(n) % nU
    items = rng.integers(0, nI, n)
    label = None
    if loss == "mse":
        label = rng.integers(1, 6, n).astype(np.float64)
    elif loss == "logloss":
        label = (np.arange(n) % 2).astype(np.float64)
    X = Interactions(users, items, rng.integers(0, 3, (n, n_ctx)) if n_ctx else None,
                     rng.normal(size=(n, d_query)).astype(np.float32) if d_query else None,
                     label, np.arange(n, dtype=np.int64))
    return X, side


def _exercise(m: ContextFM, seed: int = 0) -> None:
    """Run every serving path of a fitted model (``m`` is changed: pass a throw-away copy)."""
    rng = np.random.default_rng(seed)
    n_ctx = len(m.layout_.context_cardinalities)
    d_query = m.text_dims_[2]
    nU, nI = int(m.n_users_), int(m.n_items_)

    def rows(b: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        ctx = np.zeros((b, n_ctx), np.int64) if n_ctx else None
        qt = rng.normal(size=(b, d_query)).astype(np.float32) if d_query else None
        return ctx, qt

    ctx, qt = rows(1)
    m.build_queries(np.array([0]), context=ctx, context_text=qt)  # one live request (serial kernel)
    ctx, qt = rows(_BATCH)
    m.build_queries(np.arange(_BATCH) % nU, context=ctx, context_text=qt)  # a batch (parallel kernel)
    ctx, qt = rows(4)
    m.predict(Interactions(np.array([0, 0, -1, nU - 1]), np.arange(4) % nI, ctx, qt))
    m.export()
    m.recommend(np.array([0]), k=min(3, nI))
    items = np.array([0, 1 % nI], np.int64)
    label = np.ones(len(items), np.float64)
    if m.loss == "mse":
        label *= 4.0
    m.fold_in(items, user=0, label=label, epochs=2)  # feedback of a known user
    m.fold_in(items, user=None, label=label, epochs=2)  # feedback of a new user


def _check_threading_layer() -> None:
    """Warn when numba runs parallel kernels on its ``workqueue`` layer: it aborts the process
    when two threads run parallel kernels at once (a fold-in beside a batch request)."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run
        return
    if layer == "workqueue":
        log.warning("numba runs its parallel kernels on the 'workqueue' threading layer, which aborts the process "
                    "when two threads use it at once (a fold-in beside a batch request): install TBB "
                    "(pip install tbb) or an OpenMP runtime, or set NUMBA_THREADING_LAYER=omp / tbb")


def _misses() -> int:
    """Compiled (not loaded) signatures of the main kernels so far in this process."""
    return sum(sum(getattr(K, name).stats.cache_misses.values()) for name in KERNELS)


def warmup(model: ContextFM | None = None, *, losses: Sequence[str] | None = None) -> float:
    """Compile, or load from numba's on-disk cache, every kernel a service runs.

    Parameters
    ----------
    model : ContextFM or None
        None: fit a tiny synthetic model for each loss in ``losses`` (every field present:
        context, attributes, the three text inputs, three-way factors, history) and run the
        serving paths on it. A fitted model: run the serving paths on a deep copy of it
        (the caller's model is never changed; the copy costs its memory for the duration)
        and on a tiny synthetic model with its settings.
    losses : sequence of str or None
        Losses to warm up when ``model`` is None (default: all of "bpr", "softmax", "mse",
        "logloss"). The kernels' compiled code does not depend on the loss; a model per
        loss checks that each loss's path runs.

    Returns
    -------
    float
        Seconds spent: about a second when the kernels come from the cache, about a minute
        of CPU when this is the first process to use them since install (or since a change
        of ``_kernels.py``).

    Notes
    -----
    The serving paths: ``build_queries`` for one user (the serial query kernel) and for a
    batch, ``predict``, ``export``, ``recommend``, ``fold_in`` of an existing and of a new
    user (the training kernel). Where the cache lives: :func:`ctxrec.model._kernels.cache_dir`.
    The time, whether the kernels were compiled or loaded, and the cache's place are logged
    to ``ctxrec.model`` at INFO; a warning when numba's threading layer is not threadsafe.
    """
    t0 = time.perf_counter()
    misses0 = _misses()
    if model is not None:
        model.check_fitted()
        di, du, dq = model.text_dims_
        params = dict(model.get_params(), epochs=1, batch_size=16, verbose=False, early_stopping_rounds=None,
                      n_factors=min(int(model.n_factors), 8), n_tri_factors=min(int(model.n_tri_factors), 2),
                      num_threads=model.num_threads)
        X, side = _problem(model.loss, len(model.layout_.context_cardinalities), di, du, dq,
                           min(int(model.layout_.n_item_attrs), 3), min(int(model.layout_.n_user_attrs), 3))
        _exercise(ContextFM(**params).fit(X, side))
        _exercise(copy.deepcopy(model))
    else:
        for loss in (tuple(_VARIANTS) if losses is None else tuple(losses)):
            if loss not in _VARIANTS:
                raise ValueError(f"losses: unknown loss {loss!r}; expected some of {sorted(_VARIANTS)}")
            X, side = _problem(loss, 2, 6, 4, 3, 3, 2)
            m = ContextFM(n_factors=4, epochs=1, batch_size=16, random_state=0, **_VARIANTS[loss])
            _exercise(m.fit(X, side, validation=X.subset(np.arange(12))))
    seconds = time.perf_counter() - t0
    _check_threading_layer()
    compiled = _misses() - misses0
    log.info("numba kernels ready in %.1f s (%s; cache: %s)", seconds,
             f"compiled {compiled} kernel signature(s)" if compiled else "loaded from the cache",
             K.cache_dir() or "none")
    return seconds
