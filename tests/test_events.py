"""The durable feedback log and the feedback path: checked first, logged, applied off the read lock."""
from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pandas as pd
import pytest

from ctxrec.context import ContextSpec
from ctxrec.data import Dataset
from ctxrec.events import EventLog, default_log_path
from ctxrec.model import ContextFM
from ctxrec.recommender import Recommender, _histories
from _synthetic_data import planted_dataset


# ----------------------------------------------------------------------------- the log
def test_log_appends_in_order_keeps_id_types_and_is_durable(tmp_path):
    path = tmp_path / "sub" / "log.sqlite"
    log = EventLog(path)
    assert log.position() == 0 and len(log) == 0
    assert log.append(196, "174", {"timestamp": "1998-03-01T20:00", "query": "funny"}, 1.0, time_s=10.0) == 1
    assert log.append("u1", 7, {}, 0.0) == 2
    log.close()
    again = EventLog(path)  # reopened: same id, same events
    assert again.log_id == log.log_id and again.position() == 2
    evs = list(again.read())
    assert [e.seq for e in evs] == [1, 2]
    assert evs[0].user == 196 and evs[0].item == "174"  # int and str stay distinct
    assert evs[0].context == {"timestamp": "1998-03-01T20:00", "query": "funny"} and evs[0].time == 10.0
    assert evs[1].user == "u1" and evs[1].item == 7 and evs[1].label == 0.0
    assert [e.seq for e in again.read(after=1)] == [2] and list(again.read(after=2)) == []
    assert [e.seq for e in again.read(until=1)] == [1]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for stmt in ("UPDATE events SET label = 5", "DELETE FROM events"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(stmt)
    db.close()


def test_log_reads_in_chunks(tmp_path):
    log = EventLog(tmp_path / "l.sqlite")
    for j in range(25):
        log.append(f"u{j}", j)
    assert [e.item for e in log.read(chunk=7)] == list(range(25))
    assert [e.item for e in log.read(after=21, chunk=2)] == [21, 22, 23, 24]  # seq = item + 1


@pytest.mark.parametrize("kw, match", [
    (dict(user=1.5, item=1), "user"), (dict(user=True, item=1), "user"), (dict(user=1, item=[1]), "item"),
    (dict(user=1, item=1, label=float("nan")), "label"), (dict(user=1, item=1, context={"x": float("inf")}), "context"),
])
def test_log_refuses_bad_events(tmp_path, kw, match):
    log = EventLog(tmp_path / "l.sqlite")
    with pytest.raises(ValueError, match=match):
        log.append(**kw)
    assert log.position() == 0


def test_log_refuses_a_file_that_is_not_a_log(tmp_path):
    p = tmp_path / "x.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a ctxrec event log"):
        EventLog(p)
    with pytest.raises(FileNotFoundError):
        EventLog(tmp_path / "missing.sqlite", readonly=True)


def test_default_log_path_is_beside_the_model_dir(tmp_path):
    assert default_log_path(tmp_path / "model") == tmp_path / "model.events.sqlite"
    assert default_log_path("~/m").parent.as_posix().startswith("/")


# ----------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def data():
    return planted_dataset(n_users=60, n_items=120, per_user=20)


@pytest.fixture()
def rec(data):
    spec = ContextSpec(time=["timestamp"], categorical=["device"])
    return Recommender(spec, model=ContextFM(n_factors=8, epochs=3, random_state=3), encoder=None,
                       fold_in_history=5).fit(data)


def test_histories_are_in_time_order():
    inter = pd.DataFrame({"user_id": ["a", "a", "a", "b", "a"], "item_id": [3, 1, 2, 1, 3],
                          "ts": [50, 10, 30, 5, 60]})
    ds = Dataset.from_frames(inter, timestamp_col="ts")
    hist = _histories(ds)
    # user a: item 1 (t=10), 2 (t=30), 3 (last seen t=60); rows are dense item indices
    assert [ds.item_ids[i] for i in hist[ds.user_index("a")]] == [1, 2, 3]
    assert [ds.item_ids[i] for i in hist[ds.user_index("b")]] == [1]


