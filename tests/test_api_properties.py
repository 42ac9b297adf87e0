"""Property-based tests of the Python API (issue 16, row 13): for random and hostile users,
items, contexts, labels and k, a call returns a valid result or raises a CtxrecError, and a
rejected call leaves the recommender's state as it was."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from ctxrec.context import ContextSpec  # noqa: E402
from ctxrec.errors import CtxrecError  # noqa: E402
from ctxrec.model import ContextFM  # noqa: E402
from ctxrec.recommender import Recommendation, Recommender  # noqa: E402
from _synthetic_data import HashingEncoder, planted_dataset  # noqa: E402

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "u1", "u7", "i1", "i3", "174", "-3", "--5", "a\ud800", "\udfff", "2024-04-01T08:00:00Z",
                     "tv", "mobile", "jazz midnight", " 1", "x" * 300]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=4), inner, max_size=2)),
                      max_leaves=5)
keys = st.sampled_from(["timestamp", "device", "query", "event_time", "", "\ud800", "label"])
contexts = st.one_of(st.none(), st.dictionaries(keys, values, max_size=3), values)
ks = st.one_of(st.integers(min_value=-3, max_value=2 ** 64), st.booleans(), st.none(),
               st.floats(allow_nan=True), st.sampled_from(["3", 3.0]))
id_lists = st.one_of(st.none(), st.lists(values, max_size=4), values)


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    spec = ContextSpec(time=["timestamp"], categorical=["device"], text=["query"])
    r = Recommender(spec, model=ContextFM(n_factors=4, epochs=1, random_state=0), encoder=HashingEncoder(),
                    max_new_users=25).fit(planted_dataset(n_users=30, n_items=60, per_user=8))
    r.open_event_log(tmp_path_factory.mktemp("log") / "events.sqlite")
    return r


def _state(r):
    return (len(r.user_ids_), r.model_.n_users_, [list(r.history(u)) for u in r.user_ids_], r.engine_.n_items_,
            r.event_status()["log_position"], r.model_.V_.sum())


def _call(r, fn):
    """fn(r): the result, or None when it raised a CtxrecError; the state is unchanged when it raised."""
    before = _state(r)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(r)
    except CtxrecError:
        after = _state(r)
        assert after[:5] == before[:5] and after[5] == before[5]
        return None


def _valid(res):
    assert isinstance(res, Recommendation)
    assert len(res.item_ids) == len(res.scores) and all(np.isfinite(res.scores))
    assert res.scores == sorted(res.scores, reverse=True)
    res.to_dict()


@SETTINGS
@given(user=values, context=contexts, k=ks, exclude=id_lists, allow=id_lists, ignore=st.booleans())
def test_recommend_returns_or_raises_a_ctxrec_error(rec, user, context, k, exclude, allow, ignore):
    res = _call(rec, lambda r: r.recommend(user, context, k, exclude=exclude, allow=allow, ignore_unknown=ignore))
    if res is not None:
        _valid(res)
        assert len(res.item_ids) <= min(k, rec.engine_.n_items_)


@SETTINGS
@given(users=st.one_of(st.lists(values, max_size=3), values), contexts=st.one_of(st.none(), st.lists(contexts, max_size=3)),
       k=ks)
def test_recommend_batch_returns_or_raises_a_ctxrec_error(rec, users, contexts, k):
    res = _call(rec, lambda r: r.recommend_batch(users, contexts, k))
    if res is not None:
        assert len(res) == len(users)
        for x in res:
            _valid(x)


@SETTINGS
@given(user=values, item=values, context=contexts, label=values, ignore=st.booleans())
def test_feedback_returns_or_raises_a_ctxrec_error_and_changes_nothing_when_it_raises(rec, user, item, context,
                                                                                      label, ignore):
    n = len(rec.user_ids_)
    out = _call(rec, lambda r: r.feedback(user, item, context, label, ignore_unknown=ignore))
    if out is not None:
        assert out["new_user"] == (len(rec.user_ids_) == n + 1)
        assert rec.user_index(out["user"]) >= 0


@SETTINGS
@given(user=values, item=values, context=contexts, k=ks, by=st.sampled_from(["vectors", "both", "text", "x", None]),
       exclude=id_lists)
def test_similar_items_and_explain_return_or_raise_a_ctxrec_error(rec, user, item, context, k, by, exclude):
    sim = _call(rec, lambda r: r.similar_items(item, k, by=by, exclude=exclude))
    if sim is not None:
        assert len(sim["items"]) <= k
    ex = _call(rec, lambda r: r.explain(user, item, context))
    if ex is not None:
        assert np.isfinite(ex["score"])


@SETTINGS
@given(ids=id_lists)
def test_remove_items_returns_or_raises_a_ctxrec_error(rec, ids):
    live = set(np.asarray(rec.item_ids_)[np.asarray(rec.engine_.live_, bool)].tolist())
    n = _call(rec, lambda r: r.remove_items(ids))
    if n:  # put them back: the other properties want a full catalog
        gone = live - set(np.asarray(rec.item_ids_)[np.asarray(rec.engine_.live_, bool)].tolist())
        import pandas as pd
        rec.add_items(pd.DataFrame({"item_id": sorted(gone), "text": ["back"] * len(gone)}))
