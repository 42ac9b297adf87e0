"""Recommender end to end on a generated dataset with a planted context effect."""
from __future__ import annotations


import numpy as np
import pytest

from ctxrec import CorruptArtifactError
from ctxrec.context import ContextSpec
from ctxrec.model import ContextFM
from ctxrec.recommender import Recommender
from _synthetic_data import HashingEncoder, planted_dataset

MORNING = {"timestamp": "2024-04-01T08:15:00Z"}
NIGHT = {"timestamp": "2024-04-01T22:30:00Z"}


def is_morning(item_ids):
    return np.array([int(str(i)[1:]) < 100 for i in item_ids])


@pytest.fixture(scope="module")
def dataset(planted):
    return planted


@pytest.fixture(scope="module")
def rec(planted_rec):
    return planted_rec


def test_context_changes_the_ranking(rec):
    # user u2 is 50/50 morning/night: the time of the request decides
    morning = rec.recommend("u2", MORNING, k=10)
    night = rec.recommend("u2", NIGHT, k=10)
    assert is_morning(morning.item_ids).mean() >= 0.8
    assert is_morning(night.item_ids).mean() <= 0.2
    assert not morning.cold_start and len(morning.item_ids) == 10
    assert morning.scores == sorted(morning.scores, reverse=True)


def test_free_text_request_moves_the_ranking(rec):
    coffee = rec.recommend("u2", {"query": "coffee breakfast sunrise"}, k=10)
    jazz = rec.recommend("u2", {"query": "jazz midnight cocktail"}, k=10)
    assert is_morning(coffee.item_ids).mean() > is_morning(jazz.item_ids).mean()
    assert rec.text_match_weight_ > 0


def test_seen_items_excluded_and_filters(rec, dataset):
    u = dataset.user_index("u0")
    seen = set(dataset.item_ids[dataset.items[dataset.users == u]])
    r = rec.recommend("u0", MORNING, k=20)
    assert not seen & set(r.item_ids)
    r2 = rec.recommend("u0", MORNING, k=20, exclude_seen=False)
    assert seen & set(r2.item_ids)
    r3 = rec.recommend("u0", MORNING, k=5, allow=["i150", "i3", "i4"], exclude=["i3"])
    assert set(r3.item_ids) <= {"i150", "i4"}
    with pytest.warns(UserWarning, match="unknown item id"):
        rec.recommend("u0", MORNING, k=5, exclude=["no-such-item"])


def test_unknown_user_is_cold_start(rec):
    r = rec.recommend("someone-new", NIGHT, k=10)
    assert r.cold_start and len(r.item_ids) == 10
    assert is_morning(r.item_ids).mean() <= 0.3  # context still applies


def test_invalid_context_names_the_field(rec):
    with pytest.raises(ValueError, match="timestamp"):
        rec.recommend("u1", {"timestamp": "not a time"})
    with pytest.raises(ValueError, match="context must be a dict"):
        rec.recommend("u1", ["timestamp"])


def test_explain_contributions_sum_to_score(rec):
    r = rec.recommend("u0", {**MORNING, "query": "coffee"}, k=3)
    ex = rec.explain("u0", r.item_ids[0], {**MORNING, "query": "coffee"})
    assert ex["score"] == pytest.approx(r.scores[0], abs=1e-3)
    assert sum(ex["contributions"].values()) == pytest.approx(ex["score"], abs=1e-6)
    assert set(ex["contributions"]) == {"text_match", "request_text", "context", "user_affinity", "popularity"}
    with pytest.raises(KeyError, match="unknown item id"):
        rec.explain("u0", "nope")


def test_feedback_updates_user_online(dataset):
    spec = ContextSpec(time=["timestamp"])
    rec = Recommender(spec, model=ContextFM(n_factors=16, epochs=5), encoder=None).fit(dataset)
    before = rec.recommend("newbie", {}, k=10)
    assert before.cold_start
    for item in ["i120", "i121", "i122", "i130"]:  # night items
        rec.feedback("newbie", item)
    after = rec.recommend("newbie", {}, k=10)
    assert not after.cold_start
    assert not {"i120", "i121", "i122", "i130"} & set(after.item_ids)  # seen now
    assert is_morning(after.item_ids).mean() < is_morning(before.item_ids).mean() or \
        is_morning(after.item_ids).mean() <= 0.2
    with pytest.raises(KeyError, match="unknown item id"):
        rec.feedback("newbie", "no-such-item")


def test_save_load_roundtrip(tmp_path, dataset):
    spec = ContextSpec(time=["timestamp"], categorical=["device"])
    rec = Recommender(spec, model=ContextFM(n_factors=8, epochs=3), encoder=None).fit(dataset)
    rec.save(tmp_path / "rec")
    loaded = Recommender.load(tmp_path / "rec")
    for user, ctx in [("u0", MORNING), ("u5", NIGHT), ("new", {"device": "tv"})]:
        a, b = rec.recommend(user, ctx, k=10), loaded.recommend(user, ctx, k=10)
        assert a.item_ids == b.item_ids
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    assert loaded.item_info("i3")["title"] == rec.item_info("i3")["title"]
    victim = tmp_path / "rec" / "model" / "V.npy"
    victim.write_bytes(victim.read_bytes()[:-8])
    with pytest.raises(CorruptArtifactError):
        Recommender.load(tmp_path / "rec")


def test_evaluate_with_context_beats_without(dataset):
    from ctxrec.evaluate import leave_last_out
    split = leave_last_out(dataset)
    spec = ContextSpec(time=["timestamp"], categorical=["device"])
    rec = Recommender(spec, model=ContextFM(n_factors=16, epochs=8, random_state=1), encoder=None).fit(split.train)
    with_ctx = rec.evaluate(split.train, split.test, ks=(10,), group="row")
    no_ctx = Recommender(ContextSpec(), model=ContextFM(n_factors=16, epochs=8, random_state=1),
                         encoder=None).fit(split.train).evaluate(split.train, split.test, ks=(10,), group="row")
    assert with_ctx.metrics["hr@10"] > no_ctx.metrics["hr@10"]