def _positives_match_histories(r):
    """Every user's model positives are exactly the items of their history the model knows."""
    known = r.model_.n_items_
    for u, user in enumerate(r.user_ids_):
        slots = [r.item_index(x) for x in r.history(user)]
        assert r.model_.user_positives(u).tolist() == sorted(s for s in slots if s < known), user


@pytest.mark.parametrize("loss", ["bpr", "logloss"])
def test_the_history_is_the_one_record_of_a_users_items(loss, tmp_path):
    """One record: after fit on a labelled dataset (label-0 rows are in neither: bpr drops them,
    logloss learns them as negatives), after feedback (a known user, a new user, a label-0
    event, an item added after fit) and after a reload, each user's model positives are the
    items of the recommender's history that the model has factors for."""
    rng = np.random.default_rng(0)
    n = 400
    inter = pd.DataFrame({"user_id": rng.integers(0, 30, n), "item_id": rng.integers(0, 40, n),
                          "label": (rng.random(n) < 0.7).astype(float), "ts": np.arange(n)})
    ds = Dataset.from_frames(inter, label_col="label", timestamp_col="ts")
    r = Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=4, epochs=2, loss=loss),
                    encoder=None).fit(ds)
    neg = inter[inter.label == 0].iloc[0]
    if not ((inter.user_id == neg.user_id) & (inter.item_id == neg.item_id) & (inter.label > 0)).any():
        assert neg.item_id not in set(r.history(neg.user_id).tolist())  # a label-0 row is no history
    _positives_match_histories(r)
    r.add_items(pd.DataFrame({"item_id": [1000, 1001]}))
    r.feedback(3, 5)
    r.feedback(3, 1000)  # an item added after fit: history and seen, no model factor
    r.feedback(3, 7, label=0.0)
    r.feedback("newcomer", 1001)
    r.feedback("newcomer", 9)
    assert list(r.history("newcomer")) == [1001, 9] and list(r.history(3))[-2:] == [5, 1000]
    _positives_match_histories(r)
    r.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m", event_log=None)
    _positives_match_histories(back)
    assert [list(back.history(u)) for u in back.user_ids_] == [list(r.history(u)) for u in r.user_ids_]


def test_a_label_0_event_teaches_what_its_loss_learns(monkeypatch):
    """bpr learns positives only: a label-0 event trains nothing (a new user is still added, with
    a zero vector); logloss learns it as a negative, beside the user's latest positives; with
    fold_in_history=0 a click is recorded (history, positives) but nothing is refit."""
    inter = pd.DataFrame({"user_id": np.repeat(np.arange(12), 5), "item_id": np.arange(60) % 17,
                          "label": 1.0, "ts": np.arange(60)})
    ds = Dataset.from_frames(inter, label_col="label", timestamp_col="ts")
    bpr = Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=4, epochs=2), encoder=None).fit(ds)
    V = bpr.model_.V_.copy()
    assert 9 not in bpr.history(3).tolist()
    assert bpr.feedback(3, 9, label=0.0)["known_items"] == 5 and np.array_equal(bpr.model_.V_, V)
    assert bpr.feedback("new", 9, label=0.0)["new_user"] and len(bpr.history("new")) == 0
    lay = bpr.model_.layout_
    assert not np.any(bpr.model_.V_[lay.user_off + bpr.user_index("new")])  # not trained towards item 9
    seen = {}
    real = ContextFM.refit_user

    def spy(self, items, **kw):
        seen.update(items=np.asarray(items).tolist(), labels=np.asarray(kw["label"]).tolist())
        return real(self, items, **kw)
    monkeypatch.setattr(ContextFM, "refit_user", spy)
    log = Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=4, epochs=2, loss="logloss"),
                      encoder=None, fold_in_history=3).fit(ds)
    last = [log.item_index(x) for x in log.history(3)][-3:]
    log.feedback(3, 9, label=0.0)
    assert seen == {"items": last + [log.item_index(9)], "labels": [1.0, 1.0, 1.0, 0.0]}
    assert 9 not in log.history(3).tolist()
    none = Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=4, epochs=2), encoder=None,
                       fold_in_history=0).fit(ds)
    V = none.model_.V_.copy()
    none.feedback(3, 9)
    assert none.history(3).tolist()[-1] == 9 and none.item_index(9) in none.model_.user_positives(3).tolist()
    assert np.array_equal(none.model_.V_, V)


