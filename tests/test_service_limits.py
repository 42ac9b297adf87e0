"""The HTTP service's limits (issue 16, rows 5, 6, 7, 12, 15), against a real uvicorn server
on loopback run in this process (so the app's arguments and objects can be reached)."""
from __future__ import annotations

import gc
import logging
import socket
import threading
import time
import weakref

import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")

from _server import free_port  # noqa: E402
from _synthetic_data import save_planted_model  # noqa: E402

TOKEN = "limits-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
http = httpx.Client(timeout=60)


class Served:
    """``create_app(model_dir, **kw)`` under uvicorn in a thread; ``.base``, ``.app``, ``.port``."""

    def __init__(self, model_dir, **kw) -> None:
        from ctxrec.service import create_app
        self.app = create_app(model_dir, event_log=None, admin_token=TOKEN, **kw)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    return save_planted_model(d / "a", n_users=30, n_items=60, per_user=10), \
        save_planted_model(d / "b", n_users=30, n_items=60, per_user=10)


@pytest.fixture(scope="module")
def served(model_dirs):
    s = Served(model_dirs[0], body_timeout_s=1.5, max_body_bytes=64 << 10)
    yield s
    s.stop()


def raw_request(port: int, head: str, body: bytes = b"", *, timeout: float = 20.0) -> tuple[socket.socket, bytes]:
    """Send ``head`` (request line + headers, without the blank line) and ``body``; read until the server closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(head.encode() + b"\r\n\r\n" + body)
    return s, read_all(s)


def read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        out += chunk
    return out


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else -1


def send_chunked(port: int, path: str, chunk: bytes, n: int) -> bytes:
    """POST ``n`` chunks of ``chunk`` with ``Transfer-Encoding: chunked`` (no Content-Length); the raw answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n" % path.encode())
    try:
        for _ in range(n):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        s.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the end: what we want
    raw = read_all(s)
    s.close()
    return raw


def test_chunked_body_over_the_limit_is_413_by_counted_bytes(served):
    raw = send_chunked(served.port, "/recommend", b"x" * 16384, 40)  # 640 KiB, ten times the limit
    assert status_of(raw) == 413, raw[:300]
    assert b'"field": "body"' in raw and b"exceeds the limit" in raw and b"x-request-id" in raw.lower()
    assert http.get(f"{served.base}/healthz").status_code == 200


def test_a_10_mb_chunked_body_is_413_at_the_default_limit(model_dirs):
    s = Served(model_dirs[0], warmup=False)
    try:
        raw = send_chunked(s.port, "/feedback", b" " * 65536, 160)  # 10 MiB
        assert status_of(raw) == 413 and b"limit of 1048576" in raw, raw[:300]
        assert http.get(f"{s.base}/healthz").status_code == 200
    finally:
        s.stop()