def test_recommend_batch_equals_recommend(rec):
    users = ["u0", "u1", "someone-new", "u2", "u0"]
    ctxs = [MORNING, NIGHT, NIGHT, {"query": "coffee"}, None]
    batch = rec.recommend_batch(users, ctxs, k=7)
    for u, c, r in zip(users, ctxs, batch):
        single = rec.recommend(u, c, k=7)
        assert r.item_ids == single.item_ids and r.scores == single.scores and r.cold_start == single.cold_start
    with pytest.raises(ValueError, match="contexts has 1 entries but users has 5"):
        rec.recommend_batch(users, [None], k=3)


def test_three_way_model_served_exactly_end_to_end(tmp_path, dataset):
    """With user x item x context factors, recommend / recommend_batch / explain / save-load
    all serve the model's own score (the term rides along as extra columns of the item table)."""
    from ctxrec.model import Interactions
    spec = ContextSpec(time=["timestamp"], categorical=["device"])
    rec = Recommender(spec, model=ContextFM(n_factors=8, n_tri_factors=4, epochs=4, random_state=2),
                      encoder=None).fit(dataset)
    assert rec.engine_.item_vecs_.shape == (len(dataset.item_ids), 8 + 4)
    users, ctxs = ["u0", "u5", "new"], [MORNING, {**NIGHT, "device": "tv"}, NIGHT]
    batch = rec.recommend_batch(users, ctxs, k=10)
    for user, ctx, b in zip(users, ctxs, batch):
        r = rec.recommend(user, ctx, k=10)
        assert r.item_ids == b.item_ids and r.scores == b.scores
        u = rec.user_index(user)
        feats = rec.context_.transform(dict(ctx)).indices
        items = np.array([rec.item_index(i) for i in r.item_ids])
        p = rec.model_.predict(Interactions(np.full(len(items), u), items, np.repeat(feats.reshape(1, -1), len(items), 0)))
        np.testing.assert_allclose(r.scores, p, atol=1e-4)
        ex = rec.explain(user, r.item_ids[0], ctx)
        assert ex["score"] == pytest.approx(r.scores[0], abs=1e-4)
    qb = rec.model_.build_queries(np.array([0]), context=rec.context_.transform(dict(MORNING)).indices.reshape(1, -1))
    assert np.abs(qb.tri_queries).max() > 0  # the term is there, not all zeros
    rec.save(tmp_path / "rec")
    loaded = Recommender.load(tmp_path / "rec")
    assert loaded.recommend("u0", MORNING, k=10).scores == rec.recommend("u0", MORNING, k=10).scores


# ------------------------------------------------------------------ named filters and the live catalog
def test_named_filters_from_item_attributes(rec):
    assert rec.engine_.filter_names_ == ("kind",) and list(rec.item_attrs_) == ["kind"]
    night = rec.recommend("u2", MORNING, k=10, filter={"kind": "night"})
    assert len(night.item_ids) == 10 and not is_morning(night.item_ids).any()
    both = rec.recommend("u2", MORNING, k=10, filter={"kind": ["night", "morning"]})
    assert both.item_ids == rec.recommend("u2", MORNING, k=10).item_ids
    batch = rec.recommend_batch(["u2", "u0"], [MORNING, NIGHT], k=5, filter={"kind": "night"})
    for b, u, c in zip(batch, ["u2", "u0"], [MORNING, NIGHT]):
        assert b.item_ids == rec.recommend(u, c, k=5, filter={"kind": "night"}).item_ids
    assert rec.recommend("u2", MORNING, k=10, filter={"kind": "no-such-kind"}).item_ids == []
    with pytest.raises(ValueError, match="unknown filter 'genre'"):
        rec.recommend("u2", MORNING, filter={"genre": "x"})
    assert rec.filter_mask({"kind": "night"}).sum() == 100


@pytest.fixture()
def live(dataset):
    spec = ContextSpec(time=["timestamp"], text=["query"])
    return Recommender(spec, model=ContextFM(n_factors=8, epochs=3, random_state=4),
                       encoder=HashingEncoder()).fit(dataset)


def _new_items():
    import pandas as pd
    return pd.DataFrame({"item_id": ["new1", "new2"], "title": ["Zebra", "Night owl"],
                         "text": ["zebra unicorn banana", "owl jazz midnight"], "kind": ["brunch", "night"]})


def test_added_items_are_recommendable_at_once(live):
    n = live.engine_.n_items_
    assert live.add_items(_new_items()) == {"added": 2, "updated": 0}
    assert live.engine_.n_items_ == n + 2 and live.item_ids_[-2:].tolist() == ["new1", "new2"]
    # a new attribute value is a filter value at once; the request text finds the item
    assert live.recommend("u2", MORNING, k=5, filter={"kind": "brunch"}).item_ids == ["new1"]
    assert live.recommend("u2", {"query": "zebra unicorn banana"}, k=3).item_ids[0] == "new1"
    # its vector is the model's cold-start vector: attributes ('night' is a known value) + text
    enc = HashingEncoder()
    kind = live.item_attrs_["kind"]
    csr = (np.array([0, 1]), np.array([kind.index("night")]), np.ones(1, np.float32), len(kind))
    want = live.model_.item_vectors(csr, enc.encode(["owl jazz midnight"]))
    vec, bias = live.engine_.item_vector("new2")
    np.testing.assert_allclose(vec, want.item_vecs[0], atol=1e-6)
    assert bias == pytest.approx(float(want.item_bias[0]), abs=1e-6)
    assert live.item_info("new1") == {"item_id": "new1", "title": "Zebra", "kind": "brunch",
                                      "text": "zebra unicorn banana"}
    sim = live.similar_items("new2", k=5, by="text")
    assert sim["item_id"] == "new2" and len(sim["items"]) == 5 and "new2" not in [x["item_id"] for x in sim["items"]]
    assert live.similar_items("new1", k=3, filter={"kind": "night"})["items"][0]["item_id"] in live.item_ids_