def test_fold_in_refits_on_the_latest_items(rec, data, monkeypatch):
    seen = {}
    real = ContextFM.refit_user

    def spy(self, items, **kw):
        seen["items"] = np.asarray(items).tolist()
        return real(self, items, **kw)
    monkeypatch.setattr(ContextFM, "refit_user", spy)
    u = data.user_index("u4")
    order = np.argsort(data.timestamp[data.users == u], kind="stable")
    by_time = list(dict.fromkeys(data.items[data.users == u][order][::-1].tolist()))[::-1]  # last sighting order
    item = next(i for i in range(data.n_items) if i not in by_time)
    rec.feedback("u4", data.item_ids[item])
    assert seen["items"] == by_time[-4:] + [item]  # the 4 latest + the new one (fold_in_history=5)


def test_rejected_feedback_changes_nothing(rec):
    before = (len(rec.user_ids_), rec.model_.n_users_, [list(rec.history(u)) for u in rec.user_ids_], rec.model_.V_.copy())
    for call, err in [(lambda: rec.feedback("u1", "no-such-item"), KeyError),
                      (lambda: rec.feedback("u1", "i3", label=float("nan")), ValueError),
                      (lambda: rec.feedback("someone-new", "i3", context={"timestamp": "yesterday-ish"}), ValueError),
                      (lambda: rec.feedback(1.5, "i3"), ValueError)]:
        with pytest.raises(err):
            call()
    after = (len(rec.user_ids_), rec.model_.n_users_, [list(rec.history(u)) for u in rec.user_ids_], rec.model_.V_)
    assert before[:3] == after[:3] and np.array_equal(before[3], after[3])


def test_overflowing_user_id_is_refused_and_later_new_users_still_work(tmp_path):
    inter = pd.DataFrame({"user_id": np.repeat(np.arange(20), 6), "item_id": np.tile(np.arange(12), 10),
                          "ts": np.arange(120)})
    ds = Dataset.from_frames(inter, timestamp_col="ts")
    r = Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=4, epochs=2), encoder=None).fit(ds)
    r.open_event_log(tmp_path / "log.sqlite")
    with pytest.raises(ValueError, match="does not fit"):
        r.feedback(2 ** 70, 3)
    assert len(r.user_ids_) == r.model_.n_users_ == 20 and r.event_status()["log_position"] == 0
    out = r.feedback(999, 3)
    assert out["new_user"] and len(r.user_ids_) == r.model_.n_users_ == 21
    r.save(tmp_path / "m")
    assert len(Recommender.load(tmp_path / "m", event_log=None).user_ids_) == 21


def test_feedback_is_logged_then_survives_a_reload(rec, tmp_path):
    rec.save(tmp_path / "m")
    log = tmp_path / "m.events.sqlite"
    live = Recommender.load(tmp_path / "m", event_log=log)
    acks = [live.feedback(f"new{j % 4}", f"i{j}", {"device": "tv"}) for j in range(12)]
    assert [a["event"] for a in acks] == list(range(1, 13))
    assert live.feedback("u3", "i7")["event"] == 13
    status = live.event_status()
    assert status["log_position"] == status["applied_position"] == 13 and status["applied"] == 13
    # a fresh process: load replays the log ("auto" finds it beside the directory)
    back = Recommender.load(tmp_path / "m")
    assert back.event_status()["applied"] == 13
    for user in ("new0", "new3", "u3"):
        a, b = live.recommend(user, k=8), back.recommend(user, k=8)
        assert a.item_ids == b.item_ids and np.allclose(a.scores, b.scores, atol=1e-5)
        assert list(back.history(user)) == list(live.history(user))
    assert not back.recommend("new1").cold_start
    # saved after the feedback: the directory records its position, nothing is applied twice
    live.save(tmp_path / "m2")
    again = Recommender.load(tmp_path / "m2", event_log=log)
    assert again.event_status()["applied"] == 0 and again.event_status()["applied_position"] == 13
    assert [list(again.history(u)) for u in again.user_ids_] == [list(live.history(u)) for u in live.user_ids_]
    # another log than the one the model was built from is refused
    with pytest.raises(ValueError, match="another log"):
        Recommender.load(tmp_path / "m2", event_log=tmp_path / "other.sqlite")