def test_declared_length_over_the_limit_and_invalid_length(served):
    _, raw = raw_request(served.port, "POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000")
    assert status_of(raw) == 413, raw[:300]
    r = http.post(f"{served.base}/recommend", content=b'{"user": "u1"}', headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text  # under the limit: served


def test_a_body_that_never_arrives_is_408_and_closed(served):
    t0 = time.time()
    s, raw = raw_request(served.port, "POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                      "Content-Length: 1000", b'{"user": "u1", ')
    assert status_of(raw) == 408, raw[:300]
    assert b"did not arrive within 1.5 s" in raw and b'"request_id"' in raw
    assert time.time() - t0 < 10
    assert s.recv(10) == b""  # closed by the server
    s.close()


def test_forty_stalled_bodies_do_not_block_other_requests(served):
    socks = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", served.port), timeout=20)
        s.sendall(b"POST /feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000"
                  b"\r\n\r\n{")
        socks.append(s)
    t0 = time.time()
    for _ in range(5):
        assert http.post(f"{served.base}/recommend", json={"user": "u1", "k": 3}).status_code == 200
        assert http.get(f"{served.base}/healthz").status_code == 200
    assert time.time() - t0 < 1.4  # answered while the 40 were still stalled (their deadline is 1.5 s)
    codes = [status_of(read_all(s)) for s in socks]
    for s in socks:
        s.close()
    assert codes == [408] * 40


def test_500_is_generic_with_the_details_in_the_log(served, caplog):
    model = served.app.state.ctxrec.model

    def broken(*a, **k):
        raise RuntimeError("secret detail /home/someone/model")
    model.recommend = broken
    try:
        with caplog.at_level(logging.ERROR, logger="ctxrec.service"):
            r = http.post(f"{served.base}/recommend", json={"user": "u1"}, headers={"X-Request-ID": "abc-123"})
    finally:
        del model.recommend
    assert r.status_code == 500
    assert r.json() == {"error": "internal error", "request_id": "abc-123"}
    assert r.headers["x-request-id"] == "abc-123"
    assert "secret detail" in caplog.text and "abc-123" in caplog.text and "Traceback" in caplog.text


def test_request_ids_echoed_or_generated_and_healthz_hides_the_path(served, model_dirs):
    r = http.get(f"{served.base}/healthz", headers={"X-Request-ID": "req.42"})
    assert r.headers["x-request-id"] == "req.42"
    assert r.json()["model_dir"] == model_dirs[0].name and str(model_dirs[0]) not in r.text
    r = http.get(f"{served.base}/items/nope", headers={"X-Request-ID": "bad id with spaces"})
    rid = r.headers["x-request-id"]
    assert rid != "bad id with spaces" and len(rid) == 32 and r.json()["request_id"] == rid
    assert r.status_code == 404 and r.json()["field"] == "item_id"
    assert http.get(f"{served.base}/no/such/route").json()["request_id"]


def test_reload_ends_old_sessions_and_releases_the_old_model(model_dirs):
    s = Served(model_dirs[0])
    try:
        old = weakref.ref(s.app.state.ctxrec.model)
        sid = http.post(f"{s.base}/session", json={"user": "u1", "k": 3}).json()["session_id"]
        assert http.post(f"{s.base}/session/{sid}/answer", json={"answer": None}).status_code == 200
        r = http.post(f"{s.base}/admin/reload", json={"path": str(model_dirs[1])}, headers=AUTH)
        assert r.status_code == 200 and r.json()["sessions_ended"] == 1, r.text
        gc.collect()
        assert old() is None, gc.get_referrers(old())
        r = http.post(f"{s.base}/session/{sid}/answer", json={"answer": None})
        assert r.status_code == 410 and "start a new session" in r.json()["error"], r.text
        assert r.json()["field"] == "session_id"
        sid2 = http.post(f"{s.base}/session", json={"user": "u1", "k": 3}).json()["session_id"]
        assert http.post(f"{s.base}/session/{sid2}/answer", json={"answer": None}).status_code == 200
        r = http.post(f"{s.base}/admin/reload", json={"path": "/no/such/model"}, headers=AUTH)
        assert r.status_code == 422 and "still serving" in r.json()["error"]
        assert http.post(f"{s.base}/session/{sid2}/answer", json={"answer": None}).status_code == 200
    finally:
        s.stop()


def test_session_store_is_bounded_in_bytes(served):
    from ctxrec.session import Session, SessionStore
    model = served.app.state.ctxrec.model
    one = Session(model, "u1", k=3)
    size = SessionStore.footprint(one)
    assert size > one._vecs.nbytes  # the per-session catalog copy is counted
    store = SessionStore(max_sessions=1000, max_bytes=int(size * 3.5))
    ids = [store.add(Session(model, f"u{i}", k=3)) for i in range(6)]
    assert len(store) == 3 and store.evicted == 3 and store.bytes <= store.max_bytes
    with pytest.raises(KeyError):
        store.get(ids[0])  # the least recently used went first
    assert store.get(ids[-1]).id == ids[-1]
    from ctxrec.errors import InputError
    with pytest.raises(InputError, match="exceed the store's limit"):
        SessionStore(max_bytes=size // 2).add(one)


@pytest.fixture(scope="module")
def int_id_model(tmp_path_factory):
    from ctxrec.context import ContextSpec
    from ctxrec.data import Dataset
    from ctxrec.model import ContextFM
    from ctxrec.recommender import Recommender
    rng = np.random.default_rng(0)
    inter = pd.DataFrame({"user_id": rng.integers(0, 20, 400), "item_id": rng.integers(100, 160, 400),
                          "ts": 1_700_000_000 + rng.integers(0, 10**6, 400)})
    ds = Dataset.from_frames(inter, timestamp_col="ts", name="ints")
    d = tmp_path_factory.mktemp("ints") / "m"
    Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=8, epochs=2), encoder=None).fit(ds).save(d)
    s = Served(d)
    yield s
    s.stop()


def test_integer_ids_given_as_strings_in_exclude_and_allow(int_id_model):
    base = int_id_model.base
    top = [x["item_id"] for x in http.post(f"{base}/recommend", json={"user": 1, "k": 5}).json()["items"]]
    assert all(isinstance(i, int) for i in top)
    r = http.post(f"{base}/recommend", json={"user": 1, "k": 5, "exclude": [str(top[0]), top[1]]})
    got = [x["item_id"] for x in r.json()["items"]]
    assert r.status_code == 200 and top[0] not in got and top[1] not in got
    r = http.post(f"{base}/recommend", json={"user": 1, "k": 5, "allow": [str(top[2]), str(top[3])]})
    assert sorted(x["item_id"] for x in r.json()["items"]) == sorted(top[2:4])
    assert "unknown_ids" not in r.json()
    r = http.post(f"{base}/recommend", json={"user": 1, "k": 5, "exclude": ["99999", "abc"],
                                             "allow": [str(top[2]), 123456]})
    assert r.status_code == 200, r.text
    unknown = r.json()["unknown_ids"]
    assert unknown["exclude"] == ["99999", "abc"] and unknown["allow"] == [123456], unknown
    assert [x["item_id"] for x in r.json()["items"]] == [top[2]]


def test_ctxrec_serve_flags_set_the_limits(model_dirs):
    """`ctxrec serve --max-body-bytes N --body-timeout S`, as a user types it (a subprocess):
    a body over N is 413 naming the limit, a stalled body 408 after S seconds."""
    from _server import start_server, stop_server
    base, proc = start_server(["--model", str(model_dirs[1]), "--no-events", "--max-body-bytes", "2000",
                               "--body-timeout", "1", "--max-sessions", "5", "--session-ttl", "60",
                               "--max-session-bytes", str(64 << 20)])
    try:
        port = int(base.rsplit(":", 1)[1])
        r = http.post(f"{base}/recommend", content=b'{"user": "u1", "text": "' + b"x" * 5000 + b'"}',
                      headers={"content-type": "application/json"})
        assert r.status_code == 413 and "2000" in r.json()["error"], r.text
        t0 = time.time()
        s, raw = raw_request(port, "POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   "Content-Length: 500", b'{"user": ')
        s.close()
        assert status_of(raw) == 408 and b"within 1 s" in raw, raw[:300]
        assert time.time() - t0 < 8
        assert http.post(f"{base}/recommend", json={"user": "u1", "k": 3}).status_code == 200
    finally:
        stop_server(proc)
