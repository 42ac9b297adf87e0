"""Exploration (issue 19): the posterior against a numpy reference, and the policies end to end."""
from __future__ import annotations

import numpy as np
import pytest

from ctxrec import explore
from ctxrec.engine import Engine
from ctxrec.errors import InputError

MORNING = {"timestamp": "2024-04-01T08:15:00Z"}


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ------------------------------------------------------------------ the math, against numpy
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("m", [0, 1, 7, 40])
def test_posterior_matches_the_numpy_reference(seed, m):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 12))
    p0 = np.linalg.inv(_spd(rng, d))
    x = rng.normal(size=(m, d)).astype(np.float32)
    noise = float(rng.uniform(0.2, 3.0))
    sigma = np.linalg.inv(p0 + x.astype(np.float64).T @ x / noise)  # the textbook posterior covariance
    f = explore.posterior_factor(p0, x if m else None, noise)
    assert np.allclose(np.triu(f), f)
    assert np.allclose(f @ f.T, sigma, atol=1e-8 * max(1.0, np.abs(sigma).max()))
    v = rng.normal(size=(13, d)).astype(np.float32)
    bonus = explore.ucb_bonus(f, v, 0.7)
    assert np.allclose(bonus, 0.7 * np.sqrt(np.einsum("id,de,ie->i", v, sigma, v)), rtol=1e-4)
    z = np.random.default_rng(5).standard_normal(d)
    got = explore.sample_offset(f, 1.5, np.random.default_rng(5))
    assert np.allclose(got, 1.5 * f @ z, rtol=1e-5, atol=1e-6)


def test_thompson_draws_have_the_posterior_covariance():
    rng = np.random.default_rng(0)
    d = 4
    p0 = np.linalg.inv(_spd(rng, d))
    r = explore.posterior_factor(p0, rng.normal(size=(3, d)))
    sigma = r @ r.T
    g = np.random.default_rng(1)
    draws = np.stack([explore.sample_offset(r, 2.0, g) for _ in range(20_000)])
    assert np.allclose(draws.mean(axis=0), 0, atol=0.06 * np.sqrt(sigma.diagonal().max()) * 2)
    assert np.allclose(np.cov(draws, rowvar=False), 4.0 * sigma, atol=0.05 * 4.0 * np.abs(sigma).max())


def test_prior_is_the_users_spread_and_history_narrows_it():
    rng = np.random.default_rng(2)
    c = _spd(rng, 5)
    offsets = rng.multivariate_normal(np.zeros(5), c, size=4000)
    p0 = explore.prior_precision(offsets)
    c_hat = np.cov(offsets, rowvar=False)
    assert np.allclose(p0, np.linalg.inv(c_hat + explore.RIDGE * np.trace(c_hat) / 5 * np.eye(5)))
    assert np.array_equal(explore.prior_precision(offsets[:1]), np.eye(5))  # one user: no spread to read
    # a dimension no user varies in stays invertible (the ridge)
    flat = np.hstack([offsets, np.zeros((len(offsets), 1))])
    assert np.all(np.isfinite(explore.prior_precision(flat)))
    v = rng.normal(size=(1, 5))
    wide = explore.ucb_bonus(explore.posterior_factor(p0, None), v, 1.0)[0]
    narrow = explore.ucb_bonus(explore.posterior_factor(p0, np.repeat(v, 10, axis=0)), v, 1.0)[0]
    assert narrow < 0.5 * wide  # ten observations along v: much less unsure along v


@pytest.mark.parametrize("kw, field", [
    ({"explore": "greedy"}, "explore"), ({"explore": 1}, "explore"),
    ({"explore": "ucb", "scale": -1.0}, "explore_scale"), ({"explore": "ucb", "scale": float("nan")}, "explore_scale"),
    ({"explore": "ucb", "scale": True}, "explore_scale"), ({"explore": "ucb", "scale": "1"}, "explore_scale"),
    ({"explore": "ucb", "seed": -1}, "seed"), ({"explore": "ucb", "seed": 1.5}, "seed"),
    ({"explore": "ucb", "seed": "3"}, "seed"), ({"explore": "ucb", "seed": True}, "seed"),
])
def test_check_explore_names_the_option(kw, field):
    with pytest.raises(InputError) as e:
        explore.check_explore(kw["explore"], kw.get("scale", 1.0), kw.get("seed"))
    assert e.value.field == field


