"""The ``ctxrec`` command line: export, train, evaluate, recommend, serve, bench, encode-catalog, recommend-all.

``train`` and ``evaluate`` read a built-in dataset (``--dataset movielens-100k|frappe``), the
``--dataset csv --data DIR`` layout, or your own files: a data section (``"data"`` in
``--config``, ``--data-config FILE``, or ``--interactions PATH`` with column flags; see
:class:`ctxrec.data.DataConfig`). :func:`dataset_from_args` is that choice for any command.

Bad input exits non-zero with a one-line error on stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

DATASETS = ("movielens-100k", "frappe", "csv", "config")
BUILTIN_DATASETS = ("movielens-100k", "frappe")
CONFIG_SECTIONS = ("data", "context", "model", "recommender", "engine")


# ---------------------------------------------------------------------------- config
def read_config(path: str | None) -> dict[str, Any]:
    """A JSON training config.

    Sections (all optional): ``"data"`` (a data section, see :class:`ctxrec.data.DataConfig`;
    its relative paths are resolved here, from the config file's directory), ``"context"``
    (ContextSpec kwargs), ``"model"`` (ContextFM params), ``"recommender"`` (Recommender
    kwargs), ``"engine"`` (Engine params).

    Parameters
    ----------
    path : str or None
        The JSON file (None: no config).

    Returns
    -------
    dict
        The parsed config ({} when ``path`` is None), ``"data"`` with absolute paths.
    """
    if path is None:
        return {}
    from ctxrec.data import read_json_file
    p = Path(path).expanduser()
    cfg = read_json_file(p, "--config")
    if not isinstance(cfg, dict):
        raise ValueError(f"--config: {path} must hold a JSON object with sections {', '.join(CONFIG_SECTIONS)}")
    unknown = set(cfg) - set(CONFIG_SECTIONS)
    if unknown:
        raise ValueError(f"--config: unknown section(s) {sorted(unknown)}; expected {', '.join(CONFIG_SECTIONS)}")
    if "data" in cfg:
        from ctxrec.data import resolve_config_paths
        if not isinstance(cfg["data"], dict):
            raise ValueError(f"--config: {path}: the \"data\" section must be a JSON object")
        cfg["data"] = resolve_config_paths(cfg["data"], p.resolve().parent)
    return cfg


def default_context(dataset: Any) -> dict[str, Any]:
    """The context a dataset naturally has (overridable by the config's "context").

    Parameters
    ----------
    dataset : str or ctxrec.data.Dataset
        A built-in dataset name, or a Dataset: then its ``meta["source"]`` decides (a
        built-in's own context, or a data config's context columns by kind,
        :meth:`ctxrec.data.DataConfig.context_spec_kwargs`).

    Returns
    -------
    dict[str, list of str]
        :class:`ctxrec.context.ContextSpec` keyword arguments ({} when there is no context).
    """
    if not isinstance(dataset, str):
        source = getattr(dataset, "meta", {}).get("source")
        if not isinstance(source, dict):
            return {}
        if "dataset" in source:
            return default_context("frappe" if source["dataset"] == "frappe-nfm" else str(source["dataset"]))
        from ctxrec.data import DataConfig
        return DataConfig.from_dict(source).context_spec_kwargs()
    if dataset == "movielens-100k":
        return {"time": ["timestamp"], "text": ["query"]}
    if dataset == "frappe":
        return {"categorical": ["daytime", "weekday", "isweekend", "homework", "cost", "weather", "country",
                                "city"]}
    return {}


def load_dataset(kind: str, data: str | None) -> Any:
    """A built-in dataset (read from ``data`` or $CTXREC_DATA_DIR), or the ``csv`` directory layout.

    ``csv`` is :meth:`ctxrec.data.DataConfig.from_csv_dir` of ``data``; for any other file
    layout use a data section (:func:`dataset_from_args`).

    Parameters
    ----------
    kind : str
        ``"movielens-100k"``, ``"frappe"`` or ``"csv"``.
    data : str or None
        The data directory (required for ``csv``).

    Returns
    -------
    ctxrec.data.Dataset

    Raises
    ------
    ValueError
        An unknown ``kind``, or ``csv`` without ``data``.
    """
    from ctxrec import data as D
    if kind == "movielens-100k":
        return D.load_movielens_100k(data)
    if kind == "frappe":
        return D.load_frappe(data)
    if kind == "csv":
        if data is None:
            raise ValueError("--data: the csv dataset needs a directory holding interactions.csv (and items.csv)")
        return D.DataConfig.from_csv_dir(data).load()
    raise ValueError(f"--dataset: {kind!r} is not one of {', '.join(DATASETS)}")


def read_data_config(path: str) -> dict[str, Any]:
    """A JSON data section (``--data-config``; a ``{"data": {...}}`` wrapper is accepted).

    Its relative paths are resolved from the file's directory; it is validated later, with
    the flags applied.

    Parameters
    ----------
    path : str
        The JSON file (``~`` accepted).

    Returns
    -------
    dict
        The data section with absolute paths.

    Raises
    ------
    ValueError
        The file does not hold a JSON object (``ctxrec.data.DataError`` for a missing or
        invalid file).
    """
    from ctxrec.data import read_json_file, resolve_config_paths
    p = Path(path).expanduser()
    d = read_json_file(p, "--data-config")
    if isinstance(d, dict) and set(d) == {"data"}:
        d = d["data"]
    if not isinstance(d, dict):
        raise ValueError(f"--data-config: {path} must hold a JSON object (a data section)")
    return resolve_config_paths(d, p.resolve().parent)


# The data flags: argparse dest -> where it goes in the data section.
_DATA_FLAGS: dict[str, tuple[str, str]] = {
    "interactions": ("interactions", "path"), "user_col": ("interactions", "user"),
    "item_col": ("interactions", "item"), "timestamp_col": ("interactions", "timestamp"),
    "rating_col": ("interactions", "rating"), "label_col": ("interactions", "label"),
    "context_col": ("interactions", "context"),
    "items": ("items", "path"), "item_id_col": ("items", "id"), "item_text_col": ("items", "text"),
    "item_attr_col": ("items", "attributes"),
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _context_flags(values: Sequence[str]) -> dict[str, list[str]]:
    """``--context-col COL[:KIND]`` values (KIND default categorical) as a context section."""
    from ctxrec.data import CONTEXT_KINDS
    out: dict[str, list[str]] = {}
    for v in values:
        col, _, kind = v.rpartition(":") if ":" in v else (v, "", "categorical")
        kind = kind or "categorical"
        if kind not in CONTEXT_KINDS or not col:
            raise ValueError(f"--context-col: {v!r} is not COLUMN[:KIND] with KIND one of {', '.join(CONTEXT_KINDS)}")
        out.setdefault(kind, []).append(col)
    return out


def _attr_flags(values: Sequence[str]) -> dict[str, str | None]:
    """``--item-attr-col COL[:SEP]`` values as an attributes section (no SEP: one value per row)."""
    out: dict[str, str | None] = {}
    for v in values:
        col, colon, sep = v.partition(":")
        if not col:
            raise ValueError(f"--item-attr-col: {v!r} is not COLUMN[:SEPARATOR]")
        out[col] = sep if colon and sep else None
    return out


def data_section(a: argparse.Namespace, base: dict[str, Any] | None = None,
                 cfg: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The data section the command line describes, or None when it describes none.

    Precedence, lowest first: ``base`` (e.g. the csv layout's), the ``"data"`` section of
    ``--config``, ``--data-config FILE`` (replaces it), then the flags (``--interactions``,
    ``--user-col``, ..., each replacing one key; paths relative to the current directory).
    Namespaces without some of these attributes (another command's) are fine. ``cfg`` is
    ``read_config(a.config)`` when the caller has it already (read here otherwise).

    Parameters
    ----------
    a : argparse.Namespace
        The parsed command line.
    base : dict, optional
        The lowest-precedence section (e.g. the csv layout's).
    cfg : dict, optional
        ``read_config(a.config)``, when the caller has it already.

    Returns
    -------
    dict or None
        A data section with absolute paths, not yet validated (see ``DataConfig.from_dict``).
    """
    from ctxrec.data import resolve_config_paths
    section = base
    if cfg is None:
        cfg = read_config(getattr(a, "config", None))
    if "data" in cfg:
        section = cfg["data"]
    if getattr(a, "data_config", None):
        section = read_data_config(a.data_config)
    flags = {d: getattr(a, d, None) for d in _DATA_FLAGS}
    flags = {d: v for d, v in flags.items() if v not in (None, [])}
    if not flags:
        return section
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (section or {}).items()}
    for dest, value in flags.items():
        table, key = _DATA_FLAGS[dest]
        if table == "items" and key != "path" and "items" not in out and "items" not in flags:
            raise ValueError(f"{_flag(dest)}: needs an item table (--items PATH or an \"items\" data section)")
        if dest == "context_col":
            value = _context_flags(value)
        elif dest == "item_attr_col":
            value = _attr_flags(value)
        elif key == "path":
            value = str(Path(value).expanduser().resolve())
        out.setdefault(table, {})
        if not isinstance(out[table], dict):
            raise ValueError(f"{_flag(dest)}: the data section's {table!r} is not an object")
        out[table][key] = value
    return resolve_config_paths(out, Path.cwd())


def _dataset_kind(a: argparse.Namespace, cfg: dict[str, Any]) -> str:
    """--dataset, or "config" when it is omitted and a data section is given."""
    kind = getattr(a, "dataset", None)
    flags = [_flag(d) for d in _DATA_FLAGS if getattr(a, d, None) not in (None, [])]
    if getattr(a, "data_config", None):
        flags.insert(0, "--data-config")
    if kind in BUILTIN_DATASETS:
        if flags:
            raise ValueError(f"{flags[0]}: describes your own data; use it with --dataset config (or csv), "
                             f"not --dataset {kind}")
        return kind
    if kind is None:
        if not flags and "data" not in cfg:
            raise ValueError("--dataset: give a dataset (" + ", ".join(BUILTIN_DATASETS) + ", csv --data DIR) "
                             "or your own data: --data-config FILE, a \"data\" section in --config, "
                             "or --interactions PATH with its column flags")
        return "config"
    return kind


def dataset_from_args(a: argparse.Namespace, cfg: dict[str, Any] | None = None) -> Any:
    """The Dataset a train/evaluate-style command line names.

    ``--dataset movielens-100k|frappe`` (``--data`` dir or $CTXREC_DATA_DIR); ``--dataset
    csv --data DIR`` (the fixed ``interactions.csv``/``items.csv`` layout, flags may
    override its columns); otherwise (``--dataset config`` or no ``--dataset``) a data
    section: ``"data"`` in ``--config``, ``--data-config FILE`` and/or the data flags (see
    :func:`data_section`). Reads only attributes that exist on ``a`` (``dataset``, ``data``,
    ``config``, ``data_config`` and the flags' dests), so another command can reuse it.
    ``cfg``: ``read_config(a.config)`` if the caller has read it (else it is read here).

    Parameters
    ----------
    a : argparse.Namespace
        The parsed command line.
    cfg : dict, optional
        ``read_config(a.config)``, when the caller has it already.

    Returns
    -------
    ctxrec.data.Dataset
        With ``meta["source"]`` describing the data (for :func:`ctxrec.data.load_source`).

    Raises
    ------
    ValueError
        (``ctxrec.data.DataError`` included) naming the flag, file, key or column at fault.
    """
    from ctxrec.data import DataConfig
    if cfg is None:
        cfg = read_config(getattr(a, "config", None))
    kind = _dataset_kind(a, cfg)
    if kind in BUILTIN_DATASETS:
        return load_dataset(kind, getattr(a, "data", None))
    base = None
    if kind == "csv":
        if getattr(a, "data", None) is None:
            raise ValueError("--data: the csv dataset needs a directory holding interactions.csv (and items.csv)")
        base = DataConfig.from_csv_dir(a.data).to_dict()
    section = data_section(a, base, cfg)
    if section is None:
        raise ValueError("--dataset config: no data section; give --data-config FILE, a \"data\" section in "
                         "--config, or --interactions PATH with its column flags")
    return DataConfig.from_dict(section, base_dir=Path.cwd()).load()


def build_recommender(dataset: Any, cfg: dict[str, Any], encoder: str | None) -> Any:
    """An unfitted Recommender from a training config.

    Parameters
    ----------
    dataset : str or ctxrec.data.Dataset
        A built-in name or a Dataset (see :func:`default_context`); gives the default
        context spec when ``cfg`` has no ``"context"`` section.
    cfg : dict
        The training config (:func:`read_config`).
    encoder : str or None
        The text encoder directory (None: no text).

    Returns
    -------
    ctxrec.recommender.Recommender
        Not fitted.

    Raises
    ------
    ValueError
        A config section with an unknown parameter.
    """
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


def title_column(items: Any) -> str:
    """The item table column to show as an item's title.

    ``title``, else ``name``, else the first text-like (string) column after ``item_id``
    (a data config puts its first item text column there), else the joined ``text``.

    Parameters
    ----------
    items : pandas.DataFrame
        The item table (``Recommender.items_``).

    Returns
    -------
    str
        A column name.
    """
    cols = [c for c in items.columns if c not in ("item_id", "text")]
    for c in ("title", "name"):
        if c in cols:
            return c
    import pandas as pd
    for c in cols:
        if pd.api.types.is_string_dtype(items[c].dtype) or items[c].dtype == object:
            return c
    return "text"


# ---------------------------------------------------------------------------- commands
def cmd_train(a: argparse.Namespace) -> None:
    """``ctxrec train``: fit a Recommender on a dataset and save it with a training report."""
    cfg = read_config(a.config)
    ds = dataset_from_args(a, cfg)
    print(f"[train] {ds}")
    rec = build_recommender(ds, cfg, None if a.no_text else a.encoder)
    t0 = time.perf_counter()
    rec.fit(ds)
    fit_s = time.perf_counter() - t0
    rec.save(a.out)
    report = write_training_report(rec, Path(a.out).with_name(Path(a.out).name + "-report"), fit_s)
    print(f"[train] model written to {a.out} ({fit_s:.1f} s); report: {report}")


def cmd_retrain(a: argparse.Namespace) -> None:
    """A new model from the original training data plus every event logged so far."""
    from ctxrec.data import load_source
    from ctxrec.events import default_log_path
    from ctxrec.recommender import Recommender
    log_path = Path(a.events) if a.events else default_log_path(a.model)
    if not log_path.is_file():
        raise ValueError(f"--events: no event log at {log_path} (the service writes MODEL.events.sqlite "
                         "beside the model directory; give --events PATH for another place)")
    rec = Recommender.load(a.model, event_log=None)
    if a.config or a.data_config:
        ds = dataset_from_args(a)
    elif rec.training_source_ is not None:
        ds = load_source(rec.training_source_)
    else:
        raise ValueError(f"--model: {a.model} does not record the data it was trained on (trained before ctxrec "
                         "recorded it, or from an in-memory Dataset); give the data with --config / --data-config")
    print(f"[retrain] {ds} + events of {log_path}")
    t0 = time.perf_counter()
    new = rec.retrain(ds, log_path)
    new.save(a.out)
    print(f"[retrain] model written to {a.out} ({time.perf_counter() - t0:.1f} s); it contains the log up to "
          f"event {new.event_status()['applied_position']}; swap it in with POST /admin/reload "
          f"{{\"path\": \"{a.out}\"}}")


def write_training_report(rec: Any, directory: Path, fit_s: float) -> Path:
    """Markdown + PNG of the training curve.

    Parameters
    ----------
    rec : ctxrec.recommender.Recommender
        The fitted recommender (its ``model_.history_``).
    directory : Path
        Where ``report.md`` and ``training_curve.png`` are written (created).
    fit_s : float
        Fit time in seconds.

    Returns
    -------
    Path
        ``directory / "report.md"``.
    """
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
    """``ctxrec evaluate``: fit on a split's train part and write its ranking report."""
    from ctxrec import evaluate as E
    cfg = read_config(a.config)
    ds = dataset_from_args(a, cfg)
    splits = {"leave-last-out": lambda: E.leave_last_out(ds), "stratified": lambda: E.stratified_split(ds),
              "temporal": lambda: E.temporal_split(ds), "random": lambda: E.random_split(ds)}
    split = splits[a.split]()
    rec = build_recommender(ds, cfg, None if a.no_text else a.encoder).fit(split.train)
    report = rec.evaluate(split.train, split.test, ks=(1, 5, 10, 20), group="row" if a.split == "leave-last-out"
                          else "user", split=a.split)
    out = E.save_reports([report], a.out)
    print(report.to_markdown())
    print(f"[evaluate] report written to {out}")


def context_arg(a: argparse.Namespace) -> dict[str, Any]:
    """The request context of --context (JSON object) and --query (free text).

    Parameters
    ----------
    a : argparse.Namespace
        With ``context`` (a JSON string or None) and ``query``.

    Returns
    -------
    dict
        The context; ``"query"`` set from ``--query``.

    Raises
    ------
    ValueError
        ``--context`` is not a JSON object.
    """
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
    """``ctxrec recommend``: print (or output as JSON) the top-k of one request."""
    from ctxrec.recommender import Recommender
    context = context_arg(a)
    rec = Recommender.load(a.model)
    t0 = time.perf_counter()
    res = rec.recommend(a.user, context, k=a.k, ignore_unknown=a.ignore_unknown_context, **_rerank_kw(a))
    ms = (time.perf_counter() - t0) * 1e3
    if a.json:
        print(json.dumps(res.to_dict()))
        return
    print(f"user {a.user!r}{' (cold start)' if res.cold_start else ''}, context {context}: {ms:.2f} ms")
    titles = rec.items_.set_index("item_id")
    col = title_column(rec.items_)
    for rank, (i, s) in enumerate(zip(res.item_ids, res.scores), 1):
        print(f"{rank:>3}. {i!s:<10} {s:8.3f}  {str(titles.loc[i, col])[:70]}")


def cmd_chat(a: argparse.Namespace) -> None:
    """``ctxrec chat``: interactive prompt: the session asks, you answer.

    Answers: an option number, free text, enter = skip; `why N` explains the N-th item,
    `quit` (or end of input) leaves.
    """
    from ctxrec.recommender import Recommender
    from ctxrec.session import ChatLLM, Session
    context = context_arg(a)
    rec = Recommender.load(a.model)
    rec.check_context(context, ignore_unknown=a.ignore_unknown_context)  # unknown keys refused as in recommend
    s = Session(rec, a.user, context, k=a.k, max_questions=a.max_questions,
                llm=ChatLLM(a.llm_url, model=a.llm_model) if a.llm_url else None)
    titles = rec.items_.set_index("item_id")
    col = title_column(rec.items_)

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
        answer: Any = None if not line else int(line) - 1 if q is not None and line.isascii() and line.isdigit() \
            and 1 <= int(line) <= q.n_options else line
        try:
            s.answer(answer)
        except ValueError as e:
            print(f"  {e}")
            continue
        items = show()


def cmd_serve(a: argparse.Namespace) -> None:
    """``ctxrec serve``: run the HTTP service over a model directory."""
    from ctxrec.service import serve
    serve(a.model, host=a.host, port=a.port, event_log=None if a.no_events else (a.events or "default"),
          max_body_bytes=a.max_body_bytes, body_timeout_s=a.body_timeout, max_sessions=a.max_sessions,
          session_ttl_s=a.session_ttl, max_session_bytes=a.max_session_bytes, exposure_decay=a.track_exposure)


def cmd_export(argv: Sequence[str]) -> None:
    """``ctxrec export``: build the text encoder export (:func:`ctxrec.encoder.export.main`)."""
    from ctxrec.encoder.export import main
    sys.exit(main(list(argv)))


def cmd_bench(argv: Sequence[str]) -> None:
    """``ctxrec bench``: run the benchmark harness of a source checkout (benchmarks/run.py)."""
    harness = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
    if not harness.is_file():
        raise ValueError("the benchmark harness lives in the source tree (benchmarks/run.py); run it from a checkout")
    sys.exit(subprocess.call([sys.executable, str(harness), *argv]))


def _cluster_kw(a: argparse.Namespace) -> dict[str, Any]:
    return {"scheduler": a.scheduler, "n_workers": a.workers, "partition_rows": a.partition_rows,
            "overwrite": a.overwrite, "progress": not a.no_progress}


def cmd_encode_catalog(a: argparse.Namespace) -> None:
    """``ctxrec encode-catalog``: embed a catalog's texts on a Dask cluster."""
    from ctxrec.distributed import encode_catalog
    res = encode_catalog(a.items, a.out, text_col=a.text_col, id_col=a.id_col or None, encoder=a.encoder,
                         batch_size=a.batch_size, cache_dir=a.cache_dir, threads=a.threads, **_cluster_kw(a))
    s = res.summary()
    print(f"[encode-catalog] {s['rows']:,} texts in {s['partitions']} partitions on {s['workers']} worker(s): "
          f"{s['seconds']:.1f} s ({s['rows_per_s']:,.0f} texts/s; {s['cache_hits']:,} from the cache) -> {a.out}")


def _rerank_kw(a: argparse.Namespace) -> dict[str, Any]:
    """--diversity / --calibrate / --calibrate-by / --explore / --explore-scale / --seed as
    Recommender.recommend's keywords."""
    return {"diversity": a.diversity, "calibrate": a.calibrate, "calibrate_by": a.calibrate_by,
            "explore": a.explore, "explore_scale": a.explore_scale, "seed": a.seed}


def cmd_recommend_all(a: argparse.Namespace) -> None:
    """``ctxrec recommend-all``: top-k for every user or request row on a Dask cluster."""
    from ctxrec.distributed import recommend_all
    context = context_arg(a)
    res = recommend_all(a.model, a.out, users=a.users, user_col=a.user_col, context=context, k=a.k,
                        exclude_seen=not a.include_seen, threads=a.threads, ship=a.ship,
                        ignore_unknown=a.ignore_unknown_context or None, **_rerank_kw(a), **_cluster_kw(a))
    s = res.summary()
    print(f"[recommend-all] top-{a.k} for {s['rows']:,} requests in {s['partitions']} partitions on "
          f"{s['workers']} worker(s): {s['seconds']:.1f} s ({s['rows_per_s']:,.0f} users/s) -> {a.out}")


# ---------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    """The ``ctxrec`` command-line parser, every sub-command included.

    Returns
    -------
    argparse.ArgumentParser
    """
    p = argparse.ArgumentParser(prog="ctxrec", description="Context-aware recommendations with an LLM text encoder.")
    p.add_argument("-v", "--verbose", action="store_true", help="show debug log records")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("export", help="export the text encoder to ONNX (see `ctxrec export --help`)", add_help=False)
    sub.add_parser("bench", help="run the benchmark harness (see `ctxrec bench --help`)", add_help=False)

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dataset", choices=DATASETS,
                        help="a built-in dataset, csv (a --data directory with interactions.csv / items.csv) "
                             "or config (your own files: a data section); default config when a data section "
                             "or data flag is given")
        sp.add_argument("--data", help="data directory (default: $CTXREC_DATA_DIR)")
        sp.add_argument("--config", help="JSON config: data / context / model / recommender / engine sections")
        g = sp.add_argument_group("your own data (a data section; these flags override the config's)")
        g.add_argument("--data-config", metavar="FILE", help="JSON data section (replaces the config's \"data\")")
        g.add_argument("--interactions", metavar="PATH", help="interactions file: CSV, TSV, Parquet or JSON Lines")
        g.add_argument("--user-col", metavar="COL", help="user id column (default user_id)")
        g.add_argument("--item-col", metavar="COL", help="item id column (default item_id)")
        g.add_argument("--timestamp-col", metavar="COL", help="timestamp column (unix seconds or date-times)")
        vg = g.add_mutually_exclusive_group()
        vg.add_argument("--rating-col", metavar="COL", help="explicit rating column")
        vg.add_argument("--label-col", metavar="COL", help="0/1 label column")
        g.add_argument("--context-col", metavar="COL[:KIND]", action="append",
                       help="context column, KIND time, categorical (default), numeric or text (repeatable; "
                            "replaces the config's context columns)")
        g.add_argument("--items", metavar="PATH", help="item table file")
        g.add_argument("--item-id-col", metavar="COL", help="item table id column (default: --item-col)")
        g.add_argument("--item-text-col", metavar="COL", action="append",
                       help="item text column, joined in order (repeatable; replaces the config's)")
        g.add_argument("--item-attr-col", metavar="COL[:SEP]", action="append",
                       help="categorical item column, SEP for multi-valued ones, e.g. genres:| "
                            "(repeatable; replaces the config's)")
        sp.add_argument("--encoder", default="default", help="encoder directory (default: ctxrec's export)")
        sp.add_argument("--no-text", action="store_true", help="train without any text (no encoder)")

    t = sub.add_parser("train", help="train a recommender and write a model directory + report")
    data_args(t)
    t.add_argument("--out", required=True, help="model directory to write")
    t.set_defaults(fn=cmd_train)
    rt = sub.add_parser("retrain", help="train a new model from the original data plus the logged feedback")
    rt.add_argument("--model", required=True, help="the served model directory")
    rt.add_argument("--events", help="the event log (default: MODEL.events.sqlite beside the model directory)")
    rt.add_argument("--out", required=True, help="model directory to write (then POST /admin/reload it)")
    rt.add_argument("--config", help="JSON config whose data section replaces the data the model records")
    rt.add_argument("--data-config", metavar="FILE", help="JSON data section (replaces the recorded data)")
    rt.set_defaults(fn=cmd_retrain)
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
        sp.add_argument("--ignore-unknown-context", action="store_true",
                        help="ignore context keys the model does not read (and --query for a model without text) "
                             "instead of refusing them")

    def rerank_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--diversity", type=float, default=0.0,
                        help="re-rank for variety, 0..1 (maximal marginal relevance; default 0 = plain top-k)")
        sp.add_argument("--calibrate", type=float, default=0.0,
                        help="pull the list's category mix towards the user's history mix (default 0 = off)")
        sp.add_argument("--calibrate-by", help="the item attribute calibrated on, e.g. genres")
        sp.add_argument("--explore", choices=["thompson", "ucb"],
                        help="rank by the model's uncertainty about the user as well (default: off)")
        sp.add_argument("--explore-scale", type=float, default=1.0,
                        help="multiplies the posterior's standard deviation (default 1)")
        sp.add_argument("--seed", type=int, help="fixes --explore's draw (with the user)")

    r = sub.add_parser("recommend", help="top-k for one user and context")
    request_args(r)
    rerank_args(r)
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
    s.add_argument("--events", help="SQLite feedback log (default: MODEL.events.sqlite beside the model directory)")
    s.add_argument("--no-events", action="store_true",
                   help="keep feedback in memory only (lost on reload or restart)")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="larger request bodies (declared or counted, chunked included) get 413 (default 1 MiB)")
    s.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds within which a request's whole body must arrive, else 408 (default 10)")
    s.add_argument("--max-sessions", type=int, default=10_000, help="most live interactive sessions (default 10000)")
    s.add_argument("--session-ttl", type=float, default=1800.0, help="idle seconds before a session expires (default 1800)")
    s.add_argument("--max-session-bytes", type=int, default=512 << 20,
                   help="estimated bytes all sessions may hold; the least recently used go first (default 512 MiB)")
    s.add_argument("--track-exposure", type=float, default=None, metavar="DECAY",
                   help="record the items of every /recommend answer as impressions, each answer first "
                        "multiplying the counts by DECAY (1 = plain counts, 0.999 = fading); requests with "
                        '"exposure": eta then penalise the most shown items (default: off)')
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
    ra.add_argument("--ignore-unknown-context", action="store_true",
                    help="ignore context fields (and --query text) the model does not use instead of refusing them")
    ra.add_argument("--ship", default="auto", choices=["auto", "path", "bytes"],
                    help="how the model reaches the workers (default: path if they all see it)")
    rerank_args(ra)
    cluster_args(ra)
    ra.set_defaults(fn=cmd_recommend_all)
    return p


@contextlib.contextmanager
def _logging_to_stderr(verbose: bool) -> Iterator[None]:
    """While a command runs, show the library's INFO records (DEBUG with -v) on stderr.

    Undone afterwards, so ``main()`` called in-process (tests, notebooks) leaves the
    application's logging as it was.
    """
    import logging
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    root = logging.getLogger("ctxrec")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


_PATH_ARGS = ("out", "data", "config", "data_config", "interactions", "items", "users", "model", "encoder",
              "cache_dir", "events")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``ctxrec`` command line.

    Errors the user can fix (bad flags, data, files) are printed as ``ctxrec: error: ...``
    and exit with status 2.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        return cmd_export(argv[1:])
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    args = parser().parse_args(argv)
    for name in _PATH_ARGS:  # every path argument accepts ~
        v = getattr(args, name, None)
        if isinstance(v, str):
            setattr(args, name, os.path.expanduser(v))
    from ctxrec._io import CorruptArtifactError
    try:
        with _logging_to_stderr(args.verbose):
            args.fn(args)
    except (ValueError, KeyError, FileNotFoundError, CorruptArtifactError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ctxrec: error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
