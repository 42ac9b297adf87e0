"""The live catalog and named filters over HTTP, on a real server (loopback): PUT /items,
DELETE /items/{id} (authorised like /admin), GET /items/{id}/similar, filter in /recommend."""
from __future__ import annotations

import json

import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")

from _server import start_server, stop_server  # noqa: E402
from _synthetic_data import save_planted_model  # noqa: E402

TOKEN = "catalog-token-42"
AUTH = {"authorization": f"Bearer {TOKEN}"}
http = httpx.Client(timeout=180)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    m = save_planted_model(tmp_path_factory.mktemp("catalog") / "m")
    base, proc = start_server(["--model", str(m), "--no-events"], env={"CTXREC_ADMIN_TOKEN": TOKEN})
    yield base, proc
    stop_server(proc)


def ids(r):
    assert r.status_code == 200, r.text
    return [x["item_id"] for x in r.json()["items"]]


def test_filter_in_recommend(server):
    base, _ = server
    got = ids(http.post(f"{base}/recommend", json={"user": "u1", "k": 10, "filter": {"kind": "night"}}))
    assert len(got) == 10 and all(int(i[1:]) >= 50 for i in got)
    got = ids(http.post(f"{base}/recommend", json={"user": "u1", "k": 10, "filter": {"kind": ["night", "morning"]}}))
    assert len(got) == 10
    r = http.post(f"{base}/recommend", json={"user": "u1", "filter": {"colour": "red"}})
    assert r.status_code == 422 and r.json()["field"] == "filter" and "colour" in r.json()["error"]
    r = http.post(f"{base}/recommend", json={"user": "u1", "filter": {"kind": {"a": 1}}})
    assert r.status_code == 422 and "filter" in r.json()["field"]


def test_catalog_writes_are_authorised_like_admin(server):
    base, _ = server
    body = {"items": [{"id": "x1", "kind": "brunch"}]}
    for headers in ({}, {"authorization": "Bearer wrong"}):
        r = http.put(f"{base}/items", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["field"] == "authorization"
        r = http.request("DELETE", f"{base}/items/i1", headers=headers)
        assert r.status_code == 401
    r = http.put(f"{base}/items", content=b"{broken", headers=headers)  # no token: refused before the body
    assert r.status_code == 401
    assert http.get(f"{base}/items/x1").status_code == 404  # nothing was written
    assert http.get(f"{base}/items/i1").status_code == 200


def test_put_items_live_then_delete(server):
    base, proc = server
    body = {"items": [{"id": "x1", "title": "Brunch box", "text": "eggs and toast", "kind": "brunch"},
                      {"id": "x2", "title": "Late show", "kind": ["night", "brunch"]},
                      {"id": "i5", "title": "Renamed five"}]}
    r = http.put(f"{base}/items", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 2 and r.json()["updated"] == 1 and r.json()["n_items"] == 102
    got = ids(http.post(f"{base}/recommend", json={"user": "u3", "k": 5, "filter": {"kind": "brunch"}}))
    assert sorted(got) == ["x1", "x2"]
    info = http.get(f"{base}/items/i5").json()
    assert info["title"] == "Renamed five" and info["kind"] == "morning"  # fields not given are kept
    assert http.get(f"{base}/items/x2").json()["kind"] == ["night", "brunch"]
    # feedback on an added item is accepted and leaves it out of that user's recommendations
    r = http.post(f"{base}/feedback", json={"user": "u3", "item": "x1"})
    assert r.status_code == 200, r.text
    assert ids(http.post(f"{base}/recommend", json={"user": "u3", "k": 5, "filter": {"kind": "brunch"}})) == ["x2"]
    r = http.get(f"{base}/items/x2/similar", params={"k": 3, "filter": json.dumps({"kind": "night"})})
    assert r.status_code == 200 and len(ids(r)) == 3 and "x2" not in ids(r)
    assert r.json()["item_id"] == "x2"
    # delete: gone at once
    r = http.request("DELETE", f"{base}/items/x2", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "removed"
    assert ids(http.post(f"{base}/recommend", json={"user": "u4", "k": 5, "filter": {"kind": "brunch"}})) == ["x1"]
    assert http.get(f"{base}/items/x2").status_code == 404
    r = http.request("DELETE", f"{base}/items/x2", headers=AUTH)
    assert r.status_code == 404 and r.json()["field"] == "item_id"
    assert proc.poll() is None


@pytest.mark.parametrize("body, status, field", [
    ({"items": []}, 422, "items"),
    ({"items": [{"title": "no id"}]}, 422, "items.0.id"),
    ({"items": [{"id": "y1", "colour": "red"}]}, 422, "items.colour"),
    ({"items": [{"id": "y1"}, {"id": "y1"}]}, 422, "items"),
    ({"items": [{"id": "y1", "kind": {"nested": 1}}]}, 422, "items.0.kind"),
    ({"items": [{"id": "y1", "text": 5}]}, 422, "items.0.text"),
    ({"things": []}, 422, "items"),  # the first error: items is required
])
def test_bad_catalog_writes_get_4xx_naming_the_field(server, body, status, field):
    base, proc = server
    r = http.put(f"{base}/items", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field, r.json()
    assert http.get(f"{base}/items/y1").status_code == 404  # nothing was written
    assert proc.poll() is None


@pytest.mark.parametrize("params, status, field", [
    ({"k": 0}, 422, "query.k"),
    ({"by": "colour"}, 422, "by"),
    ({"filter": "{not json"}, 422, "filter"),
    ({"filter": "[1, 2]"}, 422, "filter"),
    ({"filter": json.dumps({"colour": "red"})}, 422, "filter"),
    ({"by": "text"}, 422, "by"),  # this model has no item text
])
def test_similar_errors(server, params, status, field):
    base, _ = server
    r = http.get(f"{base}/items/i1/similar", params=params)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field, r.json()
    r = http.get(f"{base}/items/nope/similar")
    assert r.status_code == 404 and r.json()["field"] == "item_id"


def test_catalog_writes_survive_a_crash(tmp_path):
    """PUT /items and DELETE /items/{id} are logged before they are answered: after a SIGKILL
    and a restart the served catalog has them."""
    save_planted_model(tmp_path / "m", n_users=30, n_items=60, per_user=10)
    env = {"CTXREC_ADMIN_TOKEN": TOKEN}
    base, proc = start_server(["--model", str(tmp_path / "m")], env=env)
    try:
        r = http.put(f"{base}/items", json={"items": [{"id": "fresh1", "title": "Fresh", "kind": "night"}]},
                     headers=AUTH)
        assert r.status_code == 200, r.text
        assert http.request("DELETE", f"{base}/items/i3", headers=AUTH).status_code == 200
        assert http.get(f"{base}/items/fresh1").status_code == 200
    finally:
        stop_server(proc, kill=True)
    base, proc = start_server(["--model", str(tmp_path / "m")], env=env)
    try:
        assert http.get(f"{base}/items/fresh1").json()["title"] == "Fresh"
        assert http.get(f"{base}/items/i3").status_code == 404
        assert http.get(f"{base}/healthz").json()["events"]["applied"] == 2
    finally:
        stop_server(proc)