def test_fold_in_does_not_hold_the_read_lock(rec, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = ContextFM.refit_user

    def slow(self, items, **kw):
        entered.set()
        assert release.wait(30), "the test did not release the fold-in"
        return real(self, items, **kw)
    monkeypatch.setattr(ContextFM, "refit_user", slow)
    t = threading.Thread(target=rec.feedback, args=("u2", "i9"))
    t.start()
    assert entered.wait(30)
    done = threading.Event()
    reader = threading.Thread(target=lambda: (rec.recommend("u2", k=5), rec.recommend("u5", k=5), done.set()))
    reader.start()
    reader.join(20)
    served_during_fold_in = done.is_set()
    release.set()
    t.join(30)
    assert served_during_fold_in, "recommend blocked while a feedback's fold-in was running"
    assert rec.history("u2")[-1] == "i9"


def test_retrain_includes_the_log_and_replays_only_later_events(rec, data, tmp_path):
    rec.save(tmp_path / "m")
    log = tmp_path / "m.events.sqlite"
    live = Recommender.load(tmp_path / "m", event_log=log)
    live.feedback("brand-new", "i5", {"timestamp": "2024-05-01T08:00:00Z", "device": "mobile"})
    live.feedback("u1", "i6")
    new = live.retrain(data, log)
    assert new.user_ids_.tolist()[-1] == "brand-new" and len(new.user_ids_) == data.n_users + 1
    assert list(new.history("brand-new")) == ["i5"]
    assert new.history("u1")[-1] == "i6"  # logged last: the latest item
    new.save(tmp_path / "n")
    live.feedback("u2", "i8")  # arrives during the retrain
    served = Recommender.load(tmp_path / "n", event_log=log)
    st = served.event_status()
    assert st["applied"] == 1 and st["applied_position"] == st["log_position"] == 3
    assert served.history("u2")[-1] == "i8"


def test_schema_1_logs_are_upgraded_and_catalog_writes_read_back(tmp_path):
    import sqlite3
    p = tmp_path / "old.sqlite"
    db = sqlite3.connect(p)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, user TEXT NOT NULL,
                             item TEXT NOT NULL, context TEXT NOT NULL, label REAL NOT NULL);
        INSERT INTO meta VALUES ('log_id', 'abc'), ('schema_version', '1');
        INSERT INTO events (time, user, item, context, label) VALUES (1.0, '"u1"', '7', '{}', 1.0);
    """)
    db.commit()
    db.close()
    ro = EventLog(p, readonly=True)  # a version-1 log read as it is
    assert [(e.user, e.item, e.kind) for e in ro.read()] == [("u1", 7, "feedback")]
    ro.close()
    log = EventLog(p)  # opened for writing: upgraded in place
    assert log.log_id == "abc"
    seq = log.append_catalog("items_remove", {"items": ["i1"]})
    assert [(e.seq, e.kind) for e in log.read()] == [(1, "feedback"), (seq, "items_remove")]
    assert list(log.read())[1].context == {"items": ["i1"]}
    with pytest.raises(ValueError, match="kind must be"):
        log.append_catalog("items_explode", {})
    with pytest.raises(ValueError, match="JSON"):
        log.append_catalog("items_remove", {"items": [float("nan")]})
    assert len(log) == 2
