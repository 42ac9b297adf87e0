"""ctxrec.Engine: HNSW + exact rescoring against exact full-catalog scoring."""
from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from ctxrec import CorruptArtifactError, Engine, _core
from ctxrec.synthetic import make_catalog


def clustered(n, d, seed=0):
    cat = make_catalog(n, "clustered", dim=d, text_dim=1, n_queries=1, seed=seed)
    return cat["V"], cat["bias"]


def exact_top(eng, Q, k, text=None, w=1.0):
    kw = {} if text is None else dict(text_queries=text, item_text=eng.item_text_, text_weight=w)
    return _core.topk_full(Q, np.asarray(eng.item_vecs_), np.asarray(eng.item_bias_), k, **kw)[0]


@pytest.fixture(scope="module")
def catalog():
    return make_catalog(5000, "clustered", dim=16, text_dim=8, n_queries=100, seed=0)


@pytest.fixture(scope="module")
def hnsw_engine(catalog):
    ids = np.array([f"item{i}" for i in range(5000)])
    return Engine(M=16, ef=64, n_candidates=100, exact_threshold=1000).fit(
        catalog["V"], catalog["bias"], ids, item_text=catalog["T"], text_weight=0.2)


def test_hnsw_recall_against_exact(hnsw_engine, catalog):
    eng = hnsw_engine
    assert not eng.exact_ and eng.index_ is not None
    Q, TQ = catalog["Q"], catalog["TQ"]
    truth = exact_top(eng, Q, 10, TQ, 0.2)
    ids, scores = eng.recommend_batch(Q, 10, text_queries=TQ)
    got = np.vectorize(lambda s: int(s[4:]))(ids)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
    assert recall >= 0.95, recall
    # single-query path gives the same answers as the batch path
    for i in range(10):
        sid, ss = eng.recommend(Q[i], 10, text_query=TQ[i])
        assert list(sid) == list(ids[i])
        np.testing.assert_allclose(ss, scores[i], rtol=1e-5)


