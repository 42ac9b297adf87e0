"""ctxrec.data: the Dataset shape, table inputs, loaders and their documented counts."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctxrec.data import (
    FRAPPE_CONTEXT_COLUMNS,
    Categorical,
    ChecksumError,
    DataError,
    Dataset,
    MissingDataError,
    load_frappe,
    load_frappe_nfm,
    load_movielens_100k,
    stack_attrs,
)
from ctxrec.data import _sample_unseen

from _data_dir import DATA_DIR, needs_data  # noqa: E402


@pytest.fixture(scope="module")
def ml():
    return load_movielens_100k(DATA_DIR)


@pytest.fixture(scope="module")
def frappe():
    return load_frappe(DATA_DIR)


@pytest.fixture(scope="module")
def nfm():
    return load_frappe_nfm(DATA_DIR, seed=0)


# ---------------------------------------------------------------------------- tables


def _toy_frames():
    inter = pd.DataFrame({
        "u": ["bob", "amy", "bob", "cat", "amy"],
        "i": [20, 10, 30, 10, 40],
        "r": [4.0, 5.0, 1.0, 3.0, 2.0],
        "y": [1, -1, 1, 0, 1],
        "t": ["2024-01-01T10:00:00Z", "2024-01-02", "2024-01-03 05:00", "2024-01-04", "2024-01-05"],
        "device": ["mobile", "desktop", "mobile", "tv", "mobile"],
    })
    items = pd.DataFrame({"i": [10, 20, 30, 40, 50], "title": ["A", "B", "C", "D", "E"],
                          "tags": ["x|y", "y", "", None, "z"]})
    users = pd.DataFrame({"u": ["amy", "bob", "cat", "dan"], "bio": ["likes x", "", "cats", "new"],
                          "country": ["fr", "de", "fr", "us"]})
    return inter, items, users


def _toy(**over):
    inter, items, users = _toy_frames()
    kw = dict(user_col="u", item_col="i", rating_col="r", label_col="y", timestamp_col="t",
              context_cols=["device"], items=items, item_text_cols=["title"], item_attr_cols={"tags": "|"},
              users=users, user_text_cols=["bio"], user_attr_cols=["country"], name="toy")
    kw.update(over)
    return Dataset.from_frames(inter, **kw)


def test_from_frames_maps_ids_both_ways():
    ds = _toy()
    assert list(ds.user_ids) == ["amy", "bob", "cat", "dan"]  # sorted union, incl. user without interactions
    assert list(ds.item_ids) == [10, 20, 30, 40, 50]
    assert ds.users.dtype == np.int32 and ds.items.dtype == np.int32
    assert list(ds.user_ids[ds.users]) == ["bob", "amy", "bob", "cat", "amy"]
    assert list(ds.item_ids[ds.items]) == [20, 10, 30, 10, 40]
    assert ds.user_index("cat") == 2 and ds.user_index("nobody") == -1
    assert list(ds.item_index([50, 10, 99])) == [4, 0, -1]
    assert ds.item_index("30") == 2  # int catalog accepts a numeric string for a scalar
    with pytest.raises(KeyError, match="99"):
        ds.item_index([10, 99], strict=True)
    assert ds.label.tolist() == [1, 0, 1, 0, 1]  # libFM-style -1 read as 0
    assert ds.rating.dtype == np.float32
    assert ds.timestamp[0] == pd.Timestamp("2024-01-01T10:00:00Z").value // 10**9
    assert ds.timestamp[1] == pd.Timestamp("2024-01-02", tz="UTC").value // 10**9
    assert ds.context_columns == ["device"]
    for col in (pd.to_datetime(_toy_frames()[0]["t"], utc=True, format="mixed"),  # datetime64 (any unit)
                pd.to_datetime(_toy_frames()[0]["t"], utc=True, format="mixed").dt.tz_localize(None).astype(
                    "datetime64[s]"),
                ds.timestamp.astype(np.float64)):  # unix seconds as floats
        again = Dataset.from_frames(_toy_frames()[0].assign(t=col), user_col="u", item_col="i", timestamp_col="t")
        np.testing.assert_array_equal(again.timestamp, ds.timestamp)
    assert ds.item_text == ["A", "B", "C", "D", "E"]
    tags = ds.item_attrs["tags"]
    assert tags.vocab == ("x", "y", "z")
    assert [list(tags.values(i)) for i in range(5)] == [["x", "y"], ["y"], [], [], ["z"]]
    assert tags.multi_hot().sum(axis=1).tolist() == [2, 1, 0, 0, 1]
    assert tags.first().tolist() == [0, 1, -1, -1, 2]
    assert ds.user_text == ["likes x", "", "cats", "new"]
    assert ds.user_attrs["country"].vocab == ("de", "fr", "us")
    assert ds.user_attrs["country"].first().tolist() == [1, 0, 1, 2]


def test_user_items_csr_and_counts():
    ds = _toy()
    indptr, idx = ds.user_items()  # label-1 rows only: bob 20, bob 30, amy 40
    assert indptr.dtype == np.int64 and idx.dtype == np.int64
    assert [idx[indptr[u]:indptr[u + 1]].tolist() for u in range(4)] == [[3], [1, 2], [], []]
    indptr, idx = ds.user_items(positive_only=False)
    assert [idx[indptr[u]:indptr[u + 1]].tolist() for u in range(4)] == [[0, 3], [1, 2], [0], []]
    assert ds.item_counts(positive_only=False).tolist() == [2, 1, 1, 1, 0]


def test_subset_shares_catalog():
    ds = _toy()
    sub = ds.subset(np.array([True, False, True, False, False]))
    assert len(sub) == 2 and sub.n_items == ds.n_items and sub.n_users == ds.n_users
    assert sub.item_text is ds.item_text and sub.item_attrs is ds.item_attrs
    assert sub.context["device"].tolist() == ["mobile", "mobile"]
    assert sub.rating.tolist() == [4.0, 1.0]
    frame = sub.to_frame()
    assert frame["user_id"].tolist() == ["bob", "bob"] and frame["item_idx"].tolist() == [1, 2]


def test_inputs_pandas_arrow_csv_parquet_agree(tmp_path):
    pa = pytest.importorskip("pyarrow")
    inter, items, users = _toy_frames()
    base = _toy()
    inter.to_csv(tmp_path / "i.csv", index=False)
    inter.to_parquet(tmp_path / "i.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    for src in (pa.Table.from_pandas(inter), tmp_path / "i.csv", str(tmp_path / "i.parquet")):
        ds = _toy(items=tmp_path / "items.parquet") if isinstance(src, str) else Dataset.from_frames(
            src, user_col="u", item_col="i", rating_col="r", label_col="y", timestamp_col="t",
            context_cols=["device"], items=items, users=users, item_text_cols=["title"])
        np.testing.assert_array_equal(ds.users, base.users)
        np.testing.assert_array_equal(ds.items, base.items)
        np.testing.assert_array_equal(ds.timestamp, base.timestamp)
        np.testing.assert_array_equal(ds.rating, base.rating)
        assert list(ds.user_ids) == list(base.user_ids) and ds.item_text == base.item_text


def test_errors_name_the_column_and_value():
    inter, items, _ = _toy_frames()
    with pytest.raises(DataError, match="'nope'"):
        Dataset.from_frames(inter, user_col="u", item_col="nope")
    with pytest.raises(DataError, match="'missing_ctx'"):
        Dataset.from_frames(inter, user_col="u", item_col="i", context_cols=["missing_ctx"])
    bad = inter.assign(y=[1, 0, 2, 0, 1])
    with pytest.raises(DataError, match="label.*2"):
        Dataset.from_frames(bad, user_col="u", item_col="i", label_col="y")
    dup = pd.concat([items, items.iloc[:1]])
    with pytest.raises(DataError, match="duplicate i 10"):
        Dataset.from_frames(inter, user_col="u", item_col="i", items=dup)
    with pytest.raises(DataError, match="'t'"):
        Dataset.from_frames(inter.assign(t=["x", "y", "z", "w", "v"]), user_col="u", item_col="i", timestamp_col="t")
    with pytest.raises(MissingDataError, match="absent.csv"):
        Dataset.from_frames("absent.csv")


def test_stack_attrs_as_one_sparse_matrix():
    ds = _toy()
    tags = ds.item_attrs["tags"]
    ip, ix, data, n_cols, names = stack_attrs({"tags": tags, "tags2": tags}, normalize=True)
    assert n_cols == 6 and names[:3] == ["tags=x", "tags=y", "tags=z"]
    assert ip.tolist() == [0, 4, 6, 6, 6, 8]
    assert ix[:4].tolist() == [0, 1, 3, 4] and data[:4].tolist() == [0.5] * 4
    dense = np.zeros((5, 6))
    for r in range(5):
        dense[r, ix[ip[r]:ip[r + 1]]] = data[ip[r]:ip[r + 1]]
    np.testing.assert_array_equal(dense[:, :3] > 0, tags.multi_hot() > 0)
    np.testing.assert_allclose(dense[:, :3].sum(axis=1), [1, 1, 0, 0, 1])  # normalized within the attribute
    np.testing.assert_array_equal(dense[:, 3:], dense[:, :3])
    ip2, ix2, d2, n2, _ = ds.user_attr_matrix()
    assert n2 == 3 and ix2.tolist() == [1, 0, 1, 2] and (d2 == 1).all()
    assert tags.shape == (5, 3) and tags.as_csr()[3] == 3


def test_categorical_validates_csr():
    with pytest.raises(DataError, match="'g'"):
        Categorical("g", ("a",), np.array([0, 2]), np.array([0, 1]))
    c = Categorical.from_values("g", ["a|b", None, "b"], sep="|")
    assert [x.tolist() for x in c.lists()] == [[0, 1], [], [1]]


# ---------------------------------------------------------------------------- loaders


@needs_data
def test_movielens_counts(ml):
    assert (len(ml), ml.n_users, ml.n_items) == (100_000, 943, 1_682)
    assert np.array_equal(ml.user_ids, np.arange(1, 944)) and np.array_equal(ml.item_ids, np.arange(1, 1683))
    assert set(np.unique(ml.rating).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (ml.timestamp.min(), ml.timestamp.max()) == (874724710, 893286638)
    pairs = ml.users.astype(np.int64) * ml.n_items + ml.items
    assert len(np.unique(pairs)) == 100_000
    assert ml.item_attrs["genres"].n_values == 19
    assert ml.user_table["occupation"].nunique() == 21
    assert (ml.item_table["overview"] != "").sum() == 1_489
    # 95.5 % of ratings fall on items with an overview (README)
    has_ov = (ml.item_table["overview"] != "").to_numpy()
    assert round(has_ov[ml.items].mean(), 3) == 0.955
    # u.item is latin-1: accented titles decode
    assert any("é" in t for t in ml.item_table["title"])
    assert ml.item_text[0].startswith("Toy Story (1995). Genres: Animation, Children's, Comedy. Year: 1995. ")
    assert ml.item_attrs["genres"].values(0) == ["Animation", "Children's", "Comedy"]
    assert ml.user_attrs["gender"].vocab == ("F", "M")


@needs_data
def test_movielens_without_overviews(ml):
    ds = load_movielens_100k(Path(DATA_DIR) / "ml-100k", overviews=False)
    assert ds.item_text[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy. Year: 1995"
    np.testing.assert_array_equal(ds.users, ml.users)


@needs_data
def test_frappe_counts(frappe):
    assert (len(frappe), frappe.n_users, frappe.n_items) == (96_203, 957, 4_082)
    assert frappe.count.sum() == 7_824_276
    assert frappe.context_columns == list(FRAPPE_CONTEXT_COLUMNS)
    assert (frappe.context["country"] == "unknown").sum() == 7_025  # `unknown` is a value, not NaN
    assert frappe.context["homework"].nunique() == 3 and frappe.context["city"].nunique() == 233
    pairs = frappe.users.astype(np.int64) * frappe.n_items + frappe.items
    assert len(np.unique(pairs)) == 18_842
    assert frappe.item_has_text.sum() == 3_532
    assert frappe.item_text[0].startswith("Any.DO To-do & Tasks List. Category: Productivity")


@needs_data
def test_frappe_nfm_splits(nfm):
    val, test, train, raw = nfm.validation, nfm.test, nfm.train, nfm.raw
    assert (len(val), int(val.label.sum())) == (57_722, 19_063)
    assert (len(test), int(test.label.sum())) == (28_860, 9_536)
    assert len(nfm.train_raw_rows) == 67_604 == 96_203 - 19_063 - 9_536
    assert len(train) == 3 * 67_604 and int(train.label.sum()) == 67_604
    # positives of the reconstructed train split are the raw rows, context and all
    pos = train.label == 1
    np.testing.assert_array_equal(train.items[pos], raw.items[nfm.train_raw_rows])
    for c in FRAPPE_CONTEXT_COLUMNS:
        assert (train.context[c].to_numpy()[pos] == raw.context[c].to_numpy()[nfm.train_raw_rows]).all()
    # negatives keep the positive's user and context and are apps the user never used
    u3, i3 = train.users.reshape(-1, 3), train.items.reshape(-1, 3)
    assert (u3 == u3[:, :1]).all()
    assert (i3[:, 1] != i3[:, 2]).all()
    indptr, used = raw.user_items(positive_only=False)
    used_key = np.repeat(np.arange(raw.n_users, dtype=np.int64), np.diff(indptr)) * raw.n_items + used
    for col in (1, 2):
        assert not np.isin(u3[:, col].astype(np.int64) * raw.n_items + i3[:, col], used_key).any()
    assert np.isin(u3[:, 0].astype(np.int64) * raw.n_items + i3[:, 0], used_key).all()
    # validation/test negatives are apps their user never used, too (NFM protocol)
    neg = val.label == 0
    key = raw.users.astype(np.int64) * raw.n_items + raw.items
    assert not np.isin(val.users[neg].astype(np.int64) * raw.n_items + val.items[neg], key).any()
    # seeded: same seed, same negatives; another seed, others
    users = u3[:, 0].astype(np.int64)
    again = _sample_unseen(np.random.default_rng(0), users, 2, indptr, used, raw.n_items)
    other = _sample_unseen(np.random.default_rng(1), users, 2, indptr, used, raw.n_items)
    np.testing.assert_array_equal(again, i3[:, 1:])
    assert (other != i3[:, 1:]).mean() > 0.9


# ---------------------------------------------------------------------------- files


@needs_data
def test_missing_and_altered_files_are_named(tmp_path, monkeypatch):
    src = Path(DATA_DIR) / "ml-100k"
    d = tmp_path / "ml-100k"
    d.mkdir()
    for f in ("u.data", "u.item", "u.user", "u.genre"):
        shutil.copy(src / f, d / f)
    load_movielens_100k(tmp_path, overviews=False)
    raw = bytearray((d / "u.item").read_bytes())
    raw[100] = ord("Z") if raw[100] != ord("Z") else ord("Y")
    (d / "u.item").write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match=r"u\.item"):
        load_movielens_100k(tmp_path, overviews=False)
    shutil.copy(src / "u.item", d / "u.item")
    (d / "u.user").unlink()
    with pytest.raises(MissingDataError, match=r"u\.user"):
        load_movielens_100k(tmp_path, overviews=False)
    shutil.copy(src / "u.user", d / "u.user")
    with pytest.raises(MissingDataError, match="overviews"):
        load_movielens_100k(tmp_path, overviews=True)
    monkeypatch.delenv("CTXREC_DATA_DIR", raising=False)
    with pytest.raises(MissingDataError, match="CTXREC_DATA_DIR"):
        load_frappe()
    with pytest.raises(MissingDataError, match="frappe"):
        load_frappe(tmp_path)


@needs_data
def test_download_verifies_the_archive(tmp_path):
    import zipfile

    from ctxrec.data import download_movielens_100k

    src = Path(DATA_DIR) / "ml-100k"
    good, bad = tmp_path / "ml-100k.zip", tmp_path / "bad.zip"
    with zipfile.ZipFile(good, "w") as z:
        for f in ("u.data", "u.item", "u.user", "u.genre", "u.info"):
            z.write(src / f, f"ml-100k/{f}")
    with zipfile.ZipFile(bad, "w") as z:
        for f in ("u.data", "u.item", "u.genre"):
            z.write(src / f, f"ml-100k/{f}")
        z.writestr("ml-100k/u.user", (src / "u.user").read_bytes().replace(b"technician", b"technicia0"))
    root = tmp_path / "data"
    with pytest.raises(ChecksumError, match=r"u\.user"):
        download_movielens_100k(root, url=good.as_uri().replace("ml-100k.zip", "bad.zip"))
    assert not (root / "ml-100k").exists()  # nothing half-written is left behind
    assert download_movielens_100k(root, url=good.as_uri()) == root / "ml-100k"
    ds = load_movielens_100k(root, overviews=False)
    assert (len(ds), ds.n_users, ds.n_items) == (100_000, 943, 1_682)