def test_check_explore_off_and_on():
    assert explore.check_explore(None) == (None, 1.0, None)
    assert explore.check_explore("ucb", 0.0, 3) == (None, 0.0, 3)  # a zero scale is off
    assert explore.check_explore("thompson", 2, np.int64(7)) == ("thompson", 2.0, 7)


def test_ucb_rank_equals_a_whole_catalog_reference():
    """rank(ucb) over the engine's pool = the top-k of score + bonus over every item (a pool >= the catalog)."""
    rng = np.random.default_rng(3)
    n, d, k = 80, 6, 5
    V, b = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=n).astype(np.float32)
    eng = Engine(exact_threshold=10 ** 9).fit(V, b, item_ids=np.arange(n))
    p0 = explore.prior_precision(rng.normal(size=(50, d)))
    Q = rng.normal(size=(3, d)).astype(np.float32)
    factors = [explore.posterior_factor(p0, V[rng.integers(0, n, m)]) for m in (0, 3, 20)]
    rerank = dict(diversity=0.0, calibrate=0.0, calibrate_by=None, exposure=0.0)

    def call(q, m, opts):
        return eng.recommend_batch(q, m, num_threads=1, return_terms=True, **opts)

    ids, scores, _, bonus = explore.rank(eng, "ucb", 0.8, [explore.rng(0, j) for j in range(3)], factors, Q, k,
                                         call, rerank)
    for j in range(3):
        mean = V @ Q[j] + b
        ucb = mean + explore.ucb_bonus(factors[j], V, 0.8)
        want = np.lexsort((np.arange(n), -ucb))[:k]
        assert ids[j] == want.tolist()
        assert np.allclose(scores[j], mean[want], atol=1e-5)
        assert np.allclose(bonus[j], ucb[want] - mean[want], atol=1e-5)
    # Thompson: the top-k of the moved query, its scores the model's
    ids, scores, _, shift = explore.rank(eng, "thompson", 0.8, [explore.rng(4, j) for j in range(3)], factors, Q, k,
                                         call, rerank)
    for j in range(3):
        delta = explore.sample_offset(factors[j], 0.8, explore.rng(4, j))
        moved = V @ (Q[j] + delta) + b
        assert ids[j] == np.lexsort((np.arange(n), -moved))[:k].tolist()
        assert np.allclose(scores[j], (V @ Q[j] + b)[ids[j]], atol=1e-4)
        assert np.allclose(shift[j], (V @ delta)[ids[j]], atol=1e-4)


# ------------------------------------------------------------------ the Recommender
@pytest.fixture(scope="module")
def rec(planted_rec):
    return planted_rec


@pytest.mark.parametrize("policy", explore.POLICIES)
def test_explore_is_deterministic_given_a_seed_and_off_by_default(rec, policy):
    plain = rec.recommend("u1", MORNING, k=8)
    assert rec.recommend("u1", MORNING, k=8, explore=policy, explore_scale=0.0).item_ids == plain.item_ids
    a = rec.recommend("nobody", MORNING, k=8, explore=policy, explore_scale=3.0, seed=11)
    b = rec.recommend("nobody", MORNING, k=8, explore=policy, explore_scale=3.0, seed=11)
    assert a.to_dict() == b.to_dict()
    assert len(a.explore) == 8 and plain.explore == [] and "explore" not in plain.to_dict()["items"][0]
    if policy == "thompson":  # another seed, another draw
        others = {tuple(rec.recommend("nobody", MORNING, k=8, explore=policy, explore_scale=3.0, seed=s).item_ids)
                  for s in range(12, 18)}
        assert len(others) > 1


@pytest.mark.parametrize("policy", explore.POLICIES)
def test_explore_ranks_by_score_plus_its_term_and_reports_the_models_scores(rec, policy):
    r = rec.recommend("u4", MORNING, k=10, explore=policy, explore_scale=2.0, seed=3)
    ranked = np.asarray(r.scores) + np.asarray(r.explore)
    assert np.all(np.diff(ranked) <= 1e-5)
    # the scores are the model's own: the plain answer restricted to the same items
    plain = rec.recommend("u4", MORNING, k=10, allow=r.item_ids)
    model = dict(zip(plain.item_ids, plain.scores))
    assert np.allclose(r.scores, [model[i] for i in r.item_ids], atol=1e-4)
    if policy == "ucb":
        assert min(r.explore) > 0


