"""Exploration (issue 19): a replayed feedback loop of new users, greedy vs Thompson vs UCB.

    python benchmarks/run.py --only explore [--quick]

MovieLens 100K, users split into 5 folds (a seeded permutation). Per fold a Recommender
(ContextFM, BPR, 64 factors, 20 epochs, no context, no text) is fitted on the other four
folds' interactions; each user of the held-out fold then arrives as a new user with no history
and is replayed for 20 rounds: each round the recommender shows 10 items (``recommend(new id,
k=10, exclude=everything shown before, explore=...)``), the shown items that are among the
user's real ml-100k interactions are the clicks, and each click goes back through
``Recommender.feedback`` (the online fold-in) before the next round. Reported: cumulative
clicks (hits) after 5, 10 and 20 rounds, summed over users, per policy, and the ratio to greedy
(``explore=None``) over the same users and models. Every fold is replayed under every policy
from the same saved model. ``--reps R`` repeats the whole protocol with R different fold
permutations (seeds 0..R-1): each user is then simulated R times, under R models; the distinct
users are ml-100k's 943. Target: >= 1.1x greedy cumulative hits after 20 rounds over >= 2,000
simulated users.

``--scales`` sweeps ``explore_scale`` on the first fold of the first permutation (189 users);
the run then replays every permutation with each policy at the scale that did best there (the
other folds and permutations are an out-of-sample check of the choice). Replays run in
``--workers`` processes (default 2), whole folds each.

Latency: each policy's added p50 per single request on a synthetic 1M-item engine (64-d, HNSW
M=12, ef_construction=64) through ``ctxrec.explore.rank`` — the function
``Recommender.recommend(explore=...)`` calls — for a cold user (the prior's factor, cached) and
with a fresh 20-item history's posterior computed in the request (the cache-miss path),
interleaved with the plain request. ``--latency-only`` re-measures it, keeping the loop's result.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROUNDS = 20
MARKS = (5, 10, 20)
K = 10
FOLDS = 5
FM = dict(n_factors=64, epochs=20, random_state=0)
SCALES = (0.25, 0.5, 1.0)


def _fold_models(ds: Any, perm_seed: int, out: Path, quick: bool) -> list[tuple[Path, list[int]]]:
    """Fit one Recommender per fold (saved under ``out``); returns (model dir, held-out users)."""
    from ctxrec.context import ContextSpec
    from ctxrec.model import ContextFM
    from ctxrec.recommender import Recommender
    users = np.random.default_rng(perm_seed).permutation(ds.n_users)
    folds = np.array_split(users, FOLDS)
    res = []
    for f, held in enumerate(folds[:1] if quick else folds):
        train_rows = np.flatnonzero(~np.isin(ds.users, held))
        t0 = time.perf_counter()
        rec = Recommender(ContextSpec(), model=ContextFM(**{**FM, "epochs": 3 if quick else FM["epochs"]}),
                          encoder=None).fit(ds.subset(train_rows))
        path = out / f"perm{perm_seed}_fold{f}"
        rec.save(path)
        print(f"perm {perm_seed} fold {f}: fitted on {len(train_rows)} rows in {time.perf_counter() - t0:.1f} s",
              flush=True)
        res.append((path, [int(u) for u in held]))
    return res


def _replay(path: Path, held: list[int], truth: dict[int, set[Any]], policy: str | None, scale: float,
            seed: int, rounds: int) -> np.ndarray:
    """Cumulative hits per round [rounds] summed over ``held``, each user replayed from a fresh start."""
    from ctxrec.recommender import Recommender
    rec = Recommender.load(path, event_log=None)
    hits = np.zeros(rounds, np.int64)
    for u in held:
        uid = f"sim-{seed}-{u}"
        shown: list[Any] = []
        got = 0
        for t in range(rounds):
            r = rec.recommend(uid, k=K, exclude=shown, explore=policy, explore_scale=scale, seed=seed)
            clicks = [i for i in r.item_ids if i in truth[u]]
            for i in clicks:
                rec.feedback(uid, i)
            shown += r.item_ids
            got += len(clicks)
            hits[t] += got
    return hits


def _job(args: tuple[Any, ...]) -> tuple[tuple[Any, ...], np.ndarray]:
    """One (model, users, policy, scale, seed) replay, in a worker process."""
    path, held, policy, scale, seed, rounds = args
    from ctxrec.data import load_movielens_100k
    ds = load_movielens_100k(verify=False, overviews=False)
    truth: dict[int, set[Any]] = {}
    for u, i in zip(ds.users.tolist(), ds.items.tolist()):
        truth.setdefault(u, set()).add(ds.item_id(i))
    return args, _replay(path, held, truth, policy, scale, seed, rounds)


def _run(jobs: list[tuple[Any, ...]], workers: int) -> list[np.ndarray]:
    if workers <= 1:
        return [_job(j)[1] for j in jobs]
    import multiprocessing as mp
    with mp.get_context("spawn").Pool(workers) as pool:  # spawn: numba's thread pools do not survive fork
        return [h for _, h in pool.map(_job, jobs, chunksize=1)]


def _feedback_loop(ds: Any, reps: int, scales: tuple[float, ...], quick: bool, workers: int) -> dict[str, Any]:
    rounds = 5 if quick else ROUNDS
    with tempfile.TemporaryDirectory() as tmp:
        models = {rep: _fold_models(ds, rep, Path(tmp), quick) for rep in range(reps)}
        # the scale sweep: permutation 0, its first fold
        path0, held0 = models[0][0]
        grid = [(None, 0.0)] + [(pol, s) for pol in ("thompson", "ucb") for s in scales]
        t0 = time.perf_counter()
        swept = _run([(path0, held0, pol, s, 0, rounds) for pol, s in grid], workers)
        base = swept[0]
        sweep = [{"policy": pol, "scale": s, "users": len(held0), "hits_last": int(h[-1]),
                  "ratio": float(h[-1] / max(base[-1], 1))} for (pol, s), h in zip(grid[1:], swept[1:])]
        for r in sweep:
            print(f"sweep {r['policy']} scale {r['scale']}: {r['hits_last']} hits ({r['ratio']:.3f}x greedy)", flush=True)
        sweep_s = time.perf_counter() - t0
        policies: dict[str, tuple[str | None, float]] = {"greedy": (None, 0.0)}
        for pol in ("thompson", "ucb"):
            best = max((r for r in sweep if r["policy"] == pol), key=lambda r: r["hits_last"])
            policies[pol] = (pol, best["scale"])
        jobs, keys = [], []
        for rep in range(reps):
            for name, (pol, s) in policies.items():
                for path, held in models[rep]:
                    jobs.append((path, held, pol, s, rep, rounds))
                    keys.append((rep, name))
        t0 = time.perf_counter()
        results = _run(jobs, workers)
        replay_s = time.perf_counter() - t0
    per_rep = {name: [sum(h for key, h in zip(keys, results) if key == (rep, name)) for rep in range(reps)]
               for name in policies}
    n_users = sum(len(h) for rep in range(reps) for _, h in models[rep])
    total = {name: sum(v) for name, v in per_rep.items()}
    rows = []
    for name, (pol, s) in policies.items():
        row: dict[str, Any] = {"policy": name, "scale": s}
        for m in MARKS:
            if m <= rounds:
                row[f"hits@{m}"] = int(total[name][m - 1])
                row[f"ratio@{m}"] = float(total[name][m - 1] / max(total["greedy"][m - 1], 1))
        row["ratio_per_rep"] = [float(a[-1] / max(g[-1], 1)) for a, g in zip(per_rep[name], per_rep["greedy"])]
        rows.append(row)
        print(f"{name} (scale {s}): " + ", ".join(f"{row[f'hits@{m}']} hits after {m} ({row[f'ratio@{m}']:.3f}x)"
                                               for m in MARKS if m <= rounds), flush=True)
    best = max((r for r in rows if r["policy"] != "greedy"), key=lambda r: r[f"ratio@{rounds}"])
    return {"rounds": rounds, "reps": reps, "simulated_users": n_users, "sweep": sweep, "sweep_s": sweep_s,
            "replay_s": replay_s, "workers": workers, "rows": rows,
            "target": {"best": best["policy"], "ratio": best[f"ratio@{rounds}"],
                       "pass": bool(best[f"ratio@{rounds}"] >= 1.1 and n_users >= 2000 and rounds == ROUNDS)}}


def _latency(n: int, reps: int) -> dict[str, Any]:
    from bench_beyond import added_latency
    from ctxrec import explore
    from ctxrec.engine import Engine
    rng = np.random.default_rng(0)
    V = rng.normal(size=(n, 64)).astype(np.float32)
    t0 = time.perf_counter()
    eng = Engine(M=12, ef_construction=64, num_threads=0, text_candidates=0).fit(V, np.zeros(n, np.float32))
    build_s = time.perf_counter() - t0
    prior = explore.prior_precision(0.3 * rng.normal(size=(1000, 64)))
    Q = rng.normal(size=(reps, 64)).astype(np.float32)
    history = [rng.integers(0, n, 20).tolist() for _ in range(reps)]
    rerank = dict(diversity=0.0, calibrate=0.0, calibrate_by=None, exposure=0.0)

    def call(q: np.ndarray, m: int, opts: dict[str, Any]) -> tuple[np.ndarray, ...]:
        return eng.recommend_batch(q, m, num_threads=1, return_terms=True, **opts)

    cold = explore.posterior_factor(prior, None)  # a user without history: the prior's (cached) factor

    def explored(i: int, pol: str, fresh: bool) -> Any:
        f = explore.posterior_factor(prior, eng.item_vectors(history[i])) if fresh else cold
        gen = explore.rng(i, 0) if pol == "thompson" else None  # as Recommender.recommend: UCB draws nothing
        return explore.rank(eng, pol, 1.0, [gen], [f], Q[i:i + 1], K, call, rerank)

    options = {"plain": lambda i: eng.recommend(Q[i], K)}
    for pol in ("thompson", "ucb"):
        options[f"{pol}, cold user"] = lambda i, pol=pol: explored(i, pol, False)
        options[f"{pol}, new 20-item history"] = lambda i, pol=pol: explored(i, pol, True)
    rows = added_latency(options, reps)
    # what Recommender.feedback now computes once an exploring recommender folds an event in (so
    # that user's next request reads the cache): the factor of a 20-item history, alone
    cost = []
    for i in range(reps):
        t0 = time.perf_counter()
        explore.posterior_factor(prior, eng.item_vectors(history[i]))
        cost.append(time.perf_counter() - t0)
    return {"n_items": n, "build_s": build_s, "reps": reps, "rows": rows,
            "factor_at_feedback_p50_ms": float(np.median(cost) * 1e3)}


def _ucb_pool_exactness(ds: Any, n_users: int = 300) -> list[dict[str, Any]]:
    """Share of users whose UCB top-10 over the pool (``explore.ucb_pool``) equals the UCB top-10
    of the whole catalog, per scale: ml-100k, the loop's model fitted on every user; the first
    ``n_users`` users (their whole history as the posterior's) and one cold user."""
    from ctxrec import explore
    from ctxrec.context import ContextSpec
    from ctxrec.model import ContextFM
    from ctxrec.recommender import Recommender
    rec = Recommender(ContextSpec(), model=ContextFM(**FM), encoder=None).fit(ds)
    eng = rec.engine_
    users = list(rec.user_ids_[:n_users]) + ["cold"]
    rows = []
    for scale in (0.5, 1.0, 2.0, 4.0):
        same = 0
        for u in users:
            r = rec.recommend(u, {}, k=K, explore="ucb", explore_scale=scale)
            plain = rec.recommend(u, {}, k=len(rec.item_ids_))  # every eligible item, by the model's score
            ids = plain.item_ids
            s = np.asarray(plain.scores) + explore.ucb_bonus(rec.user_posterior(u), eng.item_vectors(ids), scale)
            want = [ids[i] for i in np.lexsort((np.arange(len(s)), -s))[:K]]
            same += r.item_ids == want
        rows.append({"scale": scale, "users": len(users), "exact_share": same / len(users),
                     "pool": explore.ucb_pool(eng, K, scale, dict(diversity=0.0, calibrate=0.0, exposure=0.0))})
        print(f"ucb pool at scale {scale}: {same}/{len(users)} lists = whole-catalog UCB", flush=True)
    return rows


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scales", type=float, nargs="*", default=list(SCALES))
    ap.add_argument("--latency-items", type=int, default=None)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="replay processes (each replays whole folds)")
    ap.add_argument("--latency-only", action="store_true",
                    help="re-measure the latency only, keeping the feedback loop of results/explore.json")
    args = ap.parse_args(argv)
    if args.latency_only:
        import json
        from bench_quality import RESULTS
        prev = json.loads((RESULTS / "explore.json").read_text())
        out: dict[str, Any] = {"loop": prev["loop"], "loop_run": prev.get("loop_run") or {
            "date_utc": prev["machine"]["date_utc"], "argv": prev["argv"]}}
    else:
        from ctxrec.data import load_movielens_100k
        ds = load_movielens_100k(verify=False, overviews=False)
        out = {"loop": _feedback_loop(ds, 1 if args.quick else args.reps, tuple(args.scales), args.quick,
                                      args.workers)}
    from ctxrec.data import load_movielens_100k
    out["ucb_pool"] = _ucb_pool_exactness(load_movielens_100k(verify=False, overviews=False),
                                          50 if args.quick else 300)
    if not args.no_latency:
        out["latency"] = _latency(args.latency_items or (20_000 if args.quick else 1_000_000),
                                  200 if args.quick else 1000)
    return out