def test_feedback_on_an_added_item_is_recorded(live):
    live.add_items(_new_items())
    before = live.model_.V_.copy()
    out = live.feedback("brand-new", "new1")  # a new user whose only item has no id factor
    assert out["new_user"] and out["known_items"] == 1
    assert "new1" not in live.recommend("brand-new", {}, k=300).item_ids  # seen now
    out = live.feedback("u0", "new2")
    assert out["known_items"] == len(live.history("u0"))
    assert live.history("u0")[-1] == "new2"
    assert "new2" in live.engine_.seen(live.user_index("u0")).tolist()
    assert live.model_.V_.shape[0] == before.shape[0] + 1  # the new user joined the model
    h = live.history("u0")
    live.feedback("u0", h[0])  # seen again: it becomes the latest, not a second entry
    assert list(live.history("u0")) == list(h[1:]) + [h[0]]
    assert live.history("nobody").shape == (0,) and live.history(None).shape == (0,)


def test_update_and_remove_items_take_effect_at_once(live):
    import pandas as pd
    live.add_items(_new_items())
    assert live.update_items(pd.DataFrame({"item_id": ["new1"], "kind": ["night"]})) == {"added": 0, "updated": 1}
    assert live.recommend("u2", MORNING, k=5, filter={"kind": "brunch"}).item_ids == []
    assert live.item_info("new1")["kind"] == "night" and live.item_info("new1")["title"] == "Zebra"  # kept
    # a fitted item keeps its id factor when its text changes
    v0, _ = live.engine_.item_vector("i3")
    live.update_items(pd.DataFrame({"item_id": ["i3"], "text": ["zebra unicorn banana"]}))
    v1, _ = live.engine_.item_vector("i3")
    assert not np.allclose(v0, v1)
    assert live.filter_mask({"kind": "morning"})[live.item_index("i3")]  # its attribute is kept
    kind = live.item_attrs_["kind"]
    csr = (np.array([0, 1]), np.array([kind.index("morning")]), np.ones(1, np.float32), len(kind))
    want = live.model_.item_vectors(csr, HashingEncoder().encode(["zebra unicorn banana"]), items=[live.item_index("i3")])
    np.testing.assert_allclose(v1, want.item_vecs[0], atol=1e-6)  # id factor + kept attribute + new text
    assert live.upsert_items(pd.DataFrame({"item_id": ["i3", "new3"], "kind": ["morning", "brunch"]})) == \
        {"added": 1, "updated": 1}
    assert live.remove_items(["new3", "i4"]) == 2
    top = live.recommend("u2", MORNING, k=300, exclude_seen=False).item_ids
    assert "new3" not in top and "i4" not in top
    assert live.recommend("u2", MORNING, k=5, filter={"kind": "brunch"}).item_ids == []
    for fn in (lambda: live.item_info("i4"), lambda: live.feedback("u0", "i4"), lambda: live.remove_items(["i4"]),
               lambda: live.similar_items("i4")):
        with pytest.raises(KeyError, match="i4"):
            fn()


def test_bad_catalog_writes_change_nothing(live):
    import pandas as pd
    live.add_items(_new_items())
    n, table = live.engine_.n_items_, live.items_.copy()
    with pytest.raises(ValueError, match=r"already in the catalog: \['new1'\]"):
        live.add_items(pd.DataFrame({"item_id": ["new9", "new1"]}))
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['colour'\]"):
        live.add_items(pd.DataFrame({"item_id": ["new9"], "colour": ["red"]}))
    with pytest.raises(ValueError, match="duplicated in the batch"):
        live.add_items(pd.DataFrame({"item_id": ["new9", "new9"]}))
    with pytest.raises(ValueError, match="text: row 0 holds int 5"):
        live.add_items(pd.DataFrame({"item_id": ["new9"], "text": [5]}))
    with pytest.raises(KeyError, match="not in the catalog"):
        live.update_items(pd.DataFrame({"item_id": ["nope"]}))
    with pytest.raises(ValueError, match="no 'item_id' column"):
        live.add_items(pd.DataFrame({"id": ["x"]}))
    with pytest.raises(KeyError, match="nope"):
        live.remove_items(["new1", "nope"])
    assert live.engine_.n_items_ == n and live.items_.equals(table) and live.engine_.contains("new1")


def test_live_catalog_survives_save_load(tmp_path, dataset):
    import pandas as pd
    live = Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=8, epochs=3, random_state=4),
                       encoder=None).fit(dataset)  # (the test encoder has no export directory to save)
    live.add_items(_new_items())
    live.update_items(pd.DataFrame({"item_id": ["new1"], "title": ["Zebra II"]}))
    live.remove_items(["i7"])
    live.feedback("u1", "new2")
    live.save(tmp_path / "rec")
    back = Recommender.load(tmp_path / "rec", event_log=None)
    assert back.item_info("new1")["title"] == "Zebra II" and not back.engine_.contains("i7")
    for user, ctx, f in [("u1", MORNING, None), ("u2", NIGHT, None), ("new", NIGHT, {"kind": ["brunch", "night"]})]:
        a, b = live.recommend(user, ctx, k=10, filter=f), back.recommend(user, ctx, k=10, filter=f)
        assert a.item_ids == b.item_ids
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    assert "new2" in back.engine_.seen(back.user_index("u1")).tolist()
    assert back.recommend("u9", MORNING, k=5, filter={"kind": "brunch"}).item_ids == ["new1"]
    back.add_items(pd.DataFrame({"item_id": ["new4"], "kind": ["brunch"]}))  # the loaded model adds items too
    assert set(back.recommend("u9", MORNING, k=5, filter={"kind": "brunch"}).item_ids) == {"new1", "new4"}


