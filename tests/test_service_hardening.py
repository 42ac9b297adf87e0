"""Hostile input over HTTP (issue 16, rows 1, 2 and 4 of its table): a 4xx with a JSON body
naming the field, never a 5xx, and no state change."""
from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")

from _server import start_server, stop_server  # noqa: E402
from _synthetic_data import save_planted_model  # noqa: E402

http = httpx.Client(timeout=120)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    m = save_planted_model(tmp_path_factory.mktemp("hostile") / "m", n_users=30, n_items=60, per_user=10)
    base, proc = start_server(["--model", str(m), "--no-events"])
    yield base
    stop_server(proc)


def post(base, path, raw: bytes):
    return http.post(f"{base}{path}", content=raw, headers={"content-type": "application/json"})


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("path,template", [
    ("/recommend", '{"user": "u1", "k": %s}'),
    ("/feedback", '{"user": "u1", "item": "i1", "label": %s}'),
    ("/recommend", '{"user": %s}'),
    ("/recommend", '{"user": "u1", "context": {"timestamp": %s}}'),
    ("/recommend", '{"user": "u1", "filter": {"kind": %s}}'),
    ("/feedback", '{"user": "u1", "item": "i1", "context": {"timestamp": %s}}'),
])
def test_non_finite_json_numbers_are_422_not_500(server, literal, path, template):
    r = post(server, path, (template % literal).encode())
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "field" in r.json() or "error" in r.json()


@pytest.mark.parametrize("when", ["0001-01-01", "9999-12-31T23:59:59", "2262-04-12", "1677-09-21"])
def test_timestamps_out_of_range_name_the_field(server, when):
    r = http.post(f"{server}/recommend", json={"user": "u1", "context": {"timestamp": when}})
    assert r.status_code == 422, r.text
    assert "timestamp" in r.text and "1677" in r.json()["error"]


def test_a_superscript_digit_id_is_unknown_not_500(server):
    assert http.get(f"{server}/items/%C2%B2").status_code == 404
    r = http.post(f"{server}/feedback", json={"user": "u1", "item": "\u00b2"})
    assert r.status_code == 404, r.text
    r = http.post(f"{server}/recommend", json={"user": "\u00b2", "k": 3})
    assert r.status_code == 200 and r.json()["cold_start"] is True


# ---------------------------------------------------------------- row 3: lone surrogates
SURROGATE_BODIES = [
    ("/recommend", '{"user": "\\ud800"}', "user"),
    ("/recommend", '{"user": "u1", "context": {"query": "a \\ud800 b"}}', "context.query"),
    ("/recommend", '{"user": "u1", "context": {"\\udfff": "x"}}', "context"),
    ("/recommend", '{"user": "u1", "exclude": ["i1", "\\ud800"]}', "exclude.1"),
    ("/recommend", '{"user": "u1", "filter": {"kind": ["\\ud800"]}}', "filter.kind"),
    ("/recommend", '{"user": "u1", "\\ud800": 1}', "\\ud800"),
    ("/recommend/batch", '{"requests": [{"user": "u1"}, {"user": "\\ud800"}]}', "requests.1.user"),
    ("/feedback", '{"user": "fresh-\\ud800", "item": "i1"}', "user"),
    ("/feedback", '{"user": "fresh-s", "item": "i1", "context": {"\\ud800": "x"}}', "context"),
    ("/session", '{"user": "u1", "context": {"query": "\\udc00"}}', "context.query"),
]


@pytest.mark.parametrize("path,raw,field", SURROGATE_BODIES)
def test_lone_surrogates_are_422_naming_the_field(server, path, raw, field):
    r = post(server, path, raw.encode())
    assert r.status_code == 422, r.text
    assert field in r.json()["field"], r.json()
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_lone_surrogates_change_nothing(server):
    for raw in ('{"user": "fresh-s", "item": "i1", "context": {"\\ud800": "x"}}',
                '{"user": "fresh-s", "item": "\\ud800"}'):
        assert post(server, "/feedback", raw.encode()).status_code == 422
    r = http.post(f"{server}/recommend", json={"user": "fresh-s", "k": 3})
    assert r.json()["cold_start"] is True  # the user was not created


