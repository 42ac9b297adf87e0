"""ctxrec._core.rerank (diversity and calibration, issue 19) against a plain numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

from ctxrec import _core


def _ref(cand, scores, k, vecs, text, lam, cats, target, gamma, alpha=0.01, pen=None, eta=0.0):
    """The greedy of csrc/rerank.hpp written out in numpy, one row at a time.

    cats: per row, a list (one per candidate position) of {category: weight}."""
    b = cand.shape[0]
    ids_out = np.full((b, k), -1, np.int64)
    sc_out = np.full((b, k), -np.inf, np.float32)
    for q in range(b):
        keep = [j for j in range(cand.shape[1]) if cand[q, j] >= 0]
        ids, s = cand[q, keep], scores[q, keep].astype(np.float64)
        m = len(ids)
        kk = min(k, m)
        if not m:
            continue
        top, kth = s[0], s[kk - 1]
        spread = top - kth if top > kth else 1.0
        rel = (s - kth) / spread

        def sim(i, j):
            ti, tj = (None, None) if text is None else (text[ids[i]], text[ids[j]])
            if ti is not None and np.any(ti) and np.any(tj):
                a, c = ti.astype(np.float64), tj.astype(np.float64)
            else:
                a, c = vecs[ids[i]].astype(np.float64), vecs[ids[j]].astype(np.float64)
            na, nc = np.linalg.norm(a), np.linalg.norm(c)
            return 0.0 if na == 0 or nc == 0 else float(a @ c / (na * nc))

        def mix(sel):
            n_cat = target.shape[1]
            cnt = np.zeros(n_cat)
            for j in sel:
                w = cats[q][keep[j]]
                tot = sum(w.values())
                for cat, x in w.items():
                    if tot > 0:
                        cnt[cat] += x / tot
            p = target[q].astype(np.float64)
            return (cnt + (kk - len(sel)) * p) / kk  # the k-item list, its open slots following the target

        def kl(sel):
            p = target[q].astype(np.float64)
            qq = (1 - alpha) * mix(sel) + alpha * p
            nz = p > 0
            return float(np.sum(p[nz] * np.log(p[nz] / qq[nz])))

        chosen: list[int] = []
        for t in range(kk):
            best, best_obj = -1, -np.inf
            for j in range(m):
                if j in chosen:
                    continue
                simp = max(sim(i, j) for i in chosen) if (chosen and lam > 0) else 0.0
                obj = (1 - lam) * rel[j] - lam * simp
                if gamma > 0 and target is not None:
                    obj -= gamma * kl(chosen + [j])
                if pen is not None:
                    obj -= eta * float(pen[q, keep[j]])
                if obj > best_obj + 1e-9:
                    best, best_obj = j, obj
            chosen.append(best)
        ids_out[q, :kk] = ids[chosen]
        sc_out[q, :kk] = s[chosen]
    return ids_out, sc_out


def _problem(seed, b=5, c=30, n=200, dim=8, d=6, text_share=0.7, n_cat=5):
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    text = rng.normal(size=(n, d)).astype(np.float32)
    text[rng.random(n) > text_share] = 0.0  # items without text: their factor vectors decide
    cand = np.stack([rng.choice(n, c, replace=False) for _ in range(b)]).astype(np.int64)
    scores = -np.sort(-rng.normal(size=(b, c)), axis=1).astype(np.float32)
    cand[0, -4:] = -1  # padding
    cats = [[{int(x): float(rng.integers(1, 3)) for x in rng.choice(n_cat, rng.integers(0, 3), replace=False)}
             for _ in range(c)] for _ in range(b)]
    target = rng.dirichlet(np.ones(n_cat), size=b).astype(np.float32)
    target[1, 0] = 0.0
    target[1] /= target[1].sum()
    return cand, scores, vecs, text, cats, target


def _cat_csr(cats):
    flat = [w for row in cats for w in row]
    ptr = np.zeros(len(flat) + 1, np.int64)
    ptr[1:] = np.cumsum([len(w) for w in flat])
    idx = np.array([x for w in flat for x in w], np.int64)
    val = np.array([v for w in flat for v in w.values()], np.float32)
    return ptr, idx, val


@pytest.mark.parametrize("lam,gamma,eta", [(0.0, 0.0, 0.0), (0.3, 0.0, 0.0), (0.7, 0.0, 0.0), (1.0, 0.0, 0.0),
                                           (0.0, 0.5, 0.0), (0.4, 2.0, 0.0), (0.0, 0.0, 1.5), (0.5, 1.0, 0.7)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rerank_matches_the_numpy_reference(seed, lam, gamma, eta):
    cand, scores, vecs, text, cats, target = _problem(seed)
    ptr, idx, val = _cat_csr(cats)
    pen = np.random.default_rng(seed + 10).random(cand.shape).astype(np.float32)
    k = 8
    want_ids, want_sc = _ref(cand, scores, k, vecs, text, lam, cats, target, gamma, pen=pen, eta=eta)
    for threads in (1, 2):
        ids, sc = _core.rerank(cand, scores, k, vecs, item_text=text, diversity=lam, cat_indptr=ptr, cat_indices=idx,
                               cat_weights=val, target=target, calibrate=gamma, penalty=pen, exposure=eta,
                               num_threads=threads)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(sc, want_sc)


def test_rerank_edge_cases():
    cand, scores, vecs, text, cats, target = _problem(3, b=3, c=6)
    # diversity 0 and no calibration: the candidates' own order
    ids, sc = _core.rerank(cand, scores, 4, vecs)
    for q in range(3):
        valid = cand[q][cand[q] >= 0][:4]
        np.testing.assert_array_equal(ids[q, :len(valid)], valid)
    # k beyond the candidates: padded; k = 0: empty
    ids, sc = _core.rerank(cand, scores, 10, vecs, item_text=text, diversity=0.5)
    assert (ids[0] >= 0).sum() == 2 and np.all(np.isneginf(sc[0, 2:])) and (ids[1] >= 0).sum() == 6
    assert _core.rerank(cand, scores, 0, vecs)[0].shape == (3, 0)
    # all padding, no text table, zero vectors (cosine 0)
    empty = np.full((1, 4), -1, np.int64)
    assert np.all(_core.rerank(empty, np.zeros((1, 4), np.float32), 3, vecs, diversity=0.5)[0] == -1)
    z = np.zeros_like(vecs)
    ids, _ = _core.rerank(cand[1:2], scores[1:2], 6, z, diversity=0.5)
    np.testing.assert_array_equal(ids[0], cand[1])  # no similarity anywhere: relevance order
    # exact duplicates: the second copy of the first pick is pushed down by full diversity
    v = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    ids, _ = _core.rerank(np.array([[0, 1, 2]]), np.array([[3.0, 2.9, 2.8]], np.float32), 2, v, diversity=0.6)
    assert ids[0].tolist() == [0, 2]
    # terms: rel of the first pick is 1, its similarity penalty 0
    ids, sc, terms = _core.rerank(cand, scores, 4, vecs, item_text=text, diversity=0.5, return_terms=True)
    assert terms.shape == (3, 4, 4) and np.allclose(terms[:, 0, 0], 1.0) and np.all(terms[:, 0, 1] == 0)


def test_rerank_refuses_bad_input_naming_it():
    cand, scores, vecs, text, cats, target = _problem(4, b=2, c=5)
    with pytest.raises(ValueError, match="diversity must be in"):
        _core.rerank(cand, scores, 3, vecs, diversity=1.5)
    with pytest.raises(ValueError, match="calibrate must be"):
        _core.rerank(cand, scores, 3, vecs, calibrate=-1.0)
    bad = cand.copy()
    bad[0, 0] = 10_000
    with pytest.raises(ValueError, match=r"candidates\[0, 0\] = 10000"):
        _core.rerank(bad, scores, 3, vecs)
    with pytest.raises(ValueError, match="not sorted"):
        _core.rerank(cand, scores[:, ::-1].copy(), 3, vecs)
    nan = scores.copy()
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"scores\[1, 2\]"):
        _core.rerank(cand, nan, 3, vecs)
    with pytest.raises(ValueError, match="target needs cat_indptr"):
        _core.rerank(cand, scores, 3, vecs, target=target, calibrate=1.0)
    ptr, idx, val = _cat_csr(cats)
    with pytest.raises(ValueError, match="cat_indptr must have length b \\* c \\+ 1"):
        _core.rerank(cand, scores, 3, vecs, target=target, calibrate=1.0, cat_indptr=ptr[:-1], cat_indices=idx,
                     cat_weights=val)
    with pytest.raises(ValueError, match="penalty must be in"):
        _core.rerank(cand, scores, 3, vecs, penalty=np.full(cand.shape, 2.0, np.float32), exposure=1.0)
    with pytest.raises(ValueError, match="exposure must be"):
        _core.rerank(cand, scores, 3, vecs, exposure=-1.0)
    with pytest.raises(ValueError, match="item_text has"):
        _core.rerank(cand, scores, 3, vecs, item_text=text[:10])


def test_pool_bound_makes_a_pool_exact():
    """Candidates below the bound (rel < pool_bound) are never picked: cutting them changes nothing."""
    rng = np.random.default_rng(7)
    n, k = 400, 10
    vecs = rng.normal(size=(n, 8)).astype(np.float32)
    for lam in (0.2, 0.5, 0.8):
        s = np.sort(rng.normal(size=n))[::-1].astype(np.float32)
        cand = np.arange(n, dtype=np.int64)[None]
        full, _ = _core.rerank(cand, s[None], k, vecs, diversity=lam)
        rel = (s - s[k - 1]) / (s[0] - s[k - 1])
        m = int(np.sum(rel >= _core.rerank_pool_bound(lam, 0.0)))
        assert k <= m <= n
        cut, _ = _core.rerank(cand[:, :m], s[None, :m], k, vecs, diversity=lam)
        np.testing.assert_array_equal(cut, full)


def test_engine_calibration_follows_a_live_catalog():
    """The stacked category bitsets are cached per snapshot: an added item and a new value count at once."""
    from ctxrec.engine import Engine
    rng = np.random.default_rng(5)
    n = 300
    V = rng.normal(size=(n, 8)).astype(np.float32)
    eng = Engine(exact_threshold=10_000).fit(V, np.zeros(n, np.float32), np.arange(n),
                                             item_filters={"g": [[f"g{i % 3}"] for i in range(n)]})
    q = rng.normal(size=8).astype(np.float32)
    plain, _ = eng.recommend(q, 10)
    ids, _ = eng.recommend(q, 10, calibrate=5.0, calibrate_by="g", target={"g0": 1.0})
    assert sum(i % 3 == 0 for i in ids) > sum(i % 3 == 0 for i in plain)
    g0 = [i for i in ids if i % 3 == 0][:4]
    assert eng.category_mix("g", g0) == {"g0": 1.0}
    eng.add_items(q[None] * 3, np.zeros(1, np.float32), [999], item_filters={"g": [["g9"]]})
    ids, _ = eng.recommend(q, 10, calibrate=5.0, calibrate_by="g", target={"g9": 1.0})
    assert ids[0] == 999
    with pytest.raises(ValueError, match="not a value of filter"):
        eng.recommend(q, 10, calibrate=1.0, calibrate_by="g", target={"nope": 1.0})
    with pytest.raises(ValueError, match="unknown filter"):
        eng.recommend(q, 10, calibrate=1.0, calibrate_by="h", target={"g0": 1.0})
    with pytest.raises(ValueError, match="calibrate=1.0 needs calibrate_by"):
        eng.recommend(q, 10, calibrate=1.0, target={"g0": 1.0})
    with pytest.raises(ValueError, match="diversity must be a number in"):
        eng.rerank([1, 2, 3], [3.0, 2.0, 1.0], 2, diversity=2.0)
