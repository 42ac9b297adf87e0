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