def test_exact_mode_is_exact_and_ids_are_original():
    X, b = clustered(500, 8)
    ids = np.arange(1000, 1500)
    eng = Engine(exact_threshold=10_000).fit(X, b, ids)
    assert eng.exact_ and eng.index_ is None
    q = np.random.default_rng(3).standard_normal(8).astype(np.float32)
    got, scores = eng.recommend(q, 7)
    truth = np.argsort(-(X @ q + b), kind="stable")[:7] + 1000
    assert list(got) == list(truth)
    np.testing.assert_allclose(scores, (X @ q + b)[got - 1000], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threshold", [0, 10_000])
def test_exclude_and_allow(threshold):
    X, b = clustered(3000, 8, seed=4)
    eng = Engine(exact_threshold=threshold).fit(X, b)
    q = np.random.default_rng(5).standard_normal(8).astype(np.float32)
    top, _ = eng.recommend(q, 10)
    got, _ = eng.recommend(q, 10, exclude=top[:5].tolist())
    assert len(got) == 10 and not set(got) & set(top[:5])
    allowed = [7, 99, 1234, 2999]
    got, scores = eng.recommend(q, 10, allow=allowed)
    assert sorted(got.tolist()) == sorted(allowed)  # k > allowed: all of them, nothing else
    s = X[allowed] @ q + b[allowed]
    assert got.tolist() == [allowed[i] for i in np.argsort(-s, kind="stable")]
    got, _ = eng.recommend(q, 10, allow=allowed, exclude=[99])
    assert 99 not in got and len(got) == 3


def test_batch_padding_and_per_query_exclusions():
    X, b = clustered(50, 4)
    eng = Engine().fit(X, b, [f"s{i}" for i in range(50)])
    Q = np.random.default_rng(6).standard_normal((3, 4)).astype(np.float32)
    ids, scores = eng.recommend_batch(Q, 5, exclude=[["s1"], None, [f"s{i}" for i in range(47)]])
    assert ids.shape == (3, 5)
    assert "s1" not in ids[0]
    assert list(ids[2, 3:]) == [None, None] and np.isneginf(scores[2, 3:]).all()
    assert set(ids[2, :3]) == {"s47", "s48", "s49"}


def test_unknown_ids_warn_and_are_ignored():
    X, b = clustered(100, 4)
    eng = Engine().fit(X, b)
    q = np.ones(4, np.float32)
    with pytest.warns(UserWarning, match="exclude: 2 unknown item id"):
        got, _ = eng.recommend(q, 5, exclude=[10_000, -5])
    assert len(got) == 5


def test_bad_input_errors_name_the_field():
    X, b = clustered(100, 4)
    with pytest.raises(ValueError, match="item_vecs holds a non-finite value nan at row 3"):
        Xn = X.copy(); Xn[3, 1] = np.nan
        Engine().fit(Xn, b)
    with pytest.raises(ValueError, match="item_ids must be unique"):
        Engine().fit(X, b, [1] * 100)
    with pytest.raises(ValueError, match=r"item_bias must have shape \(100,\)"):
        Engine().fit(X, b[:5])
    with pytest.raises(ValueError, match="M must be a positive integer, got 0"):
        Engine(M=0).fit(X, b)
    eng = Engine().fit(X, b)
    with pytest.raises(ValueError, match=r"query must have shape \[4\], got \(5,\)"):
        eng.recommend(np.ones(5), 3)
    with pytest.raises(ValueError, match="query holds NaN"):
        eng.recommend(np.array([1, np.nan, 0, 0]), 3)
    with pytest.raises(ValueError, match="k must be an integer >= 0, got -1"):
        eng.recommend(np.ones(4), -1)
    with pytest.raises(ValueError, match="text_query given but the engine has no item_text"):
        eng.recommend(np.ones(4), 3, text_query=np.ones(3))
    with pytest.raises(RuntimeError, match="not fitted"):
        Engine().recommend(np.ones(4))


@pytest.mark.parametrize("threshold", [0, 10_000])
def test_save_load_roundtrip_and_corruption(tmp_path, threshold):
    X, b = clustered(2000, 8)
    tri = np.random.default_rng(7).standard_normal((2000, 3)).astype(np.float32)
    eng = Engine(exact_threshold=threshold).fit(X, b, [f"i{i}" for i in range(2000)], item_tri=tri, tri_weight=0.5)
    Q = np.random.default_rng(8).standard_normal((20, 8)).astype(np.float32)
    R = np.random.default_rng(9).standard_normal((20, 3)).astype(np.float32)
    before = eng.recommend_batch(Q, 10, tri_queries=R)
    eng.save(tmp_path / "eng")
    eng.save(tmp_path / "eng")  # overwriting an existing save is atomic too
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directories left behind"
    loaded = Engine.load(tmp_path / "eng")
    after = loaded.recommend_batch(Q, 10, tri_queries=R)
    assert (before[0] == after[0]).all()
    np.testing.assert_array_equal(before[1], after[1])
    # truncate a file → detected
    victim = tmp_path / "eng" / "item_vecs.npy"
    data = victim.read_bytes()
    victim.write_bytes(data[:-16])
    with pytest.raises(CorruptArtifactError, match="item_vecs.npy.*truncated or altered"):
        Engine.load(tmp_path / "eng")
    # same size, one byte flipped → detected by checksum
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    victim.write_bytes(bytes(flipped))
    with pytest.raises(CorruptArtifactError, match="SHA-256"):
        Engine.load(tmp_path / "eng")
    with pytest.raises(CorruptArtifactError, match="no manifest.json"):
        Engine.load(tmp_path / "missing")


def test_failed_save_keeps_previous(tmp_path, monkeypatch):
    X, b = clustered(100, 4)
    eng = Engine().fit(X, b)
    eng.save(tmp_path / "e")
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        eng.save(tmp_path / "e")
    monkeypatch.undo()
    Engine.load(tmp_path / "e")  # the old save is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_concurrent_readers_agree(hnsw_engine):
    eng = hnsw_engine
    Q = np.random.default_rng(10).standard_normal((40, 16)).astype(np.float32)
    expect = [eng.recommend(q, 10)[0].tolist() for q in Q]
    errors = []

    def worker():
        try:
            for _ in range(5):
                for q, e in zip(Q, expect):
                    assert eng.recommend(q, 10)[0].tolist() == e
        except Exception as ex:  # pragma: no cover - reported below
            errors.append(ex)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_pickle_roundtrip(hnsw_engine):
    eng = pickle.loads(pickle.dumps(hnsw_engine))
    q = np.ones(16, np.float32)
    assert eng.recommend(q, 5)[0].tolist() == hnsw_engine.recommend(q, 5)[0].tolist()


def test_exclude_index_rows():
    X, b = clustered(300, 4)
    eng = Engine().fit(X, b, [f"s{i}" for i in range(300)])
    q = np.ones(4, np.float32)
    top, _ = eng.recommend(q, 6)
    rows = np.array([eng.item_index(t) for t in top[:3]], np.int64)
    got, _ = eng.recommend(q, 6, exclude_index=rows, exclude=[top[3]])
    assert not set(got) & set(top[:4]) and len(got) == 6
    with pytest.raises(ValueError, match="exclude_indices holds 300"):
        eng.recommend(q, 3, exclude_index=np.array([300]))
    with pytest.raises(KeyError, match="unknown item id 'zzz'"):
        eng.item_index("zzz")
