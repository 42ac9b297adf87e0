"""The main job (``make demo``): ctxrec end to end on MovieLens 100K.

1. Load MovieLens 100K with its plot overviews (from ``CTXREC_DATA_DIR``).
2. Encode every movie's text (title, genres, year, overview) with ctxrec's int8 ONNX
   encoder and train ContextFM with time-of-request context on a leave-last-out split.
3. Evaluate with full ranking (HR@10, NDCG@10) against a popularity baseline.
4. For three users, show how the top-10 changes with context: a Saturday morning vs late
   at night, and with a free-text request ("a funny animated movie for my kids").
5. Measure request latency (context + text encoding + retrieval + rescoring), and the
   serving engine alone on a generated 100,000-item catalog (HNSW + C++ rescoring).
6. Leave a report behind: ``demo-report/report.md`` + PNG.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ctxrec import Engine, _core
from ctxrec.synthetic import make_catalog

MORNING = "1998-03-07T09:00:00"   # a Saturday morning (MovieLens ends in April 1998)
NIGHT = "1998-03-07T23:30:00"
REQUEST = "a funny animated movie for my kids"


def engine_demo(n: int = 200_000, k: int = 10, text_weight: float = 0.2) -> dict[str, float]:
    """Build, query and persist an engine over a generated catalog; print and return the figures.

    Parameters
    ----------
    n : int
        Catalog size.
    k : int
        Items per query.
    text_weight : float
        Weight of the 32-d text term.

    Returns
    -------
    dict
        ``items``, ``build_s`` (seconds), ``p50_ms`` / ``p99_ms`` (single-query latency, one
        thread), ``recall_at_10`` (vs exact), ``batch_qps`` (queries/s, all cores) and
        ``brute_force_ms`` (numpy, per query).
    """
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
        same = loaded.recommend(Q[0], k, text_query=TQ[0])[0].tolist() == \
            eng.recommend(Q[0], k, text_query=TQ[0])[0].tolist()
        print(f"[engine] saved + verified + reloaded in {time.perf_counter() - t:.1f} s; same answers: {same}")
    return {"items": n, "build_s": build, "p50_ms": p50, "p99_ms": p99, "recall_at_10": recall, "batch_qps": qps,
            "brute_force_ms": brute}


def _titles(rec: Any, ids: list[Any]) -> list[str]:
    table = rec.items_.set_index("item_id")
    return [str(table.loc[i, "title"]) for i in ids]


def movielens_demo(data_dir: str | None, epochs: int) -> dict[str, Any]:
    """Train and evaluate on MovieLens 100K, show context-dependent top-10s, time requests.

    Parameters
    ----------
    data_dir : str or None
        The data root (default ``$CTXREC_DATA_DIR``).
    epochs : int
        ContextFM epochs.

    Returns
    -------
    dict
        ``dataset``, ``fit_s`` (seconds), ``quality`` (per model: HR/NDCG), ``latency``
        (p50/p99 in ms), ``shown`` (the top-10s per user and context), ``history`` (training
        curve), ``lat`` / ``text_lat`` (per-request ms) and ``encoder``.
    """
    from ctxrec.context import ContextSpec
    from ctxrec.data import load_movielens_100k
    from ctxrec.encoder import TextEncoder
    from ctxrec.evaluate import Factors, evaluate_ranking, leave_last_out
    from ctxrec.model import ContextFM
    from ctxrec.recommender import Recommender

    ds = load_movielens_100k(data_dir)
    print(f"[data] {ds}")
    enc = TextEncoder.load()
    print(f"[encoder] {enc!r}")
    split = leave_last_out(ds)
    spec = ContextSpec(time=["timestamp"], text=["query"])
    model = ContextFM(n_factors=64, epochs=epochs, verbose=True, random_state=0)
    t0 = time.perf_counter()
    rec = Recommender(spec, model=model, encoder=enc).fit(split.train)
    fit_s = time.perf_counter() - t0
    print(f"[train] fitted in {fit_s:.1f} s (text encoding + {epochs} epochs); "
          f"text-match weight {rec.text_match_weight_:.2f}")
    report = rec.evaluate(split.train, split.test, ks=(10,), group="row", name="ctxrec (time context + text)",
                          split="leave-last-out")
    counts = np.bincount(split.train.items, minlength=ds.n_items).astype(np.float32)
    pop = evaluate_ranking(Factors(np.zeros((ds.n_items, 1), np.float32), np.zeros((ds.n_users, 1), np.float32),
                                   counts / counts.max()), split.train, split.test, ks=(10,), group="row",
                           name="popularity", split="leave-last-out")
    quality = {r.name: {m: r.metrics[f"{m}@10"] for m in ("hr", "ndcg")} for r in (report, pop)}
    for name, m in quality.items():
        print(f"[quality] {name:<32} HR@10 {m['hr']:.4f}  NDCG@10 {m['ndcg']:.4f}")

    users = [int(u) for u in ds.user_ids[[0, 41, 449]]]  # three users of varied taste
    shown: dict[str, Any] = {}
    for u in users:
        lists = {"Saturday 09:00": rec.recommend(u, {"timestamp": MORNING}, k=10),
                 "Saturday 23:30": rec.recommend(u, {"timestamp": NIGHT}, k=10),
                 f'09:00 + "{REQUEST}"': rec.recommend(u, {"timestamp": MORNING, "query": REQUEST}, k=10)}
        print(f"\n[user {u}] top-10 by context")
        for label, r in lists.items():
            print(f"  {label}:")
            for rank, t in enumerate(_titles(rec, r.item_ids), 1):
                print(f"    {rank:>2}. {t}")
        a, b = lists["Saturday 09:00"].item_ids, lists["Saturday 23:30"].item_ids
        c = lists[f'09:00 + "{REQUEST}"'].item_ids
        print(f"  morning vs night: {len(set(a) & set(b))}/10 in common; with the request: "
              f"{len(set(a) & set(c))}/10 in common with plain morning")
        shown[str(u)] = {k: _titles(rec, r.item_ids) for k, r in lists.items()}

    rng = np.random.default_rng(0)
    hours = rng.integers(0, 24, 500)
    lat = []
    for j, h in enumerate(hours):
        u = int(ds.user_ids[j % ds.n_users])
        t = time.perf_counter_ns()
        rec.recommend(u, {"timestamp": f"1998-03-{1 + j % 28:02d}T{h:02d}:15:00"}, k=10)
        lat.append((time.perf_counter_ns() - t) / 1e6)
    text_lat = []
    queries = [REQUEST, "a scary movie for a rainy night", "romantic comedy", "war movie based on a true story"]
    for j in range(200):
        q = queries[j % len(queries)] + ("" if j < len(queries) else f" #{j}")  # mostly new texts: no cache hits
        t = time.perf_counter_ns()
        rec.recommend(int(ds.user_ids[j]), {"timestamp": MORNING, "query": q}, k=10)
        text_lat.append((time.perf_counter_ns() - t) / 1e6)
    latency = {"context_p50_ms": float(np.median(lat)), "context_p99_ms": float(np.percentile(lat, 99)),
               "text_request_p50_ms": float(np.median(text_lat)),
               "text_request_p99_ms": float(np.percentile(text_lat, 99))}
    print(f"\n[latency] recommend() with time context: p50 {latency['context_p50_ms']:.3f} ms, "
          f"p99 {latency['context_p99_ms']:.3f} ms; with a new free-text request (encoded on the fly): "
          f"p50 {latency['text_request_p50_ms']:.2f} ms, p99 {latency['text_request_p99_ms']:.2f} ms")
    return {"dataset": str(ds), "fit_s": fit_s, "quality": quality, "latency": latency, "shown": shown,
            "history": rec.model_.history_, "lat": lat, "text_lat": text_lat, "encoder": repr(enc)}


def write_report(out: Path, ml: dict[str, Any], eng: dict[str, float] | None) -> Path:
    """Write the demo report (Markdown + PNG).

    Parameters
    ----------
    out : Path
        The report directory (created).
    ml : dict
        What :func:`movielens_demo` returned.
    eng : dict or None
        What :func:`engine_demo` returned (None: skipped).

    Returns
    -------
    Path
        The Markdown report.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    h = ml["history"]
    axes[0].plot([r["epoch"] + 1 for r in h], [r["loss"] for r in h], marker="o")
    axes[0].set(title="ContextFM training loss", xlabel="epoch", ylabel="BPR loss")
    names = list(ml["quality"])
    x = np.arange(2)
    for j, n in enumerate(names):
        axes[1].bar(x + j * 0.4, [ml["quality"][n]["hr"], ml["quality"][n]["ndcg"]], width=0.4, label=n)
    axes[1].set_xticks(x + 0.2, ["HR@10", "NDCG@10"])
    axes[1].set(title="MovieLens 100K, leave-last-out")
    axes[1].legend(fontsize=7)
    axes[2].hist(ml["lat"], bins=40, alpha=0.7, label="time context")
    axes[2].set(title="recommend() latency", xlabel="ms", ylabel="requests")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=110)
    plt.close(fig)
    q, lt = ml["quality"], ml["latency"]
    lines = ["# ctxrec demo report", "", f"- data: {ml['dataset']}", f"- encoder: {ml['encoder']}",
             f"- fit (text encoding + training): {ml['fit_s']:.1f} s", "",
             "| model | HR@10 | NDCG@10 |", "|---|---:|---:|"]
    lines += [f"| {n} | {m['hr']:.4f} | {m['ndcg']:.4f} |" for n, m in q.items()]
    lines += ["", f"recommend() latency: time context p50 {lt['context_p50_ms']:.3f} ms / p99 "
                  f"{lt['context_p99_ms']:.3f} ms; new free-text request p50 {lt['text_request_p50_ms']:.2f} ms / "
                  f"p99 {lt['text_request_p99_ms']:.2f} ms", ""]
    if eng:
        lines += [f"Engine on {eng['items']:,} generated items: p50 {eng['p50_ms']:.3f} ms, p99 {eng['p99_ms']:.3f} ms, "
                  f"recall@10 {eng['recall_at_10']:.3f}, batch {eng['batch_qps']:,.0f} q/s, "
                  f"numpy brute force {eng['brute_force_ms']:.1f} ms", ""]
    for u, lists in ml["shown"].items():
        lines += [f"## user {u}", "", "| rank | " + " | ".join(lists) + " |", "|---:|" + "---|" * len(lists)]
        for r in range(10):
            lines.append(f"| {r + 1} | " + " | ".join(v[r] if r < len(v) else "" for v in lists.values()) + " |")
        lines.append("")
    lines.append("![demo](demo.png)")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def main(argv: list[str] | None = None) -> None:
    """``make demo``: run the demo end to end and write its report.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="data directory (default: $CTXREC_DATA_DIR)")
    ap.add_argument("--epochs", type=int, default=8, help="ContextFM epochs (8: the epoch count early stopping picks on ml-100k)")
    ap.add_argument("--engine-items", type=int, default=100_000, help="catalog size of the engine section (0: skip)")
    ap.add_argument("--out", default="demo-report")
    args = ap.parse_args(argv)
    data = args.data or os.environ.get("CTXREC_DATA_DIR")
    if not data or not (Path(data) / "ml-100k" / "u.data").is_file():
        print("ctxrec demo: MovieLens 100K not found. Put the GroupLens files (u.data, u.item, u.user, ...) in "
              "DIR/ml-100k/ (and the overviews in DIR/ml-100k-overviews/), then run with CTXREC_DATA_DIR=DIR "
              "(the Makefile uses ../shared/data when it exists). Source: "
              "https://grouplens.org/datasets/movielens/100k/", file=sys.stderr)
        sys.exit(2)
    t0 = time.perf_counter()
    ml = movielens_demo(data, args.epochs)
    eng = engine_demo(args.engine_items) if args.engine_items else None
    path = write_report(Path(args.out), ml, eng)
    print(f"\n[demo] done in {time.perf_counter() - t0:.0f} s; report: {path}")


if __name__ == "__main__":
    main()
