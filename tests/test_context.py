"""ctxrec.context: one spec turns training rows and live requests into identical features."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ctxrec.context import (
    TIME_PARTS,
    CategoricalField,
    ContextError,
    ContextSpec,
    NumericField,
    TextField,
    TimeField,
    encode_texts,
)

from _data_dir import DATA_DIR, needs_data  # noqa: E402


class FakeEncoder:
    """Deterministic stand-in for the ONNX encoder: records calls, 3-d vectors from text length."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.array([[len(t), t.count(" "), 1.0] for t in texts], dtype=np.float32)


def _frame():
    return pd.DataFrame({
        "time": np.array([1709422200, 1719835200, 1704067199, 1704067200], dtype=np.int64),
        "device": ["mobile", "desktop", "mobile", "tv"],
        "city": [3, 0, 3, 7],
        "temp": [-2.0, 15.5, np.nan, 30.0],
        "query": ["something light", "", None, "after a long day"],
    })


def _spec(tz="Europe/Paris"):
    return ContextSpec(time=["time"], categorical=["device", "city"], numeric=[NumericField("temp", edges=(0, 20))],
                       text=["query"], tz=tz)


def test_hand_computed_time_parts():
    # 2024-03-02 23:30 UTC is Saturday night in UTC and Sunday 00:30 in Paris (CET, +1)
    ts = int(pd.Timestamp("2024-03-02T23:30:00Z").timestamp())
    for tz, want in (("UTC", dict(hour="23", daypart="night", weekday="saturday", weekend="weekend",
                                  month="march", season="spring")),
                     ("Europe/Paris", dict(hour="0", daypart="night", weekday="sunday", weekend="weekend",
                                           month="march", season="spring"))):
        spec = ContextSpec(time=["t"], tz=tz)
        f = spec.transform({"t": ts})
        for part, value in want.items():
            assert f.slot(f"t.{part}")[0] == TIME_PARTS[part].index(value) + 1, (tz, part)
    # a weekday afternoon in summer, and the daypart boundaries
    spec = ContextSpec([TimeField("t", parts=("daypart", "weekend", "season"))])
    got = spec.transform([{"t": f"2024-07-03T{h:02d}:00"} for h in (4, 5, 11, 12, 16, 17, 21, 22)]).indices
    names = [TIME_PARTS["daypart"][i - 1] for i in got[:, 0]]
    assert names == ["night", "morning", "morning", "afternoon", "afternoon", "evening", "evening", "night"]
    assert set(got[:, 1]) == {1} and set(got[:, 2]) == {TIME_PARTS["season"].index("summer") + 1}


def test_all_timestamp_forms_agree():
    spec = ContextSpec(time=["t"], tz="America/New_York")
    unix = 1719835200  # 2024-07-01T12:00:00Z = 08:00 EDT
    forms = [unix, float(unix), np.int64(unix), "2024-07-01T12:00:00Z", "2024-07-01T14:00:00+02:00",
             "2024-07-01 08:00:00",  # naive: wall clock in the spec's timezone
             dt.datetime(2024, 7, 1, 12, tzinfo=dt.timezone.utc), pd.Timestamp("2024-07-01 08:00"),
             np.datetime64("2024-07-01T08:00:00")]
    rows = spec.transform([{"t": v} for v in forms]).indices
    assert (rows == rows[0]).all() and rows[0, 0] == 8 + 1
    frame = spec.transform(pd.DataFrame({"t": np.array([unix], dtype=np.int64)})).indices
    dtcol = spec.transform(pd.DataFrame({"t": pd.to_datetime([unix], unit="s", utc=True)})).indices
    assert (frame == rows[0]).all() and (dtcol == rows[0]).all()


def test_daylight_saving_wall_clock_times():
    spec = ContextSpec([TimeField("t", parts=("hour",), tz="America/New_York")])
    # 01:30 happens twice on 2024-11-03 and never on 2024-03-10 (shifted forward to 03:00)
    for path in (lambda rows: spec.transform(rows), lambda rows: spec.transform(rows * 40)):
        got = path([{"t": "2024-11-03T01:30"}, {"t": "2024-03-10T02:30"}]).indices[:2, 0]
        assert got.tolist() == [1 + 1, 3 + 1]
    frame = pd.DataFrame({"t": pd.to_datetime(["2024-11-03T01:30", "2024-03-10T02:30"])})
    assert spec.transform(frame).indices[:, 0].tolist() == [2, 4]