def test_catalog_writes_are_logged_and_replayed_after_a_restart(tmp_path, dataset):
    """An acknowledged catalog write survives a restart: it is in the event log, in order with
    the feedback, and a load (and a retrain) replays it."""
    import pandas as pd
    from ctxrec.events import EventLog
    rec = Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=8, epochs=3, random_state=4),
                      encoder=None).fit(dataset)
    rec.save(tmp_path / "rec")
    rec.open_event_log(tmp_path / "rec.events.sqlite")
    rec.add_items(_new_items())
    rec.feedback("u1", "new2")
    rec.update_items(pd.DataFrame({"item_id": ["new1"], "title": ["Zebra II"]}))
    rec.remove_items(["i7"])
    kinds = [ev.kind for ev in EventLog(tmp_path / "rec.events.sqlite", readonly=True).read()]
    assert kinds == ["items_upsert", "feedback", "items_upsert", "items_remove"]
    back = Recommender.load(tmp_path / "rec")  # the model saved before the writes + its log: a restart
    assert back.engine_.contains("new1") and not back.engine_.contains("i7")
    assert back.item_info("new1")["title"] == "Zebra II"
    assert "new2" in back.engine_.seen(back.user_index("u1")).tolist()
    for user, ctx, f in [("u1", MORNING, None), ("new", NIGHT, {"kind": ["brunch", "night"]})]:
        assert back.recommend(user, ctx, k=10, filter=f).item_ids == rec.recommend(user, ctx, k=10, filter=f).item_ids
    with pytest.raises(KeyError):  # a rejected write is not logged
        back.remove_items(["nope"])
    assert len(EventLog(tmp_path / "rec.events.sqlite", readonly=True)) == 4
    new = rec.retrain(dataset, tmp_path / "rec.events.sqlite")  # a retrain keeps the catalog writes
    assert new.engine_.contains("new1") and not new.engine_.contains("i7")


# ------------------------------------------------------------------ hardening (issue 16, API side)
import warnings  # noqa: E402

import pandas as pd  # noqa: E402

from ctxrec.errors import ContextError, InputError, UnknownIdError  # noqa: E402
from ctxrec.recommender import MAX_ID_LENGTH, MAX_UNKNOWN_IDS  # noqa: E402


def _state(r):
    """What a rejected call must leave as it was: users, histories, the seen items, the model's users."""
    return (len(r.user_ids_), r.model_.n_users_, [list(r.history(u)) for u in r.user_ids_], r.engine_.n_items_,
            list(r.engine_.live_), r.event_status())


@pytest.fixture()
def fresh(dataset):
    """A small text model (so free text is read) to call with bad arguments."""
    spec = ContextSpec(time=["timestamp"], categorical=["device"], text=["query"])
    return Recommender(spec, model=ContextFM(n_factors=8, epochs=2, random_state=1),
                       encoder=HashingEncoder()).fit(dataset)


BAD_CALLS = [  # (call, error class, field)
    (lambda r: r.recommend(["u1"]), InputError, "user"),
    (lambda r: r.recommend({"u": 1}), InputError, "user"),
    (lambda r: r.recommend(float("nan")), InputError, "user"),
    (lambda r: r.recommend("u1", k=True), InputError, "k"),
    (lambda r: r.recommend("u1", k=-1), InputError, "k"),
    (lambda r: r.recommend("u1", k=2.5), InputError, "k"),
    (lambda r: r.recommend("u1", k="3"), InputError, "k"),
    (lambda r: r.recommend("u1", context=["timestamp"]), ContextError, "context"),
    (lambda r: r.recommend("u1", context={1: "x"}), ContextError, "context"),
    (lambda r: r.recommend("u1", exclude="i1"), InputError, "exclude"),
    (lambda r: r.recommend("u1", exclude=[["i1"]]), InputError, "exclude.0"),
    (lambda r: r.recommend("u1", allow=[{"i": 1}]), InputError, "allow.0"),
    (lambda r: r.recommend("u1", filter=["kind"]), InputError, "filter"),
    (lambda r: r.recommend("u1", filter={"nope": 1}), InputError, "filter"),
    (lambda r: r.recommend_batch(None), InputError, "users"),
    (lambda r: r.recommend_batch("u1"), InputError, "users"),
    (lambda r: r.recommend_batch(["u1", ["u2"]]), InputError, "users.1"),
    (lambda r: r.recommend_batch(["u1"], [{}, {}]), InputError, "contexts"),
    (lambda r: r.recommend_batch(["u1", "u2"], [{}, {"timestamp": "nope"}]), ContextError, "contexts.1.timestamp"),
    (lambda r: r.recommend_batch(["u1"], k=None), InputError, "k"),
    (lambda r: r.feedback(float("nan"), "i1"), InputError, "user"),
    (lambda r: r.feedback(None, "i1"), InputError, "user"),
    (lambda r: r.feedback(True, "i1"), InputError, "user"),
    (lambda r: r.feedback("new-user", ["i1"]), InputError, "item"),
    (lambda r: r.feedback("new-user", "no-such-item"), UnknownIdError, "item"),
    (lambda r: r.feedback("new-user", "i1", label="1"), InputError, "label"),
    (lambda r: r.feedback("new-user", "i1", label=None), InputError, "label"),
    (lambda r: r.feedback("new-user", "i1", label=float("nan")), InputError, "label"),
    (lambda r: r.feedback("new-user", "i1", label=float("inf")), InputError, "label"),
    (lambda r: r.feedback("new-user", "i1", label=True), InputError, "label"),
    (lambda r: r.feedback("new-user", "i1", context="tv"), ContextError, "context"),
    (lambda r: r.feedback("new-user", "i1", context={"device": ["tv"]}), ContextError, "context.device"),
    (lambda r: r.similar_items(["i1"]), InputError, "item"),
    (lambda r: r.similar_items("i1", k=-2), InputError, "k"),
    (lambda r: r.similar_items("i1", by="words"), InputError, "by"),
    (lambda r: r.similar_items("nope"), UnknownIdError, "item"),
    (lambda r: r.explain("u1", {"i": 1}), InputError, "item"),
    (lambda r: r.explain(["u1"], "i1"), InputError, "user"),
    (lambda r: r.explain("u1", "i1", context=5), ContextError, "context"),
    (lambda r: r.add_items(None), InputError, "items"),
    (lambda r: r.add_items(pd.DataFrame({"item_id": [["x"]], "text": ["t"]})), InputError, "items.0.item_id"),
    (lambda r: r.upsert_items(pd.DataFrame({"item_id": [None]})), InputError, "items.0.item_id"),
    (lambda r: r.upsert_items(pd.DataFrame({"item_id": ["n1"], "text": [3]})), InputError, "items.0.text"),
    (lambda r: r.remove_items("i1"), InputError, "item_ids"),
    (lambda r: r.remove_items(None), InputError, "item_ids"),
    (lambda r: r.remove_items(["i1", ["i2"]]), InputError, "item_ids.1"),
    (lambda r: r.remove_items(["i1", "nope"]), UnknownIdError, "item_ids.1"),
]


