"""ContextFM: exact export, determinism, learning on planted structure, cold start, fold-in,
save/load, errors; a short real-data smoke test on MovieLens 100K when the data is there."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ctxrec import CorruptArtifactError
from ctxrec.model import ContextFM, Interactions, SideInfo
from ctxrec.metrics import auc as auc_score, ranking_metrics_from_topk
from ctxrec import csr


# ---------------------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------------------
def _random_problem(seed: int = 0, n: int = 600):
    """Every field present, random values: for exactness checks."""
    rng = np.random.default_rng(seed)
    nU, nI = 30, 25
    side = SideInfo(
        nU, nI, (3, 4),
        item_attrs=(rng.random((nI, 5)) < 0.4).astype(np.float32),
        user_attrs=(rng.random((nU, 3)) < 0.5).astype(np.float32),
        item_text=rng.normal(size=(nI, 12)).astype(np.float32),
        user_text=rng.normal(size=(nU, 6)).astype(np.float32),
        context_text_dim=5,
    )
    ctx = np.stack([rng.integers(-1, 3, n), rng.integers(0, 4, n)], 1)
    X = Interactions(rng.integers(0, nU, n), rng.integers(0, nI, n), ctx,
                     rng.normal(size=(n, 5)).astype(np.float32), (rng.random(n) < 0.5).astype(float))
    return X, side


def _planted(seed: int = 0, nU: int = 120, nI: int = 80, n_groups: int = 4, per_user: int = 12,
             text_dim: int = 16):
    """Users and items in groups; users interact with items of their own group. Item text =
    a noisy group centroid, so text alone reveals the group (for cold start)."""
    rng = np.random.default_rng(seed)
    ug = rng.integers(0, n_groups, nU)
    ig = np.arange(nI) % n_groups
    centroids = rng.normal(size=(n_groups, text_dim))
    text = centroids[ig] + 0.3 * rng.normal(size=(nI, text_dim))
    text = (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32)
    users, items = [], []
    for u in range(nU):
        pool = np.flatnonzero(ig == ug[u])
        pick = rng.choice(pool, size=min(per_user, len(pool)), replace=False)
        users += [u] * len(pick)
        items += list(pick)
    return np.array(users), np.array(items), ug, ig, text


# ---------------------------------------------------------------------------------------
# export exactness
# ---------------------------------------------------------------------------------------
def _tri_reference(m, users, items, ctx):
    """The three-way term by its definition, in numpy float64."""
    T = m.T_.astype(np.float64)
    out = np.zeros(len(users))
    for e, (u, i) in enumerate(zip(users, items)):
        if u < 0:
            continue
        tc = sum((T[m.layout_.ctx_off[c] + v] for c, v in enumerate(ctx[e]) if v >= 0), np.zeros(T.shape[1]))
        out[e] = float(np.sum(T[m.layout_.user_off + u] * T[m.layout_.item_off + i] * tc))
    return out


@pytest.mark.parametrize("loss,tri", [("logloss", 0), ("bpr", 0), ("logloss", 4), ("bpr", 3)])
def test_export_equals_predict(loss, tri):
    X, side = _random_problem()
    m = ContextFM(n_factors=8, n_tri_factors=tri, loss=loss, epochs=2, batch_size=64, n_negatives=2,
                  init_std=0.3, random_state=3).fit(X, side)
    p = m.predict(X)
    qb = m.build_queries(X.user, context=X.context, context_text=X.context_text)
    tab = m.export()
    assert tab.item_vecs.shape == (25, 8) and tab.item_vecs.dtype == np.float32
    assert tab.item_bias.shape == (25,) and tab.item_bias.dtype == np.float32
    s = (np.einsum("ij,ij->i", qb.queries.astype(np.float64), tab.item_vecs[X.item].astype(np.float64))
         + tab.item_bias[X.item] + qb.const)
    if tri:
        assert tab.item_tri.shape == (25, tri) and qb.tri_queries.shape == (len(X), tri)
        t3 = np.einsum("ij,ij->i", qb.tri_queries.astype(np.float64), tab.item_tri[X.item].astype(np.float64))
        # the serving form of the three-way term is its definition, and it is not trivial
        assert np.allclose(t3, _tri_reference(m, X.user, X.item, X.context), atol=1e-6)
        assert np.abs(t3).max() > 1e-3
        s += t3
    else:
        assert tab.item_tri is None and qb.tri_queries is None and m.T_.shape == (m.layout_.n_rows, 0)
    scale = max(1.0, float(np.abs(p).max()))
    assert np.abs(p - s).max() < 1e-5 * scale
    # the pairwise part is not trivial (the check would be vacuous with zero vectors)
    assert np.abs(np.einsum("ij,ij->i", qb.queries, tab.item_vecs[X.item])).max() > 1e-2


@pytest.mark.parametrize("tri", [0, 3])
def test_export_anonymous_user_and_random_items(tri):
    X, side = _random_problem(1)
    m = ContextFM(n_factors=6, n_tri_factors=tri, loss="logloss", epochs=1, batch_size=50,
                  init_std=0.3).fit(X, side)
    rng = np.random.default_rng(5)
    b = 40
    users = rng.integers(-1, 30, b)
    items = rng.integers(0, 25, b)
    ctx = np.stack([rng.integers(-1, 3, b), rng.integers(-1, 4, b)], 1)
    qt = rng.normal(size=(b, 5)).astype(np.float32)
    p = m.predict(Interactions(users, items, ctx, qt))
    qb = m.build_queries(users, context=ctx, context_text=qt)
    tab = m.export()
    s = np.einsum("ij,ij->i", qb.queries, tab.item_vecs[items]) + tab.item_bias[items] + qb.const
    if tri:
        assert not qb.tri_queries[users < 0].any()  # no user, no three-way term
        s = s + np.einsum("ij,ij->i", qb.tri_queries, tab.item_tri[items])
    assert np.allclose(p, s, atol=1e-4)
    # ServingTables.scores: the same score for every (query, item) pair
    assert np.allclose(tab.scores(qb)[np.arange(b), items], p, atol=1e-4)
    assert tab.scores(qb).shape == (b, 25)


@pytest.mark.parametrize("tri", [0, 4])
def test_engine_serves_model_exactly(tri):
    from ctxrec.engine import Engine
    X, side = _random_problem(2)
    m = ContextFM(n_factors=8, n_tri_factors=tri, loss="bpr", epochs=2, batch_size=64, init_std=0.3).fit(X, side)
    eng = m.to_engine()
    users = np.arange(10)
    ctx = np.tile([[1, 2]], (10, 1))
    qb = m.build_queries(users, context=ctx)
    ids, scores = eng.recommend_batch(qb.joined(), k=5)
    assert (m.recommend(users, 5, context=ctx, exclude_seen=False) == ids).all()
    if tri:  # the engine's C++ kernel applies the separate three-way table the same way
        tab = m.export()
        sep = Engine().fit(tab.item_vecs, tab.item_bias, item_tri=tab.item_tri)
        ids2, scores2 = sep.recommend_batch(qb.queries, k=5, tri_queries=qb.tri_queries)
        assert (ids2 == ids).all() and np.allclose(scores2, scores, atol=1e-5)
    # brute force over all items with model.predict
    for r, u in enumerate(users):
        full = m.predict(Interactions(np.full(25, u), np.arange(25), np.tile([[1, 2]], (25, 1)),
                                      np.zeros((25, 5), np.float32)))
        top = np.argsort(-full, kind="stable")[:5]
        assert list(ids[r]) == list(top)
        assert np.allclose(scores[r] + qb.const[r], full[top], atol=1e-4)
    assert isinstance(eng, Engine)


# ---------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dropout,window,tri,every", [(0.0, None, 0, 1), (0.3, None, 0, 1), (0.3, 4, 0, 1),
                                                       (0.3, None, 4, 1), (0.3, None, 0, 3)])
def test_deterministic_for_seed_and_thread_count(dropout, window, tri, every):
    X, side = _random_problem(3, n=900)
    X.timestamp = np.random.default_rng(0).integers(0, 50, len(X))  # with ties
    kw = dict(n_factors=8, n_tri_factors=tri, loss="bpr", epochs=2, batch_size=64, n_negatives=3,
              user_history=True, dropout=dropout, history_window=window, text_step_every=every)
    a = ContextFM(random_state=11, num_threads=1, **kw).fit(X, side)
    b = ContextFM(random_state=11, num_threads=2, **kw).fit(X, side)
    c = ContextFM(random_state=12, num_threads=1, **kw).fit(X, side)
    d = ContextFM(random_state=11, num_threads=None, **kw).fit(X, side)  # adaptive: pieces, 1 or all threads
    for name in ("V_", "w_", "P_", "a_", "w0_", "T_"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.array_equal(getattr(a, name), getattr(d, name)), name
    assert all(h["threads"] >= 1 for h in d.history_) and np.isclose(d.history_[-1]["loss"], a.history_[-1]["loss"])
    assert not np.array_equal(a.V_, c.V_)
    if tri:
        assert not np.array_equal(a.T_, c.T_)


@pytest.mark.parametrize("machine", ["busy", "idle", "noisy"])
def test_thread_chooser_bounds_probe_cost_and_follows_the_faster(machine):
    """Simulated machines, per-example seconds of ``n_max`` = 2 threads against one thread's 1 us:
    busy (25 us: another process holds the cores), idle (1/1.7 us), noisy (a busy process
    beside: 0.6 us on a lucky piece one time in three, else 3 us). The chooser does most of the
    work on the faster choice and costs at most ~6 % (busy, idle) / 10 % (noisy) over the best
    fixed choice; the slower one is still probed now and then."""
    from ctxrec.model.fm import ThreadChooser
    rng = np.random.default_rng(0)
    one = 1e-6

    def rate(n):
        if n == 1:
            return one
        return {"busy": 25 * one, "idle": one / 1.7}.get(machine) or (0.6 * one if rng.random() < 1 / 3 else 3 * one)

    ch = ThreadChooser(2, chunk=16384, probe=1024)
    spent, done = {1: 0.0, 2: 0.0}, {1: 0, 2: 0}
    while sum(done.values()) < 5_000_000:
        n, size = ch.next()
        assert n in (1, 2) and size in (16384, 8192, 4096, 2048, 1024)
        t = size * rate(n)
        ch.record(n, t, size)
        spent[n] += t
        done[n] += size
    total = sum(done.values())
    best_fixed = total * min(one, {"busy": 25 * one, "idle": one / 1.7, "noisy": (0.6 + 6) / 3 * one}[machine])
    fast = 2 if machine == "idle" else 1
    assert done[fast] / total > 0.9, done
    assert sum(spent.values()) <= best_fixed * (1.10 if machine == "noisy" else 1.06), (spent, best_fixed)
    assert done[3 - fast] > 0  # the slower choice is still probed now and then


def test_dropout_masks_user_side_features_in_training_only():
    """Dropout changes training (a different model than without it), not scoring: the export
    still equals predict, and the mask has the asked-for rate with mean factor 1."""
    from ctxrec.model import _kernels as K
    X, side = _random_problem(4, n=900)
    kw = dict(n_factors=8, loss="logloss", epochs=2, batch_size=64, init_std=0.3, user_history=True)
    a = ContextFM(dropout=0.0, **kw).fit(X, side)
    b = ContextFM(dropout=0.4, **kw).fit(X, side)
    assert not np.array_equal(a.V_, b.V_)
    p = b.predict(X)
    qb = b.build_queries(X.user, context=X.context, context_text=X.context_text)
    tab = b.export()
    s = np.einsum("ij,ij->i", qb.queries, tab.item_vecs[X.item]) + tab.item_bias[X.item] + qb.const
    assert np.allclose(p, s, atol=1e-4)
    f = np.array([K._keep(0.4, 7, 1, e, r) for e in range(200) for r in range(50)])
    assert set(np.unique(f)) == {0.0, 1.0 / 0.6}
    assert abs((f == 0).mean() - 0.4) < 0.03 and abs(f.mean() - 1.0) < 0.05
    assert K._keep(0.0, 7, 1, 3, 4) == 1.0
    with pytest.raises(ValueError, match="dropout"):
        ContextFM(dropout=1.0).fit(X, side)


def test_l2_fields_regularize_only_their_rows():
    X, side = _random_problem(5, n=900)
    kw = dict(n_factors=8, loss="logloss", epochs=3, batch_size=64, init_std=0.3, l2=0.0, user_history=True)
    a = ContextFM(**kw).fit(X, side)
    b = ContextFM(l2_fields={"context": 50.0}, **kw).fit(X, side)
    ctx = slice(int(a.layout_.ctx_off[0]), a.layout_.uattr_off)
    rows = a.layout_.field_rows()
    assert rows["context"] == (ctx.start, ctx.stop) and rows["user"][1] == a.V_.shape[0]
    assert rows["history"] == (a.layout_.hist_off, a.layout_.user_off)
    # strong L2 shrinks the context rows, the item rows stay about as large
    assert np.abs(b.V_[ctx]).mean() < 0.5 * np.abs(a.V_[ctx]).mean()
    it = slice(0, a.layout_.iattr_off)
    assert np.abs(b.V_[it]).mean() > 0.5 * np.abs(a.V_[it]).mean()
    l2 = b._row_l2()
    assert np.all(l2[ctx] == 50.0) and np.all(np.delete(l2, np.r_[ctx]) == 0.0)
    with pytest.raises(ValueError, match="l2_fields"):
        ContextFM(l2_fields={"colour": 1.0}).fit(X, side)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_history_features_learn_planted_groups(dropout):
    """With user_history (and history dropout) the user side still finds its group."""
    users, items, ug, ig, _ = _planted(seed=5)
    m = ContextFM(n_factors=8, loss="softmax", epochs=15, batch_size=64, learning_rate=0.01,
                  n_negatives=8, user_history=True, dropout=dropout)
    m.fit(Interactions(users, items), SideInfo(120, 80))
    assert _heldout_auc(m, ug, ig, 120) > 0.9


def _sessions(seed: int = 0, nU: int = 150, nI: int = 60, n_groups: int = 6, per_session: int = 8):
    """Each user rates ``per_session`` items of a group g, then (later) as many of group g + 1:
    over a user's whole history adjacent groups co-occur; within a session only one group."""
    rng = np.random.default_rng(seed)
    ig = np.arange(nI) % n_groups
    users, items, ts = [], [], []
    for u in range(nU):
        a = rng.integers(n_groups)
        for s_, g in enumerate((a, (a + 1) % n_groups)):
            pick = rng.choice(np.flatnonzero(ig == g), size=per_session, replace=False)
            users += [u] * per_session
            items += list(pick)
            ts += list(1000 * u + 100 * s_ + np.arange(per_session))
    perm = rng.permutation(len(users))  # rows in no particular order: fit sorts by time
    return (np.array(users)[perm], np.array(items)[perm], np.array(ts)[perm], ig)


