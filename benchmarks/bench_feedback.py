"""Feedback with the durable log on: ack latency, events/s, and what it costs /recommend.

    python benchmarks/run.py --only feedback [--quick]

A model trained on MovieLens 100K (time context, no text: the request text would add the
encoder's time to every request alike) is served by ``ctxrec serve`` (a real uvicorn process on
loopback, SQLite event log beside the model). One client thread sends ``/recommend`` for random
users back to back; in the "with feedback" phases a second client streams ``/feedback`` (random
known and new users, random items) as fast as the server acknowledges. Phases alternate
(alone, with feedback, with feedback, alone, ...) so both see the same machine; latencies are
pooled per kind and quoted as p50/p99. The whole comparison runs twice: on the machine as it is,
and beside a busy process (one CPU-bound Python loop). Target: ``/recommend`` p99 with
feedback <= 1.5x without it.

Replay: 100k events (10k with --quick) appended to a fresh log, then the time
``Recommender.load(model, event_log=log)`` takes to apply them.
"""
from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q)) if xs else float("nan")


def _train(out: Path, epochs: int) -> Any:
    from ctxrec.context import ContextSpec
    from ctxrec.data import load_movielens_100k
    from ctxrec.model import ContextFM
    from ctxrec.recommender import Recommender
    ml = load_movielens_100k()
    rec = Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=64, epochs=epochs),
                      encoder=None).fit(ml)
    rec.save(out)
    return rec


def _phase(base: str, seconds: float, with_feedback: bool, users: list[Any], items: list[Any],
           rng: random.Random) -> dict[str, list[float]]:
    import httpx
    rec_lat: list[float] = []
    fb_lat: list[float] = []
    stop = threading.Event()

    def recommender() -> None:
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                body = {"user": rng.choice(users), "k": 10, "context": {"timestamp": "1998-03-01T20:00"}}
                t = time.perf_counter()
                r = c.post(f"{base}/recommend", json=body)
                rec_lat.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text

    def feeder() -> None:
        with httpx.Client(timeout=60) as c:
            n = 0
            while not stop.is_set():
                user = rng.choice(users) if n % 4 else f"bench-new-{rng.randrange(10**9)}"
                t = time.perf_counter()
                r = c.post(f"{base}/feedback", json={"user": user, "item": rng.choice(items)})
                fb_lat.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                n += 1

    threads = [threading.Thread(target=recommender)] + ([threading.Thread(target=feeder)] if with_feedback else [])
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return {"recommend": rec_lat, "feedback": fb_lat}


def _compare(base: str, rounds: int, seconds: float, users: list[Any], items: list[Any]) -> dict[str, Any]:
    rng = random.Random(0)
    pooled: dict[str, dict[str, list[float]]] = {"alone": {"recommend": [], "feedback": []},
                                                 "with_feedback": {"recommend": [], "feedback": []}}
    fb_rates = []
    for r in range(rounds):
        order = ["alone", "with_feedback"] if r % 2 == 0 else ["with_feedback", "alone"]
        for kind in order:
            res = _phase(base, seconds, kind == "with_feedback", users, items, rng)
            for k, v in res.items():
                pooled[kind][k] += v
            if kind == "with_feedback":
                fb_rates.append(len(res["feedback"]) / seconds)
    out: dict[str, Any] = {}
    for kind, res in pooled.items():
        out[kind] = {"recommend_n": len(res["recommend"]), "recommend_p50_ms": _pct(res["recommend"], 50),
                     "recommend_p99_ms": _pct(res["recommend"], 99)}
    wf = pooled["with_feedback"]["feedback"]
    out["with_feedback"].update({"feedback_n": len(wf), "feedback_events_per_s": statistics.median(fb_rates),
                                 "feedback_ack_p50_ms": _pct(wf, 50), "feedback_ack_p99_ms": _pct(wf, 99)})
    out["p99_ratio"] = out["with_feedback"]["recommend_p99_ms"] / out["alone"]["recommend_p99_ms"]
    out["p50_ratio"] = out["with_feedback"]["recommend_p50_ms"] / out["alone"]["recommend_p50_ms"]
    return out


