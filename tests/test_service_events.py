"""Feedback through the HTTP service survives a crash, a restart and a reload with a retrained model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")

from ctxrec.context import ContextSpec  # noqa: E402
from ctxrec.data import Dataset  # noqa: E402
from ctxrec.model import ContextFM  # noqa: E402
from ctxrec.recommender import Recommender  # noqa: E402
from _server import start_server, stop_server  # noqa: E402
from _synthetic_data import planted_dataset  # noqa: E402

http = httpx.Client(timeout=180)
TOKEN = "events-token"


def test_feedback_survives_a_crash_and_a_reload_with_a_retrained_model(tmp_path):
    ds = planted_dataset(n_users=40, n_items=80, per_user=15)
    frame = ds.to_frame()[["user_id", "item_id", "timestamp", "device"]]
    frame.to_csv(tmp_path / "events.csv", index=False)
    ds.item_table.to_csv(tmp_path / "items.csv", index=False)
    data_cfg = tmp_path / "data.json"
    data_cfg.write_text(json.dumps({"interactions": {"path": "events.csv", "timestamp": "timestamp",
                                                     "context": {"categorical": ["device"]}},
                                    "items": {"path": "items.csv", "text": ["title"], "attributes": ["kind"]}}))
    from ctxrec.data import DataConfig
    ds = DataConfig.from_file(data_cfg).load()
    spec = ContextSpec(time=["timestamp"], categorical=["device"])
    rec = Recommender(spec, model=ContextFM(n_factors=8, epochs=3), encoder=None).fit(ds)
    rec.save(tmp_path / "m")
    env = {"CTXREC_ADMIN_TOKEN": TOKEN}
    base, proc = start_server(["--model", str(tmp_path / "m")], env=env)
    try:
        for item in ("i3", "i50", "i7"):
            r = http.post(f"{base}/feedback", json={"user": "walk-in", "item": item, "context": {"device": "tv"}})
            assert r.status_code == 200, r.text
        assert r.json()["event"] == 3 and r.json()["known_items"] == 3
        r = http.post(f"{base}/feedback", json={"user": "u1", "item": "nope"})
        assert r.status_code == 404  # rejected: not logged
        health = http.get(f"{base}/healthz").json()["events"]
        assert health["log_position"] == health["applied_position"] == 3
        before = http.post(f"{base}/recommend", json={"user": "walk-in", "k": 10}).json()
    finally:
        stop_server(proc, kill=True)  # a crash: the acknowledged events must already be on disk

    base, proc = start_server(["--model", str(tmp_path / "m")], env=env)
    try:
        health = http.get(f"{base}/healthz").json()["events"]
        assert health["applied"] == 3 and health["log_position"] == 3
        after = http.post(f"{base}/recommend", json={"user": "walk-in", "k": 10}).json()
        assert after["cold_start"] is False
        assert after["items"] == before["items"]  # the same state, replayed
        assert not {"i3", "i50", "i7"} & {x["item_id"] for x in after["items"]}
        # retrain from the data + the log (the CLI, as a user runs it), then an event, then the swap
        subprocess.run([sys.executable, "-m", "ctxrec.cli", "retrain", "--model", str(tmp_path / "m"),
                        "--out", str(tmp_path / "m2")], check=True)  # the data the model records
        r = http.post(f"{base}/feedback", json={"user": "late", "item": "i9"})
        assert r.status_code == 200 and r.json()["event"] == 4
        r = http.post(f"{base}/admin/reload", json={"path": str(tmp_path / "m2")},
                      headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        health = http.get(f"{base}/healthz").json()
        assert health["model_dir"] == (tmp_path / "m2").name  # the name only: no absolute path
        assert health["events"]["applied_position"] == 4 and health["events"]["applied"] == 1  # only "late"
        late = http.post(f"{base}/recommend", json={"user": "late", "k": 5}).json()
        assert late["cold_start"] is False and "i9" not in [x["item_id"] for x in late["items"]]
        walk = http.post(f"{base}/recommend", json={"user": "walk-in", "k": 5, "fields": ["title"]}).json()
        assert walk["cold_start"] is False and all("item number" in x["fields"]["title"] for x in walk["items"])
        r = http.post(f"{base}/recommend", json={"user": "walk-in", "fields": ["no_such_field"]})
        assert r.status_code == 422 and "no_such_field" in r.text
    finally:
        stop_server(proc)


def test_items_endpoint_returns_plain_json_for_arrays_and_times(tmp_path):
    inter = pd.DataFrame({"user_id": np.repeat(np.arange(10), 4), "item_id": np.tile(np.arange(8), 5)})
    items = pd.DataFrame({"item_id": np.arange(8), "title": [f"t{i}" for i in range(8)],
                          "released": pd.to_datetime(["1995-01-01"] * 7 + [None]),
                          "score": [1.5] * 7 + [float("nan")],
                          "tags": [np.array(["a", "b"])] * 8, "n": np.arange(8, dtype=np.int32)})
    ds = Dataset.from_frames(inter, items=items, item_text_cols=["title"])
    rec = Recommender(None, model=ContextFM(n_factors=4, epochs=1), encoder=None).fit(ds)
    info = rec.item_info(7)
    assert json.loads(json.dumps(info, allow_nan=False)) == info
    assert info["released"] is None and info["score"] is None and info["tags"] == ["a", "b"] and info["n"] == 7
    assert rec.item_info(0)["released"].startswith("1995-01-01")
    rec.save(tmp_path / "m")
    base, proc = start_server(["--model", str(tmp_path / "m"), "--no-events"])
    try:
        for i in range(8):
            r = http.get(f"{base}/items/{i}")
            assert r.status_code == 200, r.text
        assert r.json()["tags"] == ["a", "b"]
        assert not os.path.exists(tmp_path / "m.events.sqlite")  # --no-events: no log written
    finally:
        stop_server(proc)