def test_history_window_ranks_match_brute_force():
    users, items, ts, _ = _sessions(seed=1, nU=20)
    dup = np.arange(0, len(users), 7)  # repeated (user, item) rows, later in time: first time counts
    users, items, ts = np.r_[users, users[dup]], np.r_[items, items[dup]], np.r_[ts, ts[dup] + 10_000]
    W = 3
    m = ContextFM(n_factors=4, epochs=1, batch_size=32, n_negatives=2, user_history=True, history_window=W,
                  history_alpha=0.5).fit(Interactions(users, items, timestamp=ts), SideInfo(20, 60))
    ua_rank, ex_rank, hs = m._history_windows({"users": users, "items": items, "ts": ts})
    for e in range(len(users)):
        u = users[e]
        rows = np.flatnonzero(users == u)
        seq = []
        for r in rows[np.lexsort((rows, ts[rows]))]:
            if items[r] not in seq:
                seq.append(int(items[r]))
        c = seq.index(int(items[e]))
        want = {seq[j] for j in range(max(0, c - W), min(len(seq), c + W + 1)) if j != c}
        lo, hi = m.ua_ptr_[u], m.ua_ptr_[u + 1]
        got = {int(m.ua_idx_[p] - m.layout_.hist_off) for p in range(lo, hi)
               if ua_rank[p] >= 0 and abs(ua_rank[p] - ex_rank[e]) <= W and m.ua_idx_[p] - m.layout_.hist_off != items[e]}
        assert ex_rank[e] == c and got == want, e
        assert np.isclose(hs[e], (len(seq) / len(want)) ** 0.5)


