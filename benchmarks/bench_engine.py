"""Serving benchmark: ctxrec.Engine against numpy brute force, raw hnswlib and faiss HNSW.

For each catalog (n items, d = 64, random-normal or clustered vectors, with biases and a
32-d text-match term of weight TEXT_W applied at rescoring) it measures, in one process:

* build time (index construction on all cores);
* 1,000 single queries on one thread: p50 / p99 latency from the Python call to the
  returned result, and recall@10 against the exact top-10 of the full model
  (pairwise inner product + bias + text term, computed over the whole catalog);
* one 1,000-query batch on all cores: queries per second.

Peers, each turned into a top-10 of the same full model: numpy brute force (exact),
raw hnswlib knn_query (k = candidates) + numpy rescoring, faiss IndexHNSWFlat
(inner product) + numpy rescoring, and raw hnswlib knn_query(k=10) alone (no rescoring:
the floor the engine's overhead is measured against). Also: the catalog size below
which exact scoring beats HNSW (``--crossover``).

Run: ``python benchmarks/run.py`` (all), ``--quick`` (100k only, < 1 min).
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np
from threadpoolctl import threadpool_limits

from ctxrec import Engine, _core, synthetic

DIM, TEXT_DIM, TEXT_W, K = 64, 32, 0.2, 10


def make_catalog(n: int, kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    return synthetic.make_catalog(n, kind, DIM, TEXT_DIM, seed=seed)


def numpy_rescore(cat: dict[str, np.ndarray], q: np.ndarray, tq: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Top-10 of the full model over candidate ids [c] (one query)."""
    s = cat["V"][cand] @ q + cat["bias"][cand] + TEXT_W * (cat["T"][cand] @ tq)
    top = np.argpartition(-s, K)[:K] if len(s) > K else np.arange(len(s))
    return cand[top[np.argsort(-s[top])]]


def numpy_rescore_batch(cat: dict[str, np.ndarray], Q: np.ndarray, TQ: np.ndarray, cand: np.ndarray) -> np.ndarray:
    s = (np.einsum("bck,bk->bc", cat["V"][cand], Q) + cat["bias"][cand]
         + TEXT_W * np.einsum("bcd,bd->bc", cat["T"][cand], TQ))
    top = np.argpartition(-s, K, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
    return np.take_along_axis(cand, np.take_along_axis(top, order, 1), 1)


def recall(found: list[np.ndarray] | np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(np.asarray(f).tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)]))


def time_singles(fn: Callable[[int], Any], n: int) -> tuple[np.ndarray, list[Any]]:
    """Per-call wall time in ms of fn(i) for i < n, after 20 warm-up calls."""
    ts, out = time_interleaved({"f": fn}, n)
    return ts["f"], out["f"]


