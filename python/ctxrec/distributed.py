"""Scale-out on Dask: catalog encoding and batch recommendation for every user.

Two jobs run on ``dask.distributed`` (the ``distributed`` extra)::

    from ctxrec.distributed import encode_catalog, recommend_all
    encode_catalog("items.parquet", out="emb/", text_col="title", id_col="item_id")   # -> Parquet
    recommend_all("model/", out="recs/", context={"timestamp": "2024-05-01T20:00"}, k=10)

Both accept ``client=`` (an existing :class:`distributed.Client`) or ``scheduler=``
(``"tcp://host:port"`` of a running cluster); with neither they start a
:class:`distributed.LocalCluster` sized to the machine (one single-threaded worker process
per core) and close it afterwards.

* **Loaded once per worker.** Every task asks a per-process registry for the encoder /
  recommender; the first task on a worker loads it (under a lock), later tasks reuse it.
  A worker that joins or is restarted mid-job loads it on its first task. A saved
  recommender directory is read from its path when every worker sees the same directory
  (same manifest checksum) and is otherwise broadcast to the workers once as a tar
  archive (``ship=``).
* **Identical results.** Encoding a partition is ``TextEncoder.encode`` of its texts. With
  the fp32 (and fp16) export a text's row does not depend on the other texts of its batch,
  so the output is bit-identical to encoding the whole catalog in one process. The int8
  export quantizes activations dynamically per batch, so its rows move slightly with the
  batch's other texts (cosine to the same text encoded in another batch >= ~0.97): each
  partition is still bit-identical to ``encode`` of that partition's texts, not to one
  global call. ``recommend_all`` runs a batched path (:func:`recommend_frame`) that
  reproduces ``Recommender.recommend`` exactly, query for query.
* **Retries without duplicates.** Each partition is one task that writes one file
  ``part-NNNNN.parquet`` (temporary name, then an atomic rename). A task that Dask re-runs
  after a worker dies rewrites the same file with the same rows, so the output never has
  duplicate or missing rows; left-over temporary files are removed at the end. A
  ``_manifest.json`` (rows, partitions, timings) is written last: its presence marks a
  complete output.
* **Embedding cache.** ``encode_catalog(cache_dir=...)`` reads and fills the same on-disk
  cache as ``TextEncoder.load(cache_dir=...)``; workers on one machine serialise their
  writes with a file lock (the cache allows one writer at a time).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ctxrec._log import get_logger, progress as _progress

__all__ = ["encode_catalog", "recommend_all", "recommend_frame", "read_embeddings", "read_recommendations",
           "JobResult", "OutputExistsError", "local_client"]

log = get_logger("ctxrec.distributed")

DEFAULT_PARTITION_ROWS = {"encode": 2_000, "recommend": 5_000}


# =============================================================================== results
@dataclass
class JobResult:
    """What a job did: rows, partitions, wall time, and per-task timings for sizing a cluster.

    Attributes
    ----------
    job : str
        ``"encode"`` or ``"recommend"``.
    rows, partitions, workers : int
        Rows processed, input partitions, workers used.
    seconds : float
        Wall time of the job, in seconds.
    out : str or None
        The output directory (None: results held in ``ids`` / ``embeddings``).
    tasks : list of dict
        One dict per partition: ``partition``, ``rows``, ``worker``, ``pid``,
        ``load_s`` (model load paid by this task: non-zero only on a worker's first task),
        ``read_s`` (materialising the input partition), ``compute_s`` (encoding / scoring),
        ``write_s`` (Parquet), ``cache_hits`` (encode only).
    ids : array [n] or None
        Item ids of an in-memory ``encode_catalog`` result.
    embeddings : float32 array [n, d] or None
        Embeddings of an in-memory ``encode_catalog`` result.
    """

    job: str
    rows: int
    partitions: int
    workers: int
    seconds: float
    out: str | None
    tasks: list[dict[str, Any]] = field(default_factory=list)
    ids: np.ndarray | None = None
    embeddings: np.ndarray | None = None

    @property
    def rows_per_s(self) -> float:
        """float: rows per second of wall time (NaN when ``seconds`` is 0)."""
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """The job's figures with the per-task timings summed.

        Returns
        -------
        dict
            ``job``, ``rows``, ``partitions``, ``workers``, ``seconds``, ``rows_per_s``, ``out``,
            ``model_loads`` (tasks that loaded the model), and the summed seconds ``load_s``,
            ``read_s``, ``compute_s``, ``write_s`` and ``cache_hits``.
        """
        t = self.tasks
        tot = lambda k: float(sum(x.get(k, 0.0) for x in t))  # noqa: E731
        return {"job": self.job, "rows": self.rows, "partitions": self.partitions, "workers": self.workers,
                "seconds": self.seconds, "rows_per_s": self.rows_per_s, "out": self.out,
                "model_loads": int(sum(1 for x in t if x.get("load_s", 0) > 0)),
                "load_s": tot("load_s"), "read_s": tot("read_s"), "compute_s": tot("compute_s"),
                "write_s": tot("write_s"), "cache_hits": int(tot("cache_hits"))}


# =============================================================================== clients
def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("ctxrec.distributed needs Dask: pip install 'ctxrec[distributed]'") from e
    return distributed


@contextlib.contextmanager
def local_client(client: Any = None, scheduler: str | None = None, n_workers: int | None = None,
                 threads_per_worker: int = 1, progress: bool = False) -> Iterator[Any]:
    """Yield a Dask Client, closing what it created on exit.

    Where it connected (and the dashboard's address) is logged to ``ctxrec.distributed``:
    at INFO with ``progress``, else at DEBUG.

    Parameters
    ----------
    client : distributed.Client, optional
        Yielded as given (not closed).
    scheduler : str, optional
        Address of a scheduler to connect to.
    n_workers : int, optional
        Worker processes of a new LocalCluster (default one per core), when neither
        ``client`` nor ``scheduler`` is given.
    threads_per_worker : int
        Threads of each LocalCluster worker.
    progress : bool
        Log the connection at INFO rather than DEBUG.

    Yields
    ------
    distributed.Client
    """
    distributed = _require_distributed()
    if client is not None:
        yield client
        return
    if scheduler is not None:
        with distributed.Client(scheduler) as c:
            log.log(logging.INFO if progress else logging.DEBUG, "connected to %s; dashboard: %s", scheduler,
                    c.dashboard_link)
            yield c
        return
    n = int(n_workers or os.cpu_count() or 1)
    with distributed.LocalCluster(n_workers=n, threads_per_worker=int(threads_per_worker), processes=True,
                                  dashboard_address=":0" if _has_bokeh() else None) as cluster, \
            distributed.Client(cluster) as c:
        link = c.dashboard_link if _has_bokeh() else "(install bokeh for the dashboard)"
        log.log(logging.INFO if progress else logging.DEBUG, "LocalCluster: %d worker(s) x %d thread(s); dashboard: %s",
                n, int(threads_per_worker), link)
        yield c


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
        return True
    except ImportError:
        return False


def _n_workers(client: Any) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"]) if _accepts_n_workers(client) \
        else len(client.scheduler_info()["workers"])


def _accepts_n_workers(client: Any) -> bool:
    import inspect
    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _run_tasks(client: Any, tasks: list[Any], progress: bool, desc: str) -> list[Any]:
    """Compute delayed tasks on the cluster; results in task order. Dask re-runs the tasks
    of a worker that dies (``distributed.scheduler.allowed-failures``); ``retries``
    covers exceptions raised inside a task (e.g. a transient I/O error)."""
    futures = client.compute(tasks, retries=2)
    if progress:
        from distributed import as_completed
        with _progress(len(futures), desc, unit="part", enabled=True) as bar:
            for _ in as_completed(futures):
                bar.update(1)
    return client.gather(futures)


# ======================================================================== per-worker state
_REGISTRY: dict[str, Any] = {}
_REGISTRY_LOCK = threading.Lock()
#: per-process counters (read by tests through ``client.run``): how many times each object was loaded
LOAD_COUNTS: dict[str, int] = {}


def _cached(token: str, loader: Callable[[], Any]) -> tuple[Any, float]:
    """The object registered under ``token`` in this process, loading it once; returns
    (object, seconds this call spent loading: 0 when it was already there)."""
    obj = _REGISTRY.get(token)
    if obj is not None:
        return obj, 0.0
    with _REGISTRY_LOCK:
        obj = _REGISTRY.get(token)
        if obj is not None:
            return obj, 0.0
        t0 = time.perf_counter()
        obj = loader()
        _REGISTRY[token] = obj
        LOAD_COUNTS[token] = LOAD_COUNTS.get(token, 0) + 1
        return obj, max(time.perf_counter() - t0, 1e-9)


def _worker_name() -> tuple[str, int]:
    try:
        from distributed import get_worker
        return str(get_worker().address), os.getpid()
    except (ImportError, ValueError):
        return "local", os.getpid()


def _write_parquet_atomic(table: Any, out: Path, part: int) -> None:
    import pyarrow.parquet as pq
    final = out / f"part-{part:05d}.parquet"
    tmp = out / f".part-{part:05d}.parquet.tmp-{uuid.uuid4().hex}"
    pq.write_table(table, tmp)
    os.replace(tmp, final)


from ctxrec.errors import OutputExistsError  # noqa: E402,F401  (re-exported)


def _prepare_out(out: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out}: output directory is not empty (pass overwrite=True / --overwrite)")
        for p in out.iterdir():
            if p.name.startswith(("part-", ".part-", "_manifest")):
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _finish_out(out: Path, n_parts: int, manifest: dict[str, Any]) -> None:
    for p in out.glob(".part-*.tmp-*"):  # from attempts that died mid-write
        p.unlink(missing_ok=True)
    missing = [i for i in range(n_parts) if not (out / f"part-{i:05d}.parquet").is_file()]
    if missing:
        raise RuntimeError(f"{out}: partitions {missing[:10]} have no output file")
    tmp = out / "_manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, out / "_manifest.json")


# ============================================================================ input frames
def _as_dask_frame(data: Any, partition_rows: int, columns: Sequence[str] | None = None) -> Any:
    """A Dask DataFrame from a Dask DataFrame, a pandas DataFrame, or a Parquet / CSV path."""
    import dask.dataframe as dd
    if isinstance(data, (str, os.PathLike)):
        p = str(data)
        if p.endswith(".csv"):
            return dd.read_csv(p, blocksize="16MB", usecols=list(columns) if columns else None)
        return dd.read_parquet(p, columns=list(columns) if columns else None)
    if isinstance(data, pd.DataFrame):
        return dd.from_pandas(data.reset_index(drop=True), chunksize=max(1, int(partition_rows)), sort=False)
    if hasattr(data, "to_delayed") and hasattr(data, "npartitions"):
        return data
    raise TypeError(f"expected a Dask DataFrame, a pandas DataFrame or a Parquet/CSV path, got {type(data).__name__}")


def _partition_offsets(client: Any, ddf: Any) -> np.ndarray:
    """Global row number of each partition's first row (one cheap pass over the input)."""
    from dask import delayed
    futures = client.compute([delayed(len)(p) for p in ddf.to_delayed()], retries=2)
    lens = np.asarray(client.gather(futures), np.int64)
    return np.concatenate([[0], np.cumsum(lens)])


# ============================================================================ encode_catalog
@dataclass(frozen=True)
class _EncoderSpec:
    path: str | None
    variant: str
    provider: str
    threads: int
    factory: Callable[[], Any] | None = None

    @property
    def token(self) -> str:
        if self.factory is not None:
            return f"encoder:factory:{getattr(self.factory, '__qualname__', repr(self.factory))}"
        return f"encoder:{self.path}:{self.variant}:{self.provider}:{self.threads}"

    def load(self) -> Any:
        if self.factory is not None:
            return self.factory()
        from ctxrec.encoder import TextEncoder
        return TextEncoder.load(self.path, provider=self.provider, variant=self.variant, threads=self.threads,
                                lru_size=0)


class _LockedDiskCache:
    """ctxrec's DiskCache shared by worker processes: reads see every complete shard
    (refresh first); writes are serialised by an exclusive lock file in the cache dir."""

    def __init__(self, root: Path, dim: int) -> None:
        from ctxrec.encoder.cache import DiskCache
        self.cache = DiskCache(root, dim)
        self.lock_path = root / ".write.lock"

    def get_many(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        self.cache.refresh()
        return self.cache.get_many(keys)

    def put_many(self, keys: list[bytes], rows: np.ndarray) -> int:
        with open(self.lock_path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self.cache.refresh()  # shards other workers wrote: no shard-number clash, no re-writes
                return self.cache.put_many(keys, rows)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _encode_partition(part: pd.DataFrame, index: int, spec: _EncoderSpec, text_col: str, id_col: str | None,
                      batch_size: int, cache_dir: str | None, out: str | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    enc, load_s = _cached(spec.token, spec.load)
    texts = part[text_col].fillna("").astype(str).tolist()
    t1 = time.perf_counter()
    hits = 0
    sha = getattr(enc, "model_sha256", None)
    if cache_dir is not None and sha and texts:
        from ctxrec.encoder.cache import text_key
        dc, _ = _cached(f"cache:{cache_dir}:{sha}", lambda: _LockedDiskCache(Path(cache_dir) / sha[:16], enc.dim))
        uniq = list(dict.fromkeys(texts))
        keys = [text_key(sha, t) for t in uniq]
        found, rows = dc.get_many(keys)
        hits = int(found.sum())
        miss = np.flatnonzero(~found)
        if len(miss):
            new = enc.encode([uniq[i] for i in miss], batch_size=batch_size, use_cache=False)
            rows[miss] = new
            dc.put_many([keys[i] for i in miss], new)
        pos = {t: i for i, t in enumerate(uniq)}
        emb = rows[[pos[t] for t in texts]]
    elif texts:
        emb = _encode_plain(enc, texts, batch_size)
    else:
        emb = np.zeros((0, int(getattr(enc, "dim", 0))), np.float32)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    t2 = time.perf_counter()
    ids = part[id_col].to_numpy() if id_col is not None else None
    result = {"partition": index, "rows": len(texts), "load_s": load_s, "read_s": t1 - t0 - load_s,
              "compute_s": t2 - t1, "cache_hits": hits}
    if out is not None:
        import pyarrow as pa
        d = emb.shape[1]
        col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), d)
        cols = {"embedding": col}
        if ids is not None:
            cols = {id_col: pa.array(ids), **cols}
        _write_parquet_atomic(pa.table(cols), Path(out), index)
    else:
        result["ids"] = ids
        result["embeddings"] = emb
    result["write_s"] = time.perf_counter() - t2
    result["worker"], result["pid"] = _worker_name()
    return result


def _encode_plain(enc: Any, texts: list[str], batch_size: int) -> np.ndarray:
    try:
        return enc.encode(texts, batch_size=batch_size, use_cache=False)
    except TypeError:  # a duck-typed encoder with encode(texts) only
        return np.asarray(enc.encode(texts), np.float32)


def encode_catalog(items: Any, out: str | os.PathLike | None = None, *, text_col: str = "text",
                   id_col: str | None = "item_id", encoder: str | os.PathLike | Callable[[], Any] | None = None,
                   variant: str = "auto", provider: str = "cpu", threads: int = 1, batch_size: int = 32,
                   cache_dir: str | os.PathLike | None = None, partition_rows: int | None = None,
                   client: Any = None, scheduler: str | None = None, n_workers: int | None = None,
                   overwrite: bool = False, progress: bool = True) -> JobResult:
    """Encode the item texts of a catalog partition by partition on a Dask cluster.

    Parameters
    ----------
    items : Dask DataFrame, pandas DataFrame, str or path-like
        A Dask DataFrame, a pandas DataFrame (split into ``partition_rows`` rows per
        partition, default 2,000) or a Parquet dataset / CSV path, with ``text_col`` (and
        ``id_col`` unless it is None).
    out : str or path-like, optional
        Parquet dataset directory to write (``part-NNNNN.parquet``: ``id_col`` and
        ``embedding`` as fixed-size float32 lists, partition order = input order, then
        ``_manifest.json``); None returns ``ids`` / ``embeddings`` in the result instead.
    text_col, id_col : str
        The text column and the id column (None: no ids).
    encoder : str, path-like or callable, optional
        An encoder export directory (default: ctxrec's; it must be readable by every
        worker) or a zero-argument callable returning an object with ``encode(texts)``
        (called once per worker).
    variant, provider, threads
        ``TextEncoder.load`` arguments on the workers (``threads`` onnxruntime threads per
        task: 1 suits one single-threaded worker process per core).
    batch_size : int
        Texts per ``encode`` call.
    cache_dir : str or path-like, optional
        The persistent embedding cache (same layout as ``TextEncoder.load(cache_dir=)``):
        texts found there are not encoded again; new ones are added.
    partition_rows : int, optional
        Rows per partition of a pandas input.
    client, scheduler, n_workers
        See :func:`local_client`.
    overwrite : bool
        Replace a non-empty ``out``.
    progress : bool
        A progress bar over the partitions.

    Returns
    -------
    JobResult
        Rows, partitions, workers, seconds, cache hits and per-task timings; with ``out=None``
        also ``ids`` and ``embeddings`` (float32 [n, d]); :func:`read_embeddings` reads ``out``.

    Raises
    ------
    FileNotFoundError
        No encoder export at ``encoder``.
    TypeError
        ``encoder`` is neither a directory nor a callable.
    ValueError
        ``items`` lacks ``text_col`` or ``id_col``.
    OutputExistsError
        ``out`` is not empty and ``overwrite`` is False.
    """
    from dask import delayed
    if isinstance(encoder, (str, os.PathLike)) or encoder is None:
        from ctxrec.encoder._paths import find_model_dir
        path = Path(encoder).expanduser() if encoder is not None else find_model_dir()
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"{path}: no encoder export here; build it with `make models`")
        spec = _EncoderSpec(str(path.resolve()), variant, provider, int(threads))
    elif callable(encoder):
        spec = _EncoderSpec(None, variant, provider, int(threads), factory=encoder)
    else:
        raise TypeError("encoder must be an export directory or a zero-argument callable returning an encoder")
    cols = [text_col] + ([id_col] if id_col is not None else [])
    ddf = _as_dask_frame(items, partition_rows or DEFAULT_PARTITION_ROWS["encode"], cols)
    missing = [c for c in cols if c not in ddf.columns]
    if missing:
        raise ValueError(f"items: no column(s) {missing} (columns: {list(ddf.columns)})")
    ddf = ddf[cols]
    out_dir = _prepare_out(out, overwrite) if out is not None else None
    job = uuid.uuid4().hex[:8]
    cache = str(Path(cache_dir).resolve()) if cache_dir is not None else None
    t0 = time.perf_counter()
    with local_client(client, scheduler, n_workers, progress=progress) as c:
        parts = ddf.to_delayed()
        tasks = [delayed(_encode_partition, pure=False)(
            p, i, spec, text_col, id_col, int(batch_size), cache, None if out_dir is None else str(out_dir),
            dask_key_name=f"ctxrec-encode-{job}-{i}") for i, p in enumerate(parts)]
        res = _run_tasks(c, tasks, progress, "encode")
        workers = _n_workers(c)
    seconds = time.perf_counter() - t0
    res = sorted(res, key=lambda r: r["partition"])
    n = int(sum(r["rows"] for r in res))
    result = JobResult("encode_catalog", n, len(res), workers, seconds, None if out_dir is None else str(out_dir))
    if out_dir is None:
        result.embeddings = np.concatenate([r.pop("embeddings") for r in res]) if res else np.zeros((0, 0), np.float32)
        if id_col is not None:
            result.ids = np.concatenate([np.asarray(r.pop("ids")) for r in res]) if res else np.zeros(0)
        for r in res:
            r.pop("ids", None)
    result.tasks = res
    if out_dir is not None:
        _finish_out(out_dir, len(res), {"job": "encode_catalog", "rows": n, "partitions": len(res),
                                        "text_col": text_col, "id_col": id_col, "encoder": spec.path,
                                        "summary": result.summary()})
    return result


def _output_parts(path: str | os.PathLike, job: str) -> list[Path]:
    """The part files of a finished ``job`` output directory (FileNotFoundError without its manifest)."""
    path = Path(path)
    if not (path / "_manifest.json").is_file():
        raise FileNotFoundError(f"{path}: no _manifest.json (not a {job} output, or incomplete)")
    return sorted(path.glob("part-*.parquet"))


def read_embeddings(path: str | os.PathLike, id_col: str | None = "item_id") -> tuple[np.ndarray | None, np.ndarray]:
    """The ids and embeddings of an ``encode_catalog`` output, in input order.

    Parameters
    ----------
    path : str or path-like
        The output directory.
    id_col : str or None
        The id column (None: ids not read).

    Returns
    -------
    ids : array [n] or None
        None when ``id_col`` is None or not in the files.
    embeddings : float32 array [n, d]

    Raises
    ------
    FileNotFoundError
        No ``_manifest.json`` (not an output, or incomplete).
    """
    import pyarrow.parquet as pq
    ids, embs = [], []
    for f in _output_parts(path, "encode_catalog"):
        t = pq.read_table(f)
        col = t.column("embedding").combine_chunks()
        d = col.type.list_size
        embs.append(col.values.to_numpy(zero_copy_only=False).reshape(-1, d))
        if id_col is not None and id_col in t.column_names:
            ids.append(t.column(id_col).to_numpy(zero_copy_only=False))
    emb = np.concatenate(embs).astype(np.float32, copy=False) if embs else np.zeros((0, 0), np.float32)
    return (np.concatenate(ids) if ids else None), emb


# ============================================================================ recommend_all
def _clean_context(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
            continue
        out[k] = v.item() if isinstance(v, np.generic) else v
    return out


def recommend_frame(rec: Any, users: Sequence[Any], contexts: Sequence[Mapping[str, Any] | None] | None = None,
                    k: int = 10, *, exclude_seen: bool = True, num_threads: int = 1,
                    ignore_unknown: bool | None = None,
                    rerank: Mapping[str, Any] | None = None) -> list[tuple[list, list, bool]]:
    """Top-k per request from ``Recommender.recommend_batch``.

    Batched, identical to ``Recommender.recommend``.

    Parameters
    ----------
    rec : Recommender
        A fitted recommender.
    users : sequence [b]
        Raw user ids.
    contexts : sequence [b] of mapping or None, optional
        The context of each request.
    k : int
        Items per request.
    exclude_seen : bool
        Leave out the items each user has seen.
    num_threads : int
        Engine threads.
    ignore_unknown : bool or None
        As in ``Recommender.recommend``.
    rerank : mapping, optional
        The options ``diversity`` / ``calibrate`` / ``calibrate_by`` / ``explore`` /
        ``explore_scale`` / ``seed``, as in ``Recommender.recommend``.

    Returns
    -------
    list of (item_ids, scores, cold_start) [b]
        Per request: a list of raw item ids, a list of float scores (best first) and a bool.
    """
    return [(r.item_ids, r.scores, r.cold_start)
            for r in rec.recommend_batch(users, contexts, k, exclude_seen=exclude_seen, num_threads=num_threads,
                                         ignore_unknown=ignore_unknown, **dict(rerank or {}))]


@dataclass(frozen=True)
class _ModelRef:
    path: str
    token: str          # sha256 of the model directory's manifest
    shipped: bool       # True: the workers get a tar archive of the directory (a scattered future)


def _model_token(path: Path) -> str:
    return hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()


def _sees_model(path: str, token: str) -> bool:
    p = Path(path)
    return (p / "manifest.json").is_file() and _model_token(p) == token


def _tar_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(str(path), arcname="model")
    return buf.getvalue()


def _load_model(ref: _ModelRef, blob: bytes | None) -> Any:
    """Load the recommender on this worker and run one request, so that numba's JIT
    compilation is paid here (counted as model load) and not by the first partition."""
    rec = _open_model(ref, blob)
    if len(rec.user_ids_):
        recommend_frame(rec, [rec.user_ids_[0]], None, 1)
    return rec


def _open_model(ref: _ModelRef, blob: bytes | None) -> Any:
    from ctxrec.recommender import Recommender
    if not ref.shipped:
        return Recommender.load(ref.path)
    try:
        from distributed import get_worker
        root = get_worker().local_directory
    except (ImportError, ValueError):
        root = None
    dest = Path(tempfile.mkdtemp(prefix="ctxrec-model-", dir=root))
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tf:
        tf.extractall(dest, filter="data")
    rec = Recommender.load(dest / "model")
    if _model_token(dest / "model") != ref.token:
        raise RuntimeError("the model archive shipped to this worker does not match the driver's manifest")
    return rec


def _recommend_partition(part: pd.DataFrame, index: int, offset: int, ref: _ModelRef, blob: Any, user_col: str,
                         context: Mapping[str, Any] | None, k: int, exclude_seen: bool, threads: int,
                         out: str | None, ignore_unknown: bool | None = None,
                         rerank: Mapping[str, Any] | None = None) -> dict[str, Any]:
    rec, load_s = _cached(f"model:{ref.token}", lambda: _load_model(ref, blob))
    t1 = time.perf_counter()
    users = part[user_col].tolist()
    ctx_cols = [c for c in part.columns if c != user_col]
    base = dict(context or {})
    if ctx_cols:
        recs = part[ctx_cols].to_dict("records")
        contexts = [{**base, **_clean_context(r)} for r in recs]
    else:
        contexts = [base] * len(users)
    res = recommend_frame(rec, users, contexts, k, exclude_seen=exclude_seen, num_threads=threads,
                          ignore_unknown=ignore_unknown, rerank=rerank)
    t2 = time.perf_counter()
    import pyarrow as pa
    lens = np.array([len(r[0]) for r in res], np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    flat_ids = [i for r in res for i in r[0]]
    flat_scores = np.array([s for r in res for s in r[1]], np.float32)
    cols = {"row": pa.array(np.arange(offset, offset + len(users), dtype=np.int64)),
            user_col: pa.Array.from_pandas(part[user_col]),
            "item_ids": pa.ListArray.from_arrays(offsets, pa.array(flat_ids)),
            "scores": pa.ListArray.from_arrays(offsets, pa.array(flat_scores, pa.float32())),
            "cold_start": pa.array([r[2] for r in res], pa.bool_())}
    for c in ctx_cols:
        cols[c] = pa.Array.from_pandas(part[c])
    table = pa.table(cols)
    result = {"partition": index, "rows": len(users), "load_s": load_s, "read_s": 0.0, "compute_s": t2 - t1}
    if out is not None:
        _write_parquet_atomic(table, Path(out), index)
    else:
        result["table"] = table
    result["write_s"] = time.perf_counter() - t2
    result["worker"], result["pid"] = _worker_name()
    return result


def recommend_all(model: Any, out: str | os.PathLike, *, users: Any = None, user_col: str = "user_id",
                  context: Mapping[str, Any] | None = None, k: int = 10, exclude_seen: bool = True,
                  partition_rows: int | None = None, threads: int = 1, ship: str = "auto",
                  client: Any = None, scheduler: str | None = None, n_workers: int | None = None,
                  overwrite: bool = False, progress: bool = True, ignore_unknown: bool | None = None,
                  diversity: float = 0.0, calibrate: float = 0.0, calibrate_by: str | None = None,
                  explore: str | None = None, explore_scale: float = 1.0, seed: int | None = None) -> JobResult:
    """Top-k for every user (or every request row) on a Dask cluster, written to Parquet.

    Parameters
    ----------
    model : str, path-like or Recommender
        A Recommender directory (``Recommender.save`` / ``ctxrec train``) or a fitted
        Recommender (saved to a temporary directory first).
    out : str or path-like
        Parquet dataset directory: ``part-NNNNN.parquet`` with ``row`` (the request's
        position in the input), ``user_col``, ``item_ids`` and ``scores`` (lists, best first),
        ``cold_start``, and the row's context columns; then ``_manifest.json``.
    users : sequence, DataFrame, str or path-like, optional
        None (every user the model knows), a sequence of user ids, or a table — pandas /
        Dask DataFrame or Parquet/CSV path — with ``user_col`` and optional context columns
        (one request per row; its non-null cells override ``context``).
    user_col : str
        The user id column of a table.
    context : mapping, optional
        Context fields applied to every request (e.g. ``{"timestamp": ..., "query": ...}``).
    k : int
        Items per request.
    exclude_seen : bool
        Leave out the items each user has seen.
    partition_rows : int, optional
        Requests per partition.
    threads : int
        Engine threads per task (1 suits one single-threaded worker process per core).
    ship : {"auto", "path", "bytes"}
        How the model reaches the workers: ``"path"`` (every worker reads the directory:
        a shared file system or one machine), ``"bytes"`` (a tar archive broadcast once to
        every worker) or ``"auto"`` (path when every current worker sees the same directory).
    client, scheduler, n_workers
        See :func:`local_client`.
    overwrite : bool
        Replace a non-empty ``out``.
    progress : bool
        A progress bar over the partitions.
    ignore_unknown : bool or None
        As in ``Recommender.recommend``: False refuses a request whose context
        has a field the model does not know (or text for a model without an encoder) with
        an error naming it; True ignores such fields; None: the model's own default.
    diversity, calibrate, calibrate_by
        The re-ranking options of ``Recommender.recommend`` (checked by it on the workers:
        a bad value fails the job naming the field). Not the exposure penalty: the workers
        hold no serving log.
    explore, explore_scale, seed
        The exploration options of ``Recommender.recommend``; with a seed every request's
        draw is fixed by (seed, its user), so the output does not depend on how the users
        are partitioned.

    Returns
    -------
    JobResult
        Rows, partitions, workers, seconds, the output directory and per-task timings
        (``summary()`` for a dict); :func:`read_recommendations` reads the output.

    Raises
    ------
    ValueError
        An unknown ``ship``, or a table without ``user_col``.
    FileNotFoundError
        ``model`` is not a Recommender directory.
    OutputExistsError
        ``out`` is not empty and ``overwrite`` is False.
    """
    from dask import delayed
    from ctxrec.recommender import Recommender
    if ship not in ("auto", "path", "bytes"):
        raise ValueError(f"ship = {ship!r}: expected 'auto', 'path' or 'bytes'")
    tmp_model = None
    if isinstance(model, Recommender):
        tmp_model = tempfile.mkdtemp(prefix="ctxrec-recommend-all-")
        model.save(Path(tmp_model) / "model")
        model = Path(tmp_model) / "model"
    mpath = Path(model).resolve()
    if not (mpath / "manifest.json").is_file():
        raise FileNotFoundError(f"{mpath}: not a Recommender directory (no manifest.json)")
    token = _model_token(mpath)
    if users is None:
        users = Recommender.saved_user_ids(mpath)
    if not isinstance(users, (str, os.PathLike, pd.DataFrame)) and not hasattr(users, "to_delayed"):
        users = pd.DataFrame({user_col: np.asarray(users)})
    rows = int(partition_rows or DEFAULT_PARTITION_ROWS["recommend"])
    ddf = _as_dask_frame(users, rows)
    offsets = None
    if isinstance(users, pd.DataFrame):  # split here into chunks of `rows`: offsets known without a pass
        offsets = np.append(np.arange(0, len(users), max(rows, 1)), len(users)) if len(users) else np.zeros(2, int)
        if len(offsets) - 1 != ddf.npartitions:
            offsets = None
    if user_col not in ddf.columns:
        raise ValueError(f"users: no column {user_col!r} (columns: {list(ddf.columns)})")
    out_dir = _prepare_out(out, overwrite)
    job = uuid.uuid4().hex[:8]
    t0 = time.perf_counter()
    try:
        with local_client(client, scheduler, n_workers, progress=progress) as c:
            mode = ship
            if mode == "auto":
                seen = c.run(_sees_model, str(mpath), token)
                mode = "path" if seen and all(seen.values()) else "bytes"
            ref = _ModelRef(str(mpath), token, mode == "bytes")
            blob = c.scatter(_tar_dir(mpath), broadcast=True, hash=False) if mode == "bytes" else None
            if offsets is None:
                offsets = _partition_offsets(c, ddf)
            parts = ddf.to_delayed()
            tasks = [delayed(_recommend_partition, pure=False)(
                p, i, int(offsets[i]), ref, blob, user_col, dict(context or {}), int(k), bool(exclude_seen),
                int(threads), str(out_dir), ignore_unknown,
                {"diversity": diversity, "calibrate": calibrate, "calibrate_by": calibrate_by,
                 "explore": explore, "explore_scale": explore_scale, "seed": seed},
                dask_key_name=f"ctxrec-recommend-{job}-{i}") for i, p in enumerate(parts)]
            res = _run_tasks(c, tasks, progress, "recommend")
            workers = _n_workers(c)
    finally:
        if tmp_model is not None:
            import shutil
            shutil.rmtree(tmp_model, ignore_errors=True)
    seconds = time.perf_counter() - t0
    res = sorted(res, key=lambda r: r["partition"])
    n = int(sum(r["rows"] for r in res))
    result = JobResult("recommend_all", n, len(res), workers, seconds, str(out_dir), tasks=res)
    _finish_out(out_dir, len(res), {"job": "recommend_all", "rows": n, "partitions": len(res), "k": int(k),
                                    "user_col": user_col, "context": dict(context or {}), "model": str(mpath),
                                    "model_manifest_sha256": token, "ship": mode, "summary": result.summary()})
    return result


def read_recommendations(path: str | os.PathLike) -> pd.DataFrame:
    """A ``recommend_all`` output as one pandas DataFrame, ordered by ``row``.

    Parameters
    ----------
    path : str or path-like
        The output directory.

    Returns
    -------
    pandas.DataFrame
        One row per request: ``row``, the user column, ``item_ids``, ``scores``,
        ``cold_start`` and the context columns.

    Raises
    ------
    FileNotFoundError
        No ``_manifest.json`` (not an output, or incomplete).
    """
    frames = [pd.read_parquet(f) for f in _output_parts(path, "recommend_all")]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return df.sort_values("row", kind="stable").reset_index(drop=True) if len(df) else df