def test_history_window_learns_sessions_and_scores_whole_history(tmp_path: Path):
    """Within-session co-occurrence is what the windowed history vectors learn; scoring is
    unchanged (the export still equals predict); the setting survives save / load."""
    users, items, ts, ig = _sessions(seed=2)
    X = Interactions(users, items, timestamp=ts)
    kw = dict(n_factors=8, loss="softmax", epochs=20, batch_size=64, learning_rate=0.01, n_negatives=8,
              user_history=True, l2=1e-3)

    def pair_auc(m):  # history row j . item row i: same group vs the next group (other session)
        S = m.V_[m.layout_.hist_off:m.layout_.hist_off + 60] @ m.V_[:60].T
        same = ig[:, None] == ig[None, :]
        sel = ~np.eye(60, dtype=bool) & (same | ((ig[None, :] - ig[:, None]) % 6 == 1))
        return auc_score(same[sel].astype(float), S[sel])

    whole = ContextFM(**kw).fit(X, SideInfo(150, 60))
    win = ContextFM(history_window=3, **kw).fit(X, SideInfo(150, 60))
    a_whole, a_win = pair_auc(whole), pair_auc(win)  # seeds 0-3: whole 0.92-0.95, window >= 0.997
    assert a_win > 0.99 and a_win > a_whole + 0.03, (a_win, a_whole)
    p = win.predict(X)
    qb, tab = win.build_queries(X.user), win.export()
    assert np.allclose(p, np.einsum("ij,ij->i", qb.queries, tab.item_vecs[X.item]) + tab.item_bias[X.item]
                       + qb.const, atol=1e-4)
    back = ContextFM.load(win.save(tmp_path / "win"))
    assert back.history_window == 3 and np.array_equal(back.predict(X), p)