def test_training_rows_and_requests_give_identical_features():
    spec = _spec()
    df = _frame()
    spec.fit(df)
    from_frame = spec.transform(df)
    from_dicts = spec.transform(df.to_dict("records"))
    one_by_one = [spec.transform(r) for r in df.to_dict("records")]
    # requests as a client would write them: ISO time strings, ints as strings, no NaN
    live = [{"time": pd.Timestamp(t, unit="s", tz="UTC").tz_convert("Asia/Tokyo").isoformat(),
             "device": d, "city": str(c), "temp": None if np.isnan(x) else str(x), "query": q or None}
            for t, d, c, x, q in df.itertuples(index=False)]
    from_live = spec.transform(live)
    for other in (from_dicts, from_live):
        np.testing.assert_array_equal(other.indices, from_frame.indices)
        assert other.texts == from_frame.texts
    for r, f in enumerate(one_by_one):
        np.testing.assert_array_equal(f.indices[0], from_frame.indices[r])
    assert from_frame.texts["query"] == ["something light", "", "", "after a long day"]
    # pyarrow input too
    pa = pytest.importorskip("pyarrow")
    np.testing.assert_array_equal(spec.transform(pa.Table.from_pandas(df)).indices, from_frame.indices)


def test_vocabulary_unknown_and_numeric_buckets():
    spec = _spec().fit(_frame())
    assert spec.vocabularies["device"] == ("desktop", "mobile", "tv")
    assert spec.vocabularies["city"] == ("0", "3", "7")
    assert spec.cardinalities["device"] == 4 and spec.cardinalities["temp"] == 4
    f = spec.transform([{"device": "fridge", "city": 3.0, "temp": -5}, {"temp": 0}, {"temp": 19.99},
                        {"temp": 20}, {}])
    assert f.slot("device").tolist() == [0, 0, 0, 0, 0]  # unseen and missing -> unknown
    assert f.slot("city").tolist() == [2, 0, 0, 0, 0]  # 3.0 == 3 == "3"
    assert f.slot("temp").tolist() == [1, 2, 2, 3, 0]
    assert f.slot("time.hour").tolist() == [0] * 5
    g = f.global_indices()
    assert g.shape == (5, len(spec.slots)) and g.max() < spec.n_features
    assert f.n_features == spec.n_features and f.cardinalities.tolist() == list(spec.cardinalities.values())
    assert (g >= spec.offsets).all()
    assert spec.offsets.tolist() == list(np.cumsum([0] + list(spec.cardinalities.values()))[:-1])


def test_min_count_max_values_and_learned_edges():
    df = pd.DataFrame({"c": ["a"] * 5 + ["b"] * 3 + ["c"] * 1, "x": np.arange(9.0)})
    spec = ContextSpec([CategoricalField("c", min_count=2), NumericField("x", bins=3)]).fit(df)
    assert spec.vocabularies["c"] == ("a", "b")
    np.testing.assert_allclose(spec._edges["x"], np.quantile(np.arange(9.0), [1 / 3, 2 / 3]))
    assert spec.transform(df).slot("x").tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    spec = ContextSpec([CategoricalField("c", max_values=1)]).fit(df)
    assert spec.vocabularies["c"] == ("a",)


def test_invalid_values_name_field_and_value():
    spec = _spec().fit(_frame())
    with pytest.raises(ContextError, match=r"'time'.*'yesterday-ish'"):
        spec.transform({"time": "yesterday-ish"})
    with pytest.raises(ContextError, match=r"'temp'.*'warm'"):
        spec.transform([{"temp": 3}, {"temp": "warm"}])
    with pytest.raises(ContextError, match=r"'device'.*\['a'\]"):
        spec.transform({"device": ["a"]})
    with pytest.raises(ContextError, match=r"'query'.*42"):
        spec.transform({"query": 42})
    with pytest.raises(ContextError, match=r"'temp'.*inf"):
        spec.transform({"temp": float("inf")})
    with pytest.raises(ContextError, match="'device'.*column"):
        spec.transform(pd.DataFrame({"time": [0]}), strict_columns=True)
    with pytest.raises(ContextError, match="not fitted"):
        ContextSpec(categorical=["device"]).transform({"device": "a"})
    with pytest.raises(ContextError, match="'x'.*declared twice"):
        ContextSpec(categorical=["x"], text=["x"])
    with pytest.raises(ContextError, match="'t'.*'Mars/Olympus'"):
        TimeField("t", tz="Mars/Olympus")


