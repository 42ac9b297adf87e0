"""The HTTP service, run for real (uvicorn) on a loopback port."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
# One client with a generous timeout: on a shared CI machine a fresh server's first
# request can take seconds.
http = httpx.Client(timeout=180)
pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")

from ctxrec.context import ContextSpec  # noqa: E402
from ctxrec.model import ContextFM  # noqa: E402
from ctxrec.recommender import Recommender  # noqa: E402
from _synthetic_data import planted_dataset  # noqa: E402

TOKEN = "test-token-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("svc")
    ds = planted_dataset(n_users=60, n_items=120, per_user=20)
    spec = ContextSpec(time=["timestamp"], categorical=["device"])
    Recommender(spec, model=ContextFM(n_factors=8, epochs=3), encoder=None).fit(ds).save(d / "a")
    Recommender(spec, model=ContextFM(n_factors=8, epochs=3, random_state=7), encoder=None).fit(ds).save(d / "b")
    return d / "a", d / "b"


@pytest.fixture(scope="module")
def server(model_dirs):
    port = free_port()
    env = {**os.environ, "CTXREC_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "ctxrec.cli", "serve", "--model", str(model_dirs[0]),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if http.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read().decode())
    else:
        proc.kill()
        raise RuntimeError("server did not start in 60 s")
    yield base, proc
    proc.terminate()
    proc.wait(10)


def test_recommend_and_batch(server):
    base, _ = server
    r = http.post(f"{base}/recommend", json={"user": "u1", "context": {"timestamp": "2024-04-01T08:00:00Z"},
                                               "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 5 and body["cold_start"] is False
    assert all(set(x) == {"item_id", "score"} for x in body["items"])
    r = http.post(f"{base}/recommend/batch", json={"requests": [{"user": "u1", "k": 3}, {"user": "nobody", "k": 2}]})
    assert r.status_code == 200
    res = r.json()["results"]
    assert [len(x["items"]) for x in res] == [3, 2] and res[1]["cold_start"] is True


def test_recommend_with_diversity_and_calibration(server, model_dirs):
    """diversity / calibrate over HTTP answer what the Recommender answers in-process."""
    base, _ = server
    local = Recommender.load(model_dirs[0], event_log=None)
    ctx = {"timestamp": "2024-04-01T08:00:00Z"}
    for opts in ({"diversity": 0.6}, {"calibrate": 3.0, "calibrate_by": "kind"}, {"diversity": 0.3, "calibrate": 1.0}):
        r = http.post(f"{base}/recommend", json={"user": "u3", "context": ctx, "k": 8, **opts})
        assert r.status_code == 200, r.text
        want = local.recommend("u3", ctx, k=8, **opts)
        assert [x["item_id"] for x in r.json()["items"]] == want.item_ids
        assert [x["rerank"] for x in r.json()["items"]] == want.rerank  # JSON carries the float64s exactly
    plain = local.recommend("u3", ctx, k=8)
    assert local.recommend("u3", ctx, k=8, diversity=0.9).item_ids != plain.item_ids
    for bad, field in (({"diversity": 1.5}, "diversity"), ({"diversity": "lots"}, "diversity"),
                       ({"calibrate": -1}, "calibrate"), ({"calibrate": 1.0, "calibrate_by": "nope"}, "calibrate_by")):
        r = http.post(f"{base}/recommend", json={"user": "u3", "k": 5, **bad})
        assert r.status_code == 422 and field in json.dumps(r.json()), r.text


def test_recommend_with_exploration(server, model_dirs):
    """explore / explore_scale / seed over HTTP answer what the Recommender answers in-process."""
    base, _ = server
    local = Recommender.load(model_dirs[0], event_log=None)
    ctx = {"timestamp": "2024-04-01T08:00:00Z"}
    for opts in ({"explore": "thompson", "explore_scale": 2.0, "seed": 4}, {"explore": "ucb", "seed": 1},
                 {"explore": "ucb", "diversity": 0.5}):
        r = http.post(f"{base}/recommend", json={"user": "nobody", "context": ctx, "k": 8, **opts})
        assert r.status_code == 200, r.text
        want = local.recommend("nobody", ctx, k=8, **opts)
        assert [x["item_id"] for x in r.json()["items"]] == want.item_ids
        assert [x["explore"] for x in r.json()["items"]] == want.explore
    for bad, field in (({"explore": "greedy"}, "explore"), ({"explore": "ucb", "explore_scale": -1}, "explore_scale"),
                       ({"explore": "thompson", "seed": -3}, "seed"), ({"seed": "seven"}, "seed")):
        r = http.post(f"{base}/recommend", json={"user": "u3", "k": 5, **bad})
        assert r.status_code == 422 and field in json.dumps(r.json()), r.text


@pytest.mark.parametrize("payload, field", [
    ({"user": "u1", "k": 0}, "k"),
    ({"user": "u1", "k": "ten"}, "k"),
    ({"k": 3}, "user"),
    ({"user": "u1", "bogus": 1}, "bogus"),
    ({"user": "u1", "context": {"timestamp": "yesterday-ish"}}, "timestamp"),
])
def test_bad_requests_get_422_naming_the_field(server, payload, field):
    base, proc = server
    r = http.post(f"{base}/recommend", json=payload)
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in json.dumps(body)
    assert proc.poll() is None  # still alive
    assert http.get(f"{base}/healthz").status_code == 200


def test_malformed_json_and_oversized_body(server):
    base, _ = server
    r = http.post(f"{base}/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    r = http.post(f"{base}/recommend", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]


def test_items_feedback_metrics(server):
    base, _ = server
    r = http.get(f"{base}/items/i3")
    assert r.status_code == 200 and r.json()["item_id"] == "i3"
    r = http.get(f"{base}/items/nope")
    assert r.status_code == 404 and r.json()["field"] == "item_id"
    r = http.post(f"{base}/feedback", json={"user": "fresh-user", "item": "i100"})
    assert r.status_code == 200 and r.json()["new_user"] is True
    r = http.post(f"{base}/recommend", json={"user": "fresh-user", "k": 5})
    assert r.json()["cold_start"] is False and "i100" not in [x["item_id"] for x in r.json()["items"]]
    r = http.post(f"{base}/feedback", json={"user": "fresh-user", "item": "no-such"})
    assert r.status_code == 404
    text = http.get(f"{base}/metrics").text
    assert 'ctxrec_requests_total{endpoint="/recommend",status="200"}' in text
    assert "ctxrec_request_seconds_bucket" in text
    assert http.get(f"{base}/openapi.json").json()["info"]["title"] == "ctxrec"


def test_reload_needs_token_and_swaps_without_dropping_requests(server, model_dirs):
    base, _ = server
    assert http.post(f"{base}/admin/reload").status_code == 401
    assert http.post(f"{base}/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    statuses: list[int] = []
    stop = threading.Event()
    n_threads = 3
    # Each hammer thread counts its answered requests; the reloads start only once every
    # thread is answering, and the threads stop only after each got answers after the last
    # reload, so requests overlap the swaps however slowly the threads start on a busy machine.
    answered = [0] * n_threads

    def hammer(i: int) -> None:
        with httpx.Client(timeout=180) as c:
            while not stop.is_set():
                statuses.append(c.post(f"{base}/recommend", json={"user": "u2", "k": 5}).status_code)
                answered[i] += 1

    def wait_all_answered(more_than: list[int]) -> None:
        deadline = time.time() + 120
        while any(a <= m for a, m in zip(answered, more_than)):
            assert time.time() < deadline, f"hammer threads stalled: {answered}"
            time.sleep(0.01)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    try:
        wait_all_answered([0] * n_threads)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = http.post(f"{base}/admin/reload", json={"path": str(model_dirs[1])}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        assert http.get(f"{base}/healthz").json()["model_dir"] == model_dirs[1].name  # never the absolute path
        r = http.post(f"{base}/admin/reload", json={"path": "/no/such/dir"}, headers=auth, timeout=60)
        assert r.status_code == 422 and "still serving" in r.json()["error"]
        r = http.post(f"{base}/admin/reload", json={"path": str(model_dirs[0])}, headers=auth, timeout=60)
        assert r.status_code == 200
        wait_all_answered(list(answered))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}, set(statuses)


def test_interactive_session(server):
    base, _ = server
    r = http.post(f"{base}/session", json={"user": "u0", "context": {"timestamp": "2024-04-01T08:00:00Z"}, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    sid, q = body["session_id"], body["question"]
    assert len(body["items"]) == 5 and body["done"] is False and q["id"] == "attr:kind"
    labels = [o["label"] for o in q["options"]]
    assert set(labels) == {"morning", "night"}
    r = http.post(f"{base}/session/{sid}/answer", json={"answer": labels.index("night")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert all(int(x["item_id"][1:]) >= 60 for x in body["items"])  # night items only now
    assert body["asked"] == ["attr:kind"] and body["turns"][0]["choice"] == "night" and body["done"] is True
    r = http.post(f"{base}/session/{sid}/explain", json={"item": body["items"][0]["item_id"]})
    assert r.status_code == 200 and r.json()["answers"][0]["fits"] is True and r.json()["reasons"]
    assert http.post(f"{base}/session/{sid}/explain", json={"item": "nope"}).status_code == 404
    # free text with no question pending; this model has no encoder, the request still succeeds
    assert http.post(f"{base}/session/{sid}/answer", json={"answer": "something calm"}).status_code == 200
    assert http.post(f"{base}/session/{sid}/answer", json={"answer": 1, "question": "attr:kind"}).status_code == 422
    assert http.post(f"{base}/session/{sid}/answer", json={"answer": 1, "question": "nope"}).status_code == 404
    assert http.delete(f"{base}/session/{sid}").json() == {"status": "ended"}
    r = http.post(f"{base}/session/{sid}/answer", json={"answer": 0})
    assert r.status_code == 404 and "unknown or expired" in r.json()["error"]
    r = http.post(f"{base}/session", json={"user": "u0", "context": {"timestamp": "whenever"}})
    assert r.status_code == 422 and "timestamp" in r.json()["error"]
    r = http.post(f"{base}/session", json={"user": "u0", "bogus": 1})
    assert r.status_code == 422
    r = http.post(f"{base}/session", json={"context": {"timestamp": "2024-04-01T22:00:00Z"}})  # anonymous
    assert r.status_code == 200 and r.json()["cold_start"] is True


def test_track_exposure_spreads_repeated_requests(model_dirs):
    """`ctxrec serve --track-exposure 1` records what /recommend served; "exposure" then moves
    the same request's answer towards items it has not shown yet."""
    from _server import start_server, stop_server
    base, proc = start_server(["--model", str(model_dirs[0]), "--no-events", "--track-exposure", "1"])
    try:
        req = {"user": "u3", "k": 5, "exposure": 3.0}
        first = [x["item_id"] for x in http.post(f"{base}/recommend", json=req).json()["items"]]
        second = [x["item_id"] for x in http.post(f"{base}/recommend", json=req).json()["items"]]
        assert first != second and set(second) - set(first)  # the items just shown are penalised
        plain = [x["item_id"] for x in http.post(f"{base}/recommend", json={"user": "u3", "k": 5}).json()["items"]]
        assert plain == first  # without "exposure" the recorded log changes nothing
    finally:
        stop_server(proc)