def test_history_window_errors_name_the_field():
    users, items, ts, _ = _sessions(seed=3, nU=10)
    side = SideInfo(10, 60)
    with pytest.raises(ValueError, match="X.timestamp"):
        ContextFM(user_history=True, history_window=5).fit(Interactions(users, items), side)
    with pytest.raises(ValueError, match=r"X.timestamp: shape \(3,\)"):
        ContextFM(user_history=True, history_window=5).fit(Interactions(users, items, timestamp=ts[:3]), side)
    with pytest.raises(ValueError, match="history_window=5: needs user_history"):
        ContextFM(history_window=5).fit(Interactions(users, items, timestamp=ts), side)
    with pytest.raises(ValueError, match="history_window=0"):
        ContextFM(user_history=True, history_window=0).fit(Interactions(users, items, timestamp=ts), side)
    with pytest.raises(ValueError, match="history_window=5: loss='logloss'"):
        ContextFM(loss="logloss", user_history=True, history_window=5).fit(
            Interactions(users, items, label=np.ones(len(users)), timestamp=ts), side)


# ---------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------
def _heldout_auc(m, ug, ig, n_users):
    """AUC of own-group vs other-group items over users."""
    users = np.repeat(np.arange(n_users), len(ig))
    items = np.tile(np.arange(len(ig)), n_users)
    s = m.predict(Interactions(users, items))
    y = (ug[users] == ig[items]).astype(float)
    return auc_score(y, s)


@pytest.mark.parametrize("loss,opt", [("bpr", "adam"), ("softmax", "adam"), ("bpr", "adagrad"),
                                      ("logloss", "adam")])
def test_learns_planted_groups(loss, opt):
    users, items, ug, ig, _ = _planted()
    X = Interactions(users, items)
    lr = 0.05 if opt == "adagrad" else 0.01
    m = ContextFM(n_factors=8, loss=loss, optimizer=opt, epochs=15, batch_size=64, learning_rate=lr,
                  n_negatives=(8 if loss == "softmax" else 2), l2=1e-4)
    if loss == "logloss":
        X = Interactions(users, items, label=np.ones(len(users)))
    m.fit(X, SideInfo(120, 80))
    assert m.history_[-1]["loss"] < m.history_[0]["loss"]
    assert _heldout_auc(m, ug, ig, 120) > 0.9
    assert all(h["examples_per_s"] > 0 for h in m.history_)


def test_mse_fits_low_rank_ratings():
    rng = np.random.default_rng(0)
    nU, nI, k = 60, 50, 3
    U, Vt = rng.normal(size=(nU, k)), rng.normal(size=(nI, k))
    R = 3.0 + U @ Vt.T
    obs = rng.random((nU, nI)) < 0.5
    uu, ii = np.nonzero(obs)
    X = Interactions(uu, ii, label=R[uu, ii])
    tu, ti = np.nonzero(~obs)
    m = ContextFM(n_factors=6, loss="mse", epochs=60, batch_size=64, learning_rate=0.02, l2=1e-3,
                  init_std=0.1).fit(X, SideInfo(nU, nI))
    rmse = np.sqrt(np.mean((m.predict(Interactions(tu, ti)) - R[tu, ti]) ** 2))
    base = np.sqrt(np.mean((R[uu, ii].mean() - R[tu, ti]) ** 2))
    assert rmse < 0.5 * base


def test_context_moves_the_score():
    """Items 0..9 are used in context 0, items 10..19 in context 1: the context field must
    decide the ranking (nothing else distinguishes the two halves for a user)."""
    rng = np.random.default_rng(1)
    n = 4000
    users = rng.integers(0, 40, n)
    c = rng.integers(0, 2, n)
    items = rng.integers(0, 10, n) + 10 * c
    m = ContextFM(n_factors=8, loss="bpr", epochs=10, batch_size=128, learning_rate=0.01,
                  n_negatives=2).fit(Interactions(users, items, c[:, None]), SideInfo(40, 20, (2,)))
    top0 = m.recommend(np.arange(40), 5, context=np.zeros((40, 1), np.int64), exclude_seen=False)
    top1 = m.recommend(np.arange(40), 5, context=np.ones((40, 1), np.int64), exclude_seen=False)
    assert (top0 < 10).mean() > 0.9 and (top1 >= 10).mean() > 0.9


@pytest.mark.parametrize("every", [1, 4])
def test_text_gives_cold_items_a_vector(every):
    users, items, ug, ig, text = _planted(seed=2, nI=100)
    cold = np.arange(100) % 10 == 0  # 10 items never seen in training
    keep = ~cold[items]
    m = ContextFM(n_factors=8, loss="bpr", epochs=20, batch_size=64, learning_rate=0.01, n_negatives=2,
                  text_step_every=every)
    m.fit(Interactions(users[keep], items[keep]), SideInfo(120, 100, item_text=text))
    cold_items = np.flatnonzero(cold)
    assert np.all(m.V_[m.layout_.item_off + cold_items] == 0)  # id rows of unseen items stay zero
    uu = np.repeat(np.arange(120), len(cold_items))
    it = np.tile(cold_items, 120)
    s = m.predict(Interactions(uu, it))
    assert auc_score((ug[uu] == ig[it]).astype(float), s) > 0.85
    # without text the cold items are indistinguishable
    m0 = ContextFM(n_factors=8, loss="bpr", epochs=5, batch_size=64, n_negatives=2)
    m0.fit(Interactions(users[keep], items[keep]), SideInfo(120, 100))
    s0 = m0.predict(Interactions(uu, it))
    assert np.ptp(s0.reshape(120, -1), axis=1).max() < 1e-9


