"""ctxrec._core against a plain numpy reference on random inputs."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctxrec import _core

TOL = 1e-4


def ref_scores(q, V, bias, tq=None, T=None, wt=1.0, rq=None, R=None, wr=1.0):
    """float64 scores [b, n] of the full model."""
    s = q.astype(np.float64) @ V.astype(np.float64).T
    if bias is not None:
        s += bias.astype(np.float64)[None, :]
    if T is not None:
        s += wt * (tq.astype(np.float64) @ T.astype(np.float64).T)
    if R is not None:
        s += wr * (rq.astype(np.float64) @ R.astype(np.float64).T)
    return s


def to_csr(lists):
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(x) for x in lists])
    indices = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if lists else np.zeros(0, np.int64)
    return indptr, indices.astype(np.int64)


def check_topk(ids, scores, S, eligible, k):
    """ids/scores of one query against reference scores S [n] and the eligible item set."""
    eligible = sorted(eligible)
    expect_len = min(k, len(eligible))
    got = ids[ids >= 0]
    assert len(got) == expect_len, (len(got), expect_len)
    assert np.all(ids[expect_len:] == -1) and np.all(np.isneginf(scores[expect_len:]))
    assert len(set(got.tolist())) == len(got), "an item appears twice"
    assert set(got.tolist()) <= set(eligible)
    # returned scores are the model's scores, sorted descending
    np.testing.assert_allclose(scores[:expect_len], S[got], rtol=TOL, atol=TOL)
    assert np.all(np.diff(scores[:expect_len]) <= 0)
    if expect_len and expect_len < len(eligible):
        rest = np.setdiff1d(np.asarray(eligible), got)
        # nothing left out scores clearly better than the worst returned item
        assert S[rest].max() <= S[got].min() + TOL


def random_problem(rng, b, n, k, d=0, t=0):
    q = rng.standard_normal((b, k)).astype(np.float32)
    V = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    extra = {}
    if d:
        extra.update(text_queries=rng.standard_normal((b, d)).astype(np.float32),
                     item_text=rng.standard_normal((n, d)).astype(np.float32), text_weight=0.7)
    if t:
        extra.update(tri_queries=rng.standard_normal((b, t)).astype(np.float32),
                     item_tri=rng.standard_normal((n, t)).astype(np.float32), tri_weight=-0.3)
    return q, V, bias, extra


def ref_of(q, V, bias, extra):
    return ref_scores(q, V, bias, extra.get("text_queries"), extra.get("item_text"), extra.get("text_weight", 1.0),
                      extra.get("tri_queries"), extra.get("item_tri"), extra.get("tri_weight", 1.0))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 9), n=st.integers(1, 300), k=st.integers(1, 20),
       c=st.integers(0, 40), K=st.integers(0, 50), d=st.sampled_from([0, 5]), t=st.sampled_from([0, 3]),
       threads=st.sampled_from([1, 2, 0]), with_excl=st.booleans(), with_allow=st.booleans(),
       shared_excl=st.booleans())
def test_rescore_matches_numpy(seed, b, n, k, c, K, d, t, threads, with_excl, with_allow, shared_excl):
    rng = np.random.default_rng(seed)
    q, V, bias, extra = random_problem(rng, b, n, k, d, t)
    cand = rng.integers(-1, n, size=(b, c)).astype(np.int64)  # includes padding and duplicates
    excl = [rng.choice(n, size=rng.integers(0, min(n, 10) + 1), replace=True) for _ in range(1 if shared_excl else b)]
    allow = [rng.choice(n, size=rng.integers(0, n + 1), replace=False) for _ in range(b)]
    kw = dict(extra)
    if with_excl:
        kw["exclude_indptr"], kw["exclude_indices"] = to_csr(excl)
    if with_allow:
        kw["allow_indptr"], kw["allow_indices"] = to_csr(allow)
    ids, scores = _core.rescore(q, V, bias, cand, K, num_threads=threads, **kw)
    assert ids.shape == (b, K) and ids.dtype == np.int64 and scores.dtype == np.float32
    S = ref_of(q, V, bias, extra)
    for i in range(b):
        elig = set(cand[i][cand[i] >= 0].tolist())
        if with_allow:
            elig &= set(allow[i].tolist())
        if with_excl:
            elig -= set(excl[0 if shared_excl else i].tolist())
        check_topk(ids[i], scores[i], S[i], elig, K)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 20), n=st.integers(1, 3000), k=st.integers(1, 33),
       K=st.integers(0, 40), d=st.sampled_from([0, 4]), t=st.sampled_from([0, 2]), threads=st.sampled_from([1, 2, 0]),
       with_excl=st.booleans(), with_allow=st.booleans())
def test_topk_full_matches_numpy(seed, b, n, k, K, d, t, threads, with_excl, with_allow):
    rng = np.random.default_rng(seed)
    q, V, bias, extra = random_problem(rng, b, n, k, d, t)
    excl = [rng.choice(n, size=rng.integers(0, n + 1), replace=False) for _ in range(b)]
    allow = [rng.choice(n, size=rng.integers(0, min(n, 50) + 1), replace=False)]  # one shared allow-list
    kw = dict(extra)
    if with_excl:
        kw["exclude_indptr"], kw["exclude_indices"] = to_csr(excl)
    if with_allow:
        kw["allow_indptr"], kw["allow_indices"] = to_csr(allow)
    ids, scores = _core.topk_full(q, V, bias, K, num_threads=threads, **kw)
    S = ref_of(q, V, bias, extra)
    for i in range(b):
        elig = set(range(n))
        if with_allow:
            elig &= set(allow[0].tolist())
        if with_excl:
            elig -= set(excl[i].tolist())
        check_topk(ids[i], scores[i], S[i], elig, K)


def test_full_and_rescore_agree_and_split_catalog():
    # One query over a catalog large enough to be split across threads: the merged
    # result must equal the single-thread one, and rescoring all ids gives the same.
    rng = np.random.default_rng(0)
    q, V, bias, _ = random_problem(rng, 1, 70_000, 16)
    a = _core.topk_full(q, V, bias, 25, num_threads=1)
    b = _core.topk_full(q, V, bias, 25, num_threads=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    cand = np.arange(70_000, dtype=np.int64)[None, :]
    c = _core.rescore(q, V, bias, cand, 25)
    np.testing.assert_array_equal(a[0], c[0])


def test_ties_are_deterministic_smaller_index_first():
    V = np.ones((10, 4), np.float32)
    q = np.ones((1, 4), np.float32)
    ids, scores = _core.topk_full(q, V, None, 4)
    assert ids.tolist() == [[0, 1, 2, 3]]
    cand = np.array([[9, 3, 7, 3, 1, -1, 5]], np.int64)
    ids, _ = _core.rescore(q, V, None, cand, 10)
    assert ids.tolist() == [[1, 3, 5, 7, 9, -1, -1, -1, -1, -1]]


def test_edge_cases_empty_and_all_excluded():
    rng = np.random.default_rng(1)
    q, V, bias, _ = random_problem(rng, 2, 5, 3)
    ids, scores = _core.rescore(q, V, bias, np.zeros((2, 0), np.int64), 3)
    assert (ids == -1).all() and np.isneginf(scores).all()
    cand = np.array([[0, 1], [2, 2]], np.int64)
    ip, ix = to_csr([[0, 1], [2]])
    ids, _ = _core.rescore(q, V, bias, cand, 3, exclude_indptr=ip, exclude_indices=ix)
    assert (ids == -1).all()
    ids, _ = _core.topk_full(q, V, bias, 3, exclude_indptr=np.array([0, 5], np.int64),
                             exclude_indices=np.arange(5, dtype=np.int64))
    assert (ids == -1).all()
    # zero queries
    ids, scores = _core.topk_full(np.zeros((0, 3), np.float32), V, bias, 4)
    assert ids.shape == (0, 4)
    # k larger than the catalog
    ids, _ = _core.topk_full(q, V, bias, 50)
    assert (ids[:, :5] >= 0).all() and (ids[:, 5:] == -1).all()


def test_exclusions_still_return_k_when_enough_remain():
    rng = np.random.default_rng(2)
    q, V, bias, _ = random_problem(rng, 1, 100, 8)
    best = _core.topk_full(q, V, bias, 10)[0][0]
    ip, ix = to_csr([best[:5]])
    ids, _ = _core.topk_full(q, V, bias, 10, exclude_indptr=ip, exclude_indices=ix)
    assert (ids >= 0).all() and not set(ids[0]) & set(best[:5])


@pytest.mark.parametrize("where", ["queries", "item_vecs", "item_bias", "item_text", "text_queries"])
def test_nan_rejected_with_clear_error(where):
    rng = np.random.default_rng(3)
    q, V, bias, extra = random_problem(rng, 3, 50, 4, d=3)
    arrays = dict(queries=q, item_vecs=V, item_bias=bias, **{k: v for k, v in extra.items() if k != "text_weight"})
    arrays[where][1] = np.nan  # row 1 of whichever array
    cand = np.tile(np.arange(50, dtype=np.int64), (3, 1))
    for fn, args in ((_core.rescore, (arrays["queries"], V, bias, cand, 5)),
                     (_core.topk_full, (arrays["queries"], V, bias, 5))):
        with pytest.raises(ValueError, match="NaN"):
            fn(*args, text_queries=arrays["text_queries"], item_text=arrays["item_text"], num_threads=2)


def test_bad_arguments_name_the_argument():
    q = np.zeros((2, 4), np.float32)
    V = np.zeros((10, 4), np.float32)
    cand = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="queries must have dtype float32, got float64"):
        _core.rescore(q.astype(np.float64), V, None, cand, 3)
    with pytest.raises(ValueError, match="candidates must have dtype int64, got int32"):
        _core.rescore(q, V, None, cand.astype(np.int32), 3)
    with pytest.raises(ValueError, match="item_vecs must be C-contiguous"):
        _core.rescore(q, np.asfortranarray(np.zeros((10, 4), np.float32)), None, cand, 3)
    with pytest.raises(ValueError, match="queries has 5 columns but item_vecs has 4"):
        _core.rescore(np.zeros((2, 5), np.float32), V, None, cand, 3)
    with pytest.raises(ValueError, match="item_bias has length 9"):
        _core.rescore(q, V, np.zeros(9, np.float32), cand, 3)
    with pytest.raises(ValueError, match=r"candidates\[1, 2\] = 10 is outside the item range"):
        _core.rescore(q, V, None, np.array([[0, 1, 2], [0, 1, 10]], np.int64), 3, num_threads=2)
    with pytest.raises(ValueError, match="exclude_indices holds 12"):
        _core.topk_full(q, V, None, 3, exclude_indptr=np.array([0, 1], np.int64),
                        exclude_indices=np.array([12], np.int64))
    with pytest.raises(ValueError, match="exclude_indptr must have length b \\+ 1"):
        _core.topk_full(q, V, None, 3, exclude_indptr=np.array([0, 0, 0, 0], np.int64),
                        exclude_indices=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="k must be >= 0, got -1"):
        _core.topk_full(q, V, None, -1)
    with pytest.raises(ValueError, match="num_threads must be >= 0"):
        _core.topk_full(q, V, None, 3, num_threads=-2)
    with pytest.raises(ValueError, match="text_queries and item_text must be given together"):
        _core.topk_full(q, V, None, 3, item_text=np.zeros((10, 2), np.float32))
    with pytest.raises(TypeError, match="item_vecs must be a numpy array"):
        _core.topk_full(q, [[0.0] * 4] * 10, None, 3)


def test_no_copy_of_inputs_and_gil_released():
    # The kernel must run while another Python thread holds the interpreter.
    import threading
    rng = np.random.default_rng(4)
    q, V, bias, _ = random_problem(rng, 64, 200_000, 32)
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    th = threading.Thread(target=spin)
    th.start()
    try:
        before = counter[0]
        _core.topk_full(q, V, bias, 10, num_threads=1)
        progressed = counter[0] - before
    finally:
        stop.set()
        th.join()
    assert progressed > 1000, "Python thread made no progress: GIL held during the kernel"
