"""numba kernels for ContextFM: mini-batch training, scoring and export.

Layout of the parameters (see ``fm.py`` for how the Python side builds it):

* ``V`` f32 [n_rows, k] and ``w`` f32 [n_rows]: one embedding row and one linear weight per
  sparse feature. Rows are grouped as items | item attributes | context values | user
  attributes | users, so that a folded-in user is simply appended at the end.
* ``P`` f32 [n_text_rows, k] and ``a`` f32 [n_text_rows]: the stacked learned projections of the
  three dense text fields (item text, user text, request text); field ``f`` owns rows
  ``toff[f]:toff[f+1]``. A text field with embedding ``e`` behaves as one FM feature with
  vector ``P_f^T e`` and linear weight ``a_f . e``.
* ``w0`` f32 [1]: global bias.
* ``T`` f32 [n_rows, t]: three-way factors (``t`` = 0: off). Only the rows of users, items and
  context values are used (the others stay zero). The three-way term of an instance is
  ``sum_f T[user, f] * T[item, f] * tc[f]`` with ``tc = sum_c x_c T[context value c]``: for a
  fixed (user, context) it is an inner product ``<T[user] * tc, T[item]>`` over items (the
  serving form appends it to the pairwise vectors).

The score of one (user, context, request text, item) instance is the full second-order FM
``w0 + sum_a x_a w_a + 1/2 (||sum_a x_a v_a||^2 - sum_a x_a^2 ||v_a||^2)`` over the user-side
features (user id, user attributes, user text, context values, request text) and the
item-side features (item id, item attributes, item text). Split into the two sides it is
``<U, I> + (w0 + lin_U + intra_U) + (lin_I + intra_I)``: the serving export.

Determinism: every random draw is a counter-based hash of (seed, epoch, example, draw), and
every reduction runs in a fixed order (rows are owned by thread ``row % T`` but each row is
accumulated in batch order), so a given seed gives bit-identical parameters for any thread
count.

Compilation and its cache. Every function is compiled on first use (about a minute of CPU for
``train_epoch``, whose ``parallel=True`` loops roughly double its compile time, and ~30 s more
for the scoring kernels) and written to numba's on-disk cache, so a later process loads it in
about a second. One compiled version exists per combination of argument types: a read-only
array (e.g. ``TextEncoder.encode_query``'s read-only output passed straight to
``ContextFM.build_queries`` as request text) is another type than a writable one and compiles
(and caches) once more. The cache sits in ``NUMBA_CACHE_DIR`` when
set, else in ``__pycache__`` next to this file, else in numba's per-user cache directory
(``~/.cache/numba``); when none of them is writable (a read-only install run by a user without
a writable home) the kernels are cached under the temporary directory instead (and a warning
says so) rather than failing to import. :func:`cache_dir` tells where it is; set
``NUMBA_CACHE_DIR`` to a persistent writable directory where the default is not kept between
runs (containers). ``ctxrec.model.warmup`` compiles or loads everything a service needs.

The GIL. The entry points (``train_epoch``, ``predict_full``, ``item_table``, ``query_table``,
``query_table_serial``) touch no Python objects and release the GIL (``nogil=True``) for their
whole run, so other Python threads (HTTP requests) run while a fold-in trains or a batch is
scored. (numba already releases it inside each ``prange`` loop of a ``parallel=True`` kernel;
``nogil`` adds the serial parts, and the serial query kernel of live requests, which held it
throughout.) Several threads may therefore run kernels at once: with parallel kernels that
needs a threadsafe numba threading layer (TBB or OpenMP; the ``workqueue`` layer aborts the
process on concurrent use, with or without ``nogil``, and ``ctxrec.model.warmup`` warns when
it is the one in use). A kernel that releases the GIL may read arrays another thread writes:
callers must not update a model in place while another thread scores it
(``ContextFM.refit_user`` trains a copy for this reason).
"""
from __future__ import annotations

import math
import os
import tempfile
from collections import namedtuple
from typing import Any, Callable

import numba
import numpy as np
from numba import njit, prange

from ctxrec._log import get_logger

_log = get_logger("ctxrec.model")

_FALLBACK_CACHE: list[str | None] = []  # [dir] once numba's own cache locations failed ([None]: none works)


def _fallback_cache_dir() -> str | None:
    """A writable per-user directory under the temporary directory, or None."""
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    path = os.path.join(tempfile.gettempdir(), f"ctxrec-numba-cache-{uid}")
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return None
    return path


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, **options)`` that still caches when numba finds no writable
    cache location (see the module docstring) instead of failing at import.

    The first time numba reports no location, a fallback directory becomes the process's
    ``numba.config.CACHE_DIR`` (it was unset: numba would fail to cache any function of a
    read-only install, the other ``cache=True`` kernels of this package included).
    """
    def deco(fn: Callable[..., Any]) -> Any:
        if not _FALLBACK_CACHE:
            try:
                return njit(cache=True, **options)(fn)
            except RuntimeError as e:  # "cannot cache function ...: no locator available"
                if "no locator" not in str(e) or numba.config.CACHE_DIR:
                    raise
                where = _fallback_cache_dir()
                _FALLBACK_CACHE.append(where)
                if where is not None:
                    numba.config.CACHE_DIR = where  # read when a function's cache locator is chosen
                    _log.warning("numba cache: neither NUMBA_CACHE_DIR, %s nor numba's user cache is writable; "
                                 "caching compiled kernels in %s (set NUMBA_CACHE_DIR to a persistent "
                                 "writable directory so that new processes start fast)",
                                 os.path.join(os.path.dirname(__file__), "__pycache__"), where)
                else:
                    _log.warning("numba cache: no writable cache directory; the kernels are compiled in every "
                                 "process (about a minute). Set NUMBA_CACHE_DIR to a writable directory.")
        if _FALLBACK_CACHE[0] is None:
            return njit(**options)(fn)
        return njit(cache=True, **options)(fn)

    return deco


def cache_dir() -> str | None:
    """Directory of the compiled kernels' on-disk cache (None: not cached)."""
    cache = getattr(train_epoch, "_cache", None)
    path = getattr(cache, "_cache_path", None)
    return str(path) if path else None


LOSS_BPR = 0
LOSS_SOFTMAX = 1
LOSS_MSE = 2
LOSS_LOGLOSS = 3

