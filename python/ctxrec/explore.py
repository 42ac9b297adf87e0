"""Exploration: how unsure the model is of a user, and the two policies that act on it.

A user's query is ``q = q_0 + delta``: what the context and the catalog say (``q_0``, the
anonymous query) plus the user's own offset ``delta`` (their id factor, attributes and history
features, as the model builds them). The serving score of item ``i`` is ``q . v_i + b_i``, so
with the item vectors fixed the user's offset is a Bayesian linear regression:

* prior ``delta ~ N(0, C)``, ``C`` the covariance of the offsets of the users the model was
  fitted on (what a user the model has not met yet may look like);
* each item of the user's history is one observation along its vector ``v_h`` with noise
  variance :data:`NOISE` (score units), so the posterior precision is
  ``P = C^-1 + sum_h v_h v_h^T / NOISE``, covariance ``Sigma = P^-1``;
* the posterior mean is the model's own estimate (the fitted or folded-in query): exploring
  never moves the centre, only the spread around it.

A user with no history keeps the prior's spread; each interaction narrows it along that item's
direction. The policies (``Recommender.recommend(explore=...)``):

* ``"thompson"``: rank by one sample ``q + scale * L z``, ``z ~ N(0, I)``, ``L L^T = Sigma``;
* ``"ucb"``: rank by ``q . v_i + b_i + scale * sqrt(v_i^T Sigma v_i)`` (optimism).

Both are deterministic given a seed. Their effect on a replayed feedback loop is measured in
``benchmarks/bench_explore.py``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy.linalg import cholesky, lapack

from ctxrec.errors import InputError

#: The policies ``explore=`` takes.
POLICIES = ("thompson", "ucb")
#: Noise variance of one history item as an observation of the score (score units).
NOISE = 1.0
#: Ridge added to the prior covariance, relative to its mean variance (keeps it invertible when
#: some dimensions never vary across users, e.g. three-way factors without context).
RIDGE = 1e-3
#: Most offsets the prior is estimated from (a random sample beyond it).
PRIOR_USERS = 20_000
#: Posterior factors a Recommender keeps (least recently used out; 16 KiB each at dim 64).
CACHE_SIZE = 1024


def check_explore(explore: Any, scale: Any = 1.0, seed: Any = None) -> tuple[str | None, float, int | None]:
    """Check the exploration options of a request, changing nothing.

    Parameters
    ----------
    explore : {None, "thompson", "ucb"}
    scale : float >= 0
        Multiplies the posterior's standard deviation (0: the plain ranking).
    seed : int >= 0 or None
        Makes the Thompson sample reproducible (None: fresh randomness per request).

    Returns
    -------
    (explore, scale, seed)
        ``explore`` None when off (None, or a scale of 0).

    Raises
    ------
    InputError
        An unknown policy, a negative or non-finite scale, a seed that is not an integer >= 0
        (``field`` names the option).
    """
    if explore is not None and (not isinstance(explore, str) or explore not in POLICIES):
        raise InputError(f"explore must be one of {list(POLICIES)} or null, got {explore!r}",
                         field="explore", value=explore)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)) or \
            not math.isfinite(float(scale)) or not 0 <= float(scale) <= 1e6:
        raise InputError(f"explore_scale must be a finite number in [0, 1e6], got {scale!r}",
                         field="explore_scale", value=scale)
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))
                             or not 0 <= int(seed) < 2 ** 63):
        raise InputError(f"seed must be an integer >= 0 or null, got {seed!r}", field="seed", value=seed)
    scale = float(scale)
    return (explore if scale > 0 else None), scale, None if seed is None else int(seed)


def prior_precision(offsets: np.ndarray) -> np.ndarray:
    """Precision ``C^-1`` of the prior over a user's offset, from the fitted users' offsets.

    Parameters
    ----------
    offsets : float array [n_users, dim]
        Each user's query minus the anonymous query.

    Returns
    -------
    float64 array [dim, dim]
        ``inv(cov(offsets) + RIDGE * mean variance * I)`` (the identity's scale when there are
        fewer than two users).
    """
    x = np.asarray(offsets, np.float64)
    d = x.shape[1]
    if len(x) < 2:
        return np.eye(d)
    c = np.cov(x, rowvar=False).reshape(d, d)
    c += (RIDGE * max(float(np.trace(c)) / d, 1e-12)) * np.eye(d)
    return np.linalg.inv(c)


def posterior_factor(precision: np.ndarray, history_vecs: np.ndarray | None, noise: float = NOISE) -> np.ndarray:
    """A factor ``L`` of the posterior covariance of a user's offset: ``L @ L.T = Sigma``.

    Parameters
    ----------
    precision : float array [dim, dim]
        The prior's precision (:func:`prior_precision`).
    history_vecs : float array [m, dim] or None
        The item vectors of the user's history (m may be 0).
    noise : float > 0
        Noise variance per history item.

    Returns
    -------
    float64 array [dim, dim]
        Upper triangular ``R^-T``, ``R`` the lower Cholesky factor of the posterior precision
        ``P = precision + X^T X / noise`` (so ``Sigma = P^-1`` is never formed).
    """
    p = np.array(precision, np.float64)
    if history_vecs is not None and len(history_vecs):
        x = np.asarray(history_vecs, np.float64)
        p += x.T @ x / float(noise)
    r = cholesky((p + p.T) / 2, lower=True, check_finite=False)
    inv, info = lapack.dtrtri(r, lower=1)  # R^-1 (lower), in one LAPACK call
    if info != 0:
        raise np.linalg.LinAlgError(f"posterior precision is singular (dtrtri info={info})")
    return inv.T


def rng(seed: int | None, user: int) -> np.random.Generator:
    """The generator of one request.

    Parameters
    ----------
    seed : int or None
    user : int
        The user's dense index (-1: anonymous).

    Returns
    -------
    numpy.random.Generator
        Fixed by ``(seed, user)``; fresh entropy when ``seed`` is None.
    """
    return np.random.default_rng(None if seed is None else [int(seed), int(user) + 1])


def sample_offset(factor: np.ndarray, scale: float, gen: np.random.Generator) -> np.ndarray:
    """One Thompson draw of the user's offset from its posterior mean.

    Parameters
    ----------
    factor : float array [dim, dim]
        :func:`posterior_factor` ``L``.
    scale : float
    gen : numpy Generator

    Returns
    -------
    float32 array [dim]
        ``scale * L @ z``, ``z ~ N(0, I)``: covariance ``scale^2 Sigma``.
    """
    z = gen.standard_normal(factor.shape[1])
    return (scale * (factor @ z)).astype(np.float32)


def ucb_bonus(factor: np.ndarray, item_vecs: np.ndarray, scale: float) -> np.ndarray:
    """The optimism of each item: ``scale * sqrt(v^T Sigma v)``.

    Parameters
    ----------
    factor : float array [dim, dim]
        :func:`posterior_factor` ``L``.
    item_vecs : float array [m, dim]
    scale : float

    Returns
    -------
    float32 array [m]
        The bonus added to each item's score (score units, >= 0): ``scale * |L^T v|``.
    """
    v = np.asarray(item_vecs, np.float32)
    return (scale * np.linalg.norm(v @ factor.astype(np.float32), axis=1)).astype(np.float32)


def ucb_pool(engine: Any, k: int, scale: float, rerank: Mapping[str, Any]) -> int:
    """How many of the best-scored items UCB adds its bonus to.

    Returns
    -------
    int
        ``max(ceil(4 k max(1, scale)), engine.pool_size(k, ...))``: the bonus varies little between
        items next to each other in score, so a pool a few times k holds the whole-catalog answer
        (how often: ``benchmarks/results/explore.md``); it widens with the scale and the re-rank.
    """
    return max(math.ceil(4 * k * max(1.0, scale)),
               engine.pool_size(k, rerank["diversity"], rerank["calibrate"], rerank["exposure"]))


def rank(engine: Any, policy: str, scale: float, gens: Sequence[np.random.Generator], factors: Sequence[np.ndarray],
         queries: np.ndarray, k: int, call: Callable[[np.ndarray, int, dict[str, Any]], tuple[np.ndarray, ...]],
         rerank: Mapping[str, Any], targets: Sequence[Mapping[str, float] | None] | None = None
         ) -> tuple[list[list[Any]], list[list[float]], list[np.ndarray], list[list[float]]]:
    """The exploring top-k of b requests over an engine.

    Parameters
    ----------
    engine : ctxrec.engine.Engine
        Serves the item vectors, the pool size and the re-rank.
    policy : {"thompson", "ucb"}
    scale : float
        As :func:`check_explore`.
    gens : sequence of b numpy Generators (or None for UCB)
        One per request (:func:`rng`); Thompson draws from it, UCB reads none.
    factors : sequence of b float arrays [dim, dim]
        Each request's :func:`posterior_factor`.
    queries : float array [b, dim]
        The model's queries (the posterior means).
    k : int
    call : callable ``(queries [b, dim], n, options) -> (ids [b, n], scores [b, n], terms [b, n, 4])``
        The engine's batch search of the requests (their exclusions, filters, text) with the
        re-ranking ``options`` (``diversity`` ... ``targets``; empty: plain top-n).
    rerank : mapping
        ``diversity``, ``calibrate``, ``calibrate_by``, ``exposure`` (checked).
    targets : sequence of b mappings or None, optional
        Each request's calibration target.

    Returns
    -------
    (ids, scores, terms, explore)
        Per request: the item ids, the model's scores of them (without the query constant),
        the re-rank terms [m, 4] and what exploration added to each item's ranking score.
        Thompson: one search with each query moved by its draw. UCB: a pool of the best
        :func:`ucb_pool` by the model's score, the bonus added, the top k (re-ranked with
        ``rerank`` when it has options).
    """
    b = len(factors)
    reranked = bool(rerank["diversity"] or rerank["calibrate"] or rerank["exposure"])
    out: tuple[list[Any], ...] = ([], [], [], [])
    if policy == "thompson":
        delta = np.stack([sample_offset(f, scale, g) for f, g in zip(factors, gens)])
        ids, sc, terms = call(np.ascontiguousarray(queries + delta, np.float32), k, dict(rerank, targets=targets))
        for j in range(b):
            m = int(np.count_nonzero(np.isfinite(sc[j])))
            shift = engine.item_vectors(ids[j, :m]) @ delta[j]
            for o, x in zip(out, (ids[j, :m].tolist(), (sc[j, :m] - shift).tolist(), terms[j, :m], shift.tolist())):
                o.append(x)
        return out
    n = ucb_pool(engine, k, scale, rerank)
    ids, sc, _ = call(np.ascontiguousarray(queries, np.float32), n, {})
    for j in range(b):
        m = int(np.count_nonzero(np.isfinite(sc[j])))
        pool, mean = ids[j, :m], sc[j, :m]
        bonus = ucb_bonus(factors[j], engine.item_vectors(pool), scale)
        target = targets[j] if targets else None
        if reranked and k:
            picked, _, terms = engine.rerank(pool, mean + bonus, k, diversity=rerank["diversity"],
                                             calibrate=rerank["calibrate"] if target else 0.0,
                                             calibrate_by=rerank["calibrate_by"], target=target,
                                             exposure=rerank["exposure"])
            pos = {x: i for i, x in enumerate(pool.tolist())}
            order = np.array([pos[x] for x in picked.tolist()], np.int64)
        else:
            order = np.lexsort((np.arange(m), -(mean + bonus)))[:k]
            terms = np.zeros((len(order), 4), np.float32)
        for o, x in zip(out, (pool[order].tolist(), mean[order].tolist(), terms, bonus[order].tolist())):
            o.append(x)
    return out
