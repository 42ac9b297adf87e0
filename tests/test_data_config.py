"""Bring your own data: DataConfig (files + column mapping), load_source, and the CLI on top.

The example data is made from the shared MovieLens 100K the way a user's shop would look:
``events.parquet`` (uid, sku, ts, stars) from the first 20,000 ratings and ``products.csv``
(sku, name, description, category) from the items, their plot overviews and genres; ids
become strings ("u196", "sku-0050") so nothing lines up with MovieLens' ints by accident.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctxrec.cli import dataset_from_args, default_context, main, parser
from ctxrec.data import (
    DataConfig,
    DataError,
    MissingDataError,
    load_frappe,
    load_movielens_100k,
    load_source,
    read_table,
)
from ctxrec.encoder._paths import default_model_dir

from _data_dir import DATA_DIR, needs_data  # noqa: E402

pytestmark = needs_data

N_EVENTS = 20_000
TINY_MODEL = {"n_factors": 8, "epochs": 2, "random_state": 0}


# ---------------------------------------------------------------------------- the example files
@pytest.fixture(scope="module")
def ml():
    return load_movielens_100k(DATA_DIR)


def _sku(item_id: pd.Series) -> pd.Series:
    return "sku-" + item_id.astype(int).map("{:04d}".format)


@pytest.fixture(scope="module")
def shop(ml, tmp_path_factory):
    """A directory with events.parquet, products.csv, users.jsonl and data.json (a data section)."""
    d = tmp_path_factory.mktemp("shop")
    r = ml.to_frame().iloc[:N_EVENTS]
    events = pd.DataFrame({"uid": "u" + r["user_id"].astype(str), "sku": _sku(r["item_id"]),
                           "ts": r["timestamp"].astype(np.int64), "stars": r["rating"].astype(np.int64)})
    events.to_parquet(d / "events.parquet", index=False)
    it = ml.item_table
    products = pd.DataFrame({"sku": _sku(it["item_id"]), "name": it["title"], "description": it["overview"],
                             "category": ["|".join(g) for g in it["genres"]]})
    products.to_csv(d / "products.csv", index=False)
    ut = ml.user_table
    users = pd.DataFrame({"uid": "u" + ut["user_id"].astype(str), "occupation": ut["occupation"],
                          "age": ut["age"]})
    users.to_json(d / "users.jsonl", orient="records", lines=True)
    section = {
        "interactions": {"path": "events.parquet", "user": "uid", "item": "sku", "timestamp": "ts",
                         "rating": "stars", "context": {"time": ["ts"], "text": ["query"]}},
        "items": {"path": "products.csv", "id": "sku", "text": ["name", "description"],
                  "attributes": {"category": "|"}},
    }
    (d / "data.json").write_text(json.dumps(section))
    return {"dir": d, "events": events, "products": products, "users": users, "section": section}


def _write_config(path: Path, section: dict) -> Path:
    path.write_text(json.dumps(section))
    return path


# ---------------------------------------------------------------------------- loading
def test_config_loads_the_source_rows(shop):
    cfg = DataConfig.from_file(shop["dir"] / "data.json")
    ds = cfg.load()
    ev, prod = shop["events"], shop["products"]
    # interactions: file order, raw ids as given, values and timestamps unchanged
    assert len(ds) == N_EVENTS and ds.name == "events"
    f = ds.to_frame()
    assert f["user_id"].tolist() == ev["uid"].tolist()
    assert f["item_id"].tolist() == ev["sku"].tolist()
    np.testing.assert_array_equal(ds.rating, ev["stars"].to_numpy(np.float32))
    np.testing.assert_array_equal(ds.timestamp, ev["ts"].to_numpy())
    assert ds.n_users == ev["uid"].nunique()
    # the catalog is every product (items without events included), text and genres per item
    assert sorted(ds.item_ids.tolist()) == sorted(prod["sku"].tolist()) and ds.n_items == 1682
    p = prod.set_index("sku")
    for sku in ("sku-0001", "sku-0050", "sku-1682"):
        i = ds.item_index(sku)
        parts = [str(x) for x in (p.loc[sku, "name"], p.loc[sku, "description"]) if isinstance(x, str) and x]
        assert ds.item_text[i] == ". ".join(parts)
        assert ds.item_attrs["category"].values(i) == sorted(p.loc[sku, "category"].split("|"))
    # item table: id first, then the text columns in config order
    assert list(ds.item_table.columns[:3]) == ["item_id", "name", "description"]
    # context: the raw time column; the request-only text column is not in the file, so not here
    assert ds.context_columns == ["ts"]
    np.testing.assert_array_equal(ds.context["ts"].to_numpy(), ev["ts"].to_numpy())
    assert cfg.context_spec_kwargs() == {"time": ["ts"], "text": ["query"]}
    # the source: the resolved config with absolute paths, JSON-able, reloads to the same data
    src = ds.meta["source"]
    assert src == cfg.to_dict() and json.loads(json.dumps(src)) == src
    assert src["interactions"]["path"] == str(shop["dir"] / "events.parquet")
    assert Path(src["items"]["path"]).is_absolute()
    again = load_source(src)
    np.testing.assert_array_equal(again.users, ds.users)
    np.testing.assert_array_equal(again.items, ds.items)
    assert again.item_text == ds.item_text and again.meta["source"] == src
    # subsets (splits) keep the source
    assert ds.subset(np.arange(10)).meta["source"] == src


def test_context_spec_from_the_data_section_works_with_request_only_text(shop):
    from ctxrec.context import ContextSpec
    from ctxrec.model import ContextFM
    from ctxrec.recommender import Recommender
    ds = DataConfig.from_file(shop["dir"] / "data.json").load().subset(np.arange(3000))
    assert default_context(ds) == {"time": ["ts"], "text": ["query"]}
    rec = Recommender(ContextSpec(**default_context(ds)), model=ContextFM(**TINY_MODEL), encoder=None).fit(ds)
    assert [f.name for f in rec.context_.fields] == ["ts", "query"]
    from ctxrec.errors import ContextError
    with pytest.raises(ContextError, match="context.query: this model cannot read request text"):
        rec.recommend("u196", {"ts": "1998-03-01T20:00", "query": "a comedy"}, k=5)  # no encoder: refused
    r = rec.recommend("u196", {"ts": "1998-03-01T20:00", "query": "a comedy"}, k=5, ignore_unknown=True)
    assert len(r.item_ids) == 5 and not r.cold_start and all(str(i).startswith("sku-") for i in r.item_ids)


def test_relative_paths_are_from_the_config_file_and_tilde_expands(shop, tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    rel = os.path.relpath(shop["dir"], sub)
    sec = json.loads(json.dumps(shop["section"]))
    sec["interactions"]["path"] = f"{rel}/events.parquet"
    sec["items"]["path"] = "~/products.csv"
    monkeypatch.setenv("HOME", str(shop["dir"]))
    monkeypatch.chdir(tmp_path)  # not the config's directory: must not matter
    cfg = DataConfig.from_file(_write_config(sub / "data.json", sec))
    assert cfg.interactions.path == shop["dir"] / "events.parquet"
    assert cfg.items is not None and cfg.items.path == shop["dir"] / "products.csv"
    assert len(cfg.load()) == N_EVENTS


def test_json_lines(shop, tmp_path):
    ev = shop["events"].iloc[:500]
    iso = pd.to_datetime(ev["ts"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    jl = ev.assign(ts=iso, device=np.where(np.arange(len(ev)) % 3 == 0, "tv", "mobile"))
    jl.to_json(tmp_path / "events.ndjson", orient="records", lines=True)
    shop["products"].assign(tags=[c.split("|") for c in shop["products"]["category"]]) \
        .to_json(tmp_path / "products.jsonl", orient="records", lines=True)
    sec = {"interactions": {"path": str(tmp_path / "events.ndjson"), "user": "uid", "item": "sku",
                            "timestamp": "ts", "label": None,
                            "context": {"categorical": ["device"], "time": ["ts"]}},
           "items": {"path": str(tmp_path / "products.jsonl"), "text": ["name"], "attributes": ["tags"]},
           "users": {"path": str(shop["dir"] / "users.jsonl"), "text": ["occupation"],
                     "attributes": ["occupation"]}}
    ds = DataConfig.from_dict(sec).load()
    np.testing.assert_array_equal(ds.timestamp, ev["ts"].to_numpy())  # ISO strings parsed back to seconds
    assert ds.context_columns == ["ts", "device"]  # kinds in order: time, categorical, numeric, text
    assert ds.context["device"].tolist() == jl["device"].tolist()
    # a JSON list is a multi-valued attribute without a separator
    i = ds.item_index("sku-0001")
    assert ds.item_attrs["tags"].values(i) == ["Animation", "Children's", "Comedy"]
    assert ds.user_text is not None and ds.user_text[ds.user_index("u1")] == "technician"
    assert ds.user_attrs["occupation"].values(ds.user_index("u1")) == ["technician"]
    # read_table reads JSON Lines without guessing types: "007"-style ids stay strings
    (tmp_path / "ids.jsonl").write_text('{"sku": "007", "n": 1}\n{"sku": "010", "n": 2}\n')
    t = read_table(tmp_path / "ids.jsonl")
    assert t["sku"].tolist() == ["007", "010"] and t["n"].tolist() == [1, 2]


# ---------------------------------------------------------------------------- errors
def _section(shop, **changes) -> dict:
    """The example section with ``{"interactions.user": "x"}``-style changes (None deletes)."""
    sec = json.loads(json.dumps(shop["section"]))
    for key, v in changes.items():
        *path, last = key.split("__")
        d = sec
        for p in path:
            d = d[p]
        if v is None:
            d.pop(last, None)
        else:
            d[last] = v
    return sec


@pytest.mark.parametrize("changes, file, words", [
    ({"interactions__rating": "stras"}, "events.parquet", ["'stras'", "did you mean 'stars'", "interactions.rating"]),
    ({"interactions__user": "UID"}, "events.parquet", ["'UID'", "did you mean 'uid'", "interactions.user"]),
    ({"interactions__user": "customer"}, "events.parquet", ["'customer'", "columns: uid, sku, ts, stars"]),
    ({"interactions__context": {"time": ["tss"]}}, "events.parquet", ["'tss'", "did you mean 'ts'",
                                                                      "interactions.context.time"]),
    ({"interactions__context": {"categorical": ["device"]}}, "events.parquet", ["'device'",
                                                                                "interactions.context.categorical"]),
    ({"items__text": ["name", "descripton"]}, "products.csv", ["'descripton'", "did you mean 'description'",
                                                              "items.text"]),
    ({"items__attributes": {"categroy": "|"}}, "products.csv", ["'categroy'", "did you mean 'category'",
                                                               "items.attributes"]),
    ({"items__id": "sku_id"}, "products.csv", ["'sku_id'", "did you mean 'sku'", "items.id"]),
])
def test_a_missing_column_names_file_column_and_close_names(shop, changes, file, words):
    cfg = DataConfig.from_dict(_section(shop, **changes), base_dir=shop["dir"])
    with pytest.raises(DataError) as e:
        cfg.load()
    msg = str(e.value)
    assert str(shop["dir"] / file) in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    assert isinstance(e.value, ValueError)


def test_a_default_item_id_column_that_is_missing_says_where_the_default_came_from(shop):
    cfg = DataConfig.from_dict(_section(shop, items__id=None), base_dir=shop["dir"])  # default: "sku" exists
    assert cfg.load().n_items == 1682
    sec = _section(shop, items__id=None, interactions__item="sku")
    sec["items"]["path"] = str(shop["dir"] / "users.jsonl")  # no sku column there
    with pytest.raises(DataError, match=r"users\.jsonl: no column 'sku' \(data config data\.items\.id "
                                        r"\(default: data\.interactions\.item\)\)"):
        DataConfig.from_dict(sec, base_dir=shop["dir"]).load()


@pytest.mark.parametrize("section, words", [
    ({"interactions": {"path": "e.csv", "itme": "sku"}}, ["'itme'", "data.interactions", "did you mean 'item'",
                                                          "allowed: path, user, item, timestamp, rating, label"]),
    ({"interactions": {"path": "e.csv"}, "item": {"path": "p.csv"}}, ["'item'", "did you mean 'items'",
                                                                      "allowed: interactions, items, users, name"]),
    ({"interactions": {"path": "e.csv"}, "items": {"path": "p.csv", "texts": ["name"]}},
     ["'texts'", "data.items", "did you mean 'text'", "allowed: path, id, text, attributes"]),
    ({"interactions": {"path": "e.csv", "context": {"categorial": ["device"]}}},
     ["context kind 'categorial'", "did you mean 'categorical'", "kinds: time, categorical, numeric, text"]),
    ({"interactions": {"path": "e.csv", "context": ["device"]}}, ["context must be an object"]),
    ({"interactions": {"path": "e.csv", "context": {"time": ["t"], "categorical": ["t"]}}},
     ["'t' is both time and categorical"]),
    ({"interactions": {"path": "e.csv", "user": ""}}, ["data.interactions.user must be a column name"]),
    ({"interactions": {"path": "e.csv"}, "items": {"path": "p.csv", "attributes": {"tags": 3}}},
     ["data.items.attributes['tags'] must be a separator string or null"]),
    ({"interactions": {"user": "uid"}}, ["data.interactions.path is missing"]),
    ({"items": {"path": "p.csv"}}, ["no 'interactions' section"]),
    ({"interactions": {"path": "e.csv"}, "items": {"id": "sku"}}, ["data.items.path is missing"]),
])
def test_a_bad_config_names_the_key(section, words):
    with pytest.raises(DataError) as e:
        DataConfig.from_dict(section)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_a_missing_file_names_the_path(shop, tmp_path):
    sec = _section(shop, interactions__path="no-such-events.parquet")
    with pytest.raises(MissingDataError, match=r"no-such-events\.parquet: no such file \(data config "
                                               r"data\.interactions\.path\)") as e:
        DataConfig.from_dict(sec, base_dir=tmp_path).load()
    assert str(tmp_path / "no-such-events.parquet") in str(e.value)
    sec = _section(shop)
    sec["items"]["path"] = str(tmp_path / "gone.csv")
    with pytest.raises(MissingDataError, match=r"gone\.csv: no such file \(data config data\.items\.path\)"):
        DataConfig.from_dict(sec, base_dir=shop["dir"]).load()
    with pytest.raises(MissingDataError, match=r"data config: no such file .*nope\.json"):
        DataConfig.from_file(tmp_path / "nope.json")


def test_unknown_format_ids_that_do_not_match_and_bad_values(shop, tmp_path):
    (tmp_path / "events.xlsx").write_text("uid,sku\n")
    with pytest.raises(DataError, match=r"events\.xlsx: unknown table format .*\.parquet.*\.jsonl"):
        DataConfig.from_dict({"interactions": {"path": str(tmp_path / "events.xlsx")}}).load()
    # item ids written differently in the two files (ints vs "sku-0001"): said, not silently two catalogs
    shop["products"].assign(sku=np.arange(1, 1683)).to_csv(tmp_path / "products.csv", index=False)
    sec = _section(shop)
    sec["items"]["path"] = str(tmp_path / "products.csv")
    with pytest.raises(DataError, match=r"products\.csv: none of its item ids \('sku', e\.g\. 1 of type int\) "
                                        r"appears in .*events\.parquet column 'sku' \(e\.g\. 'sku-"):
        DataConfig.from_dict(sec, base_dir=shop["dir"]).load()
    # a value error inside the frames (a non-numeric rating) names the files
    shop["events"].iloc[:50].assign(stars="five").to_csv(tmp_path / "events.csv", index=False)
    with pytest.raises(DataError, match=r"data config: interactions .*events\.csv"):
        DataConfig.from_dict(_section(shop, interactions__path=str(tmp_path / "events.csv"), items=None)).load()


# ---------------------------------------------------------------------------- built-in sources
def test_builtin_loaders_record_a_reloadable_source(ml):
    src = ml.meta["source"]
    assert {k: v for k, v in src.items() if k != "path"} == {"dataset": "movielens-100k", "overviews": True}
    # the same directory, however it is spelled (the data dir may be reached through a symlink)
    assert Path(src["path"]).is_absolute() and Path(src["path"]).resolve() == Path(DATA_DIR, "ml-100k").resolve()
    assert json.loads(json.dumps(src)) == src
    sub = ml.subset(np.arange(100))
    assert sub.meta["source"] == src
    again = load_source(sub.meta["source"])
    assert len(again) == len(ml) and again.item_text == ml.item_text
    fr = load_frappe(DATA_DIR)
    assert fr.meta["source"]["dataset"] == "frappe" and set(fr.meta["source"]) == {"dataset", "path"}
    assert Path(fr.meta["source"]["path"]).resolve() == Path(DATA_DIR, "frappe").resolve()
    assert default_context(fr) == default_context("frappe") and default_context(ml) == default_context(
        "movielens-100k")
    with pytest.raises(DataError, match="unknown dataset 'movielens-1m'"):
        load_source({"dataset": "movielens-1m"})
    with pytest.raises(DataError, match="neither a built-in dataset"):
        load_source({"path": "x"})


# ---------------------------------------------------------------------------- the command line
def _ctxrec(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CTXREC_DATA_DIR": str(DATA_DIR)}
    return subprocess.run([sys.executable, "-m", "ctxrec.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def train_config(shop):
    """A training config holding the data section (relative paths) and a tiny model."""
    return _write_config(shop["dir"] / "train.json", {"data": shop["section"], "model": TINY_MODEL})


def test_cli_train_recommend_evaluate_with_a_config(shop, train_config, tmp_path, capsys):
    out = _ctxrec("train", "--config", str(train_config), "--no-text", "--out", str(tmp_path / "model"),
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "[train] Dataset('events': 20,000 interactions" in out.stdout
    assert (tmp_path / "model" / "manifest.json").is_file()
    ctx = json.loads((tmp_path / "model" / "context.json").read_text())
    assert "ts" in json.dumps(ctx) and "query" in json.dumps(ctx)  # the data section's context kinds
    rec = _ctxrec("recommend", "--model", str(tmp_path / "model"), "--user", "u196", "--context",
                  '{"ts": "1998-03-01T20:00"}', "--query", "a funny movie", "-k", "5", "--json",
                  "--ignore-unknown-context", cwd=tmp_path)  # trained --no-text: the query is ignored only if asked
    assert rec.returncode == 0, rec.stderr
    res = json.loads(rec.stdout)
    assert res["user"] == "u196" and not res["cold_start"] and len(res["items"]) == 5
    assert all(it["item_id"] in set(shop["products"]["sku"]) for it in res["items"])
    main(["evaluate", "--config", str(train_config), "--no-text", "--split", "random",
          "--out", str(tmp_path / "eval")])  # in-process: the same entry point, one interpreter start less
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert "ndcg@10" in json.dumps(report) and "| ctxrec | random |" in capsys.readouterr().out


def test_cli_train_with_flags_only(shop, tmp_path):
    model_cfg = _write_config(tmp_path / "model.json", {"model": TINY_MODEL})
    d = shop["dir"]
    out = _ctxrec("train", "--interactions", str(d / "events.parquet"), "--user-col", "uid", "--item-col", "sku",
                  "--timestamp-col", "ts", "--rating-col", "stars", "--context-col", "ts:time",
                  "--items", os.path.relpath(d / "products.csv", tmp_path), "--item-text-col", "name",
                  "--item-attr-col", "category:|", "--config", str(model_cfg), "--no-text",
                  "--out", "model", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "item_attrs=['category']" in out.stdout and "context=['ts']" in out.stdout
    rec = _ctxrec("recommend", "--model", "model", "--user", "u196", "--context", '{"ts": "1998-03-01T20:00"}',
                  cwd=tmp_path)
    assert rec.returncode == 0, rec.stderr
    lines = rec.stdout.splitlines()[1:]
    names = set(shop["products"]["name"])
    assert len(lines) == 10 and all(ln.split(None, 3)[3] in names for ln in lines), rec.stdout  # "name" shown
    args = ("recommend", "--model", "model", "--user", "u196", "--context", '{"ts": "1998-03-01T20:00"}', "--json")
    plain = _ctxrec(*args, cwd=tmp_path)
    varied = _ctxrec(*args, "--diversity", "0.9", cwd=tmp_path)
    calibrated = _ctxrec(*args, "--diversity", "0.5", "--calibrate", "1", "--calibrate-by", "category", cwd=tmp_path)
    assert plain.returncode == varied.returncode == calibrated.returncode == 0, calibrated.stderr
    ids = [[it["item_id"] for it in json.loads(r.stdout)["items"]] for r in (plain, varied, calibrated)]
    assert ids[0] != ids[1] and ids[0][0] == ids[1][0]  # re-ranked; with diversity alone the best item stays first
    assert ids[2] != ids[0]
    bad = _ctxrec(*args, "--diversity", "2", cwd=tmp_path)
    assert bad.returncode != 0 and "diversity" in bad.stderr and "Traceback" not in bad.stderr
    explored = [_ctxrec(*args, "--explore", "thompson", "--explore-scale", "3", "--seed", "5", cwd=tmp_path)
                for _ in range(2)]
    assert explored[0].returncode == 0, explored[0].stderr
    assert explored[0].stdout == explored[1].stdout  # the seed fixes the draw
    items = json.loads(explored[0].stdout)["items"]
    assert len(items) == 10 and all("explore" in it for it in items)
    bad = _ctxrec(*args, "--explore", "ucb", "--explore-scale", "-1", cwd=tmp_path)
    assert bad.returncode != 0 and "explore_scale" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_flags_override_the_config(shop, train_config, tmp_path):
    a = parser().parse_args(["train", "--config", str(train_config), "--rating-col", "stras", "--out", "x"])
    with pytest.raises(DataError, match=r"events\.parquet: no column 'stras'.*did you mean 'stars'"):
        dataset_from_args(a)
    a = parser().parse_args(["train", "--config", str(train_config), "--item-text-col", "description",
                             "--context-col", "ts:numeric", "--out", "x"])
    ds = dataset_from_args(a)
    assert ds.meta["source"]["items"]["text"] == ["description"]
    assert default_context(ds) == {"numeric": ["ts"]}
    # --data-config replaces the config's data section; relative paths from its own directory
    other = tmp_path / "d"
    other.mkdir()
    shop["events"].iloc[:100].to_csv(other / "few.csv", index=False)
    dc = _write_config(other / "data.json", {"interactions": {"path": "few.csv", "user": "uid", "item": "sku"}})
    a = parser().parse_args(["train", "--config", str(train_config), "--data-config", str(dc), "--out", "x"])
    assert len(dataset_from_args(a)) == 100


@pytest.mark.parametrize("args, words", [
    (["--interactions", "{d}/events.parquet", "--user-col", "user", "--item-col", "sku"],
     ["events.parquet: no column 'user'", "columns: uid, sku, ts, stars"]),
    (["--interactions", "{d}/events.parquet", "--user-col", "uid", "--item-col", "sku", "--context-col",
      "ts:clock"], ["--context-col: 'ts:clock'"]),
    (["--interactions", "{d}/missing.parquet"], ["missing.parquet: no such file"]),
    (["--dataset", "movielens-100k", "--interactions", "{d}/events.parquet"], ["--interactions: describes your own"]),
    (["--item-text-col", "name", "--interactions", "{d}/events.parquet"], ["--item-text-col: needs an item table"]),
    (["--dataset", "config"], ["no data section"]),
    ([], ["--dataset: give a dataset"]),
    (["--data-config", "{d}/none.json"], ["--data-config: no such file"]),
])
def test_cli_errors_exit_2_with_one_line(shop, tmp_path, capsys, args, words):
    argv = ["train", *[x.format(d=shop["dir"]) for x in args], "--no-text", "--out", str(tmp_path / "m")]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ctxrec: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "m").exists()


def test_cli_csv_directory_layout_still_works(shop, tmp_path, monkeypatch):
    d = tmp_path / "csvdata"
    d.mkdir()
    ev = shop["events"].iloc[:3000]
    ev.rename(columns={"uid": "user_id", "sku": "item_id", "ts": "timestamp", "stars": "rating"}) \
        .to_csv(d / "interactions.csv", index=False)
    shop["products"].rename(columns={"sku": "item_id", "name": "title"}).to_csv(d / "items.csv", index=False)
    a = parser().parse_args(["train", "--dataset", "csv", "--data", str(d), "--out", "x"])
    ds = dataset_from_args(a)
    assert len(ds) == 3000 and ds.rating is not None and ds.timestamp is not None
    assert ds.item_text[ds.item_index("sku-0050")].startswith("Star Wars (1977). ")  # title + description
    assert ds.meta["source"]["interactions"]["path"] == str(d / "interactions.csv")
    model_cfg = _write_config(tmp_path / "model.json", {"model": TINY_MODEL})
    monkeypatch.chdir(tmp_path)
    main(["train", "--dataset", "csv", "--data", "csvdata", "--config", str(model_cfg), "--no-text", "--out", "m"])
    assert (tmp_path / "m" / "manifest.json").is_file()


ENCODER = default_model_dir()


needs_encoder = pytest.mark.skipif(not (ENCODER / "manifest.json").is_file(),
                                   reason=f"no encoder export at {ENCODER}: run `make models`")


@pytest.fixture(scope="module")
def text_model(shop, tmp_path_factory):
    """``ctxrec train`` with item text through the exported encoder, on a small catalog (300
    products) to stay quick; returns the directory holding the files and the model ``m/``."""
    d = tmp_path_factory.mktemp("text-shop")
    ev = shop["events"]
    ev[ev["sku"] <= "sku-0300"].iloc[:5000].to_parquet(d / "events.parquet", index=False)
    shop["products"].iloc[:300].to_csv(d / "products.csv", index=False)
    sec = _section(shop)
    sec["interactions"]["path"], sec["items"]["path"] = "events.parquet", "products.csv"
    sec["items"]["text"] = ["name"]
    cfg = _write_config(d / "train.json", {"data": sec, "model": TINY_MODEL})
    out = _ctxrec("train", "--config", str(cfg), "--encoder", str(ENCODER), "--out", str(d / "m"), cwd=d)
    assert out.returncode == 0, out.stderr
    return d


@needs_encoder
def test_cli_train_with_text(text_model, tmp_path):
    shutil.copytree(text_model / "m", tmp_path / "m")
    assert (tmp_path / "m" / "encoder" / "manifest.json").is_file() and (tmp_path / "m" / "item_text.npy").is_file()
    rec = _ctxrec("recommend", "--model", "m", "--user", "u196", "--context", '{"ts": "1998-03-01T20:00"}',
                  "--query", "Toy Story", "--json", cwd=tmp_path)
    assert rec.returncode == 0, rec.stderr
    with_query = [i["item_id"] for i in json.loads(rec.stdout)["items"]]
    from ctxrec.recommender import Recommender
    plain = Recommender.load(tmp_path / "m").recommend("u196", {"ts": "1998-03-01T20:00"}, k=10).item_ids
    assert len(with_query) == 10 and with_query != list(plain)  # the request text moves the ranking


@needs_encoder
def test_first_day_own_data_with_text_served_feedback_kept_across_a_restart(text_model, tmp_path):
    """A user's whole first path from the command line: own files + text -> train (the
    fixture) -> serve -> feedback -> the server is killed -> serve again: the feedback is still
    applied."""
    httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")
    from _server import start_server, stop_server
    shutil.copytree(text_model / "m", tmp_path / "m")  # its own copy: the log goes beside it
    http = httpx.Client(timeout=120)
    feedback = [{"user": "walk-in", "item": "sku-0001", "context": {"ts": "1998-03-01T20:00", "query": "toys"}},
                {"user": "walk-in", "item": "sku-0050"}, {"user": "u196", "item": "sku-0002"}]
    base, proc = start_server(["--model", str(tmp_path / "m")])
    try:
        for f in feedback:
            r = http.post(f"{base}/feedback", json=f)
            assert r.status_code == 200, r.text
        r = http.post(f"{base}/feedback", json={"user": "walk-in", "item": "sku-9999"})
        assert r.status_code == 404 and "sku-9999" in r.text
        before = http.post(f"{base}/recommend", json={"user": "walk-in", "k": 10,
                                                      "context": {"query": "a funny toy story"}}).json()
    finally:
        stop_server(proc, kill=True)
    base, proc = start_server(["--model", str(tmp_path / "m")])
    try:
        health = http.get(f"{base}/healthz").json()
        assert health["events"]["applied"] == 3 and health["events"]["log_position"] == 3
        after = http.post(f"{base}/recommend", json={"user": "walk-in", "k": 10,
                                                     "context": {"query": "a funny toy story"}}).json()
        assert after["cold_start"] is False and after["items"] == before["items"]
        assert not {"sku-0001", "sku-0050"} & {x["item_id"] for x in after["items"]}
        item = http.get(f"{base}/items/sku-0001").json()
        assert item["item_id"] == "sku-0001" and isinstance(item["category"], str)
    finally:
        stop_server(proc)
