"""Serving engine: HNSW candidate retrieval, exact rescoring in ``ctxrec._core``, top-K.

For a fixed (user, context) the model's pairwise score of item ``i`` is
``query · item_vecs[i] + item_bias[i]``. The engine indexes ``[item_vecs[i], item_bias[i]]``
in an hnswlib inner-product index and searches it with ``[query, 1]``, so HNSW ranks by
exactly that score. The candidates are then rescored by the compiled core with the
terms that do not decompose into one inner product (a text-match term and a three-way
term, each with its weight), filtered (exclusions, allow-lists, duplicates) and cut
to the top K. Catalogs smaller than ``exact_threshold`` skip HNSW: the core scores
every item exactly, which is faster there.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import hnswlib
import numpy as np

from ctxrec import _core
from ctxrec._io import CorruptArtifactError, atomic_dir, read_manifest

__all__ = ["Engine"]

FORMAT = "ctxrec.engine"
VERSION = 1

# Below this many items exact scoring of the whole catalog beats HNSW + rescoring on one
# thread (measured with `python benchmarks/bench_engine.py --crossover`, d = 64 + a 32-d text term:
# exact 0.12 ms vs HNSW 0.10 ms at 2,000 items, 0.23 vs 0.12 ms at 5,000; see benchmarks/results/engine.md).
DEFAULT_EXACT_THRESHOLD = 2_000


def _table(x: Any, name: str, rows: int | None = None) -> np.ndarray:
    """A finite, C-contiguous float32 2-D table; float64 (or other) input is converted once, here."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_items, dim], got shape {a.shape}")
    if rows is not None and a.shape[0] != rows:
        raise ValueError(f"{name} has {a.shape[0]} rows, expected n_items = {rows}")
    bad = ~np.isfinite(a)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{name} holds a non-finite value {a[r, c]} at row {r}, column {c}")
    return a