# The training kernel's arguments, grouped (numba takes named tuples of arrays and scalars; each
# kernel unpacks them once at its top, so the loops see plain locals).
#: the examples: user, item, context indices [n, c], label, request text [n, d_q]
Examples = namedtuple("Examples", "users items ctx labels qtext")
#: the parameter layout: row offsets, item / user attribute CSRs, text tables and their row
#: offsets ``toff``, the first history row ``hist_off`` (-1: none), the end of the context rows
Layout = namedtuple("Layout", "ctx_off item_off user_off ia_ptr ia_idx ia_val ua_ptr ua_idx ua_val itext utext "
                              "toff hist_off ctx_hi")
#: negative sampling: each user's positives (CSR) and the sampling distribution
Sampler = namedtuple("Sampler", "pos_ptr pos_idx neg_items neg_cdf neg_logq")
#: the learned parameters (written in place)
Params = namedtuple("Params", "V w P a w0 T3")
#: the optimizer's moment estimates, one pair per parameter (written in place)
Moments = namedtuple("Moments", "mV sV mw sw mP sP ma sa m0 s0 mT3 sT3")
#: the training settings
Settings = namedtuple("Settings", "loss n_neg batch_size lr l2_v l2_w l2_p l2_t opt b1 b2 eps drop text_every")
#: the time-local history window (``hwin`` <= 0: off)
Window = namedtuple("Window", "hwin ua_rank ex_rank ex_hscale")

OPT_ADAM = 0
OPT_ADAGRAD = 1

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


@_jit(inline="always")
def _mix(x):
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