def test_text_encoder_only_when_given():
    spec = _spec().fit(_frame())
    enc = FakeEncoder()
    f = spec.transform(_frame())
    assert f.text_vectors == {}
    f = spec.transform(_frame(), encoder=enc)
    v = f.text_vectors["query"]
    assert v.dtype == np.float32 and v.shape == (4, 3)
    assert sorted(enc.calls[0]) == ["after a long day", "something light"]  # distinct non-empty texts only
    np.testing.assert_array_equal(v[[1, 2]], 0)
    np.testing.assert_array_equal(v[0], [15, 1, 1])
    # a categorical-only spec never touches the encoder
    enc2 = FakeEncoder()
    ContextSpec(categorical=["device"]).fit(_frame()).transform(_frame(), encoder=enc2)
    assert enc2.calls == []
    # all-empty texts: zero vectors of the encoder's width
    assert encode_texts(["", ""], enc2).shape == (2, 3)


def test_json_round_trip():
    spec = _spec().fit(_frame())
    again = ContextSpec.from_json(spec.to_json())
    assert again.slots == spec.slots and again.vocabularies == spec.vocabularies
    np.testing.assert_array_equal(again.transform(_frame()).indices, spec.transform(_frame()).indices)
    assert [type(f) for f in again.fields] == [TimeField, CategoricalField, CategoricalField, NumericField, TextField]
    with pytest.raises(ContextError, match="version"):
        ContextSpec.from_dict({**spec.to_dict(), "version": 99})


def test_feature_row_selection():
    spec = _spec().fit(_frame())
    f = spec.transform(_frame(), encoder=FakeEncoder())
    sub = f[[3, 0]]
    np.testing.assert_array_equal(sub.indices, f.indices[[3, 0]])
    assert sub.texts["query"] == ["after a long day", "something light"]
    assert sub.text_vectors["query"].shape == (2, 3)


@needs_data
def test_dataset_context_frappe_and_movielens():
    from ctxrec.data import load_frappe, load_movielens_100k

    fr = load_frappe(DATA_DIR)
    train, test = fr.subset(np.arange(0, len(fr), 2)), fr.subset(np.arange(1, len(fr), 2))
    spec = ContextSpec(categorical=list(fr.context_columns)).fit(train)
    tr = spec.transform(train)
    assert (tr.indices > 0).all()  # every training value is in the vocabulary
    full = ContextSpec(categorical=list(fr.context_columns)).fit(fr).cardinalities
    assert (full["weather"], full["homework"], full["country"], full["city"]) == (9 + 1, 3 + 1, 80 + 1, 233 + 1)
    te = spec.transform(test)
    # rows and their request dicts agree on real data, and unseen values are unknown
    reqs = test.context.iloc[:200].to_dict("records")
    np.testing.assert_array_equal(spec.transform(reqs).indices, te.indices[:200])
    city = te.slot("city")
    unseen = ~np.isin(test.context["city"].astype(str), spec.vocabularies["city"])
    np.testing.assert_array_equal(city == 0, unseen)
    singles = np.stack([spec.transform(r).indices[0] for r in test.context.iloc[:300].to_dict("records")])
    np.testing.assert_array_equal(singles, te.indices[:300])  # the per-request path equals the columnar one
    ml = load_movielens_100k(DATA_DIR)
    rows = np.random.default_rng(0).choice(len(ml), 1500, replace=False)
    for tz in ("America/Chicago", "UTC", "Asia/Kolkata"):
        tspec = ContextSpec(time=["timestamp"], tz=tz).fit(ml)
        f = tspec.transform(ml)
        assert (f.indices > 0).all() and f.indices.shape == (100_000, 6)
        iso = [{"timestamp": pd.Timestamp(int(ml.timestamp[r]), unit="s", tz="UTC").isoformat()} for r in rows]
        one_by_one = np.stack([tspec.transform(q).indices[0] for q in iso])
        np.testing.assert_array_equal(one_by_one, f.indices[rows])
        np.testing.assert_array_equal(tspec.transform(iso).indices, f.indices[rows])  # long list: columnar path