def test_lone_surrogates_in_sessions_and_path_params(server):
    sid = http.post(f"{server}/session", json={"user": "u1", "k": 3}).json()["session_id"]
    r = post(server, f"/session/{sid}/answer", b'{"answer": "\\ud800"}')
    assert r.status_code == 422 and r.json()["field"] == "answer", r.text
    r = post(server, f"/session/{sid}/explain", b'{"item": "\\ud800"}')
    assert r.status_code == 422 and r.json()["field"] == "item", r.text
    assert http.get(f"{server}/session/{sid}").status_code in (404, 405)  # no such GET; still a JSON answer
    for url in ("/items/%ED%A0%80", "/items/%ED%A0%80/similar", "/items/%FF"):
        r = http.get(f"{server}{url}")
        assert r.status_code == 422 and "item_id" in r.json()["field"], (url, r.text)
    r = post(server, "/session/%ED%A0%80/answer", b'{"answer": 0}')
    assert r.status_code == 422 and "session_id" in r.json()["field"], r.text
    r = http.get(f"{server}/items/i1/similar", params={"filter": '{"kind": "\\ud800"}'})
    assert r.status_code == 422 and r.json()["field"] == "filter", r.text


def test_put_items_refuses_surrogates_before_writing():
    import os
    import tempfile
    from pathlib import Path
    m = save_planted_model(Path(tempfile.mkdtemp()) / "m", n_users=20, n_items=40, per_user=8)
    base, proc = start_server(["--model", str(m), "--no-events"], env={**os.environ, "CTXREC_ADMIN_TOKEN": "t"})
    auth = {"Authorization": "Bearer t", "content-type": "application/json"}
    try:
        for raw, field in ((b'{"items": [{"id": "\\ud800"}]}', "items.0.id"),
                           (b'{"items": [{"id": "n1", "text": "\\ud800"}]}', "items.0.text"),
                           (b'{"items": [{"id": "n1", "kind": "\\ud800"}]}', "items.0.kind"),
                           (b'{"items": [{"id": "n1", "kind": ["ok", "\\ud800"]}]}', "items.0.kind"),
                           (b'{"items": [{"id": "n1", "\\ud800": "x"}]}', "items.0"),
                           (b'{"items": [{"id": "n1", "kind": NaN}]}', "items.0.kind"),
                           (b'{"items": [{"id": "n1", "kind": [1, Infinity]}]}', "items.0.kind")):
            r = http.put(f"{base}/items", content=raw, headers=auth)
            assert r.status_code == 422 and field in (r.json().get("field") or ""), (raw, r.text)
        for raw in (b"[" * 100_000, b'{"items": [{"id": "n1", "kind": ' + b"[" * 5000 + b"]" * 5000 + b"}]}"):
            r = http.put(f"{base}/items", content=raw, headers=auth)  # RecursionError in the parser: 500 before
            assert r.status_code == 422 and r.json()["field"] == "body", r.text[:300]
        for filt in ("[" * 5000, "[" * 3000 + "]" * 3000):
            r = http.get(f"{base}/items/i1/similar", params={"filter": filt})
            assert r.status_code == 422 and r.json()["field"] == "filter", r.text[:300]
        assert http.get(f"{base}/items/n1").status_code == 404  # nothing was written
    finally:
        stop_server(proc)


# ---------------------------------------------------------------- row 12: string limits
@pytest.mark.parametrize("body,field", [
    ({"user": "u" * 257}, "user"),
    ({"user": "u1", "exclude": ["i" * 300]}, "exclude.0"),
    ({"user": "u1", "context": {"query": "w " * 5000}}, "context.query"),
    ({"user": "u1", "context": {f"c{i}": 1 for i in range(65)}}, "context"),
    ({"user": "u1", "context": {"k" * 129: "x"}}, "context"),
])
def test_oversized_ids_and_strings_are_422_naming_the_field(server, body, field):
    r = http.post(f"{server}/recommend", json=body)
    assert r.status_code == 422 and field in r.json()["field"], r.text


def test_huge_session_ids_are_refused(server):
    r = http.post(f"{server}/session", json={"user": "u" * 900_000})
    assert r.status_code == 422 and r.json()["field"] == "user", r.text[:300]

