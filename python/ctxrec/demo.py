"""The main job (``make demo``): build a serving engine and show what it does.

Builds an Engine over a generated 200,000-item catalog (d = 64, clustered like learned
embeddings, with item biases and a 32-d text-match term), then answers 1,000 single
queries on one thread and reports p50/p99 latency and recall@10 against exact scoring
of the whole catalog, plus a batch on all cores, and saves/reloads the engine.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from ctxrec import Engine, _core
from ctxrec.synthetic import make_catalog


def engine_demo(n: int = 200_000, k: int = 10, text_weight: float = 0.2) -> dict[str, float]:
    """Build, query and persist an engine over a generated catalog; print and return the figures."""
    print(f"[engine] generating a clustered catalog: {n:,} items, d=64, 32-d text term (weight {text_weight})")
    cat = make_catalog(n, "clustered")
    t0 = time.perf_counter()
    eng = Engine(ef_construction=100).fit(cat["V"], cat["bias"], item_ids=[f"item-{i}" for i in range(n)],
                                          item_text=cat["T"], text_weight=text_weight)
    build = time.perf_counter() - t0
    print(f"[engine] {eng!r} built in {build:.1f} s on {_core.resolve_threads(0)} threads")
    Q, TQ = cat["Q"], cat["TQ"]
    truth = _core.topk_full(Q, cat["V"], cat["bias"], k, text_queries=TQ, item_text=cat["T"],
                            text_weight=text_weight, num_threads=0)[0]
    lat, hits = [], 0
    for i in range(len(Q)):
        t = time.perf_counter_ns()
        ids, _ = eng.recommend(Q[i], k, text_query=TQ[i])
        lat.append((time.perf_counter_ns() - t) / 1e6)
        hits += len({int(s[5:]) for s in ids} & set(truth[i].tolist()))
    recall = hits / (k * len(Q))
    t = time.perf_counter()
    eng.recommend_batch(Q, k, text_queries=TQ)
    qps = len(Q) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(20):
        s = cat["V"] @ Q[i] + cat["bias"] + text_weight * (cat["T"] @ TQ[i])
        np.argpartition(-s, k)[:k]
    brute = (time.perf_counter() - t) / 20 * 1e3
    p50, p99 = float(np.median(lat)), float(np.percentile(lat, 99))
    print(f"[engine] single query, one thread: p50 {p50:.3f} ms, p99 {p99:.3f} ms, recall@10 {recall:.3f} "
          f"vs exact; numpy brute force {brute:.2f} ms/query ({brute / p50:.0f}x slower)")
    print(f"[engine] batch of {len(Q)} on all cores: {qps:,.0f} queries/s")
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        eng.save(f"{d}/engine")
        loaded = Engine.load(f"{d}/engine")
        same = loaded.recommend(Q[0], k, text_query=TQ[0])[0].tolist() == eng.recommend(Q[0], k, text_query=TQ[0])[0].tolist()
        print(f"[engine] saved + verified + reloaded in {time.perf_counter() - t:.1f} s; same answers: {same}")
    ids, scores = eng.recommend(Q[0], 5, text_query=TQ[0], exclude=["item-0"])
    print("[engine] example top-5:", ", ".join(f"{i} ({s:.2f})" for i, s in zip(ids, scores)))
    return {"build_s": build, "p50_ms": p50, "p99_ms": p99, "recall_at_10": recall, "batch_qps": qps}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=200_000, help="catalog size of the engine demo")
    args = ap.parse_args(argv)
    engine_demo(args.items)


if __name__ == "__main__":
    main()