@pytest.mark.parametrize("loss", ["bpr", "softmax", "logloss"])
def test_text_step_every_steps_the_item_projection_once_per_period(loss):
    """With the projection starting at zero, one Adam step moves every entry by exactly
    lr * ((1 - b1) / c1) / sqrt((1 - b2) / c2) (the sign of its gradient): a period spanning the
    whole epoch leaves the item-text rows of P and a at that one magnitude, while the user-text
    and request-text rows (stepped every batch) and an every-batch projection do not."""
    X, side = _random_problem(4, n=640)
    lr = 0.003
    kw = dict(n_factors=6, loss=loss, epochs=1, batch_size=64, learning_rate=lr, text_init_std=0.0,
              n_negatives=4 if loss == "softmax" else None, num_threads=2)
    m = ContextFM(text_step_every=10, **kw).fit(X, side)  # 640 rows / 64 per batch: <= 10 batches
    nb = m.step_  # the bias corrections are those of the epoch's last step
    assert 3 <= nb <= 10
    c1, c2 = 1 - 0.9 ** nb, 1 - 0.999 ** nb
    step = lr * (0.1 / c1) / np.sqrt(0.001 / c2)
    t0, t1, t2, t3 = (int(x) for x in m.layout_.text_off[:4])
    assert np.allclose(np.abs(m.P_[t0:t1]), step, rtol=1e-4) and np.allclose(np.abs(m.a_[t0:t1]), step, rtol=1e-4)
    for lo, hi in ((t1, t2), (t2, t3)):  # user text, request text: ten steps
        assert np.abs(m.P_[lo:hi]).max() > 2 * step
    m1 = ContextFM(text_step_every=1, **kw).fit(X, side)
    assert np.abs(m1.P_[t0:t1]).max() > 2 * step
    m_more = ContextFM(text_step_every=1000, **kw).fit(X, side)  # longer than the call: one period
    assert np.array_equal(m_more.P_, m.P_) and np.array_equal(m_more.V_, m.V_)
    with pytest.raises(ValueError, match="text_step_every=0"):
        ContextFM(text_step_every=0).fit(X, side)


@pytest.mark.parametrize("tri", [0, 3])
def test_item_vectors_cold_start_equals_export_without_the_id_factor(tri):
    X, side = _random_problem(2)
    m = ContextFM(n_factors=6, n_tri_factors=tri, loss="bpr", epochs=2, batch_size=64, init_std=0.3).fit(X, side)
    attrs, text = side.item_attrs, side.item_text
    tab = m.export()
    # with their id factors, the fitted items' rows are export()'s rows
    full = m.item_vectors(attrs, text, items=np.arange(25))
    assert np.allclose(full.item_vecs, tab.item_vecs, atol=1e-6)
    assert np.allclose(full.item_bias, tab.item_bias, atol=1e-6)
    if tri:
        assert np.array_equal(full.item_tri, tab.item_tri)
    # without: export() of a model whose id factors (and linear weights) are zeroed
    cold = m.item_vectors(attrs[3:5], text[3:5])
    z = copy.deepcopy(m)
    z.V_[z.layout_.item_off:z.layout_.item_off + 25] = 0
    z.w_[z.layout_.item_off:z.layout_.item_off + 25] = 0
    ref = z.export()
    assert np.abs(cold.item_vecs - tab.item_vecs[3:5]).max() > 1e-3  # the id factor mattered
    assert np.allclose(cold.item_vecs, ref.item_vecs[3:5], atol=1e-6)
    assert np.allclose(cold.item_bias, ref.item_bias[3:5], atol=1e-6)
    if tri:
        assert cold.item_tri.shape == (2, tri) and not cold.item_tri.any()
    # text only, attributes only, nothing
    assert np.allclose(m.item_vectors(None, text[:2]).item_vecs,
                       m.item_vectors(np.zeros((2, 5), np.float32), text[:2]).item_vecs)
    assert not m.item_vectors(np.zeros((1, 5), np.float32), None).item_vecs.any()
    with pytest.raises(ValueError, match="item_attrs: 4 columns"):
        m.item_vectors(np.ones((1, 4), np.float32), None)
    with pytest.raises(ValueError, match="item_text: width 3"):
        m.item_vectors(None, np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"items: index \[25\]"):
        m.item_vectors(None, text[:1], items=[25])


def _context_flips(seed: int = 0, nU: int = 80, nI: int = 40, n: int = 8000):
    """Each user likes item group 0 in context 0 and group 1 in context 1, or the other way
    round (a user-specific flip): no sum of pairwise user-item and context-item terms can
    express it, a user x item x context term can. Rows: logloss labels, half positives."""
    flip = np.random.default_rng(1234).integers(0, 2, nU)  # the users' tastes: the same in every draw
    rng = np.random.default_rng(seed)
    ig = np.arange(nI) % 2
    users = rng.integers(0, nU, n)
    items = rng.integers(0, nI, n)
    ctx = rng.integers(0, 2, n)
    y = (ig[items] == (ctx ^ flip[users])).astype(np.float64)
    return Interactions(users, items, ctx[:, None], None, y), SideInfo(nU, nI, (2,))


def test_three_way_factors_learn_user_specific_context_effects():
    X, side = _context_flips()
    test, _ = _context_flips(seed=1)
    kw = dict(n_factors=8, loss="logloss", epochs=15, batch_size=128, learning_rate=0.02, l2=1e-5)
    pair = ContextFM(**kw).fit(X, side)
    tri = ContextFM(n_tri_factors=4, **kw).fit(X, side)
    auc_pair = auc_score(test.label, pair.predict(test))
    auc_tri = auc_score(test.label, tri.predict(test))
    assert auc_tri > 0.95, auc_tri
    assert auc_pair < 0.7, auc_pair  # pairwise terms cannot see the flip
    # and the serving form ranks by it: in context c, a user's top items are its group
    flip = (X.label.reshape(-1) == 1) & (X.context[:, 0] == 0)
    u = int(X.user[flip][0])
    liked0 = int(X.item[flip][0]) % 2
    for c, group in ((0, liked0), (1, 1 - liked0)):
        top = tri.recommend(np.array([u]), 10, context=np.array([[c]]), exclude_seen=False)[0]
        assert np.mean(top % 2 == group) >= 0.9, (c, top)


