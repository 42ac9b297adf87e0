"""Dask scale-out benchmark: ``encode_catalog`` items/s and ``recommend_all`` users/s with
1 and 2 workers on this machine, plus the cost model a user needs to size a cluster.

Data: MovieLens 100K (``$CTXREC_DATA_DIR``). Catalog encoding: the first ``--items`` item
texts (title, genres, year, plot: 40-120 tokens), the real ONNX encoder (int8, CPU, one
onnxruntime thread per task), no embedding cache. Batch recommendation: a ContextFM with
time context trained on all of ML-100K, served exactly (1,682 items), top-10 excluding
seen items, for every user x ``--contexts`` request times (943 x 8 = 7,544 requests).

Both clusters (a LocalCluster of 1 worker and one of 2, single-threaded worker processes)
are started first and kept; jobs then alternate between them (1, 2, 1, 2, ...), so the
machine's background load hits both alike. The first job on a cluster is "cold" (each
worker loads the model: ONNX session / Recommender + numba JIT); later ones are "warm"
(the model stays loaded in the worker processes). Medians over ``--repeats`` warm runs.
Per-task timings (load, compute, write) come from the tasks themselves.

Run: ``.venv/bin/python benchmarks/bench_distributed.py`` (~4 min) ->
``benchmarks/results/distributed.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ctxrec import distributed as D

RESULTS = Path(__file__).resolve().parent / "results"


def start_cluster(n: int):
    import distributed
    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=40)
    client = distributed.Client(cluster)
    client.wait_for_workers(n)
    return cluster, client, time.perf_counter() - t0


def train_model(out: Path) -> tuple[float, int]:
    from ctxrec.context import ContextSpec
    from ctxrec.data import load_movielens_100k
    from ctxrec.model import ContextFM
    from ctxrec.recommender import Recommender
    ds = load_movielens_100k()
    t0 = time.perf_counter()
    rec = Recommender(ContextSpec(time=["timestamp"], tz="America/Chicago"),
                      model=ContextFM(n_factors=32, epochs=5, random_state=0), encoder=None).fit(ds)
    fit_s = time.perf_counter() - t0
    rec.save(out)
    return fit_s, len(rec.user_ids_)


def requests_frame(users: np.ndarray, n_contexts: int) -> pd.DataFrame:
    times = [f"1998-03-{d:02d}T{h:02d}:15" for d, h in zip(range(1, 29, 3), (8, 12, 18, 22, 7, 13, 20, 23, 9, 21))]
    times = times[:n_contexts]
    return pd.DataFrame({"user_id": np.tile(users, len(times)), "timestamp": np.repeat(times, len(users))})


def summarize(runs: list[D.JobResult]) -> dict:
    """Cold run, median of the warm runs, and per-task constants."""
    cold, warm = runs[0], runs[1:]
    tasks = [t for r in warm for t in r.tasks]
    per_row = [t["compute_s"] / t["rows"] for t in tasks if t["rows"]]
    return {"rows": cold.rows, "partitions": cold.partitions, "workers": cold.workers,
            "cold_s": cold.seconds, "cold_rows_per_s": cold.rows_per_s,
            "warm_s_median": statistics.median(r.seconds for r in warm),
            "warm_s_all": [r.seconds for r in warm],
            "warm_rows_per_s_median": statistics.median(r.rows_per_s for r in warm),
            "load_s_per_worker_median": statistics.median([t["load_s"] for t in cold.tasks if t["load_s"] > 0]
                                                          or [0.0]),
            "compute_s_per_row_median": statistics.median(per_row) if per_row else float("nan"),
            "write_s_per_task_median": statistics.median(t["write_s"] for t in tasks),
            "compute_s_total_warm_median": statistics.median(sum(t["compute_s"] for t in r.tasks) for r in warm)}


def run_interleaved(clients: dict[int, object], job, repeats: int) -> dict[int, list[D.JobResult]]:
    runs: dict[int, list] = {w: [] for w in clients}
    for _ in range(repeats + 1):
        for w, c in clients.items():
            runs[w].append(job(c))
    return runs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=600, help="catalog texts to encode")
    ap.add_argument("--item-partition", type=int, default=50, help="texts per encode partition")
    ap.add_argument("--contexts", type=int, default=8, help="request times per user")
    ap.add_argument("--user-partition", type=int, default=500, help="requests per recommend partition")
    ap.add_argument("--repeats", type=int, default=3, help="warm runs per configuration")
    ap.add_argument("--out", default=str(RESULTS / "distributed"))
    a = ap.parse_args(argv)
    if "CTXREC_DATA_DIR" not in os.environ:
        shared = Path(__file__).resolve().parents[2] / "shared" / "data"
        if shared.is_dir():
            os.environ["CTXREC_DATA_DIR"] = str(shared)
    from ctxrec.data import load_movielens_100k
    from ctxrec.encoder import TextEncoder
    from ctxrec.recommender import Recommender

    ml = load_movielens_100k()
    texts = [str(t) for t in ml.item_text[:a.items]]
    items = pd.DataFrame({"item_id": ml.item_ids[:a.items], "text": texts})
    tmp = Path(tempfile.mkdtemp(prefix="ctxrec-bench-dist-"))
    fit_s, n_users = train_model(tmp / "model")
    req = requests_frame(np.load(tmp / "model" / "user_ids.npy"), a.contexts)
    print(f"[bench-distributed] {len(items)} texts, {len(req)} requests ({n_users} users x {a.contexts}); "
          f"model trained in {fit_s:.1f} s", flush=True)

    # single-process references, same machine, same moment
    enc = TextEncoder.load(provider="cpu", threads=1, lru_size=0)
    t0 = time.perf_counter()
    enc.encode(texts)
    single_encode_s = time.perf_counter() - t0
    tokens = enc.tokens(texts)
    rec = Recommender.load(tmp / "model")
    ctxs = [{"timestamp": t} for t in req["timestamp"]]
    D.recommend_frame(rec, list(req["user_id"][:50]), ctxs[:50], 10)  # JIT warm-up
    t0 = time.perf_counter()
    D.recommend_frame(rec, list(req["user_id"]), ctxs, 10)
    single_batched_s = time.perf_counter() - t0
    n_loop = min(1000, len(req))
    t0 = time.perf_counter()
    for u, c in zip(req["user_id"][:n_loop], ctxs[:n_loop]):
        rec.recommend(u, c, 10)
    single_loop_per_user = (time.perf_counter() - t0) / n_loop

    clusters, clients, start_s = {}, {}, {}
    for w in (1, 2):
        clusters[w], clients[w], start_s[w] = start_cluster(w)
    try:
        enc_runs = run_interleaved(clients, lambda c: D.encode_catalog(
            items, tmp / f"emb-{id(c)}", client=c, partition_rows=a.item_partition, overwrite=True,
            progress=False), a.repeats)
        rec_runs = run_interleaved(clients, lambda c: D.recommend_all(
            tmp / "model", tmp / f"recs-{id(c)}", users=req, k=10, client=c, partition_rows=a.user_partition,
            overwrite=True, progress=False), a.repeats)
        # partition-count sweep on 2 workers (warm): per-task overhead
        sweep = {}
        for rows in (a.user_partition // 5, a.user_partition, a.user_partition * 4):
            rs = [D.recommend_all(tmp / "model", tmp / "sweep", users=req, k=10, client=clients[2],
                                  partition_rows=rows, overwrite=True, progress=False) for _ in range(a.repeats)]
            sweep[rows] = {"partitions": rs[0].partitions, "warm_s_median": statistics.median(r.seconds for r in rs)}
    finally:
        for w in (1, 2):
            clients[w].close()
            clusters[w].close()

    enc_sum = {w: summarize(r) for w, r in enc_runs.items()}
    rec_sum = {w: summarize(r) for w, r in rec_runs.items()}
    res = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "loadavg_at_end": os.getloadavg()},
        "config": vars(a),
        "cluster_start_s": start_s,
        "encode": {"texts": len(texts), "tokens_median": float(np.median(tokens)),
                   "single_process_s": single_encode_s, "single_process_texts_per_s": len(texts) / single_encode_s,
                   "by_workers": enc_sum,
                   "speedup_2_vs_1_warm": enc_sum[1]["warm_s_median"] / enc_sum[2]["warm_s_median"]},
        "recommend": {"requests": len(req), "users": n_users, "catalog": len(ml.item_ids),
                      "single_process_batched_s": single_batched_s,
                      "single_process_batched_users_per_s": len(req) / single_batched_s,
                      "single_process_loop_users_per_s": 1 / single_loop_per_user,
                      "by_workers": rec_sum,
                      "speedup_2_vs_1_warm": rec_sum[1]["warm_s_median"] / rec_sum[2]["warm_s_median"],
                      "partition_sweep_2_workers": sweep},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=float))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return res


def markdown(r: dict) -> str:
    e, c = r["encode"], r["recommend"]
    E1, E2 = e["by_workers"][1], e["by_workers"][2]
    R1, R2 = c["by_workers"][1], c["by_workers"][2]
    sweep = c["partition_sweep_2_workers"]
    # cost model constants (measured)
    t_item = E1["compute_s_per_row_median"]
    t_user = R1["compute_s_per_row_median"]
    over_enc = max(0.0, (E1["warm_s_median"] - E1["compute_s_total_warm_median"]) / E1["partitions"])
    over_rec = max(0.0, (R1["warm_s_median"] - R1["compute_s_total_warm_median"]) / R1["partitions"])
    L = [
        "# Dask scale-out: catalog encoding and batch recommendation",
        "",
        f"Machine: {r['machine']['cpus']} CPUs, shared with other jobs (load average at the end "
        f"{r['machine']['loadavg_at_end'][0]:.1f}); timings are noisy: the 1- and 2-worker jobs alternate "
        "and figures are medians of the warm runs. Command: `.venv/bin/python benchmarks/bench_distributed.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in r["config"].items() if k != "out") + "`.",
        "",
        "Read the absolute figures with the load in mind: with a load average well above the core count, every "
        "process gets a fraction of a core, so per-row times below are several times those of a quiet machine "
        "(the single-process reference in the same run shows by how much); the 1- vs 2-worker ratios are the "
        "comparable figures.",
        "",
        f"LocalCluster start: {r['cluster_start_s'][1]:.1f} s (1 worker), {r['cluster_start_s'][2]:.1f} s (2 workers).",
        "",
        f"## encode_catalog — {e['texts']} ML-100K item texts (median {e['tokens_median']:.0f} tokens), "
        "int8 ONNX encoder, 1 onnxruntime thread per task",
        "",
        "| workers | partitions | cold run (s) | warm run, median (s) | items/s (warm) | model load per worker (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for w, s in ((1, E1), (2, E2)):
        L.append(f"| {w} | {s['partitions']} | {s['cold_s']:.1f} | {s['warm_s_median']:.1f} | "
                 f"{s['warm_rows_per_s_median']:.0f} | {s['load_s_per_worker_median']:.2f} |")
    L += ["", f"Single process, same encoder, one thread, one call: {e['single_process_texts_per_s']:.0f} items/s. "
          f"2 vs 1 workers (warm): **{e['speedup_2_vs_1_warm']:.2f}x**.", "",
          f"## recommend_all — {c['requests']:,} requests ({c['users']} users x request times), "
          f"top-10 of {c['catalog']:,} items, seen items excluded", "",
          "| workers | partitions | cold run (s) | warm run, median (s) | users/s (warm) | model load + JIT per worker (s) |",
          "|---:|---:|---:|---:|---:|---:|"]
    for w, s in ((1, R1), (2, R2)):
        L.append(f"| {w} | {s['partitions']} | {s['cold_s']:.1f} | {s['warm_s_median']:.1f} | "
                 f"{s['warm_rows_per_s_median']:,.0f} | {s['load_s_per_worker_median']:.2f} |")
    L += ["", f"Single process: batched path (`recommend_frame`) {c['single_process_batched_users_per_s']:,.0f} users/s; "
          f"a loop of `Recommender.recommend` {c['single_process_loop_users_per_s']:,.0f} users/s. "
          f"2 vs 1 workers (warm): **{c['speedup_2_vs_1_warm']:.2f}x**.", "",
          "Partitions (2 workers, warm, median):", "",
          "| requests per partition | partitions | job (s) |", "|---:|---:|---:|"]
    for rows, s in sweep.items():
        L.append(f"| {rows} | {s['partitions']} | {s['warm_s_median']:.2f} |")
    L += ["", "## How the jobs scale (a model for sizing a cluster)", "",
          "For N rows in P partitions on W single-threaded worker processes (one per core):", "",
          "    T(W, P) ~ T_start + T_load + (N * t_row + P * t_task) / W   (while P >= W)", "",
          "* `T_start`: starting a LocalCluster (measured above); zero on a running cluster.",
          f"* `T_load`: paid once per worker, in parallel: ONNX session "
          f"{E1['load_s_per_worker_median']:.2f} s; Recommender load + numba JIT "
          f"{R1['load_s_per_worker_median']:.2f} s. A restarted or new worker pays it again on its first task.",
          f"* `t_row`: encoding {t_item * 1e3:.1f} ms per item text per worker in this run (it grows with text length: "
          f"sequence length dominates) — encoding is compute-bound, so items/s scale with cores, not with I/O; "
          f"recommendation {t_user * 1e6:.0f} us per request (exact scoring of {c['catalog']:,} items).",
          f"* `t_task`: per-partition overhead (scheduling, moving the partition to the worker, Parquet write): "
          f"~{over_enc * 1e3:.0f} ms per encode partition, ~{over_rec * 1e3:.0f} ms per recommend partition here "
          "(derived as (warm wall time - summed task compute) / P on 1 worker).",
          "* Parquet output is written by the workers themselves (one file per partition); the driver only "
          "receives small timing records, so the driver is not a bottleneck.",
          "",
          "Sizing: choose partitions so that N * t_row / P is well above t_task (seconds of work per partition) "
          "and P is several times W (stragglers and retries then cost little). Encoding a catalog of N texts "
          f"on W cores takes about N * {t_item * 1e3:.1f} ms / W: e.g. 10M texts of this length on 64 cores "
          f"~ {1e7 * t_item / 64 / 3600:.1f} h. When encoding is the bottleneck, a GPU worker "
          "(onnxruntime-gpu, fp16) replaces many CPU workers; the embedding cache makes re-runs over an "
          "unchanged catalog nearly free.",
          f"On this 2-core machine the second worker competes with the driver, the scheduler and other users' "
          f"jobs, which is why 2 workers give {e['speedup_2_vs_1_warm']:.2f}x / {c['speedup_2_vs_1_warm']:.2f}x "
          "rather than 2x: the summed task compute time of a warm job was "
          f"{E2['compute_s_total_warm_median'] / E1['compute_s_total_warm_median']:.2f}x (encode) and "
          f"{R2['compute_s_total_warm_median'] / R1['compute_s_total_warm_median']:.2f}x (recommend) that of the "
          "1-worker job for the same rows — near 1.0 when each worker has a core of its own, near 2.0 when the "
          "two workers share one core's worth of CPU. The model above assumes one free core per worker.",
          ""]
    return "\n".join(L)


if __name__ == "__main__":
    main()