@pytest.mark.parametrize("call, err, field", BAD_CALLS)
def test_malformed_arguments_raise_input_errors_naming_the_field_and_change_nothing(fresh, call, err, field):
    before = _state(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(err) as e:
            call(fresh)
    assert e.value.field == field
    assert _state(fresh) == before


def test_rejected_feedback_never_creates_the_user(fresh, tmp_path):
    fresh.open_event_log(tmp_path / "log.sqlite")
    for kw in (dict(label="1"), dict(label=None), dict(label=float("nan")), dict(label=float("inf")),
               dict(item=["i1"]), dict(item="no-such-item"), dict(context={"timestamp": "yesterday-ish"}),
               dict(context={"event_time": 0}), dict(context={"query": "a\ud800"})):
        args = {"item": "i1", **kw}
        with pytest.raises((InputError, UnknownIdError)):
            fresh.feedback("brand-new", args.pop("item"), **args)
        assert fresh.user_index("brand-new") < 0 and fresh.event_status()["log_position"] == 0
    assert fresh.feedback("brand-new", "i1")["new_user"]


@pytest.mark.parametrize("call, field", [
    (lambda r: r.recommend("u1", {"query": "a\ud800"}), "context.query"),
    (lambda r: r.recommend("u1", {"\ud800": "x"}), "context"),
    (lambda r: r.recommend("u1", {"device": "tv\udfff"}), "context.device"),
    (lambda r: r.recommend("u\ud800"), "user"),
    (lambda r: r.recommend("u1", exclude=["i\ud800"]), "exclude.0"),
    (lambda r: r.feedback("x\ud800", "i1"), "user"),
    (lambda r: r.feedback("u1", "i\ud800"), "item"),
    (lambda r: r.feedback("u1", "i1", {"query": "\ud800"}), "context.query"),
    (lambda r: r.explain("u1", "i1", {"query": "\udc00ok"}), "context.query"),
    (lambda r: r.recommend_batch(["u1"], [{"query": "\ud800"}]), "contexts.0.query"),
    (lambda r: r.add_items(pd.DataFrame({"item_id": ["n1"], "text": pd.Series(["bad \ud800"], dtype=object)})),
     "items.0.text"),
])
def test_lone_surrogates_are_refused_naming_the_field(fresh, call, field):
    before = _state(fresh)
    with pytest.raises(InputError) as e:
        call(fresh)
    assert e.value.field == field and "surrogate" in str(e.value)
    assert _state(fresh) == before


def test_unknown_context_keys_are_refused_unless_ignored(dataset):
    rec = Recommender(ContextSpec(time=["timestamp"], categorical=["device"]),
                      model=ContextFM(n_factors=8, epochs=2, random_state=1), encoder=None).fit(dataset)
    with pytest.raises(ContextError, match=r"event_time.*\['device', 'timestamp'\]") as e:
        rec.recommend("u1", {"event_time": MORNING["timestamp"]})
    assert e.value.field == "context.event_time"
    with pytest.raises(ContextError) as e:  # free text for a model without a text field
        rec.recommend("u1", {"query": "something light"})
    assert e.value.field == "context.query"
    for call in (lambda **kw: rec.recommend_batch(["u1"], [{"weather": "rain"}], **kw),
                 lambda **kw: rec.explain("u1", "i1", {"weather": "rain"}, **kw),
                 lambda **kw: rec.feedback("u1", "i1", {"weather": "rain"}, **kw)):
        with pytest.raises(ContextError, match="weather"):
            call()
    plain = rec.recommend("u1", MORNING, k=10)
    assert rec.recommend("u1", {**MORNING, "event_time": 1, "query": "x"}, k=10, ignore_unknown=True).item_ids \
        == plain.item_ids
    assert rec.recommend_batch(["u1"], [{**MORNING, "x": 1}], k=10, ignore_unknown=True)[0].item_ids == plain.item_ids
    # the constructor setting is the default of every call, and survives save/load
    rec.ignore_unknown_context = True
    assert rec.recommend("u1", {**MORNING, "event_time": 1}, k=10).item_ids == plain.item_ids
    with pytest.raises(ContextError):
        rec.recommend("u1", {"event_time": 1}, ignore_unknown=False)


def test_legitimate_context_keys_still_pass(fresh, dataset, tmp_path):
    # the service's warm-up: every text field as ""; feedback's "timestamp" (the event time a
    # retrain reads) on a model whose time field has another name
    assert fresh.recommend(None, {"query": ""}, k=3).cold_start
    spec = ContextSpec(categorical=["device"])
    rec = Recommender(spec, model=ContextFM(n_factors=4, epochs=1), encoder=None).fit(dataset)
    assert rec.feedback("u1", "i1", {"timestamp": "2024-04-01T08:00:00Z", "device": "tv"})["user"] == "u1"
    # a text field on a model that cannot read request text: "" passes, a text is refused
    no_enc = Recommender(ContextSpec(time=["timestamp"], text=["query"]),
                         model=ContextFM(n_factors=4, epochs=1), encoder=None).fit(dataset)
    assert len(no_enc.recommend("u1", {"query": ""}, k=3).item_ids) == 3
    with pytest.raises(ContextError, match="cannot read request text") as e:
        no_enc.recommend("u1", {"query": "jazz"})
    assert e.value.field == "context.query"
    # logged events are replayed whatever their keys: they were accepted when logged
    no_enc.ignore_unknown_context = True
    no_enc.save(tmp_path / "m")
    live = Recommender.load(tmp_path / "m", event_log=tmp_path / "log.sqlite")
    live.feedback("walk-in", "i1", {"legacy_key": 1})
    back = Recommender.load(tmp_path / "m", event_log=None)
    back.ignore_unknown_context = False
    assert back.open_event_log(tmp_path / "log.sqlite") == 1 and back.user_index("walk-in") >= 0
    assert back.ignore_unknown_context is False and Recommender.load(tmp_path / "m").ignore_unknown_context


@pytest.fixture(scope="module")
def int_rec():
    from ctxrec.data import Dataset
    inter = pd.DataFrame({"user_id": np.repeat(np.arange(20), 6), "item_id": np.tile(np.arange(170, 182), 10),
                          "ts": np.arange(120)})
    ds = Dataset.from_frames(inter, timestamp_col="ts")
    return Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=4, epochs=2, random_state=0),
                       encoder=None).fit(ds)


