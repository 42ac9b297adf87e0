"""Issue 16 (hardening): hostile HTTP input, crafted artifacts, kill -9 during saves.

    python benchmarks/run.py --only hardening [--quick] [-- --fuzz-examples N --kills N --seed S]

Everything runs on a small planted model (``tests/_synthetic_data.save_planted_model``: 30
users, 60 items, time context, no text), so the figures are about robustness, not speed.

1. Service. ``ctxrec serve`` (a real uvicorn process on loopback, ``--no-events``,
   ``--body-timeout 2``, an admin token) is warmed up with ordinary traffic on every
   endpoint, then given the issue's regression corpus (non-finite JSON literals in every
   POST body, out-of-range timestamps, lone surrogates, a superscript-digit id, a 10 MB
   chunked body, bodies announced and never sent, mixed id types in filters, 0.9 MB user
   ids, unknown context keys, crafted models through ``/admin/reload``, 500 hostile bodies
   then ``/healthz``) and then a schemathesis run over every operation of its
   ``/openapi.json`` (``tests/_fuzz.fuzz_run``, positive and negative modes). Per row:
   requests, status histogram, 5xx, hangs (no answer within 30 s, a dropped connection, or
   for a stalled body no 408/close within the body timeout + 5 s). The server's RSS
   (``/proc/PID/status`` VmRSS, descendants included) after the warm-up and after the run.
   Targets: 0 5xx, 0 hangs, RSS after / after warm-up <= 1.5.
2. Crafted artifacts. Copies of the saved model with one part crafted (HNSW headers and
   links, short / mistyped / out-of-range / truncated / pickled arrays, malformed manifests,
   out-of-range metadata). Each crafted copy is loaded as written ("as crafted": the
   checksums and digest catch it) and again after every manifest's sizes, SHA-256s and
   digest were recomputed ("rewritten": what an attacker who can write the directory can
   do, so only the deeper checks can refuse it). Each load runs in its own
   ``python -c`` subprocess (timeout 120 s, 16 GiB address space): a crash shows as a
   signal. Target: every case refused with a ctxrec error and a message; a load that
   succeeds is a miss, a signal a crash. "extra" variants go beyond the issue's list and
   are reported beside the target.
3. kill -9 during saves. A child loads the model and saves it to TARGET in a loop
   (alternately with ``renameat2(RENAME_EXCHANGE)`` and with the two-rename fallback); it
   is killed at a uniformly random point within two measured save durations (seeded).
   After each kill the parent loads TARGET (``Recommender.load(TARGET, event_log=None)``),
   then saves once and counts ``.TARGET.tmp-*`` / ``.TARGET.old-*`` siblings. Target:
   every kill leaves a loadable model, 0 leftovers after the next completed save.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers: _server, _synthetic_data, _fuzz

HANG_S = 30.0
RSS_TARGET = 1.5
PLANTED = {"n_users": 30, "n_items": 60, "per_user": 10}


# ============================================================================ 1. service
def _rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and its descendants, KiB."""
    def one(p: int) -> int:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def children(p: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return out

    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += one(p)
        todo += children(p)
    return total


class _Row:
    """One regression row: what was sent and how the server answered."""

    def __init__(self, name: str, what: str, group: str = "issue") -> None:
        self.name, self.what, self.group = name, what, group
        self.requests = 0
        self.status: Counter = Counter()
        self.fivexx: list[str] = []
        self.hangs: list[str] = []
        self.unexpected: list[str] = []
        self.non_json: list[str] = []
        self.max_s = 0.0
        self.notes: list[str] = []

    def add(self, label: str, status: int | str, elapsed: float, ok: bool, body: bytes | None = None) -> None:
        self.requests += 1
        self.status[str(status)] += 1
        self.max_s = max(self.max_s, elapsed)
        if isinstance(status, int) and status >= 500:
            self.fivexx.append(f"{label} -> {status} {(body or b'')[:200]!r}")
        if not ok:
            self.unexpected.append(f"{label} -> {status} {(body or b'')[:160]!r}")
        if isinstance(status, int) and status >= 400 and body is not None:
            try:
                json.loads(body)
            except ValueError:
                self.non_json.append(f"{label} -> {status} {body[:160]!r}")
        if elapsed > HANG_S:
            self.hangs.append(f"{label}: answered after {elapsed:.1f} s")

    def hang(self, label: str, why: str, elapsed: float) -> None:
        self.requests += 1
        self.status["no answer"] += 1
        self.max_s = max(self.max_s, elapsed)
        self.hangs.append(f"{label}: {why}"[:300])

    def result(self) -> dict[str, Any]:
        return {"what": self.what, "group": self.group, "requests": self.requests, "status": dict(sorted(self.status.items())),
                "5xx": len(self.fivexx), "hangs": len(self.hangs), "unexpected_status": len(self.unexpected),
                "non_json_errors": len(self.non_json), "max_latency_s": round(self.max_s, 3),
                "examples_5xx": self.fivexx[:10], "examples_hangs": self.hangs[:10],
                "examples_unexpected": self.unexpected[:10], "examples_non_json": self.non_json[:5],
                "notes": self.notes}


def _expect_ok(status: int, expect: Any) -> bool:
    if expect == "4xx":
        return 400 <= status < 500
    if expect == "<500":
        return status < 500
    return status in expect


def _send(client: Any, row: _Row, method: str, url: str, label: str, expect: Any, **kw: Any) -> Any:
    import httpx
    t0 = time.perf_counter()
    try:
        r = client.request(method, url, **kw)
    except httpx.HTTPError as e:
        row.hang(label, f"{type(e).__name__}: {e}", time.perf_counter() - t0)
        return None
    row.add(label, r.status_code, time.perf_counter() - t0, _expect_ok(r.status_code, expect), r.content)
    return r


def _raw(host: str, port: int, payload: bytes, wait_s: float) -> tuple[bytes | None, float]:
    """Send ``payload`` on a fresh connection and wait for the first answer bytes (b'' = closed,
    None = nothing within ``wait_s``); returns (data, seconds)."""
    s = socket.create_connection((host, port))
    t0 = time.perf_counter()
    try:
        s.sendall(payload)
        s.settimeout(wait_s)
        try:
            data = s.recv(4096)
        except socket.timeout:
            data = None
        except ConnectionResetError:
            data = b""
    finally:
        s.close()
    return data, time.perf_counter() - t0


def _warm_up(client: Any, base: str, rounds: int) -> int:
    n = 0
    users = [f"u{i}" for i in range(PLANTED["n_users"])]
    for i in range(rounds):
        u = users[i % len(users)]
        ctx = {"timestamp": f"2024-03-{1 + i % 28:02d}T{(7 + i) % 24:02d}:00:00Z"}
        calls = [("POST", "/recommend", {"user": u, "k": 10, "context": ctx}),
                 ("POST", "/recommend/batch", {"requests": [{"user": x, "k": 5, "context": ctx} for x in users[:5]]}),
                 ("POST", "/feedback", {"user": u, "item": f"i{i % PLANTED['n_items']}", "context": ctx}),
                 ("GET", f"/items/i{i % PLANTED['n_items']}", None),
                 ("GET", f"/items/i{i % PLANTED['n_items']}/similar", None),
                 ("GET", "/healthz", None), ("GET", "/metrics", None),
                 ("POST", "/recommend", {"user": u, "k": 0})]  # an error path too
        for method, path, body in calls:
            client.request(method, f"{base}{path}", json=body)
            n += 1
        s = client.post(f"{base}/session", json={"user": u, "k": 5, "context": ctx})
        n += 1
        if s.status_code == 200:
            sid = s.json()["session_id"]
            client.post(f"{base}/session/{sid}/answer", json={"answer": 0})
            client.post(f"{base}/session/{sid}/explain", json={"item": "i1"})
            client.delete(f"{base}/session/{sid}")
            n += 3
    return n


def _regression(base: str, model: Path, work: Path, body_timeout: float) -> list[dict[str, Any]]:
    import httpx
    from _fuzz import AUTH
    host, port = base.rsplit("//", 1)[1].split(":")
    port_i = int(port)
    client = httpx.Client(timeout=HANG_S)
    rows: list[_Row] = []
    js = {"content-type": "application/json"}
    admin = {**AUTH, **js}

    def new_session(row: _Row) -> str | None:
        r = _send(client, row, "POST", f"{base}/session", "POST /session (setup)", {200}, json={"user": "u1", "k": 5})
        return r.json()["session_id"] if r is not None and r.status_code == 200 else None

    # -- non-finite JSON literals in every POST body
    row = _Row("non-finite literals", "NaN / Infinity / -Infinity / 1e999 / -1e999 in a number or id field of "
                                      "every POST (and PUT /items) body; expect 4xx")
    sid = new_session(row)
    templates = [("POST", "/recommend", '{"user": "u1", "k": %s}', js),
                 ("POST", "/recommend", '{"user": %s}', js),
                 ("POST", "/recommend", '{"user": "u1", "context": {"timestamp": %s}}', js),
                 ("POST", "/recommend", '{"user": "u1", "exclude": [%s]}', js),
                 ("POST", "/recommend/batch", '{"requests": [{"user": "u1", "k": %s}]}', js),
                 ("POST", "/feedback", '{"user": "u1", "item": "i1", "label": %s}', js),
                 ("POST", "/feedback", '{"user": "u1", "item": %s}', js),
                 ("POST", "/session", '{"user": "u1", "k": %s}', js),
                 ("POST", "/session", '{"user": "u1", "max_questions": %s}', js),
                 ("POST", f"/session/{sid}/answer", '{"answer": %s}', js),
                 ("POST", f"/session/{sid}/explain", '{"item": %s}', js),
                 ("PUT", "/items", '{"items": [{"id": "hb-new", "kind": %s}]}', admin),
                 ("PUT", "/items", '{"items": [{"id": %s}]}', admin),
                 ("POST", "/admin/reload", '{"path": %s}', admin)]
    for lit in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
        for method, path, tpl, hdr in templates:
            raw = (tpl % lit).encode()
            _send(client, row, method, f"{base}{path}", f"{method} {path} {raw.decode()}", "4xx", content=raw,
                  headers=hdr)
    rows.append(row)

    # -- timestamps outside pandas' range
    row = _Row("timestamps", "context.timestamp 0001-01-01, 9999-12-31T23:59:59, 2262-04-12, 1677-09-21 on "
                             "/recommend, /recommend/batch, /feedback, /session; expect 422")
    for when in ("0001-01-01", "9999-12-31T23:59:59", "2262-04-12", "1677-09-21"):
        ctx = {"timestamp": when}
        for path, body in (("/recommend", {"user": "u1", "context": ctx}),
                           ("/recommend/batch", {"requests": [{"user": "u1", "context": ctx}]}),
                           ("/feedback", {"user": "u1", "item": "i1", "context": ctx}),
                           ("/session", {"user": "u1", "context": ctx})):
            _send(client, row, "POST", f"{base}{path}", f"POST {path} timestamp={when}", {422}, json=body)
    rows.append(row)

    # -- lone surrogates (the JSON escape), in text, ids, keys, path parameters
    row = _Row("lone surrogates", "\"\\ud800\" (and \\udfff, \\udc00) as the JSON escape in free text, ids, "
                                  "JSON keys, filters, session answers, and %ED%A0%80 in path parameters; "
                                  "expect 4xx")
    S = "\\ud800"
    bodies = [("/recommend", '{"user": "%s"}' % S), ("/recommend", '{"user": "u1", "context": {"query": "a %s b"}}' % S),
              ("/recommend", '{"user": "u1", "context": {"%s": 1}}' % S),
              ("/recommend", '{"user": "u1", "context": {"\\udfff": "x"}}'),
              ("/recommend", '{"user": "u1", "context": {"device": "%s"}}' % S),
              ("/recommend", '{"user": "u1", "exclude": ["i1", "%s"]}' % S),
              ("/recommend", '{"user": "u1", "allow": ["%s"]}' % S),
              ("/recommend", '{"user": "u1", "filter": {"kind": ["%s"]}}' % S),
              ("/recommend", '{"user": "u1", "fields": ["%s"]}' % S),
              ("/recommend", '{"%s": "u1"}' % S), ("/recommend", '{"user": "u1", "text": "%s"}' % S),
              ("/recommend/batch", '{"requests": [{"user": "u1"}, {"user": "%s"}]}' % S),
              ("/recommend/batch", '{"requests": [{"user": "u1", "context": {"query": "%s"}}]}' % S),
              ("/feedback", '{"user": "fresh-%s", "item": "i1"}' % S), ("/feedback", '{"user": "u1", "item": "%s"}' % S),
              ("/feedback", '{"user": "u1", "item": "i1", "context": {"%s": "x"}}' % S),
              ("/session", '{"user": "%s"}' % S), ("/session", '{"user": "u1", "context": {"query": "\\udc00"}}'),
              ("/session", '{"user": "u1", "context": {"%s": 1}}' % S)]
    for path, raw in bodies:
        _send(client, row, "POST", f"{base}{path}", f"POST {path} {raw}", "4xx", content=raw.encode(), headers=js)
    sid = new_session(row)
    for path, raw in ((f"/session/{sid}/answer", '{"answer": "%s"}' % S), (f"/session/{sid}/explain", '{"item": "%s"}' % S),
                      ("/session/%ED%A0%80/answer", '{"answer": 0}')):
        _send(client, row, "POST", f"{base}{path}", f"POST {path} {raw}", "4xx", content=raw.encode(), headers=js)
    for url in ("/items/%ED%A0%80", "/items/%ED%A0%80/similar", "/items/%FF"):
        _send(client, row, "GET", f"{base}{url}", f"GET {url}", "4xx")
    _send(client, row, "GET", f"{base}/items/i1/similar", "GET /items/i1/similar?filter={kind: \\ud800}", "4xx",
          params={"filter": '{"kind": "\\ud800"}'})
    for raw in ('{"items": [{"id": "%s"}]}' % S, '{"items": [{"id": "hb-n1", "text": "%s"}]}' % S,
                '{"items": [{"id": "hb-n1", "kind": ["ok", "%s"]}]}' % S, '{"items": [{"id": "hb-n1", "%s": "x"}]}' % S):
        _send(client, row, "PUT", f"{base}/items", f"PUT /items {raw}", "4xx", content=raw.encode(), headers=admin)
    rows.append(row)

    # -- a superscript digit as an item / user id
    row = _Row("superscript id", "\"\u00b2\" as an item id (GET /items/%C2%B2, /similar, DELETE, /feedback, session "
                                 "explain; expect 404) and as a user id (/recommend: 200 cold start)")
    sid = new_session(row)
    _send(client, row, "GET", f"{base}/items/%C2%B2", "GET /items/%C2%B2", {404})
    _send(client, row, "GET", f"{base}/items/%C2%B2/similar", "GET /items/%C2%B2/similar", {404})
    _send(client, row, "DELETE", f"{base}/items/%C2%B2", "DELETE /items/%C2%B2", {404}, headers=AUTH)
    _send(client, row, "POST", f"{base}/feedback", "POST /feedback item=\u00b2", {404}, json={"user": "u1", "item": "\u00b2"})
    _send(client, row, "POST", f"{base}/session/{sid}/explain", "POST /session/ID/explain item=\u00b2", {404},
          json={"item": "\u00b2"})
    r = _send(client, row, "POST", f"{base}/recommend", "POST /recommend user=\u00b2", {200}, json={"user": "\u00b2", "k": 3})
    if r is not None and r.status_code == 200 and r.json().get("cold_start") is not True:
        row.notes.append("user \u00b2 was not served as a cold start")
    rows.append(row)

    # -- 10 MB bodies: chunked (counted while it arrives) and declared
    row = _Row("10 MB body", "a 10 MB chunked /recommend body (expect 413), a declared Content-Length of 10 MB "
                             "(expect 413 before the body), then /healthz")

    def chunks():
        yield b'{"user": "u1", "context": {"query": "'
        for _ in range(10 * 1024):
            yield b"a" * 1024
        yield b'"}}'
    _send(client, row, "POST", f"{base}/recommend", "POST /recommend 10 MB chunked", {413}, content=chunks(), headers=js)
    data, el = _raw(host, port_i, b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: 10485760\r\n\r\n{\"user\": \"u1\"", HANG_S)
    if data is None:
        row.hang("declared 10 MB", f"no answer within {HANG_S:.0f} s", el)
    else:
        st = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else ("closed" if not data else "garbage")
        row.add("declared 10 MB", st, el, st == 413, data.split(b"\r\n\r\n", 1)[-1] if data else None)
    _send(client, row, "GET", f"{base}/healthz", "GET /healthz after", {200})
    rows.append(row)

    # -- bodies announced and never sent; a request served while they stall
    deadline = body_timeout + 5.0
    row = _Row("announced body never sent", f"Content-Length: 1000 and 1 byte (3 connections) or 0 bytes "
                                            f"(2 connections) of body, all at once; expect 408 or a close within the "
                                            f"body timeout ({body_timeout:g} s; a hang past {deadline:g} s); "
                                            f"/healthz while they stall")
    head = b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    payloads = [head + b"{"] * 3 + [head] * 2
    results: list[tuple[bytes | None, float] | None] = [None] * len(payloads)

    def stall(i: int) -> None:
        results[i] = _raw(host, port_i, payloads[i], HANG_S)
    threads = [threading.Thread(target=stall, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    time.sleep(0.3)
    _send(client, row, "GET", f"{base}/healthz", "GET /healthz while 5 bodies stall", {200})
    for t in threads:
        t.join()
    for i, res in enumerate(results):
        data, el = res if res is not None else (None, HANG_S)
        label = f"stalled body {i} ({'1 byte' if i < 3 else '0 bytes'})"
        if data is None:
            row.hang(label, f"no answer and no close within {HANG_S:.0f} s", el)
            continue
        st: int | str = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else ("closed" if not data else "garbage")
        row.add(label, st, el, st in (408, "closed"), data.split(b"\r\n\r\n", 1)[-1] if data else None)
        if el > deadline:
            row.hangs.append(f"{label}: answered {st} after {el:.1f} s, past the body timeout + 5 s")
        row.notes.append(f"{label}: {st} after {el:.2f} s")
    rows.append(row)

    # -- exclude / allow with mixed id types (the planted ids are strings)
    row = _Row("mixed id types in filters", "exclude/allow lists mixing ints, numeric strings, floats, bools, "
                                            "nulls; expect < 500, and an allow list naming no item returns nothing")
    cases = [{"exclude": ["174"]}, {"exclude": [174, "zz"]}, {"exclude": [1.5]}, {"exclude": [True]},
             {"exclude": [None]}, {"exclude": [2 ** 70]}, {"exclude": [-1, "i1", 0]}, {"allow": ["174"]},
             {"allow": [174]}, {"allow": [174, "i1"]}, {"allow": [2 ** 63]}, {"allow": ["i1", 1e300]},
             {"allow": [[1]]}, {"allow": [{"a": 1}]}, {"allow": []}, {"exclude": ["i1"], "allow": ["i1", 7]}]
    for extra in cases:
        body = {"user": "u1", "k": 5, **extra}
        r = _send(client, row, "POST", f"{base}/recommend", f"POST /recommend {extra}", "<500", json=body)
        if r is not None and r.status_code == 200 and "allow" in extra:
            named = {x for x in extra["allow"] if isinstance(x, str)} - set(extra.get("exclude", []))
            got = [it.get("item_id") if isinstance(it, dict) else it for it in r.json().get("items", [])]
            if not set(map(str, got)) <= named:
                row.notes.append(f"allow={extra['allow']!r} returned {got!r}")
    rows.append(row)

    # -- huge user ids
    row = _Row("0.9 MB user ids", "a 0.9 MB user id on /session, /feedback, /recommend, /recommend/batch, 5 times "
                                  "each; expect 4xx")
    big = "u" * (900 * 1024)
    for _ in range(5):
        for path, body in (("/session", {"user": big}), ("/feedback", {"user": big, "item": "i1"}),
                           ("/recommend", {"user": big}), ("/recommend/batch", {"requests": [{"user": big}]})):
            _send(client, row, "POST", f"{base}{path}", f"POST {path} user=0.9 MB", "4xx", json=body)
    rows.append(row)

    # -- unknown context keys
    row = _Row("unknown context keys", "context {no_such_key: 1} on /recommend, /recommend/batch, /feedback, /session; "
                                       "expect 422 naming the key")
    for path, body in (("/recommend", {"user": "u1", "context": {"no_such_key": 1}}),
                       ("/recommend/batch", {"requests": [{"user": "u1", "context": {"no_such_key": 1}}]}),
                       ("/feedback", {"user": "u1", "item": "i1", "context": {"no_such_key": 1}}),
                       ("/session", {"user": "u1", "context": {"no_such_key": 1}})):
        r = _send(client, row, "POST", f"{base}{path}", f"POST {path} no_such_key", {422}, json=body)
        if r is not None and r.status_code == 422 and "no_such_key" not in r.text:
            row.notes.append(f"{path}: the 422 does not name the key: {r.text[:160]}")
    rows.append(row)

    # -- deeply nested JSON (beyond the issue's table: the parser's recursion limit)
    row = _Row("deeply nested JSON", "100,000 unclosed '[' as the body of every POST / PUT; 5,000-deep closed "
                                     "nesting inside a field; the same in GET /items/ID/similar?filter=; expect 4xx", "extra")
    deep, closed = b"[" * 100_000, b"[" * 5000 + b"]" * 5000
    for method, path, hdr in (("POST", "/recommend", js), ("POST", "/recommend/batch", js), ("POST", "/feedback", js),
                              ("POST", "/session", js), ("POST", "/admin/reload", admin), ("PUT", "/items", admin)):
        _send(client, row, method, f"{base}{path}", f"{method} {path} [ x 100000", "4xx", content=deep, headers=hdr)
    for method, path, raw, hdr in (("POST", "/recommend", b'{"user": "u1", "context": {"query": %s}}', js),
                                   ("PUT", "/items", b'{"items": [{"id": "hb-deep", "kind": %s}]}', admin)):
        _send(client, row, method, f"{base}{path}", f"{method} {path} closed nesting x 5000", "4xx",
              content=raw % closed, headers=hdr)
    for label, filt in (("[ x 5000", "[" * 5000), ("closed nesting x 3000", '{"kind": ' + "[" * 3000 + "]" * 3000 + "}")):
        _send(client, row, "GET", f"{base}/items/i1/similar", f"GET /items/i1/similar?filter={label}", "4xx",
              params={"filter": filt})
    _send(client, row, "GET", f"{base}/healthz", "GET /healthz after", {200})
    rows.append(row)

    # -- PUT /items bodies (its body is read by the route, so /openapi.json shows no schema for the fuzzer)
    row = _Row("PUT /items bodies", "malformed catalog writes (admin): wrong types, nulls, empty / oversized lists, "
                                    "duplicate ids, int ids in a string-id catalog, reserved and unknown columns, "
                                    "huge text, control characters (expect < 500), malformed JSON (expect 4xx); "
                                    "then ordinary requests (expect 200)", "extra")
    put_bodies: list[Any] = [{"items": []}, {"items": {}}, {"items": "x"}, {"items": [1]}, {"items": None}, {},
                             {"items": [{"id": None}]}, {"items": [{"id": ""}]}, {"items": [{"id": True}]},
                             {"items": [{"id": 7}]}, {"items": [{"id": 2 ** 70}]}, {"items": [{"id": 1.5}]},
                             {"items": [{"id": "hb-1", "text": 5}]}, {"items": [{"id": "hb-1", "kind": {"a": 1}}]},
                             {"items": [{"id": "hb-1", "kind": [[1]]}]}, {"items": [{"id": "hb-1"}, {"id": "hb-1"}]},
                             {"items": [{"id": "hb-1", "item_id": "zz"}]}, {"items": [{"id": "hb-1", "zz": 1}]},
                             {"items": [{"id": "hb-1", "title": "x" * 200_000}]},
                             {"items": [{"id": "hb-1", "text": "a\u0000b"}]},
                             {"items": [{"id": f"hb-{i}"} for i in range(10_001)]}]
    for body in put_bodies:
        label = f"PUT /items {json.dumps(body)[:80]}"
        _send(client, row, "PUT", f"{base}/items", label, "<500", content=json.dumps(body).encode(), headers=admin)
    for raw in (b"", b"[", b"null", b"\xff\xfe", b'{"items": [{"id": "hb-1"}]'):
        _send(client, row, "PUT", f"{base}/items", f"PUT /items {raw[:40]!r}", "4xx", content=raw, headers=admin)
    _send(client, row, "PUT", f"{base}/items", "PUT /items without the admin token", {401, 403},
          content=b'{"items": [{"id": "hb-1"}]}', headers=js)
    for method, path, body in (("POST", "/recommend", {"user": "u1", "k": 100}),  # the catalog still serves
                               ("POST", "/recommend", {"user": "u1", "k": 10, "allow": [7, "hb-1", "i1"]}),
                               ("POST", "/recommend", {"user": "u1", "k": 10, "filter": {"kind": ["morning"]}}),
                               ("GET", "/items/i1/similar?k=100", None), ("GET", "/items/hb-1", None),
                               ("POST", "/session", {"user": "u1", "k": 20}), ("GET", "/healthz", None)):
        _send(client, row, method, f"{base}{path}", f"{method} {path} {body!r} after the writes"[:120], {200},
              json=body)
    rows.append(row)

    # -- crafted models through /admin/reload
    row = _Row("crafted model via /admin/reload", "crafted copies of the served model (checksums and digest "
                                                  "rewritten) given to /admin/reload; expect 4xx and the old model "
                                                  "still serving; then a reload of the good model (200)")
    before = client.post(f"{base}/recommend", json={"user": "u1", "k": 5}).json().get("items")
    for name in ("hnsw_count_2^40", "hnsw_link_out_of_range", "model_w_short5", "engine_meta_ef_0",
                 "seen_indices_out_of_range", "npy_pickle_object_model_w", "user_ids_pickle", "seen_indptr_float",
                 "context_json_list", "model_w_huge_shape_header"):
        d = work / f"reload-{name}"
        shutil.copytree(model, d)
        VARIANTS_BY_NAME[name][2](d)
        _rewrite_manifests(d)
        _send(client, row, "POST", f"{base}/admin/reload", f"POST /admin/reload {name}", "4xx",
              json={"path": str(d)}, headers=AUTH)
        after = client.post(f"{base}/recommend", json={"user": "u1", "k": 5}).json().get("items")
        if after != before:
            row.notes.append(f"after the refused reload of {name} the answers changed")
    _send(client, row, "POST", f"{base}/admin/reload", "POST /admin/reload (the good model)", {200},
          json={"path": str(model)}, headers=AUTH)
    rows.append(row)

    # -- 500 hostile bodies, then /healthz
    row = _Row("500 hostile bodies", "10 malformed bodies x 50, rotated over /recommend, /recommend/batch, /feedback, "
                                     "/session; expect 4xx; then /healthz 200")
    hostile = [b"", b"{", b"[]", b"null", b'{"user": null}', b'{"user": []}', b'{"user": {"a": 1}}',
               b'{"user": "u1", "k": -1}', b'{"user": "u1", "k": "x"}', b"\xff\xfe"] * 50
    paths = ["/recommend", "/recommend/batch", "/feedback", "/session"]
    for i, raw in enumerate(hostile):
        path = paths[i % len(paths)]
        _send(client, row, "POST", f"{base}{path}", f"POST {path} {raw[:40]!r}", "4xx", content=raw, headers=js)
    _send(client, row, "GET", f"{base}/healthz", "GET /healthz after", {200})
    rows.append(row)
    client.close()
    return [{"row": r.name, **r.result()} for r in rows]


def _extra_probes(base: str) -> list[dict[str, Any]]:
    """Probes beyond the issue's table (reported, not part of the target)."""
    host, port = base.rsplit("//", 1)[1].split(":")
    data, el = _raw(host, int(port), b"POST /recommend HTTP/1.1\r\nHost: x\r\n", HANG_S)
    what = "no answer and no close" if data is None else ("closed" if not data else data.split(b"\r\n", 1)[0].decode("latin1"))
    return [{"probe": "request headers never completed (slowloris)", "result": what, "seconds": round(el, 2),
             "within_30s": data is not None}]


def _service(model: Path, work: Path, fuzz_examples: int, body_timeout: float, warm_rounds: int) -> dict[str, Any]:
    import httpx
    from _fuzz import TOKEN, fuzz_run
    from _server import start_server, stop_server
    base, proc = start_server(["--model", str(model), "--no-events", "--body-timeout", str(body_timeout)],
                              env={"CTXREC_ADMIN_TOKEN": TOKEN})
    out: dict[str, Any] = {"server_pid": proc.pid, "body_timeout_s": body_timeout, "hang_s": HANG_S}
    try:
        client = httpx.Client(timeout=HANG_S)
        t0 = time.perf_counter()
        out["warmup_requests"] = _warm_up(client, base, warm_rounds)
        out["warmup_s"] = round(time.perf_counter() - t0, 1)
        out["rss_kib_start"] = _rss_kib(proc.pid)
        time.sleep(0.5)
        out["rss_kib_after_warmup"] = _rss_kib(proc.pid)
        print(f"[hardening] warm-up: {out['warmup_requests']} requests, RSS {out['rss_kib_after_warmup'] / 1024:.0f} MiB",
              flush=True)

        t0 = time.perf_counter()
        out["regression"] = _regression(base, model, work, body_timeout)
        out["regression_s"] = round(time.perf_counter() - t0, 1)
        out["rss_kib_after_regression"] = _rss_kib(proc.pid)
        n5 = sum(r["5xx"] for r in out["regression"])
        nh = sum(r["hangs"] for r in out["regression"])
        print(f"[hardening] regression corpus: {sum(r['requests'] for r in out['regression'])} requests, {n5} 5xx, "
              f"{nh} hangs, {out['regression_s']} s", flush=True)

        t0 = time.perf_counter()
        fz = fuzz_run(base, fuzz_examples, HANG_S)
        out["fuzz_s"] = round(time.perf_counter() - t0, 1)
        out["fuzz"] = {"max_examples_per_operation_and_mode": fuzz_examples, "requests": fz["requests"],
                       "operations": fz["operations"], "per_operation": fz["per_operation"], "status": fz["status"],
                       "5xx": len(fz["5xx"]), "hangs": len(fz["hangs"]), "non_json_errors": len(fz["non_json_errors"]),
                       "unsatisfiable": fz["unsatisfiable"], "examples_5xx": fz["5xx"][:10],
                       "examples_hangs": fz["hangs"][:10], "examples_non_json": fz["non_json_errors"][:5]}
        print(f"[hardening] fuzz: {fz['requests']} requests over {len(fz['operations'])} operations, "
              f"{len(fz['5xx'])} 5xx, {len(fz['hangs'])} hangs, {out['fuzz_s']} s", flush=True)
        out["extra_probes"] = _extra_probes(base)
        time.sleep(0.5)
        out["rss_kib_after_run"] = _rss_kib(proc.pid)
        h = client.get(f"{base}/healthz")
        r = client.post(f"{base}/recommend", json={"user": "u1", "k": 5})
        out["alive_after_run"] = proc.poll() is None and h.status_code == 200 and r.status_code == 200
        out["total_requests"] = (out["warmup_requests"] + sum(x["requests"] for x in out["regression"])
                                 + fz["requests"] + len(out["extra_probes"]) + 2)
        client.close()
    finally:
        log = Path(getattr(proc, "log_path", "/nonexistent"))
        text = log.read_text(errors="replace") if log.is_file() else ""
        out["server_exit"] = proc.poll()
        stop_server(proc)
    import re
    out["server_log_tracebacks"] = text.count("Traceback (most recent call last)")
    out["server_log_exceptions"] = dict(Counter(m.group(1) for m in re.finditer(
        r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt))(?::|$)", text, re.M)))
    out["rss_ratio"] = round(out["rss_kib_after_run"] / max(out["rss_kib_after_warmup"], 1), 3)
    return out


# ============================================================================ 2. crafted artifacts
def _rewrite_manifests(d: Path) -> None:
    """Recompute every manifest's file sizes, SHA-256s and digest (deepest manifest first), as an
    attacker who can write the directory would: only the deeper checks can then refuse it."""
    from ctxrec._io import DIGEST_KEY, MANIFEST_KEYS, manifest_digest
    mans = sorted(d.rglob("manifest.json"), key=lambda p: -len(p.relative_to(d).parts))
    for mp in mans:
        try:
            m = json.loads(mp.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(m, dict):
            continue
        files = m.get("files")
        if isinstance(files, dict):
            for rel, info in files.items():
                p = mp.parent / rel
                if isinstance(info, dict) and isinstance(rel, str) and p.is_file():
                    info["bytes"] = p.stat().st_size
                    info["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
        if DIGEST_KEY in m and all(k in m for k in MANIFEST_KEYS):
            try:
                m[DIGEST_KEY] = manifest_digest(m)
            except (TypeError, KeyError, ValueError):
                pass
        mp.write_text(json.dumps(m, indent=2, sort_keys=True))


def _manifest_bytes(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("manifest.json"))}


# -- crafting helpers (each mutates a copy of the saved model in place)
def _npy(rel: str, fn: Callable[[np.ndarray], np.ndarray], pickle: bool = False) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        a = np.load(d / rel, allow_pickle=False)
        with open(d / rel, "wb") as fh:
            np.save(fh, fn(a.copy()), allow_pickle=pickle)
    return f


def _set_at(i: int, v: Any) -> Callable[[np.ndarray], np.ndarray]:
    def f(a: np.ndarray) -> np.ndarray:
        a[i] = v
        return a
    return f


def _truncate(rel: str, keep: Callable[[int], int]) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        raw = (d / rel).read_bytes()
        (d / rel).write_bytes(raw[:keep(len(raw))])
    return f


def _write(rel: str, data: bytes) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        (d / rel).write_bytes(data)
    return f


def _npy_header_shape(rel: str, shape: tuple[int, ...]) -> Callable[[Path], None]:
    """Keep the data, rewrite the .npy header to claim ``shape``."""
    def f(d: Path) -> None:
        import numpy.lib.format as fmt
        a = np.load(d / rel, allow_pickle=False)
        with open(d / rel, "wb") as fh:
            fmt.write_array_header_1_0(fh, {"descr": fmt.dtype_to_descr(a.dtype), "fortran_order": False,
                                            "shape": shape})
            fh.write(a.tobytes())
    return f


def _man(rel: str, fn: Callable[[Any], Any], raw: bool = False) -> Callable[[Path], None]:
    """Apply ``fn`` to the parsed manifest ``rel`` (``raw``: to its text)."""
    def f(d: Path) -> None:
        mp = d / rel
        if raw:
            mp.write_text(fn(mp.read_text()))
        else:
            mp.write_text(json.dumps(fn(json.loads(mp.read_text())), indent=2))
    return f


def _meta(rel: str, keys: tuple[str, ...], value: Any) -> Callable[[Path], None]:
    def fn(m: dict) -> dict:
        node = m["meta"]
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        return m
    return _man(rel, fn)


def _drop_key(key: str) -> Callable[[dict], dict]:
    return lambda m: {k: v for k, v in m.items() if k != key}


def _set_key(key: str, value: Any) -> Callable[[dict], dict]:
    def f(m: dict) -> dict:
        m[key] = value
        return m
    return f


# hnswlib's header: offsetLevel0 (u64 @0), max_elements (@8), cur_element_count (@16),
# size_data_per_element (@24), label_offset (@32), offsetData (@40), maxlevel (i32 @48),
# enterpoint (u32 @52), maxM (@56), maxM0 (@64), M (@72), mult (f64 @80), ef_construction (@88); rows from @96
HNSW = "engine/hnsw.bin"


def _hnsw_layout(raw: bytes) -> dict[str, Any]:
    u64 = lambda o: int.from_bytes(raw[o:o + 8], "little")  # noqa: E731
    count, per_el, label_off = u64(16), u64(24), u64(32)
    maxlevel = int.from_bytes(raw[48:52], "little", signed=True)
    size_links = u64(56) * 4 + 4
    tail, levels = 96 + count * per_el, []
    o = tail
    for _ in range(count):
        n = int.from_bytes(raw[o:o + 4], "little")
        levels.append((o, n // size_links if n else 0))
        o += 4 + n
    return {"count": count, "per_el": per_el, "label_off": label_off, "maxlevel": maxlevel, "levels": levels}


def _hnsw(fn: Callable[[bytearray, dict[str, Any]], None]) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        raw = bytearray((d / HNSW).read_bytes())
        fn(raw, _hnsw_layout(bytes(raw)))
        (d / HNSW).write_bytes(bytes(raw))
    return f


def _put(off: int, value: int, size: int = 8, signed: bool = False) -> Callable[[bytearray, dict], None]:
    def f(raw: bytearray, lay: dict) -> None:
        raw[off:off + size] = value.to_bytes(size, "little", signed=signed)
    return f


def _hnsw_dim_plus1(raw: bytearray, lay: dict) -> None:
    raw[32:40] = (lay["label_off"] + 4).to_bytes(8, "little")
    raw[24:32] = (lay["per_el"] + 4).to_bytes(8, "little")


def _hnsw_entry_low_level(raw: bytearray, lay: dict) -> None:
    low = [i for i, (_, lvl) in enumerate(lay["levels"]) if lvl < lay["maxlevel"]]
    raw[52:56] = (low[0] if low else 0).to_bytes(4, "little")


def _hnsw_max_level_above(raw: bytearray, lay: dict) -> None:
    raw[48:52] = (lay["maxlevel"] + 3).to_bytes(4, "little", signed=True)


def _hnsw_link(raw: bytearray, lay: dict) -> None:  # row 0, level 0: first link -> a row that does not exist
    raw[96 + 4:96 + 8] = (10 ** 6).to_bytes(4, "little")


def _hnsw_link_count(raw: bytearray, lay: dict) -> None:  # row 0, level 0: 65535 links
    raw[96:98] = (0xFFFF).to_bytes(2, "little")


def _hnsw_label(raw: bytearray, lay: dict) -> None:  # row 0's label (its row number) -> 10**9
    o = 96 + lay["label_off"]
    raw[o:o + 8] = (10 ** 9).to_bytes(8, "little")


def _hnsw_linklist_size(raw: bytearray, lay: dict) -> None:  # row 0's upper-level link list claims ~4 GiB
    o = lay["levels"][0][0]
    raw[o:o + 4] = (0xFFFFFFF0).to_bytes(4, "little")


def _hnsw_garbage(raw: bytearray, lay: dict) -> None:
    raw[:] = random.Random(16).randbytes(len(raw))


def _symlink_outside(rel: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        outside = d.parent / f"{d.name}-outside.npy"
        shutil.copy(d / rel, outside)  # the same bytes: the checksums match even as crafted
        (d / rel).unlink()
        (d / rel).symlink_to(outside)
    return f


def _pickle_npy(rel: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        a = np.load(d / rel, allow_pickle=False)
        obj = np.empty(len(a), dtype=object)
        for i, x in enumerate(a.tolist()):
            obj[i] = x
        with open(d / rel, "wb") as fh:
            np.save(fh, obj, allow_pickle=True)
    return f


def _items_parquet_drop_row(d: Path) -> None:
    import pandas as pd
    df = pd.read_parquet(d / "items.parquet")
    df.iloc[:-1].to_parquet(d / "items.parquet")


def _files_escape(d: Path) -> None:
    (d.parent / f"{d.name}-escape.bin").write_bytes(b"x")
    _man("manifest.json", lambda m: {**m, "files": {**m["files"], f"../{d.name}-escape.bin":
                                                     {"bytes": 1, "sha256": hashlib.sha256(b"x").hexdigest()}}})(d)


def _variants() -> list[tuple[str, str, Callable[[Path], None], str]]:
    """(name, what, craft(dir), group): group 'issue' = the issue's list, 'extra' = beyond it."""
    R, E, M = "manifest.json", "engine/manifest.json", "model/manifest.json"
    v: list[tuple[str, str, Callable[[Path], None], str]] = [
        # hnsw.bin headers, links, truncation
        ("hnsw_count_2^40", "hnsw.bin element count = 2**40", _hnsw(_put(16, 2 ** 40)), "issue"),
        ("hnsw_count_plus_1", "hnsw.bin element count one more than the rows", _hnsw(
            lambda raw, lay: _put(16, lay["count"] + 1)(raw, lay)), "issue"),
        ("hnsw_max_elements_2^40", "hnsw.bin max_elements = 2**40 (a field hnswlib replaces by the caller's "
         "capacity when that is >= the element count)", _hnsw(_put(8, 2 ** 40)), "extra"),
        ("hnsw_size_per_element_2^33", "hnsw.bin size_data_per_element = 2**33", _hnsw(_put(24, 2 ** 33)), "issue"),
        ("hnsw_dim_plus_1", "hnsw.bin layout of a (dim+1)-float index (label offset and element size +4)",
         _hnsw(_hnsw_dim_plus1), "issue"),
        ("hnsw_max_level_1000", "hnsw.bin maxlevel = 1000", _hnsw(_put(48, 1000, 4, True)), "issue"),
        ("hnsw_max_level_-1", "hnsw.bin maxlevel = -1", _hnsw(_put(48, -1, 4, True)), "issue"),
        ("hnsw_max_level_above_rows", "hnsw.bin maxlevel 3 above every row's level", _hnsw(_hnsw_max_level_above),
         "issue"),
        ("hnsw_entry_point_2^32-1", "hnsw.bin entry point = 2**32-1", _hnsw(_put(52, 2 ** 32 - 1, 4)), "issue"),
        ("hnsw_entry_point_low_level", "hnsw.bin entry point = a row below the top level",
         _hnsw(_hnsw_entry_low_level), "issue"),
        ("hnsw_M_0", "hnsw.bin M = 0", _hnsw(_put(72, 0)), "extra"),
        ("hnsw_truncated_header", "hnsw.bin cut to 50 bytes (inside the header)", _truncate(HNSW, lambda n: 50),
         "issue"),
        ("hnsw_truncated_rows", "hnsw.bin cut in the middle of the rows", _truncate(HNSW, lambda n: 96 + (n - 96) // 3),
         "issue"),
        ("hnsw_truncated_tail", "hnsw.bin missing its last 8 bytes (upper-level links)", _truncate(HNSW, lambda n: n - 8),
         "issue"),
        ("hnsw_empty", "hnsw.bin empty", _write(HNSW, b""), "extra"),
        ("hnsw_link_out_of_range", "hnsw.bin row 0 links to row 10**6 at level 0", _hnsw(_hnsw_link), "extra"),
        ("hnsw_link_count_65535", "hnsw.bin row 0 claims 65535 level-0 links", _hnsw(_hnsw_link_count), "extra"),
        ("hnsw_label_out_of_range", "hnsw.bin row 0's label = 10**9", _hnsw(_hnsw_label), "extra"),
        ("hnsw_linklist_size_4GiB", "hnsw.bin row 0's upper link list size = 0xFFFFFFF0", _hnsw(_hnsw_linklist_size),
         "extra"),
        ("hnsw_random_bytes", "hnsw.bin replaced by random bytes of the same size", _hnsw(_hnsw_garbage), "extra"),
        # model arrays
        ("model_w_short5", "model/w.npy 5 rows short", _npy("model/w.npy", lambda a: a[:-5]), "issue"),
        ("model_V_float64", "model/V.npy as float64", _npy("model/V.npy", lambda a: a.astype(np.float64)), "issue"),
        ("model_V_one_column_short", "model/V.npy one factor column short", _npy("model/V.npy", lambda a: a[:, :-1]),
         "extra"),
        ("model_pos_idx_out_of_range", "model/pos_idx.npy holds item 10**6", _npy("model/pos_idx.npy", _set_at(0, 10 ** 6)),
         "extra"),
        ("model_ia_ptr_decreasing", "model/ia_ptr.npy not monotonic", _npy("model/ia_ptr.npy", _set_at(1, 10 ** 6)),
         "extra"),
        ("model_meta_cardinality_-1", "model meta layout.context_cardinalities = [-1]",
         _meta(M, ("layout", "context_cardinalities"), [-1]), "extra"),
        ("model_meta_text_dims_negative", "model meta layout.text_dims = [-1, 0, 0]",
         _meta(M, ("layout", "text_dims"), [-1, 0, 0]), "extra"),
        ("model_V_nan", "model/V.npy holds NaN", _npy("model/V.npy", _set_at(0, np.nan)), "extra"),
        ("model_w_truncated_npy", "model/w.npy cut in half (header intact)", _truncate("model/w.npy", lambda n: n // 2),
         "issue"),
        ("model_w_huge_shape_header", "model/w.npy header claims 2**40 rows", _npy_header_shape("model/w.npy", (2 ** 40,)),
         "extra"),
        ("npy_pickle_object_model_w", "model/w.npy an object array (pickle)", _pickle_npy("model/w.npy"), "issue"),
        # recommender arrays and files
        ("user_ids_short", "user_ids.npy one id short", _npy("user_ids.npy", lambda a: a[:-1]), "issue"),
        ("user_ids_pickle", "user_ids.npy an object array (pickle)", _pickle_npy("user_ids.npy"), "issue"),
        ("seen_indices_out_of_range", "seen_indices.npy holds slot 10**6", _npy("seen_indices.npy", _set_at(0, 10 ** 6)),
         "issue"),
        ("seen_indices_negative", "seen_indices.npy holds slot -1", _npy("seen_indices.npy", _set_at(0, -1)), "extra"),
        ("seen_indptr_pickle", "seen_indptr.npy an object array (pickle)", _pickle_npy("seen_indptr.npy"), "issue"),
        ("seen_indptr_float", "seen_indptr.npy as float64", _npy("seen_indptr.npy", lambda a: a.astype(np.float64)),
         "extra"),
        ("seen_indices_truncated_npy", "seen_indices.npy cut in half", _truncate("seen_indices.npy", lambda n: n // 2),
         "issue"),
        ("items_parquet_one_row_short", "items.parquet one row short", _items_parquet_drop_row, "extra"),
        ("items_parquet_garbage", "items.parquet replaced by random bytes", _write("items.parquet",
                                                                                  random.Random(1).randbytes(4096)), "extra"),
        ("context_json_garbage", "context.json not JSON", _write("context.json", b"{not json"), "extra"),
        ("context_json_list", "context.json a JSON list", _write("context.json", b"[1, 2]"), "extra"),
        ("item_attr_values_garbage", "item_attr_values.json not JSON", _write("item_attr_values.json", b"{"), "extra"),
        # engine arrays
        ("engine_item_vecs_extra_row", "engine/item_vecs.npy one row too many",
         _npy("engine/item_vecs.npy", lambda a: np.vstack([a, a[:1]])), "issue"),
        ("engine_item_vecs_one_column_short", "engine/item_vecs.npy one column short",
         _npy("engine/item_vecs.npy", lambda a: a[:, :-1]), "issue"),
        ("engine_item_vecs_truncated_npy", "engine/item_vecs.npy cut in half (mmap)",
         _truncate("engine/item_vecs.npy", lambda n: n // 2), "issue"),
        ("engine_item_vecs_pickle", "engine/item_vecs.npy an object array (pickle)", _pickle_npy("engine/item_vecs.npy"),
         "issue"),
        ("engine_item_ids_short", "engine/item_ids.npy one id short", _npy("engine/item_ids.npy", lambda a: a[:-1]),
         "extra"),
        ("engine_item_ids_pickle", "engine/item_ids.npy an object array (pickle)", _pickle_npy("engine/item_ids.npy"),
         "issue"),
        ("engine_seen_slots_out_of_range", "engine/seen_slots.npy holds slot 10**6",
         _npy("engine/seen_slots.npy", _set_at(0, 10 ** 6)), "extra"),
        ("engine_slot_row_out_of_range", "engine/slot_row.npy holds row 10**6",
         _npy("engine/slot_row.npy", _set_at(0, 10 ** 6)), "extra"),
        ("engine_filter_shape", "engine/filter.0.npy one row short", _npy("engine/filter.0.npy", lambda a: a[:-1]),
         "extra"),
        # manifests
        ("manifest_files_empty", "top manifest 'files': {}", _man(R, _set_key("files", {})), "issue"),
        ("engine_manifest_files_empty", "engine manifest 'files': {}", _man(E, _set_key("files", {})), "issue"),
        ("manifest_no_meta", "top manifest without 'meta'", _man(R, _drop_key("meta")), "issue"),
        ("model_manifest_no_meta", "model manifest without 'meta'", _man(M, _drop_key("meta")), "issue"),
        ("manifest_json_list", "top manifest a JSON list", _man(R, lambda m: [m]), "issue"),
        ("engine_manifest_json_list", "engine manifest a JSON list", _man(E, lambda m: [m]), "issue"),
        ("manifest_not_json", "top manifest not JSON", _man(R, lambda t: t[:-20], raw=True), "extra"),
        ("manifest_missing", "no top manifest", lambda d: (d / R).unlink(), "extra"),
        ("manifest_version_99", "top manifest version 99", _man(R, _set_key("version", 99)), "extra"),
        ("manifest_unknown_key", "top manifest with an unknown key", _man(R, _set_key("extra", 1)), "extra"),
        ("manifest_files_escape", "top manifest lists ../escape.bin", _files_escape, "extra"),
        ("symlink_escape_model_w", "model/w.npy a symlink to a file outside the directory",
         _symlink_outside("model/w.npy"), "extra"),
        # metadata
        ("engine_meta_ef_0", "engine meta params.ef = 0", _meta(E, ("params", "ef"), 0), "issue"),
        ("engine_meta_n_candidates_-1", "engine meta params.n_candidates = -1", _meta(E, ("params", "n_candidates"), -1),
         "issue"),
        ("engine_meta_text_weight_str", "engine meta text_weight = \"x\"", _meta(E, ("text_weight",), "x"), "issue"),
        ("engine_meta_n_rows_-1", "engine meta n_rows = -1", _meta(E, ("n_rows",), -1), "issue"),
        ("engine_meta_n_rows_plus_1", "engine meta n_rows one more than the arrays", _meta(E, ("n_rows",), 61), "extra"),
        ("engine_meta_dim_2^40", "engine meta dim = 2**40", _meta(E, ("dim",), 2 ** 40), "extra"),
        ("engine_meta_unknown_param", "engine meta params.zz = 1", _meta(E, ("params", "zz"), 1), "extra"),
        ("engine_meta_M_1", "engine meta params.M = 1", _meta(E, ("params", "M"), 1), "extra"),
        ("engine_meta_seen_keys_object", "engine meta seen_keys = [{}]", _meta(E, ("seen_keys",), [{}]), "extra"),
        ("engine_meta_filters_str", "engine meta filters.kind = \"x\"", _meta(E, ("filters", "kind"), "x"), "extra"),
        ("model_meta_unknown_param", "model meta params.zz = 1 (unknown ContextFM param)", _meta(M, ("params", "zz"), 1),
         "issue"),
        ("model_meta_n_factors_-1", "model meta params.n_factors = -1", _meta(M, ("params", "n_factors"), -1), "extra"),
        ("model_meta_loss_unknown", "model meta params.loss = \"zz\"", _meta(M, ("params", "loss"), "zz"), "extra"),
        ("model_meta_n_users_plus_1", "model meta layout.n_users one more", _meta(M, ("layout", "n_users"), 31),
         "extra"),
        ("model_meta_n_items_2^40", "model meta layout.n_items = 2**40", _meta(M, ("layout", "n_items"), 2 ** 40),
         "extra"),
        ("rec_meta_unknown_param", "recommender meta params.zz = 1", _meta(R, ("params", "zz"), 1), "extra"),
        ("rec_meta_fold_in_-1", "recommender meta params.fold_in_history = -1", _meta(R, ("params", "fold_in_history"), -1),
         "extra"),
        ("rec_meta_has_encoder_no_variant", "recommender meta has_encoder = true, no encoder_variant",
         _meta(R, ("has_encoder",), True), "extra"),
        ("rec_meta_event_log_position_str", "recommender meta event_log.position = \"x\"",
         _meta(R, ("event_log",), {"log_id": "a", "position": "x"}), "extra"),
        ("rec_meta_text_match_weight_NaN", "recommender meta text_match_weight_ = NaN (a JSON NaN literal)",
         _meta(R, ("text_match_weight_",), float("nan")), "extra"),
    ]
    return v


VARIANTS_BY_NAME = {name: (name, what, fn, group) for name, what, fn, group in _variants()}

_LOADER = textwrap.dedent("""
    import json, sys
    path = sys.argv[1]
    def first(e):
        s = str(e)
        return s.splitlines()[0][:300] if s else ""
    try:
        from ctxrec.errors import CtxrecError
        from ctxrec.recommender import Recommender
        rec = Recommender.load(path, event_log=None)
    except CtxrecError as e:
        print(json.dumps({"outcome": "refused", "class": type(e).__module__ + "." + type(e).__qualname__,
                          "message": first(e), "field": getattr(e, "field", None)}), flush=True)
        sys.exit(1)
    except BaseException as e:
        print(json.dumps({"outcome": "other_error", "class": type(e).__module__ + "." + type(e).__qualname__,
                          "message": first(e)}), flush=True)
        sys.exit(2)
    print(json.dumps({"outcome": "loaded"}), flush=True)
    try:  # what serving it would do
        u = rec.user_ids_[0].item() if hasattr(rec.user_ids_[0], "item") else rec.user_ids_[0]
        r = rec.recommend(u, {"timestamp": "2024-03-05T08:00:00Z"}, k=5)
        after = "recommend returned " + repr(list(r.item_ids))[:120]
    except BaseException as e:
        after = "recommend raised " + type(e).__name__ + ": " + first(e)
    print(json.dumps({"after_load": after}), flush=True)
    sys.exit(0)
""")


def _limit_memory() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))


def _load_in_subprocess(path: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", _LOADER, str(path)], capture_output=True, text=True, timeout=120,
                           preexec_fn=_limit_memory, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    except subprocess.TimeoutExpired:
        return {"returncode": None, "verdict": "hang", "seconds": 120.0, "class": None, "message": "timeout 120 s"}
    out: dict[str, Any] = {"returncode": p.returncode, "seconds": round(time.perf_counter() - t0, 2)}
    for line in p.stdout.splitlines():
        try:
            out.update(json.loads(line))
        except ValueError:
            pass
    if p.returncode < 0:
        out["verdict"] = "crash"
        out["signal"] = signal.Signals(-p.returncode).name
        out["stderr_tail"] = p.stderr[-1500:]
    elif p.returncode == 1 and out.get("outcome") == "refused" and out.get("message"):
        out["verdict"] = "refused"
    elif p.returncode == 0:
        out["verdict"] = "loaded"
    else:
        out["verdict"] = "unclear error"  # not a ctxrec error, or no message
        out["stderr_tail"] = p.stderr[-600:]
    out.pop("outcome", None)
    return out


def _artifacts(model: Path, work: Path, both_cases: bool) -> dict[str, Any]:
    root = work / "crafted"
    root.mkdir()
    jobs: list[tuple[str, str, str, str, Path]] = []
    for name, what, craft, group in _variants():
        d = root / name
        shutil.copytree(model, d, symlinks=True)
        craft(d)
        rw = root / f"{name}.rewritten"
        shutil.copytree(d, rw, symlinks=True)
        _rewrite_manifests(rw)
        if _manifest_bytes(rw) != _manifest_bytes(d):
            jobs.append((name, what, group, "rewritten", rw))
            if both_cases:
                jobs.append((name, what, group, "as crafted", d))
        else:  # nothing to recompute (the manifest is the crafted part, or the checksums already match)
            jobs.append((name, what, group, "as crafted", d))
    print(f"[hardening] crafted artifacts: {len(jobs)} loads, each in its own subprocess", flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as ex:
        res = list(ex.map(lambda j: _load_in_subprocess(j[4]), jobs))
    cases = [{"variant": n, "what": w, "group": g, "case": c, **r} for (n, w, g, c, _), r in zip(jobs, res)]
    for c in cases:  # the temporary directory is gone after the run: name paths relative to it
        for key in ("message", "stderr_tail", "after_load"):
            if isinstance(c.get(key), str):
                c[key] = c[key].replace(str(root) + "/", "")
    verdicts = Counter(c["verdict"] for c in cases)
    by_group = {g: dict(Counter(c["verdict"] for c in cases if c["group"] == g)) for g in ("issue", "extra")}
    out = {"variants": len(_variants()), "loads": len(cases), "verdicts": dict(verdicts), "by_group": by_group,
           "seconds": round(time.perf_counter() - t0, 1),
           "error_classes": dict(Counter(c.get("class") for c in cases if c["verdict"] == "refused")),
           "cases": cases}
    print(f"[hardening] crafted artifacts: {dict(verdicts)} in {out['seconds']} s", flush=True)
    return out


# ============================================================================ 3. kill -9 during saves
_SAVER = textwrap.dedent("""
    import errno, sys, time
    from ctxrec import _io
    from ctxrec.recommender import Recommender
    src, target, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "fallback":  # a kernel / filesystem without RENAME_EXCHANGE: the two-rename swap
        def no_exchange(src, dst, flags):
            raise OSError(errno.EINVAL, "no exchange")
        _io._renameat2 = no_exchange
    rec = Recommender.load(src, event_log=None)
    t = time.perf_counter()
    rec.save(target)
    print(time.perf_counter() - t, flush=True)
    while True:
        rec.save(target)
""")


def _leftovers(target: Path) -> list[str]:
    from ctxrec._io import leftover_pattern
    pat = leftover_pattern(target.name)
    sib = [n for n in os.listdir(target.parent) if pat.fullmatch(n)]
    inner = [str(p.relative_to(target)) for p in target.rglob("*")
             if ".tmp-" in p.name or ".old-" in p.name] if target.is_dir() else []
    return sorted(sib) + sorted(inner)


def _kills(model: Path, work: Path, n_kills: int, seed: int) -> dict[str, Any]:
    from ctxrec.recommender import Recommender
    parent = work / "kill"
    parent.mkdir()
    target = parent / "target"
    rec = Recommender.load(model, event_log=None)
    rec.save(target)
    rng = random.Random(seed)
    rows, t0 = [], time.perf_counter()
    print(f"[hardening] kill -9: {n_kills} kills", flush=True)
    for k in range(n_kills):
        mode = "exchange" if k % 2 == 0 else "fallback"
        p = subprocess.Popen([sys.executable, "-c", _SAVER, str(model), str(target), mode], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            line = p.stdout.readline().strip()
            save_s = float(line)
            delay = rng.uniform(0.0, 2.0 * save_s)
            time.sleep(delay)
        except ValueError:
            save_s, delay = float("nan"), 0.0
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            err = p.stderr.read()[-500:]
            p.stdout.close()
            p.stderr.close()
        row: dict[str, Any] = {"kill": k, "mode": mode, "save_s": round(save_s, 4), "delay_s": round(delay, 4),
                               "returncode": p.returncode, "target_present_after_kill": target.exists(),
                               "leftovers_after_kill": _leftovers(target)}
        if line == "" or save_s != save_s:
            row["child_error"] = err
        # the load restores an interrupted swap and cleans leftovers itself: check it on a copy of the
        # directory as the kill left it, so that the next save below has to clean the original
        snap = work / f"kill-snapshot-{k}"
        shutil.copytree(parent, snap, symlinks=True)
        try:
            r = Recommender.load(snap / target.name, event_log=None)
            row["loadable"] = True
            row["n_users"] = len(r.user_ids_)
        except Exception as e:  # a ctxrec error or anything else: not loadable
            row["loadable"] = False
            row["load_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        shutil.rmtree(snap, ignore_errors=True)
        rec.save(target)  # the next completed save
        row["leftovers_after_next_save"] = _leftovers(target)
        Recommender.load(target, event_log=None)
        rows.append(row)
    rec.save(target)
    final_left = _leftovers(target)
    Recommender.load(target, event_log=None)
    out = {"kills": n_kills, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
           "loadable_after_kill": sum(r["loadable"] for r in rows),
           "not_loadable_after_kill": sum(not r["loadable"] for r in rows),
           "kills_leaving_leftovers": sum(bool(r["leftovers_after_kill"]) for r in rows),
           "kills_leaving_no_target": sum(not r["target_present_after_kill"] for r in rows),
           "leftovers_after_next_save": sum(len(r["leftovers_after_next_save"]) for r in rows),
           "leftovers_after_final_save": len(final_left), "final_leftovers": final_left,
           "by_mode": {m: sum(r["mode"] == m for r in rows) for m in ("exchange", "fallback")},
           "save_s_median": float(np.nanmedian([r["save_s"] for r in rows])) if rows else None,
           "child_errors": [r["child_error"] for r in rows if "child_error" in r][:3],
           "rows": rows}
    print(f"[hardening] kill -9: {out['loadable_after_kill']}/{n_kills} loadable, "
          f"{out['kills_leaving_leftovers']} kills left a tmp/old sibling, {out['kills_leaving_no_target']} left no "
          f"target; leftovers after the next save: {out['leftovers_after_next_save']}, after the final: "
          f"{out['leftovers_after_final_save']}", flush=True)
    return out


# ============================================================================ main
def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="bench_hardening")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--fuzz-examples", type=int, help="schemathesis examples per operation and mode "
                                                      "(default 150; 15 with --quick)")
    ap.add_argument("--kills", type=int, help="kill -9 points (default 50; 10 with --quick)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--body-timeout", type=float, default=2.0)
    ap.add_argument("--only", nargs="*", default=["service", "artifacts", "kill"],
                    choices=["service", "artifacts", "kill"])
    a = ap.parse_args(argv)
    fuzz_examples = a.fuzz_examples or (15 if a.quick else 150)
    n_kills = a.kills or (10 if a.quick else 50)
    from _synthetic_data import save_planted_model
    t_all = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ctxrec-hardening-") as tmp:
        work = Path(tmp)
        model = save_planted_model(work / "m", **PLANTED)
        results["setup"] = {"model": "save_planted_model", **PLANTED, "fuzz_examples": fuzz_examples,
                            "kills": n_kills, "seed": a.seed, "quick": a.quick}
        if "service" in a.only:
            results["service"] = _service(model, work, fuzz_examples, a.body_timeout, 10 if a.quick else 50)
        if "artifacts" in a.only:
            results["artifacts"] = _artifacts(model, work, both_cases=not a.quick)
        if "kill" in a.only:
            results["kill"] = _kills(model, work, n_kills, a.seed)
    results["wall_s"] = round(time.perf_counter() - t_all, 1)
    results["targets"] = _targets(results)
    for t in results["targets"]:
        print(f"[hardening] {'MET ' if t['met'] else 'MISS'} {t['target']}: {t['measured']}", flush=True)
    return results


def _targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    s = r.get("service")
    if s:
        reg5 = sum(x["5xx"] for x in s["regression"])
        regh = sum(x["hangs"] for x in s["regression"])
        n = sum(x["requests"] for x in s["regression"]) + s["fuzz"]["requests"]
        f5, fh = s["fuzz"]["5xx"], s["fuzz"]["hangs"]
        ex5 = sum(x["5xx"] for x in s["regression"] if x.get("group") == "extra")
        out.append({"target": "0 responses 5xx over the fuzz run and the regression corpus",
                    "met": reg5 + f5 == 0,
                    "measured": f"{reg5 + f5} 5xx in {n} requests (fuzz {f5}, corpus {reg5}: the issue's rows "
                                f"{reg5 - ex5}, the rows beyond it {ex5})"})
        out.append({"target": "0 hangs", "met": regh + fh == 0 and s["alive_after_run"],
                    "measured": f"{regh + fh} hangs (fuzz {fh}, corpus {regh}); server alive after the run: "
                                f"{s['alive_after_run']}"})
        out.append({"target": f"server RSS after the run <= {RSS_TARGET}x its RSS after warm-up",
                    "met": s["rss_ratio"] <= RSS_TARGET,
                    "measured": f"{s['rss_kib_after_warmup'] / 1024:.1f} -> {s['rss_kib_after_run'] / 1024:.1f} MiB "
                                f"({s['rss_ratio']:.2f}x)"})
    a = r.get("artifacts")
    if a:
        issue = [c for c in a["cases"] if c["group"] == "issue"]
        ok = sum(c["verdict"] == "refused" for c in issue)
        out.append({"target": "every crafted artifact of the issue's list refused at load with a ctxrec error, none "
                              "crashes", "met": ok == len(issue),
                    "measured": f"{ok}/{len(issue)} refused; " + ", ".join(f"{k} {v}" for k, v in
                                                                      sorted(a["by_group"]["issue"].items()))})
        extra = [c for c in a["cases"] if c["group"] == "extra"]
        ok = sum(c["verdict"] == "refused" for c in extra)
        out.append({"target": "(beyond the issue's list) every extra crafted artifact refused, none crashes",
                    "met": ok == len(extra),
                    "measured": f"{ok}/{len(extra)} refused; " + ", ".join(f"{k} {v}" for k, v in
                                                                      sorted(a["by_group"]["extra"].items()))})
    k = r.get("kill")
    if k:
        out.append({"target": "after every kill -9 the target holds a loadable model",
                    "met": k["loadable_after_kill"] == k["kills"],
                    "measured": f"{k['loadable_after_kill']}/{k['kills']} loadable"})
        out.append({"target": "no leftovers after the next completed save",
                    "met": k["leftovers_after_next_save"] == 0 and k["leftovers_after_final_save"] == 0,
                    "measured": f"{k['leftovers_after_next_save']} after the {k['kills']} next saves, "
                                f"{k['leftovers_after_final_save']} after the final save"})
    return out


def markdown(r: dict[str, Any]) -> str:
    st = r["setup"]
    lines = [f"Planted model ({st['n_users']} users, {st['n_items']} items, time context, no text); "
             f"wall time {r['wall_s']:.0f} s.", "", "| target | measured | |", "|---|---|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**MISSED**'} |")
    s = r.get("service")
    if s:
        fz = s["fuzz"]
        lines += ["", "## Service", "",
                  f"`ctxrec serve --no-events --body-timeout {s['body_timeout_s']:g}` on loopback; a hang is no answer "
                  f"within {s['hang_s']:.0f} s or a dropped connection (a stalled body: no 408 / close within the body "
                  f"timeout + 5 s). Warm-up {s['warmup_requests']} ordinary requests ({s['warmup_s']:.0f} s); RSS "
                  f"{s['rss_kib_after_warmup'] / 1024:.1f} MiB after it, {s['rss_kib_after_regression'] / 1024:.1f} "
                  f"after the corpus, {s['rss_kib_after_run'] / 1024:.1f} after the fuzz run "
                  f"({s['rss_ratio']:.2f}x). Tracebacks in the server log: {s['server_log_tracebacks']} "
                  f"({', '.join(f'{k} x{v}' for k, v in s.get('server_log_exceptions', {}).items()) or 'none'}). Requests in all, "
                  f"warm-up included: {s['total_requests']}. \"(extra)\": a row beyond the issue's table.", "",
                  "| row | requests | statuses | 5xx | hangs | not the expected status (5xx included) | max latency (s) |",
                  "|---|---|---|---|---|---|---|"]
        for x in s["regression"]:
            hist = ", ".join(f"{k}: {v}" for k, v in x["status"].items())
            lines.append(f"| {x['row']}{' (extra)' if x.get('group') == 'extra' else ''} | {x['requests']} | {hist} | {x['5xx']} | {x['hangs']} | "
                         f"{x['unexpected_status']} | {x['max_latency_s']:.2f} |")
        hist = ", ".join(f"{k}: {v}" for k, v in fz["status"].items())
        lines.append(f"| schemathesis, {len(fz['operations'])} operations x {fz['max_examples_per_operation_and_mode']} "
                     f"examples x 2 modes ({s['fuzz_s']:.0f} s) | {fz['requests']} | {hist} | {fz['5xx']} | "
                     f"{fz['hangs']} | non-JSON errors: {fz['non_json_errors']} | |")
        few = {k: v for k, v in fz["per_operation"].items() if v < 10}
        if few:
            lines += ["", "Operations the fuzzer generated fewer than 10 cases for (the rows above cover some of them "
                          "by hand): " + ", ".join(f"{k} ({v})" for k, v in few.items()) + "."]
        lines += ["", "Rows: " + "; ".join(f"**{x['row']}**: {x['what']}" for x in s["regression"]) + "."]
        bad = [(x["row"], e) for x in s["regression"] for e in x["examples_5xx"] + x["examples_hangs"]]
        bad += [("fuzz", e) for e in fz["examples_5xx"] + fz["examples_hangs"]]
        if bad:
            lines += ["", "5xx and hangs:", ""] + [f"- {row}: `{e[:300]}`" for row, e in bad[:20]]
        unexp = [(x["row"], e) for x in s["regression"] for e in x["examples_unexpected"]
                 if e not in x["examples_5xx"]]
        if unexp:
            lines += ["", "Not the expected status (not 5xx; reported, not a target):", ""]
            lines += [f"- {row}: `{e[:200]}`" for row, e in unexp[:20]]
        notes = [(x["row"], n) for x in s["regression"] for n in x["notes"]]
        if notes:
            lines += ["", "Notes:", ""] + [f"- {row}: {n}" for row, n in notes]
        for p in s.get("extra_probes", []):
            lines += ["", f"Extra probe (not in the issue's table): {p['probe']}: {p['result']} after {p['seconds']} s."]
    a = r.get("artifacts")
    if a:
        lines += ["", "## Crafted artifacts", "",
                  f"{a['variants']} variants, {a['loads']} loads in separate subprocesses ({a['seconds']:.0f} s). "
                  "\"rewritten\": every manifest's sizes, SHA-256s and digest recomputed after crafting, so only the "
                  "deeper checks can refuse it; \"as crafted\": the checksums / digest as they were. Verdicts: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(a["verdicts"].items())) + ".", "",
                  "| variant | group | case | verdict | exit | error | first line of the message |",
                  "|---|---|---|---|---|---|---|"]
        for c in a["cases"]:
            cls = (c.get("class") or "").replace("ctxrec.errors.", "")
            msg = (c.get("message") or c.get("after_load") or c.get("signal") or "").replace("|", "\\|")
            verdict = c["verdict"] if c["verdict"] == "refused" else f"**{c['verdict']}**"
            if c["verdict"] == "loaded" and c.get("after_load"):
                msg = c["after_load"].replace("|", "\\|")
            lines.append(f"| {c['variant']} | {c['group']} | {c['case']} | {verdict} | {c['returncode']} | {cls} | "
                         f"{msg[:180]} |")
    k = r.get("kill")
    if k:
        lines += ["", "## kill -9 during saves", "",
                  f"{k['kills']} kills ({k['by_mode']['exchange']} with RENAME_EXCHANGE, {k['by_mode']['fallback']} "
                  f"with the two-rename fallback), each at a uniform random point within two save durations (median "
                  f"save {k['save_s_median'] * 1e3:.0f} ms; seed {k['seed']}; {k['seconds']:.0f} s). "
                  f"{k['kills_leaving_leftovers']} kills left a .tmp-*/.old-* sibling behind and "
                  f"{k['kills_leaving_no_target']} left no target (restored at load from the complete .old-*). "
                  f"Loadable after the kill: {k['loadable_after_kill']}/{k['kills']}; leftovers after the next "
                  f"completed save: {k['leftovers_after_next_save']}; after the final save: "
                  f"{k['leftovers_after_final_save']}."]
        bad = [x for x in k["rows"] if not x["loadable"]]
        if bad:
            lines += ["", "Not loadable:", ""] + [f"- kill {x['kill']} ({x['mode']}): {x['load_error']}" for x in bad]
    return "\n".join(lines)


if __name__ == "__main__":  # the same files as `python benchmarks/run.py --only hardening`
    sys.argv = [sys.argv[0], "--only", "hardening", *sys.argv[1:]]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run
    run.main()