def _replay(model_dir: Path, n_events: int, users: list[Any], items: list[Any]) -> dict[str, Any]:
    from ctxrec.events import EventLog
    from ctxrec.recommender import Recommender
    log_path = model_dir.parent / "replay.events.sqlite"
    log = EventLog(log_path)
    rng = random.Random(1)
    t0 = time.perf_counter()
    for j in range(n_events):
        user = rng.choice(users) if j % 4 else f"replay-new-{j}"
        log.append(user, rng.choice(items), {"timestamp": "1998-04-01T12:00"})
    append_s = time.perf_counter() - t0
    log.close()
    t0 = time.perf_counter()
    rec = Recommender.load(model_dir, event_log=log_path)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    Recommender.load(model_dir, event_log=None)
    bare_s = time.perf_counter() - t0
    st = rec.event_status()
    assert st["applied"] == n_events, st
    return {"events": n_events, "append_s": append_s, "append_events_per_s": n_events / append_s,
            "load_with_replay_s": load_s, "load_without_log_s": bare_s, "replay_s": load_s - bare_s,
            "replay_events_per_s": n_events / max(load_s - bare_s, 1e-9)}


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="bench_feedback")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="length of one phase")
    ap.add_argument("--replay-events", type=int, default=None)
    a = ap.parse_args(argv)
    rounds = a.rounds or (2 if a.quick else 4)
    seconds = a.seconds or (3.0 if a.quick else 8.0)
    n_replay = a.replay_events if a.replay_events is not None else (10_000 if a.quick else 100_000)
    from _server import start_server, stop_server  # the tests' helper: `ctxrec serve` as a user runs it
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "m"
        rec = _train(model_dir, 1 if a.quick else 5)
        users = [u.item() if hasattr(u, "item") else u for u in rec.user_ids_]
        items = [i.item() if hasattr(i, "item") else i for i in rec.item_ids_]
        results: dict[str, Any] = {"setup": {"dataset": "movielens-100k", "n_users": len(users),
                                             "n_items": len(items), "n_factors": 64, "rounds": rounds,
                                             "phase_s": seconds, "fold_in_history": rec.fold_in_history}}
        for label, busy in (("idle", False), ("busy", True)):
            burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            base, proc = start_server(["--model", str(model_dir)])
            try:
                print(f"[feedback] {label}: {rounds} rounds x 2 phases x {seconds:.0f} s", flush=True)
                results[label] = _compare(base, rounds, seconds, users, items)
                print(f"[feedback] {label}: {results[label]}", flush=True)
            finally:
                stop_server(proc)
                if burner is not None:
                    burner.kill()
                    burner.wait()
        if n_replay > 0:
            print(f"[feedback] replay of {n_replay:,} events", flush=True)
            results["replay"] = _replay(model_dir, n_replay, users, items)
            print(f"[feedback] replay: {results['replay']}", flush=True)
    return results


def markdown(r: dict[str, Any]) -> str:
    s = r["setup"]
    lines = [f"MovieLens 100K ({s['n_users']} users, {s['n_items']} items, {s['n_factors']} factors, "
             f"fold-in on the latest {s['fold_in_history']} items), `ctxrec serve` on loopback with the SQLite "
             f"event log (WAL, synchronous=FULL); {s['rounds']} rounds of alternating {s['phase_s']:.0f}-second "
             "phases, latencies pooled per kind.", "",
             "| machine | /recommend alone p50 / p99 (ms) | /recommend beside a feedback stream p50 / p99 (ms) | "
             "p99 ratio (target <= 1.5) | feedback events/s | ack p50 / p99 (ms) |",
             "|---|---|---|---|---|---|"]
    for label in ("idle", "busy"):
        x = r[label]
        a, w = x["alone"], x["with_feedback"]
        lines.append(f"| {label}{' (beside a CPU-bound process)' if label == 'busy' else ''} | "
                     f"{a['recommend_p50_ms']:.2f} / {a['recommend_p99_ms']:.2f} | "
                     f"{w['recommend_p50_ms']:.2f} / {w['recommend_p99_ms']:.2f} | {x['p99_ratio']:.2f} | "
                     f"{w['feedback_events_per_s']:.0f} | {w['feedback_ack_p50_ms']:.2f} / "
                     f"{w['feedback_ack_p99_ms']:.2f} |")
    p = r.get("replay")
    if p is None:
        return "\n".join(lines + ["", "Replay: not measured in this run (--replay-events 0)."])
    lines += ["", f"Replay: {p['events']:,} logged events applied in {p['replay_s']:.1f} s "
              f"({p['replay_events_per_s']:,.0f} events/s; load with replay {p['load_with_replay_s']:.1f} s, "
              f"without the log {p['load_without_log_s']:.1f} s). Appending them one commit each: "
              f"{p['append_events_per_s']:,.0f} events/s."]
    return "\n".join(lines)
