"""The ``ctxrec`` command line: export, train, evaluate, recommend, serve, bench, encode-catalog, recommend-all.

Bad input exits non-zero with a one-line error on stderr.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

DATASETS = ("movielens-100k", "frappe", "csv")


# ---------------------------------------------------------------------------- config
def read_config(path: str | None) -> dict[str, Any]:
    """A JSON training config: {"context": {...ContextSpec kwargs}, "model": {...ContextFM params},
    "recommender": {...Recommender kwargs}, "engine": {...Engine params}}."""
    if path is None:
        return {}
    p = Path(path)
    try:
        cfg = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"--config: no such file {path!r}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--config: {path} is not valid JSON ({e})") from None
    unknown = set(cfg) - {"context", "model", "recommender", "engine"}
    if unknown:
        raise ValueError(f"--config: unknown section(s) {sorted(unknown)}; expected context, model, recommender, engine")
    return cfg


def default_context(dataset: str) -> dict[str, Any]:
    """The context a dataset naturally has (overridable by the config's "context")."""
    if dataset == "movielens-100k":
        return {"time": ["timestamp"], "text": ["query"]}
    if dataset == "frappe":
        return {"categorical": ["daytime", "weekday", "isweekend", "homework", "cost", "weather", "country",
                                "city"]}
    return {}


def load_dataset(kind: str, data: str | None) -> Any:
    from ctxrec import data as D
    if kind == "movielens-100k":
        return D.load_movielens_100k(data)
    if kind == "frappe":
        return D.load_frappe(data)
    if kind == "csv":
        if data is None:
            raise ValueError("--data: the csv dataset needs a directory holding interactions.csv (and items.csv)")
        d = Path(data)
        inter = d / "interactions.csv"
        if not inter.is_file():
            raise ValueError(f"--data: {inter} not found (columns: user_id, item_id, optional timestamp, rating, ...)")
        import pandas as pd
        cols = list(pd.read_csv(inter, nrows=0).columns)
        items = d / "items.csv"
        item_cols = list(pd.read_csv(items, nrows=0).columns) if items.is_file() else []
        return D.Dataset.from_frames(
            inter, rating_col="rating" if "rating" in cols else None, label_col="label" if "label" in cols else None,
            timestamp_col="timestamp" if "timestamp" in cols else None,
            context_cols=[c for c in cols if c not in ("user_id", "item_id", "rating", "label", "timestamp")],
            items=items if items.is_file() else None,
            item_text_cols=[c for c in item_cols if c in ("title", "text", "description")], name=d.name)
    raise ValueError(f"--dataset: {kind!r} is not one of {', '.join(DATASETS)}")


def build_recommender(dataset: str, cfg: dict[str, Any], encoder: str | None) -> Any:
    from ctxrec.context import ContextSpec
    from ctxrec.model import ContextFM
    from ctxrec.recommender import Recommender
    ctx = cfg.get("context", default_context(dataset))
    try:
        spec = ContextSpec(**ctx)
        model = ContextFM(**{"verbose": True, **cfg.get("model", {})})
    except TypeError as e:
        raise ValueError(f"--config: {e}") from None
    kw = dict(cfg.get("recommender", {}))
    return Recommender(spec, model=model, encoder=encoder, engine_params=cfg.get("engine"), **kw)


# ---------------------------------------------------------------------------- commands
def cmd_train(a: argparse.Namespace) -> None:
    cfg = read_config(a.config)
    ds = load_dataset(a.dataset, a.data)
    print(f"[train] {ds}")
    rec = build_recommender(a.dataset, cfg, None if a.no_text else a.encoder)
    t0 = time.perf_counter()
    rec.fit(ds)
    fit_s = time.perf_counter() - t0
    rec.save(a.out)
    report = write_training_report(rec, Path(a.out).with_name(Path(a.out).name + "-report"), fit_s)
    print(f"[train] model written to {a.out} ({fit_s:.1f} s); report: {report}")


def write_training_report(rec: Any, directory: Path, fit_s: float) -> Path:
    """Markdown + PNG of the training curve."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    directory.mkdir(parents=True, exist_ok=True)
    hist = rec.model_.history_
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["epoch"] + 1 for h in hist], [h["loss"] for h in hist], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"training loss ({rec.model_.loss})")
    ax.set_title("ContextFM training curve")
    fig.tight_layout()
    fig.savefig(directory / "training_curve.png", dpi=120)
    plt.close(fig)
    lines = ["# ctxrec training report", "", f"- fit time: {fit_s:.1f} s", f"- {rec.summary()}", "",
             "| epoch | loss | examples/s |", "|---:|---:|---:|"]
    lines += [f"| {h['epoch'] + 1} | {h['loss']:.5f} | {h['examples_per_s']:,.0f} |" for h in hist]
    lines += ["", "![training curve](training_curve.png)", ""]
    (directory / "report.md").write_text("\n".join(lines))
    return directory / "report.md"


def cmd_evaluate(a: argparse.Namespace) -> None:
    from ctxrec import evaluate as E
    cfg = read_config(a.config)
    ds = load_dataset(a.dataset, a.data)
    splits = {"leave-last-out": lambda: E.leave_last_out(ds), "stratified": lambda: E.stratified_split(ds),
              "temporal": lambda: E.temporal_split(ds), "random": lambda: E.random_split(ds)}
    split = splits[a.split]()
    rec = build_recommender(a.dataset, cfg, None if a.no_text else a.encoder).fit(split.train)
    report = rec.evaluate(split.train, split.test, ks=(1, 5, 10, 20), group="row" if a.split == "leave-last-out"
                          else "user", split=a.split)
    out = E.save_reports([report], a.out)
    print(report.to_markdown())
    print(f"[evaluate] report written to {out}")


def context_arg(a: argparse.Namespace) -> dict[str, Any]:
    """The request context of --context (JSON object) and --query (free text)."""
    try:
        context = json.loads(a.context) if a.context else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--context: not valid JSON ({e})") from None
    if not isinstance(context, dict):
        raise ValueError(f"--context: expected a JSON object, got {a.context!r}")
    if a.query:
        context["query"] = a.query
    return context


def cmd_recommend(a: argparse.Namespace) -> None:
    from ctxrec.recommender import Recommender
    context = context_arg(a)
    rec = Recommender.load(a.model)
    t0 = time.perf_counter()
    res = rec.recommend(a.user, context, k=a.k)
    ms = (time.perf_counter() - t0) * 1e3
    if a.json:
        print(json.dumps(res.to_dict()))
        return
    print(f"user {a.user!r}{' (cold start)' if res.cold_start else ''}, context {context}: {ms:.2f} ms")
    titles = rec.items_.set_index("item_id")
    col = "title" if "title" in titles.columns else "text"
    for rank, (i, s) in enumerate(zip(res.item_ids, res.scores), 1):
        print(f"{rank:>3}. {i!s:<10} {s:8.3f}  {str(titles.loc[i, col])[:70]}")


def cmd_chat(a: argparse.Namespace) -> None:
    """Interactive prompt: the session asks, you answer (option number, free text, enter = skip),
    `why N` explains the N-th item, `quit` (or end of input) leaves."""
    from ctxrec.recommender import Recommender
    from ctxrec.session import ChatLLM, Session
    context = context_arg(a)
    rec = Recommender.load(a.model)
    s = Session(rec, a.user, context, k=a.k, max_questions=a.max_questions,
                llm=ChatLLM(a.llm_url, model=a.llm_model) if a.llm_url else None)
    titles = rec.items_.set_index("item_id")
    col = "title" if "title" in titles.columns else "text"

    def show() -> list[Any]:
        r = s.recommend()
        print(f"\ntop {len(r.item_ids)} for user {a.user!r}{' (cold start)' if r.cold_start else ''} "
              f"(confidence {s.top_mass():.2f}):")
        for rank, i in enumerate(r.item_ids, 1):
            print(f"{rank:>3}. {str(titles.loc[i, col])[:70]}  [{i}]")
        return r.item_ids

    items = show()
    while True:
        q = s.next_question()
        if q is not None:
            print(f"\n? {s.phrase(q)}")
            for j, (o, d) in enumerate(zip(q.options, q.details), 1):
                print(f"  {j}. {o}" + (f"  ({d})" if d and q.kind == "cluster" else ""))
            print("  (a number, your own words, enter to skip, `why N`, `quit`)")
        else:
            print("\n(no more questions: say anything to refine, `why N`, `quit`)")
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if line.lower() in ("q", "quit", "exit"):
            break
        if line.lower().startswith("why"):
            try:
                n = int(line.split()[1])
                ex = s.explain(items[n - 1])
            except (IndexError, ValueError):
                print(f"  usage: why N (1..{len(items)})")
                continue
            print(f"  #{n} {str(titles.loc[items[n - 1], col])[:60]}: " + "; ".join(ex["reasons"]))
            print("  contributions: " + ", ".join(f"{k} {v:+.3f}" for k, v in ex["contributions"].items()))
            continue
        if q is None and not line:
            continue
        answer: Any = None if not line else int(line) - 1 if q is not None and line.isdigit() \
            and 1 <= int(line) <= q.n_options else line
        try:
            s.answer(answer)
        except ValueError as e:
            print(f"  {e}")
            continue
        items = show()


def cmd_serve(a: argparse.Namespace) -> None:
    from ctxrec.service import serve
    serve(a.model, host=a.host, port=a.port)


def cmd_export(argv: Sequence[str]) -> None:
    from ctxrec.encoder.export import main
    sys.exit(main(list(argv)))


def cmd_bench(argv: Sequence[str]) -> None:
    harness = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
    if not harness.is_file():
        raise ValueError("the benchmark harness lives in the source tree (benchmarks/run.py); run it from a checkout")
    sys.exit(subprocess.call([sys.executable, str(harness), *argv]))


def _cluster_kw(a: argparse.Namespace) -> dict[str, Any]:
    return {"scheduler": a.scheduler, "n_workers": a.workers, "partition_rows": a.partition_rows,
            "overwrite": a.overwrite, "progress": not a.no_progress}


def cmd_encode_catalog(a: argparse.Namespace) -> None:
    from ctxrec.distributed import encode_catalog
    res = encode_catalog(a.items, a.out, text_col=a.text_col, id_col=a.id_col or None, encoder=a.encoder,
                         batch_size=a.batch_size, cache_dir=a.cache_dir, threads=a.threads, **_cluster_kw(a))
    s = res.summary()
    print(f"[encode-catalog] {s['rows']:,} texts in {s['partitions']} partitions on {s['workers']} worker(s): "
          f"{s['seconds']:.1f} s ({s['rows_per_s']:,.0f} texts/s; {s['cache_hits']:,} from the cache) -> {a.out}")


def cmd_recommend_all(a: argparse.Namespace) -> None:
    from ctxrec.distributed import recommend_all
    context = context_arg(a)
    res = recommend_all(a.model, a.out, users=a.users, user_col=a.user_col, context=context, k=a.k,
                        exclude_seen=not a.include_seen, threads=a.threads, ship=a.ship, **_cluster_kw(a))
    s = res.summary()
    print(f"[recommend-all] top-{a.k} for {s['rows']:,} requests in {s['partitions']} partitions on "
          f"{s['workers']} worker(s): {s['seconds']:.1f} s ({s['rows_per_s']:,.0f} users/s) -> {a.out}")


# ---------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctxrec", description="Context-aware recommendations with an LLM text encoder.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("export", help="export the text encoder to ONNX (see `ctxrec export --help`)", add_help=False)
    sub.add_parser("bench", help="run the benchmark harness (see `ctxrec bench --help`)", add_help=False)

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dataset", required=True, choices=DATASETS)
        sp.add_argument("--data", help="data directory (default: $CTXREC_DATA_DIR)")
        sp.add_argument("--config", help="JSON config: context / model / recommender / engine sections")
        sp.add_argument("--encoder", default="default", help="encoder directory (default: ctxrec's export)")
        sp.add_argument("--no-text", action="store_true", help="train without any text (no encoder)")

    t = sub.add_parser("train", help="train a recommender and write a model directory + report")
    data_args(t)
    t.add_argument("--out", required=True, help="model directory to write")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("evaluate", help="split, train and evaluate with full-ranking metrics")
    data_args(e)
    e.add_argument("--split", default="leave-last-out", choices=["leave-last-out", "stratified", "temporal", "random"])
    e.add_argument("--out", default="evaluation", help="report directory (JSON + Markdown + PNG)")
    e.set_defaults(fn=cmd_evaluate)
    def request_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", required=True, help="model directory written by `ctxrec train`")
        sp.add_argument("--user", required=True)
        sp.add_argument("--context", help='context as JSON, e.g. \'{"timestamp": "1998-03-01T22:00"}\'')
        sp.add_argument("--query", help="free-text request")
        sp.add_argument("-k", type=int, default=10)

    r = sub.add_parser("recommend", help="top-k for one user and context")
    request_args(r)
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(fn=cmd_recommend)
    c = sub.add_parser("chat", help="interactive recommendation: clarifying questions, free-text answers")
    request_args(c)
    c.add_argument("--max-questions", type=int, default=None)
    c.add_argument("--llm-url", help="optional OpenAI-compatible endpoint (e.g. http://127.0.0.1:8080/v1) that "
                   "phrases questions and reads free answers; off by default")
    c.add_argument("--llm-model", default="default", help="model name sent to --llm-url")
    c.set_defaults(fn=cmd_chat)
    s = sub.add_parser("serve", help="HTTP service (FastAPI + uvicorn; needs the serve extra)")
    s.add_argument("--model", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(fn=cmd_serve)

    def cluster_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786 "
                                            "(default: start a LocalCluster on this machine)")
        sp.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
        sp.add_argument("--partition-rows", type=int, help="rows per partition for CSV/in-memory input")
        sp.add_argument("--threads", type=int, default=1, help="threads per task (default 1)")
        sp.add_argument("--overwrite", action="store_true", help="replace the output directory's parts")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    ec = sub.add_parser("encode-catalog", help="encode item texts on Dask (needs the distributed extra)")
    ec.add_argument("--items", required=True, help="Parquet dataset or CSV of items")
    ec.add_argument("--out", required=True, help="Parquet dataset directory to write (id + embedding)")
    ec.add_argument("--text-col", default="text")
    ec.add_argument("--id-col", default="item_id", help="id column ('' for none)")
    ec.add_argument("--encoder", help="encoder export directory (default: ctxrec's)")
    ec.add_argument("--cache-dir", help="persistent embedding cache directory")
    ec.add_argument("--batch-size", type=int, default=32)
    cluster_args(ec)
    ec.set_defaults(fn=cmd_encode_catalog)
    ra = sub.add_parser("recommend-all", help="top-k for every user on Dask, to Parquet (distributed extra)")
    ra.add_argument("--model", required=True, help="model directory written by `ctxrec train`")
    ra.add_argument("--out", required=True, help="Parquet dataset directory to write")
    ra.add_argument("--users", help="Parquet/CSV of requests: user column + context columns (default: all users)")
    ra.add_argument("--user-col", default="user_id")
    ra.add_argument("--context", help="context for every request as JSON")
    ra.add_argument("--query", help="free-text request for every user")
    ra.add_argument("-k", type=int, default=10)
    ra.add_argument("--include-seen", action="store_true", help="do not exclude the users' known items")
    ra.add_argument("--ship", default="auto", choices=["auto", "path", "bytes"],
                    help="how the model reaches the workers (default: path if they all see it)")
    cluster_args(ra)
    ra.set_defaults(fn=cmd_recommend_all)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        return cmd_export(argv[1:])
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    args = parser().parse_args(argv)
    from ctxrec._io import CorruptArtifactError
    try:
        args.fn(args)
    except (ValueError, KeyError, FileNotFoundError, CorruptArtifactError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ctxrec: error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
