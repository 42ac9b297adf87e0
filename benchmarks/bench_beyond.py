"""Beyond accuracy (issue 19): diversity and calibration decided in the rescoring kernel.

    python benchmarks/run.py --only beyond [--quick]

MovieLens 100K, two protocols: stratified 75/25 (seed 42, as the quality benchmark) and
leave-last-out (each user's latest rating is the test item). ContextFM is the quality
benchmark's model for the protocol (``ML_FM``, 20 epochs / ``TEMPORAL_FM``, 8 epochs; 2 in
``--quick``); an exact :class:`ctxrec.engine.Engine` over its item table carries the items'
genres as a named filter and their text embeddings (titles + plot overviews, ctxrec's own
encoder) as its text table, and serves every user's top-10 with the training items left out,
for a sweep of ``diversity`` (lambda) and ``calibrate`` (gamma, towards each user's training-genre
mix). Per setting:

* NDCG@10 / HR@10 against the test items;
* intra-list diversity (ILD): mean over users of the mean pairwise ``1 - cosine`` of the ten
  items' text embeddings (what the re-rank's similarity uses; the target is read on it), and
  the same over genre indicator vectors and over the model's item vectors;
* catalog coverage: distinct items in all users' top-10s / catalog size;
* genre-calibration KL: mean over users of ``KL(p_u || 0.99 q + 0.01 p_u)``, p_u the user's
  training-genre mix, q the list's (each item spreads 1 over its genres);
* Gini index of item exposure: over the catalog, of how many top-10s each item is in.

Targets: at one setting costing <= 3 % NDCG@10, ILD +20 % and coverage +30 %; calibration KL
halved at <= 3 % NDCG@10. Latency (the added p50 per request of each option, single requests,
one thread) is measured on a synthetic catalog of ``--latency-items`` items (default 1M; 64-d
vectors, 384-d text, 20 categories) through the HNSW path, interleaved with the plain request.
Exposure: after one round of plain top-10s recorded as the serving log (``Engine.add_exposure``),
the same users are served again with ``exposure=eta`` (each item penalised by its impressions over
the most shown item's). The trade-off plot (``beyond.png``): NDCG@10 against ILD, coverage and KL
for each sweep. Mixed rows combine diversity with exposure (and calibration with exposure).
``ild_ceilings``: the ILD of random 10-item lists and of greedy max-dispersion lists over the
catalog (relevance ignored), for reading the ILD target against what any list can reach.
Exploration (Thompson / UCB) and its replayed feedback loop: ``bench_explore``.
Tried and not kept: the factor vectors as the re-rank's similarity for every item (stratified
75/25: NDCG -3.4 % at lambda 0.7 for ILD +1.2 %
and coverage -5.6 %; text embeddings give -1.8 % for +2.9 % / +2.7 %).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

LAMBDAS = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
GAMMAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
MIXED = ((0.6, 1.0), (0.8, 1.0), (0.7, 8.0))
ETAS = (0.25, 0.5, 1.0, 2.0, 4.0)  # exposure weights, after one round of plain top-10s as the serving log
MIXED_EXPOSURE = ((0.7, 0.0, 0.5), (0.7, 0.0, 1.0), (0.8, 0.0, 1.0), (0.0, 1.0, 0.5))  # (lambda, gamma, eta)
ALPHA = 0.01


def _gini(counts: np.ndarray) -> float:
    x = np.sort(counts.astype(np.float64))
    n = len(x)
    if x.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def ild_ceilings(table: np.ndarray, k: int = 10, seed: int = 0) -> dict[str, float]:
    """What ILD a list of ``k`` items can reach when relevance is ignored, over unit rows ``table``.

    Returns
    -------
    dict
        ``random``: the mean ILD of 2,000 uniformly random lists; ``max_dispersion``: the mean
        ILD of 50 greedy max-sum-dispersion lists (each from a random first item, then the item
        farthest in total from those chosen), an approximate upper bound.
    """
    rng = np.random.default_rng(seed)
    n = len(table)
    S = table @ table.T

    def ild(ids: list[int] | np.ndarray) -> float:
        sub = S[np.ix_(ids, ids)]
        return float((k * k - sub.sum()) / (k * (k - 1)))  # mean 1 - cos over pairs (unit rows: diagonal 1)
    rand = [ild(rng.choice(n, k, replace=False)) for _ in range(2000)]
    disp = []
    for _ in range(50):
        sel = [int(rng.integers(n))]
        for _ in range(k - 1):
            far = (1.0 - S[:, sel]).sum(axis=1)
            far[sel] = -np.inf
            sel.append(int(np.argmax(far)))
        disp.append(ild(sel))
    return {"random": float(np.mean(rand)), "max_dispersion": float(np.mean(disp))}


def _protocol(name: str, ds: Any, text: np.ndarray, quick: bool) -> dict[str, Any]:
    import bench_quality as bq
    from ctxrec import _core, csr
    from ctxrec.engine import Engine
    from ctxrec.evaluate import leave_last_out, stratified_split
    from ctxrec.metrics import ranking_metrics_from_topk
    from ctxrec.model import ContextFM
    from ctxrec.model.adapters import from_dataset

    if name == "stratified 75/25":
        sp, params, epochs = stratified_split(ds, ratio=0.75, seed=42), bq.ML_FM, bq.ML_EPOCHS
    else:
        sp, params, epochs = leave_last_out(ds, n_test=1), bq.TEMPORAL_FM, 8
    epochs = 2 if quick else epochs
    X_all, side = from_dataset(ds, label="none")
    t0 = time.perf_counter()
    m = ContextFM(**params, epochs=epochs, num_threads=None).fit(X_all.subset(sp.train_rows), side)
    fit_s = time.perf_counter() - t0
    tab = m.export()
    g = ds.item_attrs["genres"]
    genres = [[g.vocab[j] for j in g.indices[g.indptr[i]:g.indptr[i + 1]]] for i in range(ds.n_items)]
    eng = Engine(exact_threshold=10 ** 9).fit(tab.joined(), tab.item_bias, np.arange(ds.n_items),
                                              item_text=text, text_weight=0.0, item_filters={"genres": genres})
    tr_u, tr_i = ds.users[sp.train_rows], ds.items[sp.train_rows]
    seen_ptr, seen_idx = csr.from_pairs(tr_u, tr_i, ds.n_users, unique=True)
    eng.set_seen_slots({u: seen_idx[seen_ptr[u]:seen_ptr[u + 1]] for u in range(ds.n_users)})
    te_u, te_i = ds.users[sp.test_rows], ds.items[sp.test_rows]
    users = np.unique(te_u)
    rel_ptr, rel_idx = csr.from_pairs(np.searchsorted(users, te_u), te_i, len(users), unique=True)
    Q = np.ascontiguousarray(m.build_queries(users).joined(), np.float32)
    targets = [eng.category_mix("genres", seen_idx[seen_ptr[u]:seen_ptr[u + 1]]) or None for u in users]
    values = sorted({v for row in genres for v in row})
    member = np.zeros((ds.n_items, len(values)), np.float64)
    for i, row in enumerate(genres):
        for v in row:
            member[i, values.index(v)] = 1.0 / len(row)
    P = np.array([[t.get(v, 0.0) for v in values] if t else np.zeros(len(values)) for t in targets])
    tn = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    # the whole catalog in score order per user: the re-rank over all of it is what the engine's
    # pool should reproduce ("exact" column)
    all_ids, all_sc = eng.recommend_batch(Q, ds.n_items, users=[int(u) for u in users], num_threads=0)
    all_ids = np.ascontiguousarray(np.where(np.isfinite(all_sc), all_ids, -1), np.int64)
    all_sc = np.ascontiguousarray(np.where(np.isfinite(all_sc), all_sc, -np.inf), np.float32)
    item_cats = [[values.index(v) for v in row] for row in genres]
    n_of = np.array([len(r) for r in item_cats], np.int64)
    flat_ids = np.maximum(all_ids.reshape(-1), 0)
    per = np.where(all_ids.reshape(-1) >= 0, n_of[flat_ids], 0)
    cat_ptr = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
    cat_idx = np.concatenate([np.array(item_cats[i], np.int64) for i, c in zip(flat_ids, per) if c]).astype(np.int64)
    cat_w = np.ones(len(cat_idx), np.float32)
    P32 = np.ascontiguousarray(P, np.float32)
    gn = (member > 0).astype(np.float64)
    gn /= np.maximum(np.linalg.norm(gn, axis=1, keepdims=True), 1e-12)
    vn = tab.joined().astype(np.float64)
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
    vecs = np.ascontiguousarray(tab.joined(), np.float32)

    def reference(lam: float, gam: float, eta: float) -> np.ndarray:
        kw = dict(cat_indptr=cat_ptr, cat_indices=cat_idx, cat_weights=cat_w, target=P32, calibrate=gam) if gam else {}
        if eta:
            e = eng.exposure()
            kw.update(penalty=np.where(all_ids >= 0, e[np.maximum(all_ids, 0)] / e.max(), 0).astype(np.float32),
                      exposure=eta)
        return _core.rerank(all_ids, all_sc, 10, vecs, item_text=text, diversity=lam, num_threads=0, **kw)[0]

    def measure(lam: float, gam: float, eta: float = 0.0) -> dict[str, Any]:
        t1 = time.perf_counter()
        ids, _ = eng.recommend_batch(Q, 10, users=[int(u) for u in users], diversity=lam, calibrate=gam,
                                     calibrate_by="genres" if gam else None, targets=targets if gam else None,
                                     exposure=eta, num_threads=0)
        serve_s = time.perf_counter() - t1
        ids = np.asarray(ids, np.int64)
        met = ranking_metrics_from_topk(ids, rel_ptr, rel_idx, [10], n_candidates=ds.n_items,
                                        metrics=("ndcg", "hr"))
        def ild_of(table: np.ndarray) -> float:
            E = table[ids]  # [u, 10, d], unit rows
            S = np.einsum("uid,ujd->uij", E, E)
            return float(np.mean((100 - S.sum(axis=(1, 2))) / 90))
        ild = ild_of(tn)
        counts = np.bincount(ids.reshape(-1), minlength=ds.n_items)
        q = member[ids].mean(axis=1)
        qs = (1 - ALPHA) * q + ALPHA * P
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(P > 0, P * np.log(P / qs), 0.0).sum(axis=1)
        has = P.sum(axis=1) > 0
        exact = float(np.mean(np.all(ids == reference(lam, gam, eta), axis=1))) if (lam or gam or eta) else 1.0
        return {"diversity": lam, "calibrate": gam, "exposure": eta, "ndcg@10": met["ndcg@10"], "hr@10": met["hr@10"], "ild": ild,
                "coverage": float(np.count_nonzero(counts) / ds.n_items), "kl": float(kl[has].mean()),
                "gini": _gini(counts), "serve_s": serve_s, "exact_share": exact, "ild_genres": ild_of(gn),
                "ild_vectors": ild_of(vn)}

    rows = [measure(lam, 0.0) for lam in LAMBDAS] + [measure(0.0, gam) for gam in GAMMAS] + \
        [measure(lam, gam) for lam, gam in MIXED]
    plain_ids, _ = eng.recommend_batch(Q, 10, users=[int(u) for u in users], num_threads=0)
    eng.add_exposure(np.asarray(plain_ids).reshape(-1).tolist())  # the serving log: one round of plain lists
    rows += [measure(0.0, 0.0, eta) for eta in ETAS] + [measure(lam, gam, eta) for lam, gam, eta in MIXED_EXPOSURE]
    base = rows[0]
    for r in rows:
        r["ndcg_change"] = r["ndcg@10"] / base["ndcg@10"] - 1
        r["ild_change"] = r["ild"] / base["ild"] - 1
        r["ild_genres_change"] = r["ild_genres"] / base["ild_genres"] - 1
        r["coverage_change"] = r["coverage"] / base["coverage"] - 1
        r["kl_ratio"] = r["kl"] / base["kl"]
        print(f"{name}: lambda {r['diversity']} gamma {r['calibrate']} eta {r['exposure']}: ndcg {r['ndcg@10']:.4f} "
              f"({100 * r['ndcg_change']:+.1f}%) ild {r['ild']:.3f} ({100 * r['ild_change']:+.1f}%) coverage "
              f"{r['coverage']:.3f} ({100 * r['coverage_change']:+.1f}%) kl {r['kl']:.3f} gini {r['gini']:.3f} "
              f"exact {r['exact_share']:.3f}",
              flush=True)
    ok = [r for r in rows if r["ndcg_change"] >= -0.03]
    div_hit = [r for r in ok if r["ild_change"] >= 0.20 and r["coverage_change"] >= 0.30]
    cal_hit = [r for r in ok if r["kl_ratio"] <= 0.5]
    ceilings = {"text": ild_ceilings(tn), "genres": ild_ceilings(gn), "vectors": ild_ceilings(vn)}
    return {"protocol": name, "epochs": epochs, "fit_s": fit_s, "n_users": int(len(users)), "rows": rows,
            "ild_ceilings": ceilings,
            "diversity_target": {"pass": bool(div_hit), "best": max(ok, key=lambda r: min(r["ild_change"] / 0.2,
                                                                                         r["coverage_change"] / 0.3))},
            "calibration_target": {"pass": bool(cal_hit), "best": min(ok, key=lambda r: r["kl_ratio"])}}


def added_latency(options: dict[str, Any], reps: int, target_ms: float = 0.2) -> list[dict[str, Any]]:
    """p50 / p99 of each option's request and its p50 added to ``options["plain"]``'s.

    ``options``: name -> ``fn(i)`` serving request ``i``. Each is warmed once, then the rounds run
    every option once, the order rotating (the first request of a round warms the caches for
    the rest). ``pass``: the added p50 is within ``target_ms``.
    """
    for fn in options.values():
        fn(0)
    times: dict[str, list[float]] = {k: [] for k in options}
    names = list(options)
    for i in range(reps):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t = time.perf_counter()
            options[name](i)
            times[name].append(time.perf_counter() - t)
    p50 = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    rows = [{"option": k, "p50_ms": p50[k], "added_p50_ms": p50[k] - p50["plain"],
             "p99_ms": float(np.percentile(np.array(times[k]) * 1e3, 99)),
             "pass": bool(k == "plain" or p50[k] - p50["plain"] <= target_ms)} for k in options]
    for r in rows:
        print(f"latency {r['option']}: p50 {r['p50_ms']:.3f} ms (+{r['added_p50_ms']:.3f})", flush=True)
    return rows


def _latency(n: int, reps: int) -> dict[str, Any]:
    """Added p50 of each option per single request (one thread), interleaved with the plain request."""
    from ctxrec.engine import Engine
    rng = np.random.default_rng(0)
    V = rng.normal(size=(n, 64)).astype(np.float32)
    T = rng.normal(size=(n, 384)).astype(np.float32)
    cats = rng.integers(0, 20, n)
    t0 = time.perf_counter()
    eng = Engine(M=12, ef_construction=64, num_threads=0, text_candidates=0).fit(
        V, np.zeros(n, np.float32), item_text=T, text_weight=0.0,
        item_filters={"cat": [f"c{c}" for c in cats]})
    build_s = time.perf_counter() - t0
    Q = rng.normal(size=(reps, 64)).astype(np.float32)
    target = {f"c{c}": 1.0 for c in range(5)}
    options = {"plain": {}, "diversity=0.3": {"diversity": 0.3},
               "calibrate=1": {"calibrate": 1.0, "calibrate_by": "cat", "target": target},
               "diversity=0.3 + calibrate=1": {"diversity": 0.3, "calibrate": 1.0, "calibrate_by": "cat",
                                               "target": target},
               "exposure=1": {"exposure": 1.0}}
    eng.add_exposure(rng.integers(0, n, 100_000).tolist())  # a serving log over random items
    rows = added_latency({name: (lambda i, kw=kw: eng.recommend(Q[i], 10, **kw)) for name, kw in options.items()},
                         reps)
    return {"n_items": n, "build_s": build_s, "reps": reps, "rows": rows}


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--latency-items", type=int, default=None)
    args = ap.parse_args(argv)
    from ctxrec.data import load_movielens_100k
    from ctxrec.encoder import TextEncoder
    ds = load_movielens_100k(verify=False)
    text = np.ascontiguousarray(TextEncoder.load().encode(list(ds.item_text)), np.float32)
    out: dict[str, Any] = {"protocols": [_protocol(p, ds, text, args.quick)
                                         for p in ("stratified 75/25", "leave-last-out")]}
    n = args.latency_items or (20_000 if args.quick else 1_000_000)
    out["latency"] = _latency(n, 200 if args.quick else 1000)
    return out


def plot(res: dict[str, Any], path: Any) -> None:
    """The trade-off plot: NDCG@10 against ILD, coverage and KL over the sweeps, one row per protocol."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    protos = res["protocols"]
    fig, axes = plt.subplots(len(protos), 3, figsize=(14, 4 * len(protos)), squeeze=False)
    for row, p in zip(axes, protos):
        rows = p["rows"]
        base = next(r for r in rows if not (r["diversity"] or r["calibrate"] or r["exposure"]))
        sweeps = {"diversity (lambda)": [r for r in rows if r["diversity"] and not r["calibrate"] and not r["exposure"]],
                  "calibrate (gamma)": [r for r in rows if r["calibrate"] and not r["diversity"]],
                  "exposure (eta)": [r for r in rows if r["exposure"]],
                  "diversity + calibrate": [r for r in rows if r["diversity"] and r["calibrate"]]}
        for ax, (key, label) in zip(row, (("ild", "ILD (text)"), ("coverage", "catalog coverage"),
                                          ("kl", "calibration KL (lower = better)"))):
            for (name, rs), marker in zip(sweeps.items(), "osD^"):
                if rs:
                    ax.plot([base[key]] + [r[key] for r in rs], [base["ndcg@10"]] + [r["ndcg@10"] for r in rs],
                            marker=marker, label=name)
            ax.axhline(0.97 * base["ndcg@10"], color="gray", ls=":", lw=1, label="-3 % NDCG@10")
            ax.set_xlabel(label)
            ax.set_ylabel("NDCG@10")
            ax.set_title(f"{p['protocol']}: NDCG@10 vs {label}", fontsize=9)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(res: dict[str, Any]) -> str:
    lines = ["ContextFM (the quality benchmark's settings) served by an exact engine, every test user's top-10 with "
             "the training items left out; ILD over text embeddings; KL to each user's training-genre mix "
             f"(smoothing {ALPHA}). Changes are against lambda = gamma = 0 in the same run. The last column: share of users "
             "whose list equals the same re-rank run over their whole catalog (the engine re-ranks a pool).", ""]
    for p in res["protocols"]:
        lines += [f"## ml-100k {p['protocol']} ({p['n_users']} users, {p['epochs']} epochs, fit {p['fit_s']:.0f} s)", "",
                  "| diversity | calibrate | exposure | NDCG@10 | change | HR@10 | ILD text | change | ILD genres | change | "
                  "ILD vectors | coverage | change | KL | KL / base | Gini | lists = whole-catalog re-rank |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in p["rows"]:
            lines.append(f"| {r['diversity']} | {r['calibrate']} | {r['exposure']} | {r['ndcg@10']:.4f} | {100 * r['ndcg_change']:+.1f}% | "
                         f"{r['hr@10']:.4f} | {r['ild']:.3f} | {100 * r['ild_change']:+.1f}% | {r['ild_genres']:.3f} | "
                         f"{100 * r['ild_genres_change']:+.1f}% | {r['ild_vectors']:.3f} | {r['coverage']:.3f} | "
                         f"{100 * r['coverage_change']:+.1f}% | {r['kl']:.3f} | {r['kl_ratio']:.2f} | {r['gini']:.3f} | "
                         f"{100 * r['exact_share']:.1f}% |")
        d, c = p["diversity_target"], p["calibration_target"]
        b = d["best"]
        lines += ["", f"Diversity target (one setting with <= 3 % NDCG@10 loss, ILD +20 % and coverage +30 %): "
                      f"{'pass' if d['pass'] else 'MISS'}; closest: diversity {b['diversity']}, calibrate "
                      f"{b['calibrate']}: NDCG {100 * b['ndcg_change']:+.1f} %, ILD {100 * b['ild_change']:+.1f} %, "
                      f"coverage {100 * b['coverage_change']:+.1f} %.",
                  f"Calibration target (KL halved at <= 3 % NDCG@10 loss): {'pass' if c['pass'] else 'MISS'}; best: "
                  f"calibrate {c['best']['calibrate']} (diversity {c['best']['diversity']}): KL x{c['best']['kl_ratio']:.2f}, "
                  f"NDCG {100 * c['best']['ndcg_change']:+.1f} %.", ""]
        if "ild_ceilings" in p:
            base = p["rows"][0]
            cells = [f"{what} {p['ild_ceilings'][key][kind]:.3f} ({100 * (p['ild_ceilings'][key][kind] / base[col] - 1):+.1f} %)"
                     for key, what, col in (("text", "text", "ild"), ("genres", "genres", "ild_genres"),
                                            ("vectors", "vectors", "ild_vectors"))
                     for kind in ("random", "max_dispersion")]
            lines += ["What ILD a 10-item list reaches when relevance is ignored, against lambda = 0's "
                      "(`ild_ceilings`): random lists " + ", ".join(cells[0::2]) + "; greedy max-dispersion lists "
                      "(about the most diverse 10 items of the catalog) " + ", ".join(cells[1::2]) + ".", ""]
    png = f"beyond{'_quick' if '--quick' in res.get('argv', []) else ''}.png"
    try:
        from bench_quality import RESULTS
        plot(res, RESULTS / png)
        lines += [f"![NDCG@10 against ILD, coverage and KL]({png})", ""]
    except ImportError as e:  # matplotlib is optional
        lines += [f"(plot skipped: {e})", ""]
    lat = res["latency"]
    lines += [f"## Latency: {lat['n_items']:,} synthetic items (HNSW M=12, ef_construction=64, built in "
              f"{lat['build_s']:.0f} s), single requests, k=10, {lat['reps']} interleaved reps", "",
              "| option | p50 ms | added p50 ms | p99 ms | target (added <= 0.2 ms) |", "|---|---|---|---|---|"]
    for r in lat["rows"]:
        lines.append(f"| {r['option']} | {r['p50_ms']:.3f} | {r['added_p50_ms']:+.3f} | {r['p99_ms']:.3f} | "
                     f"{'—' if r['option'] == 'plain' else ('pass' if r['pass'] else 'MISS')} |")
    return "\n".join(lines)