def test_l2_tri_regularizes_only_the_three_way_factors():
    X, side = _context_flips(n=3000)
    kw = dict(n_factors=8, n_tri_factors=4, loss="logloss", epochs=3, batch_size=128, learning_rate=0.02)
    a = ContextFM(**kw).fit(X, side)
    b = ContextFM(l2_tri=5.0, **kw).fit(X, side)
    assert np.abs(b.T_).sum() < 0.2 * np.abs(a.T_).sum()
    c = ContextFM(n_factors=8, loss="logloss", epochs=3, batch_size=128, learning_rate=0.02, l2_tri=5.0).fit(X, side)
    d = ContextFM(n_factors=8, loss="logloss", epochs=3, batch_size=128, learning_rate=0.02).fit(X, side)
    assert np.array_equal(c.V_, d.V_)  # no three-way factors: l2_tri changes nothing


def test_three_way_fold_in_and_save_load(tmp_path: Path):
    X, side = _context_flips()
    m = ContextFM(n_factors=8, n_tri_factors=4, loss="logloss", epochs=10, batch_size=128,
                  learning_rate=0.02).fit(X, side)
    T_items = m.T_[m.layout_.item_off:m.layout_.item_off + m.n_items_].copy()
    # a new user who likes group 0 in context 1 and group 1 in context 0
    items = np.arange(40)
    ctx = np.r_[np.ones(20, np.int64), np.zeros(20, np.int64)][:, None]
    items = np.r_[items[:20], items[20:]]
    label = ((items % 2) == np.where(ctx[:, 0] == 1, 0, 1)).astype(np.float64)
    u = m.fold_in(items, context=ctx, label=label, epochs=40)
    assert np.array_equal(m.T_[m.layout_.item_off:m.layout_.item_off + m.n_items_], T_items)  # items untouched
    assert np.any(m.T_[m.layout_.user_off + u])
    for c, group in ((1, 0), (0, 1)):
        top = m.recommend(np.array([u]), 10, context=np.array([[c]]), exclude_seen=False)[0]
        assert np.mean(top % 2 == group) >= 0.8, (c, top)
    m2 = ContextFM.load(m.save(tmp_path / "tri"))
    test, _ = _context_flips(seed=2)
    assert np.array_equal(m.predict(test), m2.predict(test)) and np.array_equal(m.T_, m2.T_)
    (tmp_path / "tri" / "T.npy").unlink()
    with pytest.raises(CorruptArtifactError, match="T.npy"):
        ContextFM.load(tmp_path / "tri")


def test_fold_in_new_user():
    users, items, ug, ig, _ = _planted(seed=3)
    m = ContextFM(n_factors=8, loss="bpr", epochs=15, batch_size=64, learning_rate=0.01, n_negatives=2)
    m.fit(Interactions(users, items), SideInfo(120, 80))
    V_items = m.V_[:80].copy()
    group = 2
    few = np.flatnonzero(ig == group)[:5]
    u = m.fold_in(few, epochs=60)
    assert u == 120 and m.n_users_ == 121
    assert np.array_equal(m.V_[:80], V_items)  # items untouched
    rec = m.recommend(np.array([u]), 5)[0]
    assert not set(rec) & set(few)  # the folded-in items are excluded as seen
    assert np.mean(ig[rec] == group) >= 0.8
    # updating an existing user in place keeps the number of users
    assert m.fold_in(few[:2], user=0, epochs=5) == 0 and m.n_users_ == 121


# ---------------------------------------------------------------------------------------
# early stopping, save / load, errors
# ---------------------------------------------------------------------------------------
def test_early_stopping_restores_best():
    users, items, ug, ig, _ = _planted(seed=4)
    rng = np.random.default_rng(0)
    val = rng.random(len(users)) < 0.2
    m = ContextFM(n_factors=8, epochs=40, batch_size=64, learning_rate=0.05, l2=0.0,
                  early_stopping_rounds=2, eval_metric="ndcg@5")
    m.fit(Interactions(users[~val], items[~val]), SideInfo(120, 80),
          validation=Interactions(users[val], items[val]))
    curve = [h["ndcg@5"] for h in m.history_]
    assert len(curve) <= 40
    assert m.best_epoch_ == int(np.argmax(curve))
    if len(curve) < 40:  # stopped early: the last rounds did not improve
        assert max(curve[-2:]) <= max(curve)


def test_save_load_roundtrip_and_corruption(tmp_path: Path):
    X, side = _random_problem(4)
    m = ContextFM(n_factors=4, loss="logloss", epochs=2, batch_size=64).fit(X, side)
    d = m.save(tmp_path / "fm")
    m2 = ContextFM.load(d)
    assert np.array_equal(m.predict(X), m2.predict(X))
    assert m2.get_params() == m.get_params()
    # fold-in works on a loaded model
    m2.fold_in(np.array([1, 2]), label=np.array([1.0, 0.0]), epochs=2)
    # corrupt a file
    arr = d / "V.npy"
    b = bytearray(arr.read_bytes())
    b[-1] ^= 0xFF
    arr.write_bytes(bytes(b))
    with pytest.raises(CorruptArtifactError, match="V.npy"):
        ContextFM.load(d)
    # wrong version
    m.save(tmp_path / "fm2")
    man = json.loads((tmp_path / "fm2" / "manifest.json").read_text())
    man["version"] = 999
    (tmp_path / "fm2" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CorruptArtifactError, match="version"):
        ContextFM.load(tmp_path / "fm2")