def test_explain_reports_the_uncertainty_ucb_adds(rec):
    for user in ("u4", "nobody"):
        r = rec.recommend(user, MORNING, k=4, explore="ucb", explore_scale=1.0)
        got = [rec.explain(user, i, MORNING)["uncertainty"] for i in r.item_ids]
        assert np.allclose(got, r.explore, rtol=1e-5) and min(got) > 0


def test_user_posterior_is_cached_until_the_history_or_catalog_changes(planted, monkeypatch):
    from ctxrec.context import ContextSpec
    from ctxrec.model import ContextFM
    from ctxrec.recommender import Recommender
    r = Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=8, epochs=2, random_state=0),
                    encoder=None).fit(planted)
    calls = []
    real = explore.posterior_factor
    monkeypatch.setattr(explore, "posterior_factor", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    r.feedback("u6", r.item_ids_[0])
    assert calls == []  # a recommender that never explored computes no posterior at feedback
    a = r.user_posterior("u5")
    assert r.user_posterior("u5") is a and not a.flags.writeable  # cached, read-only
    assert r.user_posterior(None) is r.user_posterior("someone-new")  # no history: the prior's
    item = next(i for i in r.item_ids_ if i not in set(r.history("u5")))
    n = len(calls)
    r.feedback("u5", item)
    assert len(calls) == n + 1  # it explores: the feedback computed the user's next factor ...
    b = r.user_posterior("u5")
    assert len(calls) == n + 1  # ... which the next request reads
    assert b is not a and not np.allclose(a, b)  # a new event: a new posterior
    r.remove_items([r.history("u5")[-2]])
    assert r.user_posterior("u5") is not b  # the catalog changed: recomputed


def test_history_narrows_the_ucb_bonus(rec):
    cold = rec.recommend("nobody", MORNING, k=10, explore="ucb", seed=0)
    known = rec.recommend("u4", MORNING, k=10, explore="ucb", seed=0)
    assert len(rec.history("u4")) >= 10
    assert np.mean(known.explore) < np.mean(cold.explore)


@pytest.mark.parametrize("policy", explore.POLICIES)
def test_explore_batch_equals_single(rec, policy):
    users = ["u1", "nobody", "u2", "u7"]
    kw = dict(k=6, explore=policy, explore_scale=2.0, seed=5)
    batch = rec.recommend_batch(users, [MORNING] * 4, **kw)
    single = [rec.recommend(u, MORNING, **kw) for u in users]
    for x, y in zip(batch, single):
        assert x.item_ids == y.item_ids
        assert np.allclose(x.scores, y.scores, atol=1e-5) and np.allclose(x.explore, y.explore, atol=1e-5)


@pytest.mark.parametrize("policy", explore.POLICIES)
def test_explore_with_reranking_and_exclusions(rec, policy):
    ex = rec.recommend("u3", MORNING, k=3).item_ids
    r = rec.recommend("u3", MORNING, k=8, explore=policy, explore_scale=1.0, seed=2, exclude=ex, diversity=0.6,
                      calibrate=1.0, calibrate_by="kind")
    assert not set(ex) & set(r.item_ids) and len(r.item_ids) == 8
    assert len(r.rerank) == 8 and len(r.explore) == 8 and r.rerank[0]["similarity"] == 0.0
    assert not set(rec.history("u3")) & set(r.item_ids)


@pytest.mark.parametrize("kw, field", [({"explore": "softmax"}, "explore"),
                                       ({"explore": "ucb", "explore_scale": -2}, "explore_scale"),
                                       ({"explore": "thompson", "seed": "x"}, "seed")])
def test_explore_options_are_checked_naming_the_field(rec, kw, field):
    before = rec.recommend("u1", MORNING, k=5).to_dict()
    for call in (lambda: rec.recommend("u1", MORNING, k=5, **kw),
                 lambda: rec.recommend_batch(["u1"], [MORNING], k=5, **kw)):
        with pytest.raises(InputError) as e:
            call()
        assert e.value.field == field
    assert rec.recommend("u1", MORNING, k=5).to_dict() == before
