"""Popularity baselines on every evaluation protocol of ctxrec.evaluate.

MovieLens 100K (full ranking over all items minus the user's training items; item cold
start ranks among the held-out items only):

* ``stratified``      per-user 75/25 (Microsoft Recommenders protocol, seed 42);
* ``leave-last-out``  each user's latest rating is the test item;
* ``temporal``        the latest 20 % of ratings (global time cut) are test;
* ``random``          20 % of ratings uniformly at random (seed 0);
* ``item-cold-start`` 10 % of the items held out entirely (seed 0).

Popularity = number of training interactions of the item; exact ties (every cold item has
0) are broken by a seeded random jitter below 1/2, so ties do not fall back to item-id
order (MovieLens ids correlate with popularity). Also for the random split: item-mean
rating RMSE/MAE.

Frappe (official NFM validation/test; training split reconstructed as in
``ctxrec.data.load_frappe_nfm``): item positive rate in training (smoothed toward the
global rate) as the predicted probability → AUC, logloss, per-user AUC.

Writes ``benchmarks/results/baselines.json``, ``baselines.md`` and ``baselines.png``.

Run: ``CTXREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_baselines.py``
(the Makefile exports CTXREC_DATA_DIR when ../shared/data exists).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ctxrec.data import load_frappe_nfm, load_movielens_100k
from ctxrec.evaluate import (
    EvaluationReport,
    Factors,
    evaluate_pointwise,
    evaluate_ranking,
    frappe_nfm_split,
    item_cold_start,
    leave_last_out,
    mae,
    plot_reports,
    random_split,
    reports_markdown,
    rmse,
    stratified_split,
    temporal_split,
)

KS = (1, 5, 10, 20)


def popularity(train: Any, seed: int = 0) -> Factors:
    """Item popularity as a factor model: zero vectors, bias = train count + jitter in [0, 0.5)."""
    counts = train.item_counts().astype(np.float64)
    jitter = np.random.default_rng(seed).random(train.n_items) * 0.5
    return Factors(item_vecs=np.zeros((train.n_items, 1)), user_vecs=np.zeros((train.n_users, 1)),
                   item_bias=(counts + jitter).astype(np.float32))


def movielens_reports(data_dir: str | None) -> list[EvaluationReport]:
    ml = load_movielens_100k(data_dir)
    splits = [
        ("stratified 75/25", stratified_split(ml, ratio=0.75, seed=42)),
        ("leave-last-out", leave_last_out(ml)),
        ("temporal 80/20", temporal_split(ml, test_frac=0.2)),
        ("random 80/20", random_split(ml, test_frac=0.2, seed=0)),
        ("item-cold-start 10%", item_cold_start(ml, frac=0.1, seed=0)),
    ]
    out = []
    for label, sp in splits:
        t0 = time.perf_counter()
        rep = evaluate_ranking(popularity(sp.train), sp.train, sp.test, ks=KS, candidates=sp.candidate_items,
                               name="popularity", split=f"ml-100k {label}")
        rep.timings = {"eval_s": round(time.perf_counter() - t0, 3)}
        rep.info.update({k: v for k, v in sp.info.items() if k != "dataset"})
        out.append(rep)
        if label.startswith("random"):
            tr, te = sp.train, sp.test
            mean = float(tr.rating.mean())
            sums = np.bincount(tr.items, weights=tr.rating, minlength=tr.n_items)
            cnt = np.bincount(tr.items, minlength=tr.n_items)
            item_mean = np.where(cnt > 0, (sums + 5 * mean) / (cnt + 5), mean)  # shrunk toward the global mean
            pred = item_mean[te.items]
            out.append(EvaluationReport(name="item-mean rating", split=f"ml-100k {label}",
                                        metrics={"rmse": rmse(te.rating, pred), "mae": mae(te.rating, pred)},
                                        info={"n": len(te), "shrinkage": 5}))
    return out


def frappe_reports(data_dir: str | None) -> list[EvaluationReport]:
    sp = frappe_nfm_split(load_frappe_nfm(data_dir, n_neg=2, seed=0))
    tr = sp.train
    pos = np.bincount(tr.items, weights=tr.label, minlength=tr.n_items)
    n = np.bincount(tr.items, minlength=tr.n_items)
    base = float(tr.label.mean())
    p = (pos + 2 * base) / (n + 2)  # item positive rate, smoothed toward the global rate
    out = []
    for part, ds in (("validation", sp.validation), ("test", sp.test)):
        rep = evaluate_pointwise(ds.label, p[ds.items], users=ds.users, name="popularity (item positive rate)",
                                 split=f"frappe nfm {part}")
        rep.info.update({"train": sp.info["train"], "n_train": len(tr)})
        out.append(rep)
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="data root (default $CTXREC_DATA_DIR)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    reports = movielens_reports(args.data_dir) + frappe_reports(args.data_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "popularity baselines",
        "command": "CTXREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_baselines.py",
        "generated_unix": int(time.time()),
        "python": sys.version.split()[0], "machine": platform.machine(),
        "total_s": round(time.perf_counter() - t0, 2),
        "reports": [r.to_dict() for r in reports],
    }
    _atomic_write(out / "baselines.json", json.dumps(payload, indent=2, sort_keys=True).encode())
    rank = [r for r in reports if "ndcg@10" in r.metrics]
    other = [r for r in reports if "ndcg@10" not in r.metrics]
    md = ["# Popularity baselines", "",
          f"Produced by `{payload['command']}`. Full ranking over all items minus each user's training items "
          "(item cold start: among the held-out items). Popularity ties broken by a seeded jitter.", "",
          "## MovieLens 100K — ranking", "",
          reports_markdown(rank, metrics=["hr@10", "precision@10", "recall@10", "ndcg@10", "map@10", "map_nrel@10",
                                          "mrr", "auc", "coverage@10"]),
          "`map@10` divides each user's AP by min(#relevant, 10); `map_nrel@10` by #relevant (Microsoft "
          "Recommenders' MAP, the column its benchmark tables publish). `mrr` and `auc` use full-catalog ranks.",
          "",
          "All K in (1, 5, 10, 20) are in `baselines.json`; `baselines.png` plots them.", "",
          "## Pointwise", "", reports_markdown(other), "",
          "Frappe train split: " + next(r.info["train"] for r in other if "train" in r.info), ""]
    _atomic_write(out / "baselines.md", "\n".join(md).encode())
    png_tmp = out / "baselines.png.tmp.png"
    plot_reports(rank, png_tmp, metrics=("hr", "recall", "ndcg", "map"))
    os.replace(png_tmp, out / "baselines.png")
    print("\n".join(md))
    print(f"wrote {out / 'baselines.json'}, .md, .png in {payload['total_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
