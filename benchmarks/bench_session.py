"""Interactive sessions on MovieLens 100K with simulated users.

Each simulated user is one leave-last-out test interaction: the simulator knows the held-out
target movie and answers every question truthfully from the target's attributes and text:

* an attribute question (genre, decade): one of the target's values, drawn at random
  ("choice" mode: the option; "text" mode: typed as "I'd like <value>");
* a text-cluster question: the option holding the target ("choice" mode), the option whose
  shown description is closest to the target's text ("describe" mode), or a few
  consecutive words of the target's overview typed as free text ("text" mode), which the
  session reads through the encoder.

We report HR@10 and NDCG@10 of the target (the user's training items excluded) after 0, 1,
2 and 3 questions chosen by the session's expected information gain, against the same number
of questions drawn at random from the same bank (same users, same simulator); in "text" mode
also against no questions at all, the user typing a few words of the overview at each turn.

    .venv/bin/python benchmarks/bench_session.py --users 400       # ~ a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_session.py --model DIR       # reuse a saved Recommender
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def train_or_load(model_dir: str | None, split, epochs: int):
    from ctxrec.context import ContextSpec
    from ctxrec.encoder import TextEncoder
    from ctxrec.model import ContextFM
    from ctxrec.recommender import Recommender
    if model_dir and (Path(model_dir) / "manifest.json").is_file():
        print(f"[model] loading {model_dir}")
        return Recommender.load(model_dir), None
    t0 = time.perf_counter()
    rec = Recommender(ContextSpec(time=["timestamp"], text=["query"]),
                      model=ContextFM(n_factors=64, epochs=epochs, random_state=0),
                      encoder=TextEncoder.load()).fit(split.train)
    fit_s = time.perf_counter() - t0
    print(f"[model] fitted in {fit_s:.1f} s")
    if model_dir:
        rec.save(model_dir)
    return rec, fit_s


class Simulator:
    """Answers truthfully from the target's attributes and text."""

    def __init__(self, rec, mode: str, rng: np.random.Generator, n_words: int = 8, bank=None) -> None:
        self.rec, self.mode, self.rng, self.n_words = rec, mode, rng, n_words
        self.desc = {}
        if mode == "describe":  # the user judges by the shown descriptions, blind to the clustering
            qs = [q for q in bank if q.kind == "cluster"]
            texts = [f"{o}. {d}" for q in qs for o, d in zip(q.options, q.details) if o != "something else"]
            emb = np.asarray(rec.encoder_.encode(texts), np.float64)
            pos = 0
            for q in qs:
                n = sum(o != "something else" for o in q.options)
                self.desc[q.id] = emb[pos:pos + n]
                pos += n
        items = rec.items_
        ov = items["overview"].astype(str).tolist() if "overview" in items.columns else [""] * len(items)
        titles = items["title"].astype(str).tolist()
        self.words = [re.findall(r"\S+", o) or re.findall(r"\S+", re.sub(r"\(\d{4}\)", "", t))
                      for o, t in zip(ov, titles)]

    def answer(self, q, target: int):
        row = q.membership[target]
        if q.kind == "attribute":
            if np.ptp(row) == 0:
                return None  # the target has no value for it: "I don't know"
            j = int(self.rng.choice(np.flatnonzero(row > 0)))
            return j if self.mode != "text" else f"I'd like {q.options[j].lower()}"
        j = int(np.argmax(row))
        if self.mode == "choice":
            return j
        if self.mode == "describe":
            t = np.asarray(self.rec.item_text_[target], np.float64)
            if q.id != "clusters" and int(np.argmax(self.desc["clusters"] @ t)) != int(q.id.split("/")[1]):
                return q.n_options - 1  # "something else": by the user's own reading of the first question
            return int(np.argmax(self.desc[q.id] @ t))
        return self.snippet(target)

    def snippet(self, target: int) -> str:
        w = self.words[target]
        start = int(self.rng.integers(0, max(1, len(w) - self.n_words + 1)))
        return " ".join(w[start:start + self.n_words])


def run(rec, bank, cases, mode: str, policy: str, n_q: int, seed: int, kw=None):
    from ctxrec.session import Session
    ranks = np.zeros((len(cases), n_q + 1), np.int64)
    first_q: dict[str, int] = {}
    gains, turn_ms, would_stop = [], [], 0
    rng = np.random.default_rng(seed)
    sim = Simulator(rec, mode, np.random.default_rng(seed + 1), bank=bank)
    for c, (user, target, ts) in enumerate(cases):
        s = Session(rec, user, {"timestamp": int(ts)}, bank=bank, k=10, **{**(kw or {}), "confidence": 1.0,
                                                                            "min_gain": 0.0})
        ranks[c, 0] = rank_of(s, target)
        for step in range(n_q):
            t0 = time.perf_counter()
            if policy == "say":  # no question: the user volunteers a few words of the target's overview
                s.say(sim.snippet(target))
                turn_ms.append((time.perf_counter() - t0) * 1e3)
                ranks[c, step + 1] = rank_of(s, target)
                continue
            if policy == "chosen":
                if step == 0:
                    s2 = Session(rec, user, {"timestamp": int(ts)}, bank=bank, k=10, **(kw or {}))
                    would_stop += s2.next_question() is None
                g = s.question_gains()
                q = s.next_question()
                gains.append(g[q.id])
            else:
                left = [q.id for q in bank if q.id not in s.asked]
                q = s.ask(left[int(rng.integers(len(left)))])
            if step == 0:
                first_q[q.id] = first_q.get(q.id, 0) + 1
            s.answer(sim.answer(q, target))
            turn_ms.append((time.perf_counter() - t0) * 1e3)
            ranks[c, step + 1] = rank_of(s, target)
    return ranks, {"first_question": dict(sorted(first_q.items(), key=lambda t: -t[1])),
                   "mean_gain_nats": float(np.mean(gains)) if gains else None,
                   "turn_ms_median": float(np.median(turn_ms)) if turn_ms else None,
                   "stopped_before_asking": would_stop}