def _query(x: Any, name: str, dim: int, batch: bool) -> np.ndarray:
    """Finite float32 queries [b, dim], C-contiguous (a single query [dim] becomes [1, dim])."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != (2 if batch else 1) or a.shape[-1] != dim:
        shape = "[b, %d]" % dim if batch else "[%d]" % dim
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not np.isfinite(a.sum()):
        raise ValueError(f"{name} holds NaN or inf")
    return np.ascontiguousarray(a.reshape(-1, dim))


def _augmented(q: np.ndarray) -> np.ndarray:
    """[q, 1] per row: the HNSW query whose inner product with [item_vec, item_bias] is the score."""
    aug = np.empty((q.shape[0], q.shape[1] + 1), np.float32)
    aug[:, :-1] = q
    aug[:, -1] = 1.0
    return aug


class Engine:
    """Top-K retrieval over an item table: HNSW candidates, exact compiled rescoring.

    Parameters
    ----------
    M, ef_construction:
        hnswlib graph degree and build-time beam width.
    ef:
        Search beam width (raised to the candidate count when that is larger).
    n_candidates:
        Candidates taken from HNSW per query before exact rescoring (plus the number
        of excluded items, so exclusions do not eat into the result).
    exact_threshold:
        Catalogs with fewer items are scored exactly (no HNSW index is built).
    num_threads:
        Threads for the index build and for batch calls (0 = all cores). Single
        ``recommend`` calls run on the calling thread.
    seed:
        hnswlib's random seed.

    Learned attributes (after ``fit``): ``n_items_``, ``dim_``, ``exact_``, ``item_ids_``,
    ``item_vecs_`` [n, dim], ``item_bias_`` [n], ``item_text_`` [n, d] or None,
    ``item_tri_`` [n, t] or None, ``text_weight_``, ``tri_weight_``, ``index_``
    (hnswlib.Index or None).

    Thread-safe: after ``fit``/``load`` the engine is read-only and any number of threads
    may call ``recommend``/``recommend_batch`` concurrently (the heavy work releases
    the GIL).
    """

    def __init__(self, M: int = 16, ef_construction: int = 200, ef: int = 64, n_candidates: int = 64,
                 exact_threshold: int = DEFAULT_EXACT_THRESHOLD, num_threads: int = 0, seed: int = 0) -> None:
        self.M = M
        self.ef_construction = ef_construction
        self.ef = ef
        self.n_candidates = n_candidates
        self.exact_threshold = exact_threshold
        self.num_threads = num_threads
        self.seed = seed
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ build
    def _check_params(self) -> None:
        for name in ("M", "ef_construction", "ef", "n_candidates"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.exact_threshold, (int, np.integer)) or self.exact_threshold < 0:
            raise ValueError(f"exact_threshold must be an integer >= 0, got {self.exact_threshold!r}")
        if not isinstance(self.num_threads, (int, np.integer)) or self.num_threads < 0:
            raise ValueError(f"num_threads must be an integer >= 0 (0 = all cores), got {self.num_threads!r}")

    def fit(self, item_vecs: Any, item_bias: Any = None, item_ids: Sequence[Any] | np.ndarray | None = None, *,
            item_text: Any = None, item_tri: Any = None, text_weight: float = 1.0,
            tri_weight: float = 1.0) -> "Engine":
        """Build the engine from an item table.

        item_vecs: float [n, dim] item factors. item_bias: float [n] (default zeros).
        item_ids: n unique original ids (ints or strings; default 0..n-1).
        item_text: float [n, d] item text embeddings for the text-match term.
        item_tri: float [n, t] item factors of the three-way term.
        text_weight / tri_weight: default weights of those terms.
        Float64 input is converted to float32 once, here. Returns self.
        """
        self._check_params()
        vecs = _table(item_vecs, "item_vecs")
        n, dim = vecs.shape
        if n == 0:
            raise ValueError("item_vecs has no rows: the catalog is empty")
        bias = np.zeros(n, np.float32) if item_bias is None else np.ascontiguousarray(item_bias, dtype=np.float32)
        if bias.shape != (n,):
            raise ValueError(f"item_bias must have shape ({n},), got {bias.shape}")
        if not np.isfinite(bias).all():
            i = int(np.flatnonzero(~np.isfinite(bias))[0])
            raise ValueError(f"item_bias holds a non-finite value {bias[i]} at index {i}")
        ids = np.arange(n) if item_ids is None else np.asarray(item_ids)
        if ids.shape != (n,):
            raise ValueError(f"item_ids must have {n} entries (one per row of item_vecs), got shape {ids.shape}")
        if ids.dtype.kind not in "iuUO":
            raise ValueError(f"item_ids must be integers or strings, got dtype {ids.dtype}")
        if ids.dtype.kind == "O":
            ids = ids.astype(str)
        lookup = {v: i for i, v in enumerate(ids.tolist())}
        if len(lookup) != n:
            uniq, counts = np.unique(ids, return_counts=True)
            raise ValueError(f"item_ids must be unique; duplicated: {uniq[counts > 1][:5].tolist()}")
        for w, name in ((text_weight, "text_weight"), (tri_weight, "tri_weight")):
            if not np.isfinite(w):
                raise ValueError(f"{name} must be finite, got {w!r}")

        self.item_vecs_ = vecs
        self.item_bias_ = bias
        self.item_text_ = None if item_text is None else _table(item_text, "item_text", n)
        self.item_tri_ = None if item_tri is None else _table(item_tri, "item_tri", n)
        self.text_weight_ = float(text_weight)
        self.tri_weight_ = float(tri_weight)
        self.item_ids_ = ids
        self._lookup = lookup
        self.n_items_ = n
        self.dim_ = dim
        self.exact_ = n < self.exact_threshold
        self.index_ = None if self.exact_ else self._build_index()
        return self

    def _build_index(self) -> hnswlib.Index:
        index = hnswlib.Index(space="ip", dim=self.dim_ + 1)
        index.init_index(max_elements=self.n_items_, ef_construction=self.ef_construction, M=self.M,
                         random_seed=self.seed)
        data = np.empty((self.n_items_, self.dim_ + 1), np.float32)
        data[:, :-1] = self.item_vecs_
        data[:, -1] = self.item_bias_
        index.add_items(data, np.arange(self.n_items_), num_threads=_core.resolve_threads(self.num_threads))
        index.set_ef(self.ef)
        return index

    def _fitted(self) -> None:
        if not hasattr(self, "item_vecs_"):
            raise RuntimeError("Engine is not fitted: call fit(item_vecs, ...) or Engine.load(path) first")

    # ------------------------------------------------------------------ ids
    def _dense(self, raw: Iterable[Any] | None, name: str) -> np.ndarray | None:
        """Original ids → sorted unique dense indices; unknown ids are dropped with a warning."""
        if raw is None:
            return None
        if isinstance(raw, (str, bytes)) or np.ndim(raw) == 0:
            raise ValueError(f"{name} must be a sequence of item ids, got {raw!r}")
        items = np.asarray(raw).tolist()
        if self.item_ids_.dtype.kind == "U":
            items = [str(x) for x in items]
        idx, unknown = [], []
        for x in items:
            i = self._lookup.get(x)
            (unknown if i is None else idx).append(x if i is None else i)
        if unknown:
            warnings.warn(f"{name}: {len(unknown)} unknown item id(s) ignored, e.g. {unknown[:3]}", stacklevel=3)
        return np.unique(np.asarray(idx, dtype=np.int64))

    def item_index(self, item_id: Any) -> int:
        """Dense index (row of the item table) of an original item id; KeyError when unknown."""
        self._fitted()
        key = str(item_id) if self.item_ids_.dtype.kind == "U" else item_id
        i = self._lookup.get(key)
        if i is None:
            raise KeyError(f"unknown item id {item_id!r}")
        return int(i)

    def _raw(self, idx: np.ndarray) -> np.ndarray:
        out = self.item_ids_[np.maximum(idx, 0)]
        if (idx < 0).any():
            out = out.astype(object) if out.dtype.kind == "U" else out.copy()
            out[idx < 0] = None if out.dtype == object else -1
        return out

    # ------------------------------------------------------------------ serve
    def _extras(self, text_q: Any, tri_q: Any, b: int, batch: bool, text_weight: float | None,
                tri_weight: float | None) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if text_q is None and tri_q is None:
            return kw
        if text_q is not None:
            if self.item_text_ is None:
                raise ValueError("text_query given but the engine has no item_text table")
            kw.update(text_queries=_query(text_q, "text_query", self.item_text_.shape[1], batch),
                      item_text=self.item_text_,
                      text_weight=self.text_weight_ if text_weight is None else float(text_weight))
        if tri_q is not None:
            if self.item_tri_ is None:
                raise ValueError("tri_query given but the engine has no item_tri table")
            kw.update(tri_queries=_query(tri_q, "tri_query", self.item_tri_.shape[1], batch),
                      item_tri=self.item_tri_,
                      tri_weight=self.tri_weight_ if tri_weight is None else float(tri_weight))
        for key in ("text_queries", "tri_queries"):
            if key in kw and kw[key].shape[0] != b:
                raise ValueError(f"{key} has {kw[key].shape[0]} rows but there are {b} queries")
        return kw

    def _search(self, q: np.ndarray, k: int, kw: dict[str, Any], excl: tuple[np.ndarray, np.ndarray] | None,
                allow: np.ndarray | None, n_excluded: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense top-k for queries q [b, dim]."""
        if excl is not None:
            kw["exclude_indptr"], kw["exclude_indices"] = excl
        if allow is not None:
            kw["allow_indptr"] = np.array([0, len(allow)], np.int64)
            kw["allow_indices"] = allow
        n = self.n_items_
        c = max(self.n_candidates, k) + n_excluded
        if allow is not None:  # oversample so that enough allowed items survive
            c = int(c * n / max(len(allow), 1))
        if allow is not None and len(allow) <= max(self.exact_threshold, 16 * self.n_candidates):
            # A short allow-list is cheaper to score exactly than to search for.
            cand = np.ascontiguousarray(np.broadcast_to(allow, (q.shape[0], len(allow))))
            return _core.rescore(q, self.item_vecs_, self.item_bias_, cand, k, num_threads=threads, **kw)
        if self.exact_ or c >= n // 4:
            # Small catalog, or so many candidates needed that a full exact pass is cheaper.
            return _core.topk_full(q, self.item_vecs_, self.item_bias_, k, num_threads=threads, **kw)
        try:
            labels, _ = self.index_.knn_query(_augmented(q), k=c, num_threads=threads)
        except RuntimeError:  # the graph could not produce c results (tiny or degenerate index)
            return _core.topk_full(q, self.item_vecs_, self.item_bias_, k, num_threads=threads, **kw)
        return _core.rescore(q, self.item_vecs_, self.item_bias_, labels.view(np.int64), k,
                             num_threads=threads, **kw)

    def recommend(self, query: Any, k: int = 10, *, exclude: Iterable[Any] | None = None,
                  allow: Iterable[Any] | None = None, text_query: Any = None, tri_query: Any = None,
                  text_weight: float | None = None, tri_weight: float | None = None,
                  exclude_index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for one query.

        query: float [dim]; text_query: float [d] (text-match term); tri_query: float [t]
        (three-way term); exclude / allow: original item ids (unknown ids are ignored with
        a warning); text_weight / tri_weight override the fitted weights; exclude_index:
        int64 rows of the item table to exclude as well (e.g. a user history kept as
        indices: no id lookups).
        Returns (ids [m] original ids, scores [m] float32), m = min(k, eligible items),
        sorted by score descending (ties: smaller item index first).
        """
        self._fitted()
        if not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be an integer >= 0, got {k!r}")
        q = _query(query, "query", self.dim_, batch=False)
        kw = self._extras(text_query, tri_query, 1, False, text_weight, tri_weight)
        ex = self._dense(exclude, "exclude")
        if exclude_index is not None:
            rows = np.asarray(exclude_index, dtype=np.int64).reshape(-1)
            ex = rows if ex is None else np.concatenate([ex, rows])
        al = self._dense(allow, "allow")
        excl = None if ex is None else (np.array([0, len(ex)], np.int64), ex)
        ids, scores = self._search(q, int(k), kw, excl, al, 0 if ex is None else len(ex), 1)
        m = int(np.count_nonzero(ids[0] >= 0))
        return self.item_ids_[ids[0, :m]], scores[0, :m]

    def recommend_batch(self, queries: Any, k: int = 10, *, exclude: Sequence[Iterable[Any] | None] | None = None,
                        allow: Iterable[Any] | None = None, text_queries: Any = None, tri_queries: Any = None,
                        text_weight: float | None = None, tri_weight: float | None = None,
                        num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for each of b queries, multi-threaded.

        queries: float [b, dim]; text_queries: float [b, d]; tri_queries: float [b, t];
        exclude: one sequence of original ids per query (or None); allow: one list of
        original ids for every query. num_threads defaults to the engine's.
        Returns (ids [b, k], scores [b, k] float32); rows with fewer than k eligible items
        are padded with score -inf and id -1 (integer ids) or None (string ids).
        """
        self._fitted()
        if not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be an integer >= 0, got {k!r}")
        q = _query(queries, "queries", self.dim_, batch=True)
        b = q.shape[0]
        kw = self._extras(text_queries, tri_queries, b, True, text_weight, tri_weight)
        excl, longest = None, 0
        if exclude is not None:
            if len(exclude) != b:
                raise ValueError(f"exclude has {len(exclude)} lists but there are {b} queries")
            rows = [np.zeros(0, np.int64) if e is None else self._dense(e, f"exclude[{i}]")
                    for i, e in enumerate(exclude)]
            indptr = np.zeros(b + 1, np.int64)
            indptr[1:] = np.cumsum([len(r) for r in rows])
            excl = (indptr, np.concatenate(rows) if rows else np.zeros(0, np.int64))
            longest = max((len(r) for r in rows), default=0)
        al = self._dense(allow, "allow")
        threads = _core.resolve_threads(self.num_threads if num_threads is None else num_threads)
        ids, scores = self._search(q, int(k), kw, excl, al, longest, threads)
        return self._raw(ids), scores

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the engine to directory ``path`` atomically (arrays, index, manifest with checksums)."""
        self._fitted()
        params = {k: int(getattr(self, k)) for k in
                  ("M", "ef_construction", "ef", "n_candidates", "exact_threshold", "num_threads", "seed")}
        meta = {"params": params, "n_items": self.n_items_, "dim": self.dim_, "exact": self.exact_,
                "text_weight": self.text_weight_, "tri_weight": self.tri_weight_}
        with atomic_dir(path, FORMAT, VERSION, meta) as tmp:
            np.save(tmp / "item_vecs.npy", self.item_vecs_)
            np.save(tmp / "item_bias.npy", self.item_bias_)
            np.save(tmp / "item_ids.npy", self.item_ids_, allow_pickle=False)
            if self.item_text_ is not None:
                np.save(tmp / "item_text.npy", self.item_text_)
            if self.item_tri_ is not None:
                np.save(tmp / "item_tri.npy", self.item_tri_)
            if self.index_ is not None:
                self.index_.save_index(str(tmp / "hnsw.bin"))

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, mmap: bool = True) -> "Engine":
        """Load an engine saved by ``save``; checks format, version and every file's SHA-256.

        mmap=True maps the arrays read-only (shared between processes that load the same
        directory). Raises CorruptArtifactError for a missing, truncated or altered file.
        """
        path = Path(path)
        manifest = read_manifest(path, FORMAT, VERSION, verify=verify)
        meta = manifest["meta"]
        eng = cls(**meta["params"])
        mode = "r" if mmap else None

        def arr(name: str) -> np.ndarray | None:
            p = path / name
            if name not in manifest["files"]:
                return None
            try:
                return np.load(p, mmap_mode=mode, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise CorruptArtifactError(f"{p}: unreadable array ({e})") from None

        eng.item_vecs_ = arr("item_vecs.npy")
        eng.item_bias_ = arr("item_bias.npy")
        eng.item_text_ = arr("item_text.npy")
        eng.item_tri_ = arr("item_tri.npy")
        eng.item_ids_ = np.load(path / "item_ids.npy", allow_pickle=False)
        eng.text_weight_ = float(meta["text_weight"])
        eng.tri_weight_ = float(meta["tri_weight"])
        eng.n_items_, eng.dim_, eng.exact_ = int(meta["n_items"]), int(meta["dim"]), bool(meta["exact"])
        if eng.item_vecs_ is None or eng.item_vecs_.shape != (eng.n_items_, eng.dim_):
            raise CorruptArtifactError(f"{path}: item_vecs.npy does not match the manifest's shape")
        eng._lookup = {v: i for i, v in enumerate(eng.item_ids_.tolist())}
        eng.index_ = None
        if not eng.exact_:
            index = hnswlib.Index(space="ip", dim=eng.dim_ + 1)
            try:
                index.load_index(str(path / "hnsw.bin"), max_elements=eng.n_items_)
            except RuntimeError as e:
                raise CorruptArtifactError(f"{path / 'hnsw.bin'}: cannot load HNSW index ({e})") from None
            index.set_ef(eng.ef)
            eng.index_ = index
        return eng

    def set_ef(self, ef: int) -> None:
        """Change the HNSW search beam width (takes effect for later queries)."""
        if not isinstance(ef, (int, np.integer)) or ef < 1:
            raise ValueError(f"ef must be a positive integer, got {ef!r}")
        with self._lock:
            self.ef = int(ef)
            if getattr(self, "index_", None) is not None:
                self.index_.set_ef(self.ef)

    def __repr__(self) -> str:
        state = f"n_items={self.n_items_}, dim={self.dim_}, exact={self.exact_}" if hasattr(self, "n_items_") \
            else "unfitted"
        return f"Engine(M={self.M}, ef={self.ef}, n_candidates={self.n_candidates}, {state})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