@_jit()
def _uniform(seed, a, b, c):
    """Counter-based uniform in [0, 1) from four integers (splitmix64 chain)."""
    h = _mix(np.uint64(seed) * _GOLD + np.uint64(a))
    h = _mix(h + np.uint64(b) * _GOLD)
    h = _mix(h + np.uint64(c))
    return (h >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@_jit()
def _contains(sorted_arr, lo, hi, x):
    """Binary search for x in sorted_arr[lo:hi]."""
    while lo < hi:
        mid = (lo + hi) // 2
        v = sorted_arr[mid]
        if v == x:
            return True
        if v < x:
            lo = mid + 1
        else:
            hi = mid
    return False


@_jit()
def _sigmoid(x):
    if x >= 0:
        z = math.exp(-x)
        return 1.0 / (1.0 + z)
    z = math.exp(x)
    return z / (1.0 + z)


@_jit()
def _softplus(x):
    # log(1 + exp(x)), stable
    if x > 0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


@_jit()
def _keep(drop, seed, epoch, e, r):
    """Inverted-dropout factor of sparse row ``r`` in training example ``e``: 0 (dropped, with
    probability ``drop``) or 1 / (1 - drop); 1 when ``drop`` is 0. A counter-based hash, so
    the forward and the backward pass of a batch see the same mask."""
    if drop <= 0.0:
        return 1.0
    if _uniform(seed + 0x2545F491, epoch, e, r) < drop:
        return 0.0
    return 1.0 / (1.0 - drop)


@_jit(inline="always")
def _ctx_row(ctx, e, c, ctx_off, drop, seed, epoch):
    """(row, dropout factor) of context field ``c`` of instance ``e``; factor 0.0 when the
    value is absent (-1) or dropped."""
    v = ctx[e, c]
    if v < 0:
        return -1, 0.0
    r = ctx_off[c] + v
    return r, _keep(drop, seed, epoch, e, r)


@_jit(inline="always")
def _touch(mark, touched, nt, r, stamp):
    """List row ``r`` in ``touched`` once per batch (``mark[r] == stamp``: it has a gradient, not
    listed yet); returns the new count."""
    if mark[r] == stamp:
        mark[r] = -2 - stamp
        touched[nt] = r
        nt += 1
    return nt


@_jit(inline="always")
def _grad_row(GV, gw, mark, V, r, x, G, j, g, stamp):
    """Accumulate the gradient of sparse row ``r`` (value ``x``) from row ``j`` of a batch:
    ``gw[r] += x g``, ``GV[r] += x G[j] - x^2 V[r] g``; marks the row as touched at ``stamp``."""
    mark[r] = stamp
    gw[r] += x * g
    for f in range(V.shape[1]):
        GV[r, f] += x * G[j, f] - x * x * V[r, f] * g


# ----------------------------------------------------------------------------------------
# side sums
# ----------------------------------------------------------------------------------------
@_jit()
def _add_text(emb, row, t0, a, P, tv, out, lin, sq):
    """Project a dense text embedding emb[row] through P[t0:t0+d] into tv[k] (zeroed by the
    caller), add it to the side sum out[k]; returns the updated (lin, sq) accumulators."""
    d = emb.shape[1]
    if d == 0:
        return lin, sq
    k = tv.shape[0]
    for q in range(d):
        e = emb[row, q]
        if e != 0.0:
            lin += e * a[t0 + q]
            for f in range(k):
                tv[f] += e * P[t0 + q, f]
    for f in range(k):
        out[f] += tv[f]
        sq += tv[f] * tv[f]
    return lin, sq


@_jit(inline="always")
def _add_row(V, w, r, x, out, lin, sq):
    """Add sparse feature row ``r`` with value ``x`` to a side sum: out[k] += x V[r]; returns
    the updated (linear, squared-norm) accumulators."""
    lin += x * w[r]
    for f in range(V.shape[1]):
        out[f] += x * V[r, f]
        sq += x * x * V[r, f] * V[r, f]
    return lin, sq


@_jit()
def _item_side(i, V, w, P, a, item_off, ia_ptr, ia_idx, ia_val, itext, t0, out, tout):
    """Sum of item-side vectors into out[k]; item text vector into tout[k] (zeros if none).

    Returns (linear part, intra part) of the item side as float64.
    """
    return _side_of_row(item_off + i, i, V, w, P, a, ia_ptr, ia_idx, ia_val, itext, t0, out, tout)


@_jit(inline="always")
def _side_of_row(r, i, V, w, P, a, ia_ptr, ia_idx, ia_val, itext, t0, out, tout):
    """Item side of attribute/text row ``i`` with id row ``r`` of V (r < 0: no id factor, a
    cold-start item); as :func:`_item_side`."""
    lin, sq = _side_rows(r, i, V, w, ia_ptr, ia_idx, ia_val, out, tout)
    lin, sq = _add_text(itext, i, t0, a, P, tout, out, lin, sq)
    return _side_total(out, lin, sq)


@_jit(inline="always")
def _side_rows(r, i, V, w, ia_ptr, ia_idx, ia_val, out, tout):
    """The id row ``r`` (r < 0: none) and the attribute rows of item ``i`` into out[k] (tout[k]
    zeroed); returns the (linear, squared-norm) accumulators."""
    k = V.shape[1]
    lin = 0.0
    sq = 0.0
    for f in range(k):
        out[f] = V[r, f] if r >= 0 else 0.0
        tout[f] = 0.0
        sq += out[f] * out[f]
    if r >= 0:
        lin += w[r]
    for p in range(ia_ptr[i], ia_ptr[i + 1]):
        lin, sq = _add_row(V, w, ia_idx[p], ia_val[p], out, lin, sq)
    return lin, sq


@_jit(inline="always")
def _add_projected(z, lz, tv, out, lin, sq):
    """Add a text vector already projected (z[k] = emb P, lz = emb . a) to a side sum, as
    :func:`_add_text` does with the projection."""
    for f in range(z.shape[0]):
        tv[f] = z[f]
        out[f] += z[f]
        sq += z[f] * z[f]
    return lin + lz, sq


@_jit(inline="always")
def _side_total(out, lin, sq):
    """(linear part, intra part) of a side sum: intra = (|sum|^2 - sum of |row|^2) / 2."""
    tot = 0.0
    for f in range(out.shape[0]):
        tot += out[f] * out[f]
    return lin, 0.5 * (tot - sq)


_NO_RANK = np.empty(0, dtype=np.int64)


@_jit()
def _in_window(rank, c, hwin, hs):
    """Weight factor of a history entry of time rank ``rank`` for a target of rank ``c``."""
    if abs(rank - c) > hwin:
        return 0.0
    return hs


@_jit()
def _user_side(e, u, ctx, ctx_off, V, w, P, a, user_off, ua_ptr, ua_idx, ua_val,
               utext, t1, qtext, t2, out, tu, tq, skip, drop, seed, epoch, hwin, ua_rank, c, hs):
    """Sum of user-side vectors (user, user attrs, user text, context, request text).

    Writes the user-text vector into tu[k] and the request-text vector into tq[k].
    The user-attribute row ``skip`` (the target item's history feature in training, -1 for
    none) is left out. ``drop`` > 0 (training only): each user-attribute / history / context
    row is dropped with that probability, the kept ones scaled by 1 / (1 - drop) (see
    ``_keep``). ``hwin`` > 0 (training only, see ``train_epoch``): only history entries whose
    time rank ``ua_rank[p]`` is within ``hwin`` of the target's rank ``c`` are used, scaled by ``hs``.
    Returns (linear part, intra part) as float64.
    """
    k = V.shape[1]
    lin = 0.0
    sq = 0.0
    for f in range(k):
        out[f] = 0.0
        tu[f] = 0.0
        tq[f] = 0.0
    if u >= 0:
        r = user_off + u
        lin += w[r]
        for f in range(k):
            out[f] = V[r, f]
            sq += V[r, f] * V[r, f]
        for p in range(ua_ptr[u], ua_ptr[u + 1]):
            r = ua_idx[p]
            if r == skip:
                continue
            x = ua_val[p] * _keep(drop, seed, epoch, e, r)
            if hwin > 0 and ua_rank[p] >= 0:
                x = _in_window(ua_rank[p], c, hwin, hs) * x
            if x != 0.0:
                lin, sq = _add_row(V, w, r, x, out, lin, sq)
        lin, sq = _add_text(utext, u, t1, a, P, tu, out, lin, sq)
    for c in range(ctx.shape[1]):
        r, x = _ctx_row(ctx, e, c, ctx_off, drop, seed, epoch)
        if x != 0.0:
            lin, sq = _add_row(V, w, r, x, out, lin, sq)
    lin, sq = _add_text(qtext, e, t2, a, P, tq, out, lin, sq)
    tot = 0.0
    for f in range(k):
        tot += out[f] * out[f]
    return lin, 0.5 * (tot - sq)


_QB = 32  # rows of a text projection one thread accumulates at a time (phase F of train_epoch)


@_jit(inline="always")
def _dense_block(E, erow, R, g, n_src, q0, q1, tb, GP, ga):
    """Gradient of text-projection rows ``tb + q0 .. tb + q1``: for each source j < n_src with
    embedding row ``erow[j]`` >= 0, GP[tb + q] += E[erow[j], q] * R[j] and
    ga[tb + q] += E[erow[j], q] * g[j] (zero embedding entries skipped)."""
    k = R.shape[1]
    for j in range(n_src):
        r = erow[j]
        if r < 0:
            continue
        gj = g[j]
        for q in range(q0, q1):
            ev = E[r, q]
            if ev == 0.0:
                continue
            ga[tb + q] += ev * gj
            for f in range(k):
                GP[tb + q, f] += ev * R[j, f]


@_jit()
def _tri_query(e, u, ctx, ctx_off, user_off, T3, drop, seed, epoch, tc, out):
    """Three-way query of instance ``e``: tc[t] = sum of T3 over its (kept) context values,
    out[t] = T3[user] * tc (zeros for no user); ``tc`` and ``out`` may be the same array.
    ``drop`` as in ``_user_side`` (0 = scoring)."""
    t3 = T3.shape[1]
    for f in range(t3):
        tc[f] = 0.0
        out[f] = 0.0
    if u < 0:
        return
    for c in range(ctx.shape[1]):
        r, x = _ctx_row(ctx, e, c, ctx_off, drop, seed, epoch)
        if x == 0.0:
            continue
        for f in range(t3):
            tc[f] += x * T3[r, f]
    ru = user_off + u
    for f in range(t3):
        out[f] = T3[ru, f] * tc[f]


# ----------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------
@_jit()
def _opt_row(X, M, S, r, g, l2, lr, opt, b1, b2, eps, c1, c2):
    """One optimizer step on row r of X (2-D) with gradient g[k] (+ L2)."""
    k = X.shape[1]
    for f in range(k):
        gf = g[f] + l2 * X[r, f]
        if opt == 0:
            m = b1 * M[r, f] + (1.0 - b1) * gf
            s = b2 * S[r, f] + (1.0 - b2) * gf * gf
            M[r, f] = m
            S[r, f] = s
            X[r, f] -= lr * (m / c1) / (math.sqrt(s / c2) + eps)
        else:
            s = S[r, f] + gf * gf
            S[r, f] = s
            X[r, f] -= lr * gf / (math.sqrt(s) + eps)


@_jit()
def _opt_scalar(x, M, S, r, g, l2, lr, opt, b1, b2, eps, c1, c2):
    gf = g + l2 * x[r]
    if opt == 0:
        m = b1 * M[r] + (1.0 - b1) * gf
        s = b2 * S[r] + (1.0 - b2) * gf * gf
        M[r] = m
        S[r] = s
        x[r] -= lr * (m / c1) / (math.sqrt(s / c2) + eps)
    else:
        s = S[r] + gf * gf
        S[r] = s
        x[r] -= lr * gf / (math.sqrt(s) + eps)


@_jit(parallel=True, nogil=True)
def train_epoch(order, examples, layout, sampler, params, moments, settings, window,
                step0, seed, epoch, row_lo, row_hi, train_dense, n_threads, out_loss):
    """Run one epoch of mini-batch training over ``order`` (example indices, shuffled).

    The arguments are grouped in the named tuples :data:`Examples`, :data:`Layout`,
    :data:`Sampler`, :data:`Params`, :data:`Moments`, :data:`Settings` and :data:`Window`; the
    names below are their fields.

    Instances per example: j = 0 is the observed item, j = 1..n_neg sampled negatives
    (negatives are drawn from ``neg_items`` by ``neg_cdf`` (cumulative, empty = uniform),
    rejecting the user's positives ``pos_idx[pos_ptr[u]:pos_ptr[u+1]]`` up to 8 tries).
    Only rows ``row_lo <= r < row_hi`` of V/w are updated; P/a/w0 only if ``train_dense``.
    ``hist_off`` >= 0: user-attribute rows ``hist_off + item`` are the user's history items
    and the example's own item is left out of its user side (no target leakage).
    ``l2_v``: f64 [n_rows], the L2 coefficient of each embedding row (per-field L2).
    ``drop``: dropout probability of user-side attribute / history / context rows (``_keep``).
    ``hwin`` > 0: time-local history. ``ua_rank`` (int64, aligned with ``ua_idx``) is the time
    rank of each history entry in its user's history (-1 = not a history entry), ``ex_rank[ex]``
    the rank of the example's own item there, ``ex_hscale[ex]`` the factor
    that turns the entries' ``1 / |history| ** alpha`` weight into ``1 / |window| ** alpha``; only
    entries with ``|rank - ex_rank| <= hwin`` enter the example's user side. ``hwin`` <= 0: off
    (the three arrays may be empty).
    ``T3`` f32 [n_rows, t] (and its optimizer state ``mT3``, ``sT3``): three-way factors, trained
    on the rows of the user, the items and the (kept) context values, L2 ``l2_t`` f64 [n_rows];
    t = 0: off. ``ctx_hi``: end of the context-value rows (rows of attributes and history have
    no three-way factors, so they get no step).
    ``text_every`` >= 1: the item-text rows of ``P`` / ``a`` take one optimizer step per
    ``text_every`` mini-batches (a *period*; the last one ends with the call), on the gradient
    summed over the period (and ``text_every`` times the L2, which keeps its ratio to the summed
    data term). Within a period the projection is constant, so an item's projected text is
    computed once per period (the first batch it appears in) and its gradient rows are summed per
    item: two BLAS products per period over the period's distinct items instead of two per batch
    over each batch's (``text_every`` = 1: every batch, as plain mini-batch training).
    ``n_threads`` only sets how reductions are partitioned (results do not depend on it).

    Returns
    -------
    int
        The optimizer step count after the epoch; the summed loss goes to ``out_loss[0]``.
    """
    users, items, ctx, labels, qtext = examples
    ctx_off, item_off, user_off, ia_ptr, ia_idx, ia_val, ua_ptr, ua_idx, ua_val, itext, utext, toff, \
        hist_off, ctx_hi = layout
    pos_ptr, pos_idx, neg_items, neg_cdf, neg_logq = sampler
    V, w, P, a, w0, T3 = params
    mV, sV, mw, sw, mP, sP, ma, sa, m0, s0, mT3, sT3 = moments
    loss, n_neg, batch_size, lr, l2_v, l2_w, l2_p, l2_t, opt, b1, b2, eps, drop, text_every = settings
    hwin, ua_rank, ex_rank, ex_hscale = window
    n = order.shape[0]
    k = V.shape[1]
    J = 1 + n_neg
    T = max(1, n_threads)
    n_rows = V.shape[0]
    n_items = ia_ptr.shape[0] - 1
    n_trow = P.shape[0]
    B = batch_size
    S = B * J
    inst = np.empty((B, J), dtype=np.int64)
    yinst = np.zeros((B, J), dtype=np.float64)
    slot_of = np.full(n_items, -1, dtype=np.int64)
    inst_slot = np.empty((B, J), dtype=np.int64)
    slot_item = np.empty(S, dtype=np.int64)
    Islot = np.zeros((S, k), dtype=np.float32)
    tIslot = np.zeros((S, k), dtype=np.float32)
    ibslot = np.zeros(S, dtype=np.float64)
    Ue = np.zeros((B, k), dtype=np.float32)
    tue = np.zeros((B, k), dtype=np.float32)
    tqe = np.zeros((B, k), dtype=np.float32)
    ube = np.zeros(B, dtype=np.float64)
    g = np.zeros((B, J), dtype=np.float64)
    Gu = np.zeros((B, k), dtype=np.float32)
    gsum = np.zeros(B, dtype=np.float64)
    lossb = np.zeros(B, dtype=np.float64)
    GI = np.zeros((S, k), dtype=np.float32)
    gs = np.zeros(S, dtype=np.float64)
    GV = np.zeros((n_rows, k), dtype=np.float32)
    gw = np.zeros(n_rows, dtype=np.float64)
    mark = np.full(n_rows, -1, dtype=np.int64)
    touched = np.empty(n_rows, dtype=np.int64)
    GP = np.zeros((n_trow, k), dtype=np.float32)
    ga = np.zeros(n_trow, dtype=np.float64)
    t3 = T3.shape[1]
    ctx_lo = ctx_off[0] if ctx_off.shape[0] > 0 else ctx_hi
    tcb = np.zeros((B, t3), dtype=np.float32)   # context sum of T3 per example
    ucb = np.zeros((B, t3), dtype=np.float32)   # T3[user] * tc: the example's three-way query
    gtb = np.zeros((B, t3), dtype=np.float64)   # sum_j g_j T3[item_j]
    GTI = np.zeros((S, t3), dtype=np.float64)   # per-slot item gradient of T3
    GT = np.zeros((n_rows, t3), dtype=np.float32)
    di = itext.shape[1]
    du = utext.shape[1]
    dq = qtext.shape[1]
    # item text by period (see text_every): period slot of each item, the period's items, their
    # projected text (Zp, lzp) and summed residual rows (Gp = sum GI - t * gs, gp = sum gs)
    R_ = max(1, text_every)
    cap = min(n_items, R_ * S) if di > 0 else 0
    pslot_of = np.full(n_items if di > 0 else 0, -1, dtype=np.int64)
    pitem = np.empty(cap, dtype=np.int64)
    Zp = np.zeros((cap, k), dtype=np.float32)
    lzp = np.zeros(cap, dtype=np.float32)
    Gp = np.zeros((cap, k), dtype=np.float32)
    gp = np.zeros(cap, dtype=np.float32)
    npp = 0
    Ru = np.zeros((B if du > 0 else 0, k), dtype=np.float64)
    Rq = np.zeros((B if dq > 0 else 0, k), dtype=np.float64)
    urow = np.full(B, -1, dtype=np.int64)
    qrow = np.full(B, -1, dtype=np.int64)
    t0 = toff[0]
    t1 = toff[1]
    t2 = toff[2]
    Pi = np.ascontiguousarray(P[t0:t0 + di]) if di > 0 else np.empty((0, k), dtype=np.float32)
    ai = np.ascontiguousarray(a[t0:t0 + di]) if di > 0 else np.empty(0, dtype=np.float32)
    Eb = np.empty((0, di), dtype=np.float32)      # the batch's new text rows (text_every = 1)
    GPi = np.zeros((di, k), dtype=np.float32)     # the period's item-text gradient (rows t0..)
    gai = np.zeros(di, dtype=np.float32)
    n_neg_items = neg_items.shape[0]
    use_cdf = neg_cdf.shape[0] > 0
    step = step0
    total_loss = 0.0
    n_batches = (n + B - 1) // B
    for bi in range(n_batches):
        lo = bi * B
        hi = min(n, lo + B)
        nb = hi - lo
        # ---- A: instances and negatives (parallel, hash RNG) -----------------------
        for bb in prange(nb):
            ex = order[lo + bb]
            u = users[ex]
            inst[bb, 0] = items[ex]
            yinst[bb, 0] = labels[ex]
            for j in range(1, J):
                cand = 0
                for tr in range(8):
                    rnd = _uniform(seed, epoch, ex, j * 8 + tr)
                    if use_cdf:
                        pos = np.searchsorted(neg_cdf, rnd * neg_cdf[n_neg_items - 1], side="right")
                        if pos >= n_neg_items:
                            pos = n_neg_items - 1
                    else:
                        pos = int(rnd * n_neg_items)
                        if pos >= n_neg_items:
                            pos = n_neg_items - 1
                    cand = neg_items[pos]
                    if u < 0 or not _contains(pos_idx, pos_ptr[u], pos_ptr[u + 1], cand):
                        break
                inst[bb, j] = cand
                yinst[bb, j] = 0.0
        # ---- slots: unique items in first-appearance order (serial, cheap) ----------
        ns = 0
        for bb in range(nb):
            for j in range(J):
                it = inst[bb, j]
                s_ = slot_of[it]
                if s_ < 0:
                    s_ = ns
                    slot_of[it] = s_
                    slot_item[s_] = it
                    ns += 1
                inst_slot[bb, j] = s_
        # ---- B: item sides ------------------------------------------------------
        # items new to the period get their projected text as two BLAS products
        # (Es [new, di] @ P[t0:t0+di] and @ a[t0:t0+di], float32), not one slot at a time
        period_end = (bi + 1) % R_ == 0 or bi == n_batches - 1
        if di > 0:
            p0 = npp
            for s_ in range(ns):
                it = slot_item[s_]
                if pslot_of[it] < 0:
                    pslot_of[it] = npp
                    pitem[npp] = it
                    npp += 1
            if npp > p0:
                Es = np.empty((npp - p0, di), dtype=np.float32)
                for j in prange(npp - p0):
                    Es[j] = itext[pitem[p0 + j]]
                if R_ == 1:  # the period is this batch: phase F reuses the rows
                    Eb = Es
                Zp[p0:npp] = np.dot(Es, Pi)
                lzp[p0:npp] = np.dot(Es, ai)
                for j in prange(npp - p0):
                    gp[p0 + j] = 0.0
                    for f in range(k):
                        Gp[p0 + j, f] = 0.0
        for s_ in prange(ns):
            it = slot_item[s_]
            lin, sq = _side_rows(item_off + it, it, V, w, ia_ptr, ia_idx, ia_val, Islot[s_], tIslot[s_])
            if di > 0:
                pp = pslot_of[it]
                lin, sq = _add_projected(Zp[pp], np.float64(lzp[pp]), tIslot[s_], Islot[s_], lin, sq)
            lin, intra = _side_total(Islot[s_], lin, sq)
            ibslot[s_] = lin + intra
            gs[s_] = 0.0
            for f in range(k):
                GI[s_, f] = 0.0
            for f in range(t3):
                GTI[s_, f] = 0.0
        # ---- C: user sides, scores, loss gradients ----------------------------------
        for bb in prange(nb):
            ex = order[lo + bb]
            u = users[ex]
            skip = hist_off + items[ex] if hist_off >= 0 else -1
            c_ = ex_rank[ex] if hwin > 0 else -1
            hs_ = ex_hscale[ex] if hwin > 0 else 1.0
            lin, intra = _user_side(ex, u, ctx, ctx_off, V, w, P, a, user_off, ua_ptr, ua_idx,
                                    ua_val, utext, t1, qtext, t2, Ue[bb], tue[bb], tqe[bb], skip,
                                    drop, seed, epoch, hwin, ua_rank, c_, hs_)
            ube[bb] = lin + intra
            base = w0[0] + ube[bb]
            if t3 > 0:
                _tri_query(ex, u, ctx, ctx_off, user_off, T3, drop, seed, epoch, tcb[bb], ucb[bb])
            # scores
            sc = np.empty(J, dtype=np.float64)
            for j in range(J):
                s_ = inst_slot[bb, j]
                d = 0.0
                for f in range(k):
                    d += Ue[bb, f] * Islot[s_, f]
                if t3 > 0:
                    ri = item_off + inst[bb, j]
                    for f in range(t3):
                        d += ucb[bb, f] * T3[ri, f]
                sc[j] = base + ibslot[s_] + d
            lb = 0.0
            if loss == LOSS_BPR:  # BPR: mean over negatives of -log sigma(s_pos - s_neg)
                g[bb, 0] = 0.0
                for j in range(1, J):
                    dlt = sc[0] - sc[j]
                    lb += _softplus(-dlt) / n_neg
                    gj = _sigmoid(-dlt) / n_neg
                    g[bb, j] = gj
                    g[bb, 0] -= gj
            elif loss == LOSS_SOFTMAX:  # sampled softmax with logQ correction
                mx = -1e300
                lnn = math.log(n_neg)
                for j in range(J):
                    if j > 0:
                        sc[j] -= neg_logq[inst[bb, j]] + lnn
                    if sc[j] > mx:
                        mx = sc[j]
                z = 0.0
                for j in range(J):
                    z += math.exp(sc[j] - mx)
                lb = -(sc[0] - mx - math.log(z))
                for j in range(J):
                    p = math.exp(sc[j] - mx) / z
                    g[bb, j] = p - (1.0 if j == 0 else 0.0)
            elif loss == LOSS_MSE:  # MSE (1/2 squared error)
                r_ = sc[0] - yinst[bb, 0]
                lb = 0.5 * r_ * r_
                g[bb, 0] = r_
                for j in range(1, J):
                    g[bb, j] = 0.0
            else:  # logloss, y in {0, 1}
                for j in range(J):
                    y = yinst[bb, j]
                    lb += _softplus(sc[j]) - y * sc[j]
                    g[bb, j] = _sigmoid(sc[j]) - y
            lossb[bb] = lb
            gsm = 0.0
            for f in range(k):
                Gu[bb, f] = 0.0
            for f in range(t3):
                gtb[bb, f] = 0.0
            for j in range(J):
                gj = g[bb, j]
                gsm += gj
                s_ = inst_slot[bb, j]
                for f in range(k):
                    Gu[bb, f] += gj * (Ue[bb, f] + Islot[s_, f])
                ri = item_off + inst[bb, j]
                for f in range(t3):
                    gtb[bb, f] += gj * T3[ri, f]
            gsum[bb] = gsm
        for bb in range(nb):
            total_loss += lossb[bb]
        # ---- D: per-slot item gradients (slot owned by thread s % T, batch order) -----
        for t in prange(T):
            for bb in range(nb):
                for j in range(J):
                    s_ = inst_slot[bb, j]
                    if s_ % T != t:
                        continue
                    gj = g[bb, j]
                    gs[s_] += gj
                    for f in range(k):
                        GI[s_, f] += gj * (Ue[bb, f] + Islot[s_, f])
                    for f in range(t3):
                        GTI[s_, f] += gj * ucb[bb, f]
        # ---- E: sparse row gradients (row owned by thread r % T, batch order) ------
        stamp = step
        for t in prange(T):
            for bb in range(nb):
                ex = order[lo + bb]
                u = users[ex]
                gsm = gsum[bb]
                if u >= 0:
                    r = user_off + u
                    if r % T == t and r >= row_lo and r < row_hi:
                        _grad_row(GV, gw, mark, V, r, 1.0, Gu, bb, gsm, stamp)
                        for f in range(t3):
                            GT[r, f] += gtb[bb, f] * tcb[bb, f]
                    skip = hist_off + items[ex] if hist_off >= 0 else -1
                    for p in range(ua_ptr[u], ua_ptr[u + 1]):
                        r = ua_idx[p]
                        if r % T != t or r < row_lo or r >= row_hi or r == skip:
                            continue
                        x = ua_val[p] * _keep(drop, seed, epoch, ex, r)
                        if hwin > 0 and ua_rank[p] >= 0:
                            x = _in_window(ua_rank[p], ex_rank[ex], hwin, ex_hscale[ex]) * x
                        if x == 0.0:
                            continue
                        _grad_row(GV, gw, mark, V, r, x, Gu, bb, gsm, stamp)
                for c in range(ctx.shape[1]):
                    v = ctx[ex, c]
                    if v < 0:
                        continue
                    r = ctx_off[c] + v
                    if r % T != t or r < row_lo or r >= row_hi:
                        continue
                    x = _keep(drop, seed, epoch, ex, r)
                    if x == 0.0:
                        continue
                    _grad_row(GV, gw, mark, V, r, x, Gu, bb, gsm, stamp)
                    if t3 > 0 and u >= 0:
                        ru = user_off + u
                        for f in range(t3):
                            GT[r, f] += x * gtb[bb, f] * T3[ru, f]
            for s_ in range(ns):
                it = slot_item[s_]
                gss = gs[s_]
                r = item_off + it
                if r % T == t and r >= row_lo and r < row_hi:
                    _grad_row(GV, gw, mark, V, r, 1.0, GI, s_, gss, stamp)
                    for f in range(t3):
                        GT[r, f] += GTI[s_, f]
                for p in range(ia_ptr[it], ia_ptr[it + 1]):
                    r = ia_idx[p]
                    if r % T != t or r < row_lo or r >= row_hi:
                        continue
                    _grad_row(GV, gw, mark, V, r, ia_val[p], GI, s_, gss, stamp)
        # ---- F: dense text projections ---------------------------------------------
        # GP[t + q] += sum_j E[row_j, q] * R[j] and ga[t + q] += sum_j E[row_j, q] * g[j] per text
        # field, with the residual rows R[j] = G[j] - t[j] * g[j] formed once (float64, as
        # always) instead of once per P row; P rows are taken in blocks of _QB by the threads
        # and each block walks the slots / examples in order (the sums keep their order).
        if train_dense and n_trow > 0:
            for s_ in prange(ns if di > 0 else 0):  # slots are distinct items: one row each
                gss = gs[s_]
                pp = pslot_of[slot_item[s_]]
                gp[pp] += gss
                for f in range(k):
                    Gp[pp, f] += GI[s_, f] - tIslot[s_, f] * gss
            if di > 0 and period_end:  # item-text gradient Ep^T Gp, Ep^T gp (BLAS, float32)
                if R_ == 1:
                    Ep = Eb
                else:
                    Ep = np.empty((npp, di), dtype=np.float32)
                    for j in prange(npp):
                        Ep[j] = itext[pitem[j]]
                EpT = Ep.T
                GPi = np.dot(EpT, Gp[:npp])
                gai = np.dot(EpT, gp[:npp])
            for bb in prange(nb):
                ex = order[lo + bb]
                u = users[ex]
                urow[bb] = u if du > 0 else -1
                qrow[bb] = ex
                gsm = gsum[bb]
                for f in range(k if du > 0 else 0):
                    Ru[bb, f] = Gu[bb, f] - tue[bb, f] * gsm
                for f in range(k if dq > 0 else 0):
                    Rq[bb, f] = Gu[bb, f] - tqe[bb, f] * gsm
            nbu = (du + _QB - 1) // _QB
            nbq = (dq + _QB - 1) // _QB
            for blk in prange(nbu + nbq):
                if blk < nbu:
                    q0 = blk * _QB
                    _dense_block(utext, urow, Ru, gsum, nb, q0, min(du, q0 + _QB), t1, GP, ga)
                else:
                    q0 = (blk - nbu) * _QB
                    _dense_block(qtext, qrow, Rq, gsum, nb, q0, min(dq, q0 + _QB), t2, GP, ga)
        # ---- G: optimizer step -----------------------------------------------------
        step += 1
        c1 = 1.0 - b1 ** step
        c2 = 1.0 - b2 ** step
        nt = 0
        for bb in range(nb):
            ex = order[lo + bb]
            u = users[ex]
            if u >= 0:
                nt = _touch(mark, touched, nt, user_off + u, stamp)
                for p in range(ua_ptr[u], ua_ptr[u + 1]):
                    nt = _touch(mark, touched, nt, ua_idx[p], stamp)
            for c in range(ctx.shape[1]):
                v = ctx[ex, c]
                if v >= 0:
                    nt = _touch(mark, touched, nt, ctx_off[c] + v, stamp)
        for s_ in range(ns):
            it = slot_item[s_]
            nt = _touch(mark, touched, nt, item_off + it, stamp)
            for p in range(ia_ptr[it], ia_ptr[it + 1]):
                nt = _touch(mark, touched, nt, ia_idx[p], stamp)
        for ti in prange(nt):
            r = touched[ti]
            _opt_row(V, mV, sV, r, GV[r], l2_v[r], lr, opt, b1, b2, eps, c1, c2)
            _opt_scalar(w, mw, sw, r, gw[r], l2_w, lr, opt, b1, b2, eps, c1, c2)
            for f in range(k):
                GV[r, f] = 0.0
            if t3 > 0 and (r < item_off + n_items or (r >= ctx_lo and r < ctx_hi) or r >= user_off):
                _opt_row(T3, mT3, sT3, r, GT[r], l2_t[r], lr, opt, b1, b2, eps, c1, c2)
                for f in range(t3):
                    GT[r, f] = 0.0
            gw[r] = 0.0
            mark[r] = -1
        if train_dense:
            for q in prange(n_trow):
                if q >= t0 and q < t0 + di:  # item text: one step per period
                    if period_end:
                        _opt_row(P, mP, sP, q, GPi[q - t0], l2_p * R_, lr, opt, b1, b2, eps, c1, c2)
                        _opt_scalar(a, ma, sa, q, np.float64(gai[q - t0]), l2_p * R_, lr, opt, b1, b2,
                                    eps, c1, c2)
                    continue
                _opt_row(P, mP, sP, q, GP[q], l2_p, lr, opt, b1, b2, eps, c1, c2)
                _opt_scalar(a, ma, sa, q, ga[q], l2_p, lr, opt, b1, b2, eps, c1, c2)
                for f in range(k):
                    GP[q, f] = 0.0
                ga[q] = 0.0
            g0 = 0.0
            for bb in range(nb):
                g0 += gsum[bb]
            _opt_scalar(w0, m0, s0, 0, g0, 0.0, lr, opt, b1, b2, eps, c1, c2)
        for s_ in range(ns):
            slot_of[slot_item[s_]] = -1
        if di > 0 and period_end:  # a new period: the projection has moved
            for j in range(npp):
                pslot_of[pitem[j]] = -1
            npp = 0
            if train_dense:
                Pi[:] = P[t0:t0 + di]
                ai[:] = a[t0:t0 + di]
    out_loss[0] = total_loss
    return step


# ----------------------------------------------------------------------------------------
# scoring and export
# ----------------------------------------------------------------------------------------

@_jit(nogil=True)
def train_epochs(orders, examples, layout, sampler, params, moments, settings, window,
                 step0, seed, row_lo, row_hi, train_dense, n_threads, out_loss):
    """:func:`train_epoch` once per row of ``orders`` (int64 [epochs, n]), row ``e`` as epoch ``e``.

    Every epoch gets the same ``step0`` and ``seed``, exactly as the same number of
    ``train_epoch`` calls would (a fold-in's loop): the results are identical. One call holds
    and releases the GIL once for all epochs, where a Python loop over ``train_epoch`` takes
    the GIL back between epochs and waits for it behind every busy request thread (a GIL
    convoy: measured in ``benchmarks/results/feedback.md``).

    Returns
    -------
    int
        The step count after the last epoch; ``out_loss[0]`` holds the last epoch's loss.
    """
    step = step0
    for ep in range(orders.shape[0]):
        step = train_epoch(orders[ep], examples, layout, sampler, params, moments, settings, window,
                           step0, seed, ep, row_lo, row_hi, train_dense, n_threads, out_loss)
    return step


@_jit(parallel=True, nogil=True)
def predict_full(users, items, ctx, qtext,
                 ctx_off, item_off, user_off, ia_ptr, ia_idx, ia_val, ua_ptr, ua_idx, ua_val,
                 itext, utext, toff, V, w, P, a, w0, T3, out):
    """Full FM score per instance, computed directly over the union of all features.

    Independent of the two-sided decomposition used for training and export (it sums all
    feature vectors of the instance into one vector and subtracts the squared norms), so it
    can check the export. ``users[e] < 0`` means "no user" (cold request). The three-way
    term (``T3``, t > 0) is added as ``sum_f T3[u, f] T3[i, f] sum_c T3[c, f]``.
    """
    n = users.shape[0]
    k = V.shape[1]
    for e in prange(n):
        tot = np.zeros(k, dtype=np.float64)
        sq = 0.0
        lin = np.float64(w0[0])
        i = items[e]
        u = users[e]
        # item id, item attributes; user id, user attributes; context values
        lin, sq = _add_row(V, w, item_off + i, 1.0, tot, lin, sq)
        for p in range(ia_ptr[i], ia_ptr[i + 1]):
            lin, sq = _add_row(V, w, ia_idx[p], np.float64(ia_val[p]), tot, lin, sq)
        if u >= 0:
            lin, sq = _add_row(V, w, user_off + u, 1.0, tot, lin, sq)
            for p in range(ua_ptr[u], ua_ptr[u + 1]):
                lin, sq = _add_row(V, w, ua_idx[p], np.float64(ua_val[p]), tot, lin, sq)
        for c in range(ctx.shape[1]):
            v = ctx[e, c]
            if v >= 0:
                lin, sq = _add_row(V, w, ctx_off[c] + v, 1.0, tot, lin, sq)
        # dense text fields: item (row i of itext), user (row u), request (row e of qtext)
        tv = np.zeros(k, dtype=np.float64)
        lin, sq = _add_text(itext, i, toff[0], a, P, tv, tot, lin, sq)
        if u >= 0:
            tv[:] = 0.0
            lin, sq = _add_text(utext, u, toff[1], a, P, tv, tot, lin, sq)
        tv[:] = 0.0
        lin, sq = _add_text(qtext, e, toff[2], a, P, tv, tot, lin, sq)
        pair = 0.0
        for f in range(k):
            pair += tot[f] * tot[f]
        tri = 0.0
        if u >= 0:
            for f in range(T3.shape[1]):
                tc = 0.0
                for c in range(ctx.shape[1]):
                    v = ctx[e, c]
                    if v >= 0:
                        tc += np.float64(T3[ctx_off[c] + v, f])
                tri += np.float64(T3[user_off + u, f]) * T3[item_off + i, f] * tc
        out[e] = lin + 0.5 * (pair - sq) + tri


@_jit(parallel=True, nogil=True)
def item_table(V, w, P, a, item_off, ia_ptr, ia_idx, ia_val, itext, t0, vecs, bias):
    """Item table for serving: vecs[i] = item-side vector sum, bias[i] = lin_I + intra_I."""
    n = vecs.shape[0]
    k = V.shape[1]
    for i in prange(n):
        tmp = np.empty(k, dtype=np.float32)
        lin, intra = _item_side(i, V, w, P, a, item_off, ia_ptr, ia_idx, ia_val, itext, t0,
                                vecs[i], tmp)
        bias[i] = lin + intra


@_jit(parallel=True, nogil=True)
def item_table_rows(rows, V, w, P, a, ia_ptr, ia_idx, ia_val, itext, t0, vecs, bias):
    """item_table for given items: row i has id row ``rows[i]`` of V (-1: none, a cold-start
    item), attributes ``ia_*[i]`` and text ``itext[i]``; vecs[i], bias[i] as in item_table."""
    n = vecs.shape[0]
    k = V.shape[1]
    for i in prange(n):
        tmp = np.empty(k, dtype=np.float32)
        lin, intra = _side_of_row(rows[i], i, V, w, P, a, ia_ptr, ia_idx, ia_val, itext, t0, vecs[i], tmp)
        bias[i] = lin + intra


@_jit()
def _query_row(e, users, ctx, qtext, ctx_off, V, w, P, a, user_off, ua_ptr, ua_idx, ua_val,
               utext, t1, t2, w0, T3, queries, const, tri):
    k = V.shape[1]
    tu = np.empty(k, dtype=np.float32)
    tq = np.empty(k, dtype=np.float32)
    lin, intra = _user_side(e, users[e], ctx, ctx_off, V, w, P, a, user_off, ua_ptr, ua_idx,
                            ua_val, utext, t1, qtext, t2, queries[e], tu, tq, -1, 0.0, 0, 0,
                            0, _NO_RANK, -1, 1.0)
    const[e] = w0[0] + lin + intra
    if T3.shape[1] > 0:  # tri[e] doubles as the context-sum scratch (see _tri_query)
        _tri_query(e, users[e], ctx, ctx_off, user_off, T3, 0.0, 0, 0, tri[e], tri[e])


@_jit(parallel=True, nogil=True)
def query_table(users, ctx, qtext, ctx_off, V, w, P, a, user_off, ua_ptr, ua_idx, ua_val,
                utext, t1, t2, w0, T3, queries, const, tri):
    """Query vectors for serving: queries[e] = user-side vector sum; const[e] = w0 + lin_U + intra_U;
    tri[e] f32 [t] = the three-way query T3[user] * sum_c T3[context value c] (t = 0: off)."""
    for e in prange(queries.shape[0]):
        _query_row(e, users, ctx, qtext, ctx_off, V, w, P, a, user_off, ua_ptr, ua_idx, ua_val,
                   utext, t1, t2, w0, T3, queries, const, tri)


@_jit(nogil=True)
def query_table_serial(users, ctx, qtext, ctx_off, V, w, P, a, user_off, ua_ptr, ua_idx, ua_val,
                       utext, t1, t2, w0, T3, queries, const, tri):
    """query_table on the calling thread: a single live request must not wake a thread pool."""
    for e in range(queries.shape[0]):
        _query_row(e, users, ctx, qtext, ctx_off, V, w, P, a, user_off, ua_ptr, ua_idx, ua_val,
                   utext, t1, t2, w0, T3, queries, const, tri)