def time_interleaved(fns: dict[str, Callable[[int], Any]], n: int) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Per-call wall time (ms) of each fn(i), i < n, the methods taking turns so that load
    changes on a shared machine hit all of them alike.

    At step s method j answers query (s + j * n // m) % n: every method sees every query
    once, but never right after another method has warmed the caches for that query.
    Results are returned in query order.
    """
    m = len(fns)
    for i in range(min(20, n)):
        for fn in fns.values():
            fn(i)
    ts = {k: np.empty(n) for k in fns}
    out: dict[str, list] = {k: [None] * n for k in fns}
    for step in range(n):
        for j, (name, fn) in enumerate(fns.items()):
            i = (step + j * n // m) % n
            t0 = time.perf_counter_ns()
            out[name][i] = fn(i)
            ts[name][i] = (time.perf_counter_ns() - t0) / 1e6
    return ts, out


def time_batch(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Median seconds of fn() over repeats."""
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return float(np.median(t))


def row(name: str, ts: np.ndarray | None, rec: float, qps: float | None, build_s: float | None,
        n_timed: int) -> dict[str, Any]:
    return {"method": name, "build_s": build_s, "p50_ms": None if ts is None else float(np.median(ts)),
            "p99_ms": None if ts is None else float(np.percentile(ts, 99)), "recall_at_10": rec,
            "batch_qps": qps, "single_queries_timed": n_timed}


def bench_catalog(n: int, kind: str, M: int, ef: int, n_candidates: int, ef_construction: int,
                  threads: int, with_faiss: bool = True, n_brute: int = 100) -> dict[str, Any]:
    cat = make_catalog(n, kind)
    Q, TQ = cat["Q"], cat["TQ"]
    nq = len(Q)

    # Exact ground truth of the full model (the core's exact path; spot-checked against numpy).
    truth = _core.topk_full(Q, cat["V"], cat["bias"], K, text_queries=TQ, item_text=cat["T"], text_weight=TEXT_W,
                            num_threads=threads)[0]
    for i in range(5):
        s = cat["V"] @ Q[i] + cat["bias"] + TEXT_W * (cat["T"] @ TQ[i])
        assert set(np.argsort(-s)[:K]) == set(truth[i]), "exact core disagrees with numpy"

    # Build: the engine (its hnswlib index is also the raw-hnswlib peer: same M / ef) and faiss.
    t0 = time.perf_counter()
    eng = Engine(M=M, ef_construction=ef_construction, ef=ef, n_candidates=n_candidates, exact_threshold=0,
                 num_threads=threads).fit(cat["V"], cat["bias"], item_text=cat["T"], text_weight=TEXT_W)
    build = time.perf_counter() - t0
    index = eng.index_
    c = max(n_candidates, K)
    aug = np.hstack([Q, np.ones((nq, 1), np.float32)])
    fx = None
    if with_faiss:
        import faiss
        faiss.omp_set_num_threads(threads)
        t0 = time.perf_counter()
        fx = faiss.IndexHNSWFlat(DIM + 1, M, faiss.METRIC_INNER_PRODUCT)
        fx.hnsw.efConstruction = ef_construction
        fx.add(np.hstack([cat["V"], cat["bias"][:, None]]))
        fbuild = time.perf_counter() - t0
        fx.hnsw.efSearch = max(ef, c)
        faiss.omp_set_num_threads(1)

    # Single queries on one thread, methods interleaved query by query.
    index.set_num_threads(1)
    names = {"engine": "ctxrec Engine (HNSW + C++ rescoring)",
             "raw10": f"raw hnswlib knn_query(k={K}), no rescoring",
             "raw": f"raw hnswlib knn_query(k={c}) + numpy rescoring",
             "faiss": f"faiss IndexHNSWFlat(k={c}) + numpy rescoring"}
    fns: dict[str, Callable[[int], Any]] = {
        "engine": lambda i: eng.recommend(Q[i], K, text_query=TQ[i])[0],
        "raw10": lambda i: index.knn_query(aug[i], k=K, num_threads=1)[0][0],
        "raw": lambda i: numpy_rescore(cat, Q[i], TQ[i], index.knn_query(aug[i], k=c, num_threads=1)[0][0]
                                       .astype(np.int64)),
    }
    if fx is not None:
        fns["faiss"] = lambda i: numpy_rescore(cat, Q[i], TQ[i], fx.search(aug[i:i + 1], c)[1][0])
    ts, res = time_interleaved(fns, nq)
    with threadpool_limits(1):  # numpy brute force (exact), BLAS on one thread
        bts, bres = time_singles(lambda i: numpy_rescore(cat, Q[i], TQ[i], np.arange(n)), n_brute)

    # One batch of all queries on all cores (median of 3).
    if fx is not None:
        faiss.omp_set_num_threads(threads)

    def brute_batch() -> None:
        for lo in range(0, nq, 100):  # blocked to bound memory
            s = Q[lo:lo + 100] @ cat["V"].T + cat["bias"] + TEXT_W * (TQ[lo:lo + 100] @ cat["T"].T)
            np.argpartition(-s, K, axis=1)[:, :K]

    batch = {
        "engine": time_batch(lambda: eng.recommend_batch(Q, K, text_queries=TQ, num_threads=threads)),
        "raw": time_batch(lambda: numpy_rescore_batch(
            cat, Q, TQ, index.knn_query(aug, k=c, num_threads=threads)[0].astype(np.int64))),
        "brute": time_batch(brute_batch, 1),
    }
    if fx is not None:
        batch["faiss"] = time_batch(lambda: numpy_rescore_batch(cat, Q, TQ, fx.search(aug, c)[1]))
    ids, _ = eng.recommend_batch(Q, K, text_queries=TQ, num_threads=threads)
    assert abs(recall(ids, truth) - recall(res["engine"], truth)) < 0.01, "batch and single answers differ"

    rows = [row(names["engine"], ts["engine"], recall(res["engine"], truth), nq / batch["engine"], build, nq),
            row(names["raw10"], ts["raw10"], recall(res["raw10"], truth), None, build, nq),
            row(names["raw"], ts["raw"], recall(res["raw"], truth), nq / batch["raw"], build, nq),
            row("numpy brute force (exact)", bts, recall(bres, truth[:n_brute]), nq / batch["brute"], None, n_brute)]
    if fx is not None:
        rows.append(row(names["faiss"], ts["faiss"], recall(res["faiss"], truth), nq / batch["faiss"], fbuild, nq))
    ratio = ts["engine"] / ts["raw10"]  # per query, same moment
    ratios = {
        "engine_p50_over_raw_knn_p50": rows[0]["p50_ms"] / rows[1]["p50_ms"],
        "median_per_query_engine_over_raw_knn": float(np.median(ratio)),
        "brute_p50_over_engine_p50": rows[3]["p50_ms"] / rows[0]["p50_ms"],
        "engine_batch_qps_over_raw_hnswlib_plus_numpy": batch["raw"] / batch["engine"],
    }
    return {"n": n, "kind": kind, "dim": DIM, "text_dim": TEXT_DIM, "text_weight": TEXT_W, "M": M, "ef": ef,
            "n_candidates": n_candidates, "ef_construction": ef_construction, "threads": threads,
            "rows": rows, "ratios": ratios}


def crossover(sizes: list[int], threads: int, n_queries: int = 300) -> list[dict[str, Any]]:
    """p50 single-query latency of exact full-catalog scoring vs HNSW + rescoring by catalog size."""
    out = []
    for n in sizes:
        cat = make_catalog(n, "clustered", seed=1)
        res = {"n": n}
        for name, thr in (("exact", n + 1), ("hnsw", 0)):
            eng = Engine(exact_threshold=thr, num_threads=threads).fit(cat["V"], cat["bias"], item_text=cat["T"],
                                                                      text_weight=TEXT_W)
            ts, _ = time_singles(lambda i: eng.recommend(cat["Q"][i], K, text_query=cat["TQ"][i]), n_queries)
            res[f"{name}_p50_ms"] = float(np.median(ts))
        out.append(res)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100k clustered only (about a minute)")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--kinds", nargs="*", default=None, help="clustered and/or normal (quick: clustered)")
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--crossover", action="store_true", help="only measure the exact/HNSW crossover")
    args = ap.parse_args(argv)
    threads = _core.resolve_threads(args.threads)
    result: dict[str, Any] = {"threads": threads}
    if args.crossover or not args.quick:
        result["crossover"] = crossover([1_000, 2_000, 3_000, 5_000, 10_000, 50_000], threads)
        for r in result["crossover"]:
            print(f"crossover n={r['n']:>7}: exact {r['exact_p50_ms']:.3f} ms, hnsw {r['hnsw_p50_ms']:.3f} ms")
        if args.crossover:
            return result
    sizes = args.sizes or ([100_000] if args.quick else [100_000, 1_000_000])
    kinds = args.kinds or (["clustered"] if args.quick else ["clustered", "normal"])
    result["catalogs"] = []
    for n in sizes:
        for kind in kinds:
            r = bench_catalog(n, kind, args.M, args.ef, args.candidates, args.ef_construction, threads,
                              with_faiss=not args.no_faiss)
            result["catalogs"].append(r)
            print(f"\n{kind} n={n:,} d={DIM} M={args.M} ef={args.ef} candidates={args.candidates}")
            for x in r["rows"]:
                print(f"  {x['method']:<48} p50 {x['p50_ms'] or 0:7.3f} ms  p99 {x['p99_ms'] or 0:7.3f} ms  "
                      f"recall@10 {x['recall_at_10']:.3f}  batch {x['batch_qps'] or 0:9.0f} q/s  "
                      f"build {x['build_s'] or 0:6.1f} s")
            print("  ratios:", {k: round(v, 2) for k, v in r["ratios"].items()})
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = ["## Serving engine", ""]
    if "crossover" in result:
        lines += ["Exact full-catalog scoring vs HNSW + rescoring, single query, one thread (p50 ms):", "",
                  "| items | exact | HNSW |", "|---:|---:|---:|"]
        lines += [f"| {r['n']:,} | {r['exact_p50_ms']:.3f} | {r['hnsw_p50_ms']:.3f} |" for r in result["crossover"]]
        lines.append("")
    for r in result.get("catalogs", []):
        lines += [f"### {r['kind']}, {r['n']:,} items, d={r['dim']} (+ {r['text_dim']}-d text term, weight "
                  f"{r['text_weight']}), M={r['M']}, ef={r['ef']}, candidates={r['n_candidates']}, "
                  f"ef_construction={r['ef_construction']}, {r['threads']} threads", "",
                  "| method | build s | p50 ms | p99 ms | recall@10 | batch q/s |", "|---|---:|---:|---:|---:|---:|"]
        for x in r["rows"]:
            f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
            lines.append(f"| {x['method']} | {f(x['build_s'], '.1f')} | {f(x['p50_ms'], '.3f')} | "
                         f"{f(x['p99_ms'], '.3f')} | {x['recall_at_10']:.3f} | {f(x['batch_qps'], ',.0f')} |")
        lines += ["", "Ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in r["ratios"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