def rank_of(s, target: int) -> int:
    sc = s.scores
    return int(np.sum(sc > sc[target])) + 1 if np.isfinite(sc[target]) else 10**9


def metrics(ranks: np.ndarray, k: int = 10) -> dict[str, list[float]]:
    hit = ranks <= k
    ndcg = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
    n = len(ranks)
    hr = hit.mean(0)
    return {"hr@10": hr.tolist(), "hr@10_se": np.sqrt(hr * (1 - hr) / n).tolist(), "ndcg@10": ndcg.mean(0).tolist(),
            "mrr": (1.0 / ranks).mean(0).tolist(), "median_rank": np.median(ranks, 0).tolist()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=400, help="simulated users (test rows drawn at random)")
    p.add_argument("--questions", type=int, default=3)
    p.add_argument("--model", help="Recommender directory to load (or to write after training)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--modes", default="choice,describe,text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset", type=int, default=0,
                   help="skip this many rows of the seeded permutation of test rows (disjoint tuning draws)")
    p.add_argument("--session-kw", default="{}", help="JSON keyword arguments of Session (e.g. a tuning sweep)")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)

    from ctxrec.data import load_movielens_100k
    from ctxrec.evaluate import leave_last_out
    from ctxrec.session import QuestionBank
    ds = load_movielens_100k()
    split = leave_last_out(ds)
    rec, fit_s = train_or_load(a.model, split, a.epochs)
    t0 = time.perf_counter()
    bank = QuestionBank.from_recommender(rec)
    bank_s = time.perf_counter() - t0
    print(f"[bank] {len(bank)} questions in {bank_s:.2f} s: {bank}")
    te = split.test
    rng = np.random.default_rng(a.seed)
    rows = rng.permutation(len(te))[a.offset:a.offset + a.users]
    kw = json.loads(a.session_kw)
    cases = [(te.user_ids[te.users[r]], int(te.items[r]), int(te.timestamp[r])) for r in rows]
    assert np.array_equal(te.item_ids, rec.item_ids_)

    results = {}
    extra = {}
    for mode in a.modes.split(","):
        for policy in ("chosen", "random") + (("say",) if mode == "text" else ()):
            t0 = time.perf_counter()
            ranks, info = run(rec, bank, cases, mode, policy, a.questions, a.seed, kw)
            m = metrics(ranks)
            results[f"{mode}/{policy}"] = m
            extra[f"{mode}/{policy}"] = {**info, "seconds": time.perf_counter() - t0}
            print(f"[{mode:>6}/{policy:<6}] HR@10 " + "  ".join(f"{x:.4f}" for x in m["hr@10"])
                  + "   NDCG@10 " + "  ".join(f"{x:.4f}" for x in m["ndcg@10"])
                  + f"   ({time.perf_counter() - t0:.0f} s)")

    base = results[next(iter(results))]["hr@10"][0]
    verdict = {}
    for mode in a.modes.split(","):
        ch, rd = results[f"{mode}/chosen"]["hr@10"][-1], results[f"{mode}/random"]["hr@10"][-1]
        se = np.hypot(results[f"{mode}/chosen"]["hr@10_se"][-1], results[f"{mode}/random"]["hr@10_se"][-1])
        verdict[mode] = {"ratio_vs_no_question": ch / base if base else None, "meets_2x": bool(ch >= 2 * base),
                         "chosen_minus_random": ch - rd, "diff_over_se": (ch - rd) / se if se else None}
    out = {"benchmark": "session", "dataset": "movielens-100k", "split": "leave-last-out",
           "simulated_users": len(cases), "questions": a.questions, "seed": a.seed, "bank_size": len(bank),
           "bank": [{"id": q.id, "prompt": q.prompt, "options": list(q.options)} for q in bank],
           "bank_seconds": bank_s, "fit_seconds": fit_s, "results": results, "details": extra, "verdict": verdict,
           "session_kw": kw, "offset": a.offset,
           "command": "python benchmarks/bench_session.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()}}
    d = Path(a.out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "session.json").write_text(json.dumps(out, indent=2))
    (d / "session.md").write_text(markdown(out))
    plot(out, d / "session.png")
    print(f"[out] {d / 'session.json'}, session.md, session.png")
    for mode, v in verdict.items():
        print(f"[target:{mode}] HR@10 after {a.questions} chosen = {v['ratio_vs_no_question']:.2f}x no-question "
              f"({'met' if v['meets_2x'] else 'MISSED'} 2x); chosen - random = {v['chosen_minus_random']:+.4f} "
              f"({v['diff_over_se']:.1f} SE)")
    return 0


def markdown(o) -> str:
    n = o["questions"]
    lines = ["# Interactive sessions: clarifying questions on MovieLens 100K", "",
             f"{o['simulated_users']} simulated users (leave-last-out test rows, seed {o['seed']}); the simulator "
             "knows the held-out target and answers truthfully from its attributes/text. Question bank: "
             f"{o['bank_size']} questions derived from the catalog (built in {o['bank_seconds']:.2f} s). "
             "Target rank over the whole catalog minus the user's training items.", "",
             "Model: `Recommender(ContextSpec(time=['timestamp'], text=['query']), ContextFM(n_factors=64, "
             "epochs=10, random_state=0), encoder=TextEncoder.load())` fitted on the leave-last-out training split "
             "(what this script trains when `--model` names no saved model). Session settings: defaults"
             + (f" with {o['session_kw']}" if o.get("session_kw") else "") + "; the benchmark always asks "
             f"exactly {o['questions']} questions (confidence 1.0, min_gain 0).", "",
             "| mode / policy | " + " | ".join(f"HR@10 after {q}" for q in range(n + 1)) + " | "
             + " | ".join(f"NDCG@10 after {q}" for q in range(n + 1)) + " |",
             "|---|" + "---:|" * (2 * n + 2)]
    for name, m in o["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{h:.4f} ± {s:.4f}" for h, s in zip(m["hr@10"], m["hr@10_se"]))
                     + " | " + " | ".join(f"{x:.4f}" for x in m["ndcg@10"]) + " |")
    lines += ["", "± = one binomial standard error. *choice*: the simulated user picks the option that fits the "
              "target (the cluster that holds it); *describe*: the same, but cluster questions answered by the option whose shown description (titles + words) the encoder finds closest to the target's text, blind to the clustering; *text*: attribute answers typed (\"I'd like comedy\"), cluster answers typed as a few words of "
              "the target's overview (read through the encoder). *text/say*: no questions at all, the user types a few "
              "words of the target's overview at each turn (how much the free text alone carries).", "", "## Targets", ""]
    for mode, v in o["verdict"].items():
        lines.append(f"- {mode}: HR@10 after {n} chosen questions = {v['ratio_vs_no_question']:.2f}× the no-question "
                     f"HR@10 (target ≥ 2×: {'met' if v['meets_2x'] else 'missed'}); chosen − random = "
                     f"{v['chosen_minus_random']:+.4f} ({v['diff_over_se']:.1f} SE)")
    if "text/say" in o["results"] and "text/chosen" in o["results"]:
        say, ch = o["results"]["text/say"]["hr@10"][-1], o["results"]["text/chosen"]["hr@10"][-1]
        lines += ["", f"- text mode, for scale: typing a few overview words {n} times with no question at all gives "
                  f"HR@10 {say:.4f} (chosen questions: {ch:.4f}); in this mode the typed words of the target's own "
                  "overview carry most of the information, whichever question they answer."]
    lines += ["", "## Details", ""]
    for name, d in o["details"].items():
        fq = ", ".join(f"{k} ×{v}" for k, v in list(d["first_question"].items())[:4])
        lines.append(f"- {name}: {d['seconds']:.0f} s; median turn {d['turn_ms_median']:.1f} ms (incl. the "
                     "benchmark's bookkeeping)" + (f"; first questions: {fq}" if fq else "")
                     + (f"; mean EIG of chosen questions {d['mean_gain_nats']:.2f} nats" if d["mean_gain_nats"]
                        else "")
                     + (f"; sessions that would not ask at all (confidence ≥ 0.5): {d['stopped_before_asking']}"
                        if name.endswith("chosen") else ""))
    lines += ["", f"Command: `{o['command']}`", "", "![HR@10 by questions](session.png)", ""]
    return "\n".join(lines)


def plot(o, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(o["questions"] + 1)
    for name, m in o["results"].items():
        style = "-" if name.endswith("chosen") else "--" if name.endswith("random") else ":"
        for ax, key in zip(axes, ("hr@10", "ndcg@10")):
            ax.plot(x, m[key], style, marker="o", label=name)
    axes[0].axhline(2 * o["results"][next(iter(o["results"]))]["hr@10"][0], color="grey", lw=0.8, ls=":",
                    label="2× no-question")
    for ax, key in zip(axes, ("HR@10", "NDCG@10")):
        ax.set_xlabel("questions asked")
        ax.set_ylabel(key)
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"ctxrec sessions, MovieLens 100K, {o['simulated_users']} simulated users")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