def _write_format_2(src: Path, dst: Path, **edit) -> None:
    """Rewrite a saved model as ctxrec's previous writer did (format 2: the offsets recorded
    as scalars, ctx_off.npy and toff.npy), with ``edit`` overriding recorded scalars."""
    from ctxrec._io import atomic_dir, read_manifest
    man = read_manifest(src, "ctxrec.ContextFM", 3)
    meta = man["meta"]
    lay = ContextFM.load(src).layout_
    scalars = {"item_off_": lay.item_off, "iattr_off_": lay.iattr_off, "uattr_off_": lay.uattr_off,
               "hist_off_": lay.hist_off, "user_off_": lay.user_off, "n_rows_": lay.n_rows, "n_users_": lay.n_users,
               "n_items_": lay.n_items, "n_item_attrs_": lay.n_item_attrs, "n_user_attrs_": lay.n_user_attrs,
               **meta["scalars"], **edit}
    old = {"params": meta["params"], "scalars": scalars, "history": meta["history"],
           "context_cardinalities": list(lay.context_cardinalities)}
    with atomic_dir(dst, "ctxrec.ContextFM", 2, old) as d:
        for f in src.glob("*.npy"):
            (d / f.name).write_bytes(f.read_bytes())
        np.save(d / "ctx_off.npy", np.asarray(lay.ctx_off, np.int64))
        np.save(d / "toff.npy", np.asarray(lay.text_off, np.int64))


@pytest.mark.parametrize("user_history", [False, True])
def test_layout_is_derived_from_sizes_and_format_2_still_loads(tmp_path: Path, user_history: bool):
    """The parameter layout is one value object (``layout_``) whose offsets follow from its sizes;
    a model saved by the previous format (offsets recorded) loads to the same layout and
    predictions, and one whose recorded offsets disagree with its sizes is refused."""
    X, side = _random_problem(6)
    m = ContextFM(n_factors=4, loss="logloss", epochs=2, batch_size=64, user_history=user_history,
                  n_tri_factors=2).fit(X, side)
    lay = m.layout_
    rows = lay.field_rows()
    assert rows["item"] == (0, 25) and rows["item_attrs"] == (25, 30) and rows["context"] == (30, 37)
    assert list(lay.ctx_off) == [30, 33] and rows["user_attrs"] == (37, 40)
    assert rows["history"] == ((40, 65) if user_history else (40, 40)) and lay.hist_off == (40 if user_history else -1)
    assert rows["user"] == (lay.user_off, lay.n_rows) and lay.n_rows == m.V_.shape[0] == lay.user_off + 30
    assert list(lay.text_off) == [0, 12, 18, 23] and m.text_dims_ == (12, 6, 5) and lay.n_text == m.P_.shape[0]
    u = m.fold_in(np.array([1, 2]), label=np.array([1.0, 0.0]), epochs=1)  # a new user: one more row, at the end
    assert u == 30 and m.layout_ == lay.with_users(31) and m.layout_.user_off == lay.user_off
    assert m.V_.shape[0] == m.layout_.n_rows == lay.n_rows + 1 and m.n_users_ == 31
    d = m.save(tmp_path / "v3")
    _write_format_2(d, tmp_path / "v2")
    back = ContextFM.load(tmp_path / "v2")
    assert back.layout_ == m.layout_ and list(back.layout_.ctx_off) == list(m.layout_.ctx_off)
    assert np.array_equal(back.predict(X), m.predict(X))
    _write_format_2(d, tmp_path / "bad", user_off_=m.layout_.user_off - 1)
    with pytest.raises(CorruptArtifactError, match="user_off_ = "):
        ContextFM.load(tmp_path / "bad")


def test_errors_name_the_field():
    X, side = _random_problem(5)
    with pytest.raises(ValueError, match="loss='hinge'"):
        ContextFM(loss="hinge").fit(X, side)
    with pytest.raises(ValueError, match="n_tri_factors=-1"):
        ContextFM(n_tri_factors=-1).fit(X, side)
    with pytest.raises(ValueError, match="l2_tri=-0.1"):
        ContextFM(n_tri_factors=2, l2_tri=-0.1).fit(X, side)
    bad = Interactions(X.user, X.item, np.full((len(X), 2), 7), X.context_text, X.label)
    with pytest.raises(ValueError, match=r"context\[:, 0\]: value 7"):
        ContextFM(loss="logloss").fit(bad, side)
    with pytest.raises(ValueError, match=r"X.item: index 99"):
        ContextFM(loss="logloss").fit(Interactions(X.user, np.full(len(X), 99), X.context,
                                                   X.context_text, X.label), side)
    with pytest.raises(ValueError, match="X.label"):
        ContextFM(loss="mse").fit(Interactions(X.user, X.item, X.context, X.context_text), side)
    with pytest.raises(RuntimeError, match="not fitted"):
        ContextFM().predict(X)
    m = ContextFM(n_factors=4, loss="logloss", epochs=1).fit(X, side)
    with pytest.raises(ValueError, match="context_text: width 3"):
        m.build_queries([0], context=[[0, 0]], context_text=np.zeros((1, 3), np.float32))


def test_ranking_metrics_by_hand():
    """The metrics early stopping reads are the ones reports print (ctxrec.metrics), MAP@K over min(n_rel, K)."""
    ids = np.array([[3, 1, 2], [5, 6, 7]])
    ptr, idx = csr.from_pairs(np.array([0, 0, 1]), np.array([1, 9, 8]), 2, unique=True)
    r = ranking_metrics_from_topk(ids, ptr, idx, [1, 3], n_candidates=10)
    # user 0: hit at rank 2 of 2 relevant; user 1: no hit
    assert r["precision@3"] == pytest.approx((1 / 3) / 2)
    assert r["recall@3"] == pytest.approx(0.5 / 2)
    assert r["ndcg@3"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)) / 2)
    assert r["map@3"] == pytest.approx((0.5 / 2) / 2)
    ids1 = np.array([[1, 3, 2]])  # a hit at rank 1, two relevant items: AP@1 / min(2, 1) vs / n_rel
    r1 = ranking_metrics_from_topk(ids1, np.array([0, 2]), np.array([1, 9]), [1], n_candidates=10)
    assert r1["map@1"] == pytest.approx(1.0) and r1["map_nrel@1"] == pytest.approx(0.5)


