"""ContextFM training speed: item text against none, and the default threads against one.

    python benchmarks/run.py --only training [--quick]

MovieLens 100K (all 100,000 ratings as implicit positives), 64 factors, one epoch timed at
a time with ``fit(callback=...)`` after one warm-up epoch (numba compilation and caches
excluded). Item text: the catalog's titles + plot overviews encoded by ctxrec's own encoder
(all-MiniLM-L6-v2 int8, 384-d). Configurations are interleaved rep by rep so that a slow
moment of a shared machine hits all of them; medians are quoted.

Threads: BPR without text, ``num_threads=None`` (the adaptive default: pieces of each epoch go to
all cores or to one, whichever is faster; ``ContextFM`` docs) against ``num_threads=1``, first on
an otherwise idle machine, then beside a CPU-bound busy-loop process (one per core but one,
so the default's threads compete with it). Targets (issue 17): item text <= 1.5x the epoch time
without it; default threads >= 1.6x one thread idle and >= 0.9x beside the busy process.

Beside the exact path, ``ContextFM(text_step_every=8)`` (the item-text projection steps once
per 8 mini-batches): its epoch time, and what it costs the model on the quality benchmark's
item cold-start task (``bench_quality.task_ml_cold``, seeds 0 and 1, both settings), where the
ranking of the held-out items comes from their text alone.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import numpy as np


def _busy(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _data() -> tuple[Any, Any, np.ndarray]:
    from ctxrec.data import load_movielens_100k
    from ctxrec.encoder import TextEncoder
    from ctxrec.model.adapters import from_dataset
    ds = load_movielens_100k(verify=False)
    text = TextEncoder.load().encode(list(ds.item_text))
    X, side = from_dataset(ds)
    return X, side, np.ascontiguousarray(text, np.float32)


def _epoch_seconds(X: Any, side: Any, *, loss: str, text: np.ndarray | None, threads: int | None,
                   epochs: int, step_every: int = 1) -> list[float]:
    """Seconds of each epoch after the first (the first pays for compilation and warm caches)."""
    from dataclasses import replace

    from ctxrec.model import ContextFM
    s = side if text is None else replace(side, item_text=text)
    marks: list[float] = []

    def cb(epoch: int, rec: dict[str, float]) -> None:
        marks.append(time.perf_counter())

    kw: dict[str, Any] = {"n_negatives": 64} if loss == "softmax" else {}
    ContextFM(n_factors=64, loss=loss, epochs=epochs + 1, num_threads=threads, random_state=0, text_step_every=step_every,
              **kw).fit(X, s, callback=cb)
    return list(np.diff(marks))


STEP_EVERY = 8  # the ContextFM(text_step_every=...) measured beside the exact path


def _cold_check(text: np.ndarray, seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    """Recall@10 / NDCG@10 of the quality benchmark's item cold-start task (text + genres, sampled
    softmax, epochs chosen on a cold validation split) with ``text_step_every`` 1 and STEP_EVERY."""
    import types

    import bench_quality as bq
    from ctxrec.data import load_movielens_100k
    ds = load_movielens_100k(verify=False)
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        for every in (1, STEP_EVERY):
            got: list[dict[str, Any]] = []
            bq.task_ml_cold(got, ds, text, types.SimpleNamespace(quick=False, no_peers=True),
                            fm={"text_step_every": every, "random_state": seed})
            r = got[0]
            rows.append({"seed": seed, "text_step_every": every, "recall@10": r["recall@10"], "ndcg@10": r["ndcg@10"],
                         "epochs": r["epochs"], "epoch_s": r["epoch_s"]})
            print(f"cold start seed {seed} text_step_every {every}: recall@10 {r['recall@10']:.4f}", flush=True)
    return rows


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    reps = args.reps or (2 if args.quick else 3)
    epochs = 1 if args.quick else 2
    X, side, text = _data()
    out: dict[str, Any] = {"protocol": {"dataset": "movielens-100k", "n_factors": 64, "epochs_timed_per_rep": epochs,
                                        "reps": reps, "item_text": f"titles + overviews, {text.shape[1]}-d"}}
    # ---- item text vs none, one thread ------------------------------------------------------
    times: dict[str, list[float]] = {}
    for r in range(reps):
        for loss in ("bpr", "softmax"):
            for key_, tx, every in (("none", None, 1), ("text", text, 1), (f"text_every{STEP_EVERY}", text, STEP_EVERY)):
                key = f"{loss}_{key_}"
                t = _epoch_seconds(X, side, loss=loss, text=tx, threads=1, epochs=epochs, step_every=every)
                times.setdefault(key, []).extend(t)
                print(f"rep {r} {key}: {[round(x, 2) for x in t]} s/epoch", flush=True)
    text_rows = []
    for loss in ("bpr", "softmax"):
        a, b = statistics.median(times[f"{loss}_none"]), statistics.median(times[f"{loss}_text"])
        c = statistics.median(times[f"{loss}_text_every{STEP_EVERY}"])
        text_rows.append({"loss": loss, "no_text_s": a, "item_text_s": b, "ratio": b / a, "target": 1.5,
                          "pass": bool(b / a <= 1.5), "step_every_s": c, "step_every_ratio": c / a})
    out["text"] = {"rows": text_rows, "epoch_seconds": times, "step_every": STEP_EVERY}
    # ---- what a projection stepped less often costs: item cold start (text decides) ------------
    out["cold"] = _cold_check(text, seeds=(0,) if args.quick else (0, 1))
    # ---- default threads vs one, idle and busy ------------------------------------------------
    n_cores = os.cpu_count() or 1
    thread_rows = []
    for load in ("idle", "busy"):
        stop, procs = mp.Event(), []
        if load == "busy":
            procs = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(max(1, n_cores - 1))]
            for p in procs:
                p.start()
        tt: dict[str, list[float]] = {"one": [], "default": [], "all": []}
        try:
            for r in range(reps):
                for name, th in (("one", 1), ("default", None), ("all", n_cores)):
                    tt[name].extend(_epoch_seconds(X, side, loss="bpr", text=None, threads=th, epochs=epochs))
        finally:
            stop.set()
            for p in procs:
                p.join(5)
        one, dflt, allc = statistics.median(tt["one"]), statistics.median(tt["default"]), statistics.median(tt["all"])
        speedup = one / dflt
        target = 1.6 if load == "idle" else 0.9
        thread_rows.append({"load": load, "one_thread_s": one, "default_s": dflt, "speedup": speedup,
                            "all_cores_s": allc, "all_cores_speedup": one / allc,
                            "target": target, "pass": bool(speedup >= target), "epoch_seconds": tt})
        print(f"{load}: one thread {one:.2f} s, default {dflt:.2f} s -> {speedup:.2f}x", flush=True)
    out["threads"] = {"rows": thread_rows, "busy_processes": max(1, n_cores - 1)}
    return out


def markdown(res: dict[str, Any]) -> str:
    p = res["protocol"]
    lines = [f"ContextFM, {p['dataset']}, {p['n_factors']} factors, median seconds per epoch over {p['reps']} "
             f"interleaved reps x {p['epochs_timed_per_rep']} epochs (first epoch of each fit not timed); item "
             f"text: {p['item_text']}.", "",
             "| loss (one thread) | no text s/epoch | item text s/epoch | ratio | target | |", "|---|---|---|---|---|---|"]
    for r in res["text"]["rows"]:
        lines.append(f"| {r['loss']} | {r['no_text_s']:.2f} | {r['item_text_s']:.2f} | {r['ratio']:.2f}x | "
                     f"<= {r['target']}x | {'pass' if r['pass'] else 'MISS'} |")
    n = res["text"]["step_every"]
    lines += ["", f"`ContextFM(text_step_every={n})` (the item-text projection steps once per {n} mini-batches on "
                  "their summed gradient, each item projected once per period) beside the exact path:", "",
              f"| loss (one thread) | item text, every batch | item text, every {n} | ratio to no text |",
              "|---|---|---|---|"]
    for r in res["text"]["rows"]:
        lines.append(f"| {r['loss']} | {r['item_text_s']:.2f} | {r['step_every_s']:.2f} | {r['step_every_ratio']:.2f}x |")
    lines += ["", "What it changes in the model: the quality benchmark's ml-100k item cold start (10 % of the items "
                  "held out, ranked by their text + genres; sampled softmax; epochs chosen on a cold validation "
                  "split):", "", "| seed | text_step_every | recall@10 | ndcg@10 | epochs |", "|---|---|---|---|---|"]
    for r in res["cold"]:
        lines.append(f"| {r['seed']} | {r['text_step_every']} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} | {r['epochs']} |")
    lines += ["", f"BPR without text, default threads vs one thread (busy: {res['threads']['busy_processes']} "
                  "busy-loop process(es) beside it):", "",
              "| machine | one thread s/epoch | default s/epoch | speed-up | target | | fixed all-core threads s/epoch | "
              "their speed-up |", "|---|---|---|---|---|---|---|---|"]
    for r in res["threads"]["rows"]:
        lines.append(f"| {r['load']} | {r['one_thread_s']:.2f} | {r['default_s']:.2f} | {r['speedup']:.2f}x | "
                     f">= {r['target']}x | {'pass' if r['pass'] else 'MISS'} | {r['all_cores_s']:.2f} | "
                     f"{r['all_cores_speedup']:.2f}x |")
    lines += ["", "The last two columns are `num_threads` = all cores, fixed: the most the machine gives a mini-batch "
                  "kernel; the default cannot beat it idle, and it is what stalls beside a busy process."]
    return "\n".join(lines)