def test_digit_string_item_ids_match_integer_ids_everywhere(int_rec):
    r = int_rec.recommend(3, k=12, exclude_seen=False)
    assert int_rec.recommend("3", k=12, exclude_seen=False).item_ids == r.item_ids  # the user rule
    top = r.item_ids[0]
    as_str = int_rec.recommend(3, k=12, exclude_seen=False, exclude=[str(top)])
    assert top not in as_str.item_ids and not as_str.unknown_ids
    assert int_rec.recommend(3, k=5, exclude_seen=False, allow=[str(top), "175"]).item_ids == \
        int_rec.recommend(3, k=5, exclude_seen=False, allow=[top, 175]).item_ids
    assert set(int_rec.recommend(3, k=5, allow=np.array(["171", "172"]), exclude_seen=False).item_ids) == {171, 172}
    b = int_rec.recommend_batch([3, "3"], k=12, exclude=[[str(top)], [top]], exclude_seen=False)
    assert b[0].item_ids == b[1].item_ids == as_str.item_ids
    assert [x["item_id"] for x in int_rec.similar_items("171", k=3, exclude=["172"])["items"]] == \
        [x["item_id"] for x in int_rec.similar_items(171, k=3, exclude=[172])["items"]]
    assert int_rec.explain("3", "171")["score"] == pytest.approx(int_rec.explain(3, 171)["score"])
    # strings that are no integer, or out of int64, match nothing (reported), never raise
    with pytest.warns(UserWarning, match="unknown item id"):
        odd = int_rec.recommend(3, k=3, exclude=["--5", "17x", "1" * 30, 2 ** 70, " 171"])
    assert odd.unknown_ids["count"] == {"exclude": 5}


def test_unknown_exclude_and_allow_ids_are_reported(rec):
    with pytest.warns(UserWarning):
        r = rec.recommend("u0", MORNING, k=5, exclude=["i3", "zz", 5], allow=["i3", "i4", "i150", "nope"])
    assert r.unknown_ids == {"exclude": ["zz", 5], "allow": ["nope"], "count": {"exclude": 2, "allow": 1}}
    assert r.to_dict()["unknown_ids"] == r.unknown_ids and set(r.item_ids) <= {"i4", "i150"}
    clean = rec.recommend("u0", MORNING, k=5, exclude=["i3"])
    assert clean.unknown_ids == {} and "unknown_ids" not in clean.to_dict()
    with pytest.warns(UserWarning):
        many = rec.recommend("u0", MORNING, k=5, exclude=[f"x{j}" for j in range(MAX_UNKNOWN_IDS + 50)])
    assert len(many.unknown_ids["exclude"]) == MAX_UNKNOWN_IDS and many.unknown_ids["count"]["exclude"] == 150
    with pytest.warns(UserWarning):
        batch = rec.recommend_batch(["u0", "u1"], [MORNING, NIGHT], k=5, exclude=[["zz"], None], allow=["i4", "q"])
    assert batch[0].unknown_ids == {"exclude": ["zz"], "allow": ["q"], "count": {"exclude": 1, "allow": 1}}
    assert batch[1].unknown_ids == {"allow": ["q"], "count": {"allow": 1}}
    with pytest.warns(UserWarning):
        sim = rec.similar_items("i1", k=3, exclude=["zz"])
    assert sim["unknown_ids"] == {"exclude": ["zz"], "count": {"exclude": 1}}