def markdown(res: dict[str, Any]) -> str:
    lp = res["loop"]
    R = lp["rounds"]
    lines = []
    if "loop_run" in res:
        lines += [f"(The feedback loop below is the run of {res['loop_run']['date_utc']}, `python benchmarks/run.py --only explore {' '.join(res['loop_run']['argv'])}`; "
                  "the latency was measured again in this run.)", ""]
    lines += [f"Replayed feedback loop on ml-100k: {lp['simulated_users']} simulated new users ({lp['reps']} fold "
             f"permutation(s) x 943 users), {R} rounds of {K} items, clicks = shown items among the user's real "
             "interactions, each click folded in before the next round. Cumulative hits summed over users.", "",
             "| policy | explore_scale | " + " | ".join(f"hits after {m} | x greedy" for m in MARKS if m <= R)
             + " | x greedy per permutation |",
             "|---|---|" + "---|---|" * len([m for m in MARKS if m <= R]) + "---|"]
    for r in lp["rows"]:
        cells = " | ".join(f"{r[f'hits@{m}']} | {r[f'ratio@{m}']:.3f}" for m in MARKS if m <= R)
        lines.append(f"| {r['policy']} | {r['scale']} | {cells} | {', '.join(f'{x:.3f}' for x in r['ratio_per_rep'])} |")
    t = lp["target"]
    lines += ["", f"Target (>= 1.1x greedy cumulative hits after 20 rounds, >= 2,000 simulated users): "
                  f"{'pass' if t['pass'] else 'MISS'} (best: {t['best']}, {t['ratio']:.3f}x).", "",
              f"Scale sweep (permutation 0, fold 0; the scale of each policy above was chosen here; "
              f"{lp['sweep_s']:.0f} s, replays {lp['replay_s']:.0f} s in {lp['workers']} processes):", "",
              f"| policy | explore_scale | users | hits after {R} | x greedy |", "|---|---|---|---|---|"]
    for r in lp["sweep"]:
        lines.append(f"| {r['policy']} | {r['scale']} | {r['users']} | {r['hits_last']} | {r['ratio']:.3f} |")
    if res.get("ucb_pool"):
        lines += ["", "UCB's pool (`explore.ucb_pool`, k=10): share of ml-100k users (the loop's model fitted on every "
                      "user, their latest 50 items (fold_in_history) as the posterior's; and one cold user) whose list equals UCB over the "
                      "whole catalog:", "", "| explore_scale | pool | users | lists = whole-catalog UCB |",
                  "|---|---|---|---|"]
        for r in res["ucb_pool"]:
            lines.append(f"| {r['scale']} | {r['pool']} | {r['users']} | {100 * r['exact_share']:.1f}% |")
    lat = res.get("latency")
    if lat:
        lines += ["", f"## Latency: {lat['n_items']:,} synthetic items (HNSW M=12, ef_construction=64, built in "
                      f"{lat['build_s']:.0f} s), single requests, k={K}, {lat['reps']} interleaved reps. "
                      "Cold user: the prior's factor (what `Recommender.user_posterior` caches for every user without "
                      "history; a known user's factor is cached the same way until their history or the catalog "
                      "changes, and once a recommender has explored, `feedback` computes the user's next factor, so "
                      "a request after an event reads the cache too); new 20-item history: the factor computed in "
                      "the request (the cache-miss path: left for a known user's first exploring request since "
                      "fit or load).", "",
                  "| option | p50 ms | added p50 ms | p99 ms | target (added <= 0.2 ms) |", "|---|---|---|---|---|"]
        for r in lat["rows"]:
            lines.append(f"| {r['option']} | {r['p50_ms']:.3f} | {r['added_p50_ms']:+.3f} | {r['p99_ms']:.3f} | "
                         f"{'—' if r['option'] == 'plain' else ('pass' if r['pass'] else 'MISS')} |")
        if "factor_at_feedback_p50_ms" in lat:
            lines += ["", f"The factor of a 20-item history alone (`explore.posterior_factor` with the item vectors' "
                          f"look-up), what a `feedback` adds once the recommender explores: p50 "
                          f"{lat['factor_at_feedback_p50_ms']:.3f} ms."]
    return "\n".join(lines)