def _ndcg10(ids: np.ndarray, ptr: np.ndarray, idx: np.ndarray) -> float:
    """Mean NDCG@10 over the users that have test items."""
    q = np.flatnonzero(np.diff(ptr) > 0)
    sub_ptr = np.concatenate([[0], np.cumsum(np.diff(ptr)[q])]).astype(np.int64)
    sub_idx = np.concatenate([idx[ptr[u]:ptr[u + 1]] for u in q]).astype(np.int64)
    return ranking_metrics_from_topk(np.asarray(ids)[q], sub_ptr, sub_idx, [10], n_candidates=int(ids.max()) + 1,
                                     metrics=("ndcg",))["ndcg@10"]


# ---------------------------------------------------------------------------------------
# real data smoke test
# ---------------------------------------------------------------------------------------
def _data_dir() -> Path | None:
    d = os.environ.get("CTXREC_DATA_DIR") or str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    return Path(d) if (Path(d) / "ml-100k" / "u.data").is_file() else None


@pytest.mark.skipif(_data_dir() is None, reason="MovieLens 100K not available (CTXREC_DATA_DIR)")
def test_movielens_smoke_beats_popularity():
    from ctxrec.model.adapters import from_dataset
    from ctxrec.data import load_movielens_100k
    ds = load_movielens_100k(_data_dir(), verify=False)
    rng = np.random.default_rng(0)
    test = rng.random(len(ds.users)) < 0.2
    X, side = from_dataset(ds.subset(np.flatnonzero(~test)), attrs=("genres",))
    m = ContextFM(n_factors=32, epochs=4, batch_size=512, learning_rate=0.005, l2=1e-3,
                  n_negatives=4, num_threads=1).fit(X, side)
    u, i = ds.users[test].astype(np.int64), ds.items[test].astype(np.int64)
    ptr, idx = csr.from_pairs(u, i, ds.n_users, unique=True)
    ndcg = _ndcg10(m.recommend(np.arange(ds.n_users), 10), ptr, idx)
    pop = np.argsort(-np.bincount(X.item, minlength=ds.n_items), kind="stable")
    seen_ptr, seen_idx = m.pos_ptr_, m.pos_idx_
    pop_ids = np.array([[j for j in pop if j not in set(seen_idx[seen_ptr[v]:seen_ptr[v + 1]])][:10]
                        for v in range(ds.n_users)])
    ndcg_pop = _ndcg10(pop_ids, ptr, idx)
    assert ndcg > ndcg_pop + 0.02, (ndcg, ndcg_pop)


def test_from_dataset_adapter_with_context_spec():
    import pandas as pd

    from ctxrec.context import ContextSpec
    from ctxrec.data import Dataset
    from ctxrec.model.adapters import from_dataset
    inter = pd.DataFrame({"user_id": ["a", "b", "a", "c"], "item_id": [10, 11, 12, 10],
                          "device": ["mobile", "tv", "mobile", "web"], "rating": [5, 3, 4, 1]})
    items = pd.DataFrame({"item_id": [10, 11, 12], "genres": ["x|y", "y", ""]})
    ds = Dataset.from_frames(inter, rating_col="rating", context_cols=["device"], items=items,
                             item_attr_cols={"genres": "|"})
    spec = ContextSpec(categorical=["device"]).fit(ds)
    feats = spec.transform(ds)
    X, side = from_dataset(ds, attrs=("genres",), context=feats, spec=spec)
    assert side.n_users == 3 and side.n_items == 3
    assert side.context_cardinalities == (4,)  # unknown + 3 devices
    assert X.context.shape == (4, 1) and X.context.min() >= 1
    assert X.label.tolist() == [5, 3, 4, 1]
    indptr, indices, data, n_cols = side.item_attrs
    assert n_cols == 2 and list(np.diff(indptr)) == [2, 1, 0]
    m = ContextFM(n_factors=4, loss="mse", epochs=2, batch_size=2).fit(X, side)
    # a live request goes through the same spec: unseen device -> unknown bucket (0)
    req = spec.transform({"device": "fridge"})
    qb = m.build_queries([0], context=np.asarray(req.indices, np.int64))
    assert qb.queries.shape == (1, 4)
    with pytest.raises(ValueError, match="label='bogus'"):
        from_dataset(ds, label="bogus")


def _rewrite_array(directory, name, array):
    """Replace an array of a saved artifact and rewrite its manifest entry to match (what a
    crafted directory looks like: the checksums are consistent)."""
    import hashlib
    p = Path(directory) / name
    np.save(p, array)
    man = json.loads((Path(directory) / "manifest.json").read_text())
    man["files"][name] = {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    from ctxrec._io import manifest_digest
    man["digest"] = manifest_digest(man)  # consistent: only the array checks can refuse it
    (Path(directory) / "manifest.json").write_text(json.dumps(man))


def test_crafted_arrays_are_refused_at_load(tmp_path):
    """Issue 16, row 9: an array 5 rows short (checksums consistent) is refused before a kernel reads it."""
    from _synthetic_data import planted_dataset
    from ctxrec.model.adapters import from_dataset
    ds = planted_dataset(n_users=30, n_items=60, per_user=10)
    fm = ContextFM(n_factors=8, epochs=1).fit(*from_dataset(ds, attrs=list(ds.item_attrs)))
    fm.save(tmp_path / "m")
    ContextFM.load(tmp_path / "m")
    for name, bad, match in (("w.npy", fm.w_[:-5], "w.npy has shape"),
                             ("ia_idx.npy", fm.ia_idx_ + 10 ** 6, "ia_idx.npy holds indices"),
                             ("pos_ptr.npy", fm.pos_ptr_[:-1], "pos_ptr.npy is not a valid index pointer"),
                             ("V.npy", fm.V_.astype(np.float64), "V.npy has dtype")):
        fm.save(tmp_path / name)
        _rewrite_array(tmp_path / name, name, bad)
        with pytest.raises(CorruptArtifactError, match=match):
            ContextFM.load(tmp_path / name)