def test_recommend_batch_exclude_and_allow_equal_recommend(rec):
    users, ctxs = ["u0", "u1", "nobody"], [MORNING, NIGHT, {}]
    excl = [["i3", "i4"], None, ["i150"]]
    allow = [f"i{j}" for j in range(0, 200, 3)]
    got = rec.recommend_batch(users, ctxs, k=7, exclude=excl, allow=allow)
    for u, c, e, g in zip(users, ctxs, excl, got):
        want = rec.recommend(u, c, k=7, exclude=e, allow=allow)
        assert g.item_ids == want.item_ids
        np.testing.assert_allclose(g.scores, want.scores, rtol=1e-5)


def test_max_new_users_bounds_feedback_and_replay_never_fails(dataset, tmp_path):
    spec = ContextSpec(time=["timestamp"])
    rec = Recommender(spec, model=ContextFM(n_factors=4, epochs=1), encoder=None, max_new_users=3).fit(dataset)
    rec.save(tmp_path / "m")
    log = tmp_path / "log.sqlite"
    live = Recommender.load(tmp_path / "m", event_log=log)
    assert live.max_new_users == 3  # a hyper-parameter: saved with the model
    for j in range(3):
        assert live.feedback(f"new{j}", "i1")["new_user"]
    before = _state(live)
    with pytest.raises(InputError, match="max_new_users=3") as e:
        live.feedback("one-too-many", "i1")
    assert e.value.field == "user" and _state(live) == before
    assert not live.feedback("new0", "i2")["new_user"] and not live.feedback("u1", "i2")["new_user"]
    # a restart replays the log: the replayed users count towards the bound, so it still holds
    back = Recommender.load(tmp_path / "m", event_log=log)
    assert all(back.user_index(f"new{j}") >= 0 for j in range(3))
    with pytest.raises(InputError, match="max_new_users"):
        back.feedback("one-too-many", "i1")
    # ... and a replay is never refused by the bound, even a tighter one
    tight = Recommender.load(tmp_path / "m", event_log=None)
    tight.max_new_users = 1
    assert tight.open_event_log(log) == 5 and len(tight.user_ids_) == len(rec.user_ids_) + 3
    # saving makes the users part of the model: the allowance starts again
    back.save(tmp_path / "m2")
    again = Recommender.load(tmp_path / "m2", event_log=None)
    assert again.feedback("one-more", "i1")["new_user"]
    unbounded = Recommender(spec, model=ContextFM(n_factors=4, epochs=1), encoder=None, max_new_users=None).fit(dataset)
    assert all(unbounded.feedback(f"n{j}", "i1")["new_user"] for j in range(5))


def test_long_new_user_ids_are_refused(fresh):
    before = _state(fresh)
    with pytest.raises(InputError, match=str(MAX_ID_LENGTH)) as e:
        fresh.feedback("x" * (MAX_ID_LENGTH + 1), "i1")
    assert e.value.field == "user" and _state(fresh) == before
    assert fresh.feedback("x" * MAX_ID_LENGTH, "i1")["new_user"]
    assert fresh.recommend("y" * 10_000, k=3).cold_start  # a request with any id is only a cold start


# ------------------------------------------------------------------ text-match weight chosen on requests
def _split_last(ds):
    """Per user: the last interaction by time is held out; returns (train, held-out) datasets."""
    order = np.lexsort((np.arange(len(ds)), ds.timestamp, ds.users))
    last = np.r_[ds.users[order][1:] != ds.users[order][:-1], True]
    held = np.sort(order[last])
    return ds.subset(np.setdiff1d(np.arange(len(ds)), held)), ds.subset(held)


def test_tune_text_weight_picks_the_weight_that_finds_requested_items():
    """Requests that name the item ('number 17') are answered best with a large text weight:
    the tuned weight beats 0 (no text) on the held-out requests' HR@10, fit(validation=...)
    does the same, and bad calls are refused naming the argument."""
    ds = planted_dataset(n_users=60, n_items=120, per_user=12, seed=3)
    train, held = _split_last(ds)
    held.context = held.context.assign(query=[f"number {int(str(i)[1:])}" for i in held.item_ids[held.items]])
    spec = ContextSpec(time=["timestamp"], text=["query"])
    rec = Recommender(spec, model=ContextFM(n_factors=8, epochs=3), encoder=HashingEncoder()).fit(train)
    before = rec.text_match_weight_
    res = rec.tune_text_weight(held)
    assert res["previous"] == before and len(res["hr"]) == len(res["grid"]) == 21
    jc = res["grid"].index(res["chosen"])
    users = held.user_ids[held.users].tolist()
    targets = held.item_ids[held.items]
    no_text = np.mean([t in r.item_ids for r, t in zip(rec.recommend_batch(users, None, 10), targets)])
    assert res["hr"][jc] == max(res["hr"]) and res["hr"][jc] > no_text and res["hr"][jc] > res["hr"][8]
    assert rec.text_match_weight_ == res["chosen"] == rec.engine_.text_weight_ and res["chosen"] > before
    # the chosen weight is what recommend now serves, and requests with text are still read
    ctxs = [{"query": q, "timestamp": int(t)} for q, t in zip(held.context["query"], held.timestamp)]
    hits = np.mean([t in r.item_ids for r, t in zip(rec.recommend_batch(users, ctxs, 10), targets)])
    assert hits == res["hr"][jc]
    # fit(validation=...) tunes when the validation requests carry text
    rec2 = Recommender(spec, model=ContextFM(n_factors=8, epochs=3), encoder=HashingEncoder()).fit(train, validation=held)
    assert rec2.tuning_["chosen"] == rec2.text_match_weight_ == res["chosen"]
    with pytest.raises(InputError, match="no request text"):
        rec.tune_text_weight(train)
    with pytest.raises(InputError, match="grid"):
        rec.tune_text_weight(held, grid=[1.0, float("nan")])
    with pytest.raises(InputError, match="grid"):
        rec.tune_text_weight(held, grid=[0.0])
    plain = Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=8, epochs=1), encoder=None).fit(train)
    with pytest.raises(InputError, match="text-match"):
        plain.tune_text_weight(held)