def test_session_with_rerank_options(server):
    base, _ = server
    ctx = {"timestamp": "2024-04-01T08:00:00Z"}
    plain = http.post(f"{base}/session", json={"user": "u4", "context": ctx, "k": 8}).json()
    varied = http.post(f"{base}/session", json={"user": "u4", "context": ctx, "k": 8, "diversity": 0.9}).json()
    ids = [[x["item_id"] for x in b["items"]] for b in (plain, varied)]
    assert ids[0][0] == ids[1][0] and ids[0] != ids[1] and "rerank" in varied["items"][1]
    sid = varied["session_id"]
    r = http.post(f"{base}/session/{sid}/answer", json={"answer": 0})  # every later top-k is re-ranked too
    assert r.status_code == 200 and "rerank" in r.json()["items"][0]
    r = http.post(f"{base}/session", json={"user": "u4", "k": 8, "calibrate": 1.0, "calibrate_by": "colour"})
    assert r.status_code == 422 and "calibrate_by" in r.text
    explored = http.post(f"{base}/session", json={"user": "u4", "context": ctx, "k": 8, "explore": "ucb"}).json()
    assert all("explore" in x for x in explored["items"])
    r = http.post(f"{base}/session/{explored['session_id']}/answer", json={"answer": 0})
    assert r.status_code == 200 and "explore" in r.json()["items"][0]
    r = http.post(f"{base}/session", json={"user": "u4", "k": 8, "explore": "greedy"})
    assert r.status_code == 422 and "explore" in r.text
