"""ctxrec.evaluate: splits, metrics (hand-computed and against scikit-learn), core vs numpy, reports."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ctxrec.data import Dataset
from ctxrec.evaluate import (
    EvaluationReport,
    Factors,
    auc,
    evaluate_pointwise,
    evaluate_ranking,
    item_cold_start,
    leave_last_out,
    load_reports,
    logloss,
    mae,
    per_query_metrics,
    random_split,
    ranking_metrics_from_topk,
    rmse,
    save_reports,
    stratified_split,
    temporal_split,
    topk_numpy,
    user_auc,
)

from _data_dir import DATA_DIR, needs_data  # noqa: E402


def _synthetic(n_users=60, n_items=40, n=900, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.integers(n_users, size=n)
    i = np.minimum(rng.zipf(1.6, size=n) - 1, n_items - 1)
    df = pd.DataFrame({"user": u, "item": i, "rating": rng.integers(1, 6, size=n),
                       "ts": rng.integers(0, 10_000, size=n)}).drop_duplicates(["user", "item"])
    return Dataset.from_frames(df, user_col="user", item_col="item", rating_col="rating", timestamp_col="ts",
                               items=pd.DataFrame({"item": np.arange(n_items)}), name="synthetic")


# ---------------------------------------------------------------------------- pointwise


def test_auc_hand_example_and_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    # pairs (pos, neg): (0.8, 0.3) ok, (0.8, 0.5) ok, (0.4, 0.3) ok, (0.4, 0.5) wrong, ties count 1/2
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.3, 0.5]) == pytest.approx(3 / 4)
    assert auc([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.75)
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.integers(0, 2, 500)
        s = np.round(rng.normal(size=500) + y, 1)  # many ties
        assert auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="y_score.*NaN"):
        auc([1, 0], [np.nan, 0.3])


def test_user_auc_logloss_rmse_mae():
    skm = pytest.importorskip("sklearn.metrics")
    users = [0, 0, 0, 1, 1, 2, 2]
    y = [1, 0, 0, 1, 0, 1, 1]  # user 2 has a single class and is skipped
    s = [0.9, 0.2, 0.95, 0.1, 0.3, 0.5, 0.6]
    got, n = user_auc(users, y, s)
    assert n == 2 and got == pytest.approx((0.5 + 0.0) / 2)
    w, _ = user_auc(users, y, s, weighted=True)
    assert w == pytest.approx((0.5 * 3 + 0.0 * 2) / 5)
    yb, p = np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.6, 0.4])
    assert logloss(yb, p) == pytest.approx(-(np.log(0.9) * 2 + np.log(0.6) * 2) / 4)
    assert logloss(yb, p) == pytest.approx(skm.log_loss(yb, p))
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(np.sqrt(4 / 3))
    assert mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert rmse([3, 4], [1, 1]) == pytest.approx(skm.root_mean_squared_error([3, 4], [1, 1]))
    with pytest.raises(ValueError, match="probabilities"):
        logloss([1], [1.5])
    rep = evaluate_pointwise(yb, p, users=[0, 0, 1, 1], name="m", split="s")
    assert set(rep.metrics) == {"auc", "logloss", "user_auc"}
    assert evaluate_pointwise([1, 2], [1.5, 2.5], kind="rating").metrics == {"rmse": 0.5, "mae": 0.5}


# ---------------------------------------------------------------------------- ranking metrics


@pytest.mark.parametrize("names, match", [(["mrr"], "full-catalog scores"), (["ndcg", "auc"], "full-catalog"),
                                           (["ndcg", "colour"], "colour")])
def test_top_k_metrics_refuse_what_a_list_cannot_give(names, match):
    """mrr / auc need every item's score (evaluate_ranking); a list-only function says so instead
    of returning nothing for them."""
    topk, rel_ptr, rel = np.array([[3, 5]]), np.array([0, 1]), np.array([3])
    for call in (lambda: per_query_metrics(topk, rel_ptr, rel, [2], metrics=names),
                 lambda: ranking_metrics_from_topk(topk, rel_ptr, rel, [2], n_candidates=10, metrics=names)):
        with pytest.raises(ValueError, match=match):
            call()
    assert set(per_query_metrics(topk, rel_ptr, rel, [2])) == {f"{m}@2" for m in
                                                              ("hr", "precision", "recall", "ndcg", "map", "map_nrel")}


def test_ranking_metrics_hand_example():
    # query 0: relevant {3, 7}, ranked [3, 5, 7, 1]; query 1: relevant {2}, ranked [4, 6, 8, 2]
    topk = np.array([[3, 5, 7, 1], [4, 6, 8, 2]])
    rel_ptr, rel = np.array([0, 2, 3]), np.array([3, 7, 2])
    m = ranking_metrics_from_topk(topk, rel_ptr, rel, [1, 3, 4], n_candidates=10)
    l2 = np.log2
    assert m["hr@1"] == 0.5 and m["hr@3"] == 0.5 and m["hr@4"] == 1.0
    assert m["precision@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["recall@3"] == pytest.approx((1 + 0) / 2)
    assert m["recall@4"] == pytest.approx((1 + 1) / 2)
    ndcg0 = (1 / l2(2) + 1 / l2(4)) / (1 / l2(2) + 1 / l2(3))
    assert m["ndcg@3"] == pytest.approx(ndcg0 / 2)
    pq = per_query_metrics(topk, rel_ptr, rel, [1, 3, 4])  # the same, query by query
    assert np.allclose(pq["ndcg@3"], [ndcg0, 0.0]) and np.array_equal(pq["hr@4"], [1.0, 1.0])
    assert all(m[k] == pytest.approx(v.mean()) for k, v in pq.items())
    assert m["ndcg@4"] == pytest.approx((ndcg0 + (1 / l2(5)) / 1) / 2)
    assert m["map@3"] == pytest.approx(((1 + 2 / 3) / 2 + 0) / 2)
    assert m["map@4"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 4) / 1) / 2)
    assert m["coverage@1"] == pytest.approx(2 / 10) and m["coverage@4"] == pytest.approx(8 / 10)
    # Microsoft Recommenders' MAP divides by the number of relevant items
    assert m["map_nrel@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["map_nrel@4"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 4) / 1) / 2)


def test_ndcg_matches_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    n_items, m = 30, 25
    scores = rng.normal(size=(m, n_items)).astype(np.float32)
    truth = (rng.random((m, n_items)) < 0.15).astype(float)
    truth[truth.sum(axis=1) == 0, 0] = 1
    ids, _ = topk_numpy(scores, 10)
    rel_ptr = np.concatenate([[0], np.cumsum(truth.sum(axis=1))]).astype(np.int64)
    rel = np.concatenate([np.flatnonzero(t) for t in truth])
    for k in (1, 5, 10):
        ours = ranking_metrics_from_topk(ids, rel_ptr, rel, [k], n_candidates=n_items)[f"ndcg@{k}"]
        assert ours == pytest.approx(skm.ndcg_score(truth, scores, k=k), abs=1e-9)


def test_topk_numpy_ties_and_padding():
    s = np.array([[1, 3, 3, 2, 3], [0, -np.inf, 5, -np.inf, -np.inf]], dtype=np.float32)
    ids, sc = topk_numpy(s, 4)
    assert ids.tolist() == [[1, 2, 4, 3], [2, 0, -1, -1]]
    assert sc[1, 2] == -np.inf


def _factor_model(ds, d=4, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    return Factors(item_vecs=rng.normal(size=(ds.n_items, d)), user_vecs=rng.normal(size=(ds.n_users, d)),
                   item_bias=rng.normal(size=ds.n_items) if bias else None)


@pytest.mark.parametrize("ties", [False, True])
def test_full_ranking_against_brute_force(ties):
    ds = _synthetic()
    sp = random_split(ds, test_frac=0.3, seed=1)
    model = _factor_model(ds)
    if ties:  # integer scores in 0..3: most items tie; ties go to the smaller item index
        model = Factors(np.zeros((ds.n_items, 1)), np.zeros((ds.n_users, 1)),
                        np.random.default_rng(2).integers(0, 4, ds.n_items))
    rep = evaluate_ranking(model, sp.train, sp.test, ks=(5, 10), backend="numpy")
    # brute force, one user at a time, straight from the definitions
    S = model.user_vecs @ model.item_vecs.T + model.item_bias
    tr = {(u, i) for u, i in zip(sp.train.users, sp.train.items)}
    rec5, ndcg10, rr, aucs = [], [], [], []
    for u in np.unique(sp.test.users):
        rel = {i for uu, i in zip(sp.test.users, sp.test.items) if uu == u and (u, i) not in tr}
        if not rel:
            continue
        elig = [i for i in range(ds.n_items) if (u, i) not in tr]
        order = sorted(elig, key=lambda i: (-S[u, i], i))
        rec5.append(len(rel & set(order[:5])) / len(rel))
        dcg = sum(1 / np.log2(r + 2) for r, i in enumerate(order[:10]) if i in rel)
        ndcg10.append(dcg / sum(1 / np.log2(r + 2) for r in range(min(len(rel), 10))))
        rr.append(1 / (1 + min(order.index(i) for i in rel)))
        pos = [order.index(i) for i in rel]
        neg = [order.index(i) for i in elig if i not in rel]
        aucs.append(np.mean([p < q for p in pos for q in neg]) if neg else 1.0)
    assert rep.info["n_queries"] == len(rec5)
    assert rep.metrics["recall@5"] == pytest.approx(np.mean(rec5))
    assert rep.metrics["ndcg@10"] == pytest.approx(np.mean(ndcg10))
    assert np.allclose(rep.result.per_query["ndcg@10"], ndcg10)  # per user, in ascending user order
    assert rep.metrics["mrr"] == pytest.approx(np.mean(rr))
    assert rep.metrics["auc"] == pytest.approx(np.mean(aucs))


def test_core_and_numpy_backends_agree():
    pytest.importorskip("ctxrec._core")
    ds = _synthetic(n_users=80, n_items=300, n=3000, seed=4)
    sp = stratified_split(ds)
    for bias in (True, False):
        model = _factor_model(ds, d=8, seed=5, bias=bias)
        a = evaluate_ranking(model, sp.train, sp.test, ks=(1, 10, 50), backend="core", batch_size=17)
        b = evaluate_ranking(model, sp.train, sp.test, ks=(1, 10, 50), backend="numpy")
        assert a.info["backend"] == "core" and b.info["backend"] == "numpy"
        np.testing.assert_array_equal(a.result.topk, b.result.topk)
        assert a.metrics == pytest.approx(b.metrics)
    # integer popularity scores: many exact ties, broken by item index on both paths
    pop = Factors(np.zeros((ds.n_items, 1)), np.zeros((ds.n_users, 1)), sp.train.item_counts())
    a = evaluate_ranking(pop, sp.train, sp.test, ks=(10,), backend="core")
    b = evaluate_ranking(pop, sp.train, sp.test, ks=(10,), backend="numpy")
    np.testing.assert_array_equal(a.result.topk, b.result.topk)
    # a score callback gives the same as the factors
    S = model.user_vecs @ model.item_vecs.T
    c = evaluate_ranking(lambda users, rows: S[users], sp.train, sp.test, ks=(1, 10, 50))
    d = evaluate_ranking(model, sp.train, sp.test, ks=(1, 10, 50))
    np.testing.assert_array_equal(c.result.topk, d.result.topk)
    assert c.metrics == pytest.approx(d.metrics)


def test_exclusion_candidates_and_row_queries():
    ds = _synthetic()
    sp = item_cold_start(ds, frac=0.2, seed=2)
    model = _factor_model(ds)
    rep = evaluate_ranking(model, sp.train, sp.test, ks=(5,), candidates=sp.candidate_items)
    top = rep.result.topk
    assert np.isin(top[top >= 0], sp.candidate_items).all()
    # training items never appear in a user's list
    ip, ix = sp.train.user_items()
    for q, u in enumerate(rep.result.query_users):
        assert not np.isin(top[q], ix[ip[u]:ip[u + 1]]).any()
    # row queries: one query per test row, query_fn sees the rows
    seen = []

    def query_fn(users, rows):
        seen.append(rows.copy())
        return model.user_vecs[users]

    rr = evaluate_ranking(Factors(model.item_vecs, item_bias=model.item_bias, query_fn=query_fn),
                          sp.train, sp.test, group="row", ks=(5,), candidates=sp.candidate_items)
    assert rr.info["n_queries"] == len(sp.test) and sorted(np.concatenate(seen)) == list(range(len(sp.test)))
    with pytest.raises(ValueError, match="unknown ranking metrics"):
        evaluate_ranking(model, sp.train, sp.test, metrics=["ndgc"])
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_ranking(lambda u, r: np.full((len(u), ds.n_items), np.nan), sp.train, sp.test)
    bad = Factors(model.item_vecs, model.user_vecs.copy(), model.item_bias)
    bad.user_vecs[sp.test.users[0], 0] = np.nan
    with pytest.raises(ValueError, match="non-finite|NaN"):
        evaluate_ranking(bad, sp.train, sp.test, backend="numpy")
    # relevant lists given in any order
    topk = np.array([[3, 5, 7, 1]])
    a = ranking_metrics_from_topk(topk, np.array([0, 2]), np.array([7, 3]), [4], n_candidates=10)
    b = ranking_metrics_from_topk(topk, np.array([0, 2]), np.array([3, 7]), [4], n_candidates=10)
    assert a == b and a["hr@4"] == 1.0


# ---------------------------------------------------------------------------- splits


def test_splits_partition_and_protocols():
    ds = _synthetic()
    for sp in (leave_last_out(ds, n_validation=1), temporal_split(ds, test_frac=0.25, validation_frac=0.1),
               stratified_split(ds, ratio=0.75, validation_frac=0.1), random_split(ds, test_frac=0.2, validation_frac=0.1),
               item_cold_start(ds, frac=0.2)):
        parts = [sp.train_rows, sp.test_rows] + ([sp.validation_rows] if sp.validation_rows is not None else [])
        allrows = np.concatenate(parts)
        assert len(allrows) == len(ds) and len(np.unique(allrows)) == len(ds), sp.name
        assert sp.train.n_items == ds.n_items and sp.test.item_text is ds.item_text
    # leave-last-out: each user's test row is their latest; validation the one before
    sp = leave_last_out(ds, n_validation=1)
    counts = np.bincount(ds.users, minlength=ds.n_users)
    assert set(sp.test.users) == set(np.flatnonzero(counts > 2))
    for u in np.unique(sp.test.users):
        t_test = sp.test.timestamp[sp.test.users == u].min()
        assert sp.train.timestamp[sp.train.users == u].max() <= t_test
        assert sp.validation.timestamp[sp.validation.users == u].max() <= t_test
    # global temporal: every train row is no later than every test row
    sp = temporal_split(ds, test_frac=0.25)
    assert sp.train.timestamp.max() <= sp.test.timestamp.min() and len(sp.test) == round(0.25 * len(ds))
    # stratified: each user gets round(0.75 n) training rows; validation comes out of them only
    sp = stratified_split(ds, ratio=0.75)
    tr = np.bincount(sp.train.users, minlength=ds.n_users)
    assert all(tr[u] == round(0.75 * counts[u]) for u in range(ds.n_users))
    spv = stratified_split(ds, ratio=0.75, validation_frac=0.2)
    np.testing.assert_array_equal(spv.test_rows, sp.test_rows)
    np.testing.assert_array_equal(np.sort(np.r_[spv.train_rows, spv.validation_rows]), sp.train_rows)
    va = np.bincount(spv.validation.users, minlength=ds.n_users)
    assert all(va[u] == round(0.2 * tr[u]) for u in range(ds.n_users))
    # cold start: held-out items never in train, all their rows in test
    sp = item_cold_start(ds, frac=0.2, seed=0)
    assert not np.isin(sp.train.items, sp.candidate_items).any()
    assert np.isin(sp.test.items, sp.candidate_items).all()
    assert len(sp.candidate_items) == round(0.2 * len(np.unique(ds.items)))
    assert not np.array_equal(item_cold_start(ds, frac=0.2, seed=1).candidate_items, sp.candidate_items)


def test_stratified_matches_pandas_sample_protocol():
    """The Microsoft Recommenders split: per user, DataFrame.sample(frac=1, random_state=seed), first round(.75n)."""
    ds = _synthetic(seed=7)
    sp = stratified_split(ds, ratio=0.75, seed=42)
    df = ds.to_frame()
    df["row"] = np.arange(len(df))
    want = []
    for _, g in df.groupby("user_id"):
        g = g.sample(frac=1, random_state=42)
        want.extend(g["row"].iloc[:round(0.75 * len(g))])
    np.testing.assert_array_equal(sp.train_rows, np.sort(want))


@needs_data
def test_movielens_split_sizes():
    from ctxrec.data import load_movielens_100k

    ml = load_movielens_100k(DATA_DIR)
    sp = leave_last_out(ml)
    assert len(sp.test) == 943 and len(sp.train) == 100_000 - 943  # every ml-100k user has >= 20 ratings
    sp = stratified_split(ml)
    assert len(sp.train) + len(sp.test) == 100_000
    assert abs(len(sp.train) / 100_000 - 0.75) < 0.001


# ---------------------------------------------------------------------------- reports


def test_report_json_markdown_png(tmp_path):
    ds = _synthetic()
    sp = random_split(ds, seed=3)
    rep = evaluate_ranking(_factor_model(ds), sp.train, sp.test, ks=(1, 5, 10), name="factors", split="random")
    rep.curves = {"train_loss": [0.9, 0.7, 0.6]}
    rep.timings = {"fit_s": 1.5}
    other = EvaluationReport(name="pop", split="random", metrics={"ndcg@5": 0.1, "hr@5": 0.3}, ks=[5])
    out = save_reports([rep, other], tmp_path / "rep")
    files = {p.name for p in out.iterdir()}
    assert {"report.json", "report.md", "report.png", "manifest.json"} <= files
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| factors | random |" in md and "ndcg@5" in md and "fit_s" in md
    back = load_reports(out)
    assert back[0].metrics == rep.metrics and back[0].curves == rep.curves and back[1].name == "pop"
    assert json.loads(rep.to_json())["metrics"]["hr@1"] == rep.metrics["hr@1"]
    (out / "report.json").write_text("[]")
    from ctxrec._io import CorruptArtifactError
    with pytest.raises(CorruptArtifactError, match="report.json"):
        load_reports(out)
    # a pointwise-only report plots too
    evaluate_pointwise([1, 0, 1], [0.8, 0.2, 0.4], name="ctr").save(tmp_path / "pw")
    assert (tmp_path / "pw" / "report.png").stat().st_size > 0