def _ild(rec, ids):
    """Intra-list diversity: mean pairwise (1 - cosine) of the items' text embeddings."""
    t = np.stack([rec.item_text_[rec.item_index(i)] for i in ids]).astype(np.float64)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    s = t @ t.T
    n = len(ids)
    return float((n * n - s.sum()) / (n * (n - 1)))


def _kl(p, q, alpha=0.01):
    keys = set(p) | set(q)
    return sum(p[c] * np.log(p[c] / ((1 - alpha) * q.get(c, 0.0) + alpha * p[c])) for c in keys if p.get(c, 0) > 0)


def test_diversity_and_calibration_rerank_the_list(rec):
    users = [f"u{j}" for j in range(0, 60, 3)]
    plain = [rec.recommend(u, MORNING, k=10) for u in users]
    div = [rec.recommend(u, MORNING, k=10, diversity=0.7) for u in users]
    assert np.mean([_ild(rec, d.item_ids) for d in div]) > np.mean([_ild(rec, p.item_ids) for p in plain])
    assert plain[0].rerank == [] and "rerank" not in plain[0].to_dict()["items"][0]
    for p, d in zip(plain, div):
        assert d.item_ids[0] == p.item_ids[0]  # the first pick is the best item
        assert d.rerank[0]["relevance"] == pytest.approx(1.0) and d.rerank[0]["similarity"] == 0.0
        assert len(d.rerank) == len(d.item_ids) and all(-1.0 <= t["similarity"] <= 1.0 for t in d.rerank)
        assert d.to_dict()["items"][1]["rerank"] == d.rerank[1]
        by_id = dict(zip(p.item_ids, p.scores))  # the scores stay the model's scores
        assert all(by_id[i] == pytest.approx(s, abs=1e-5) for i, s in zip(d.item_ids, d.scores) if i in by_id)
    plain = [rec.recommend(u, {}, k=10) for u in users]  # (a morning context outweighs any history mix)
    cal = [rec.recommend(u, {}, k=10, calibrate=5.0, calibrate_by="kind") for u in users]

    def kl_of(r):
        mix = rec.engine_.category_mix("kind", r.item_ids)
        return _kl(rec.history_mix(r.user, "kind"), mix)
    assert np.mean([kl_of(c) for c in cal]) < np.mean([kl_of(p) for p in plain])
    batch = rec.recommend_batch(users, [MORNING] * len(users), k=10, diversity=0.7)
    assert [b.item_ids for b in batch] == [d.item_ids for d in div]
    assert [b.rerank for b in batch] == [d.rerank for d in div]
    batch = rec.recommend_batch(users, [{}] * len(users), k=10, calibrate=5.0, calibrate_by="kind")
    assert [b.item_ids for b in batch] == [c.item_ids for c in cal]
    assert rec.recommend("nobody", MORNING, k=10, calibrate=5.0, calibrate_by="kind").item_ids == \
        rec.recommend("nobody", MORNING, k=10).item_ids  # no history: nothing to calibrate to


@pytest.mark.parametrize("kw, field", [({"diversity": 1.2}, "diversity"), ({"diversity": True}, "diversity"),
                                       ({"diversity": float("nan")}, "diversity"), ({"calibrate": -0.5}, "calibrate"),
                                       ({"calibrate": 1.0, "calibrate_by": "colour"}, "calibrate_by"),
                                       ({"calibrate": 1.0, "calibrate_by": 3}, "calibrate_by")])
def test_rerank_options_are_checked_naming_the_field(rec, kw, field):
    from ctxrec.errors import InputError
    with pytest.raises(InputError) as e:
        rec.recommend("u0", MORNING, k=5, **kw)
    assert e.value.field == field
    with pytest.raises(InputError) as e:
        rec.recommend_batch(["u0"], [MORNING], k=5, **kw)
    assert e.value.field == field


def test_exposure_penalty_spreads_the_lists_over_the_catalog(rec):
    users = [f"u{j}" for j in range(60)]
    plain = rec.recommend_batch(users, [{}] * len(users), k=10)
    assert rec.recommend("u0", {}, k=10, exposure=5.0).item_ids == plain[0].item_ids  # nothing recorded yet
    try:
        rec.engine_.add_exposure([i for r in plain for i in r.item_ids])  # the serving log of one round
        served = rec.engine_.exposure([i for r in plain for i in r.item_ids])
        assert served.min() >= 1 and rec.engine_.exposure().shape == (len(rec.item_ids_),)
        again = rec.recommend_batch(users, [{}] * len(users), k=10, exposure=2.0)
        cover = [len({i for r in rs for i in r.item_ids}) for rs in (plain, again)]
        assert cover[1] > cover[0]
        assert [rec.recommend(u, {}, k=10, exposure=2.0).item_ids for u in users[:5]] == \
            [r.item_ids for r in again[:5]]  # single = batch
        rec.engine_.add_exposure([], decay=0.5)  # fading: every count halves
        assert np.allclose(rec.engine_.exposure([plain[0].item_ids[0]]), served[:1] / 2)
    finally:
        rec.engine_.add_exposure([], decay=0.0)  # start over: nothing recorded, for the other tests
    assert rec.recommend("u0", {}, k=10, exposure=5.0).item_ids == plain[0].item_ids
    with pytest.raises(Exception, match="exposure"):
        rec.recommend("u0", {}, k=5, exposure=-1.0)
