"""Serving engine: filtered HNSW retrieval, exact rescoring and top-K in one native call; a live catalog.

For a fixed (user, context) the model's pairwise score of item ``i`` is
``query · item_vecs[i] + item_bias[i]``. The engine indexes ``[item_vecs[i], item_bias[i]]``
in an inner-product HNSW graph (hnswlib, compiled into ``ctxrec._core``) and searches it with
``[query, 1]``, so the graph ranks by exactly that score. Each request is one GIL-free call
to ``_core.HnswIndex.search``: the graph search skips ineligible items inside the traversal
(removed items, the user's seen items, exclusions, named filters, allow-lists), the
candidates are rescored exactly with the terms that do not decompose into one inner product
(a text-match term and a three-way term, each with its weight) and cut to the top K. When a
filter leaves few items, those items are scored exactly instead of searched for.

The catalog is live. Items are numbered once, in the order they first arrive (their *slot*);
each version of an item is a *row* of the tables and of the graph, and rows are never
rewritten: ``update_items`` writes new rows and ``remove_items`` hides rows. A request reads
one immutable snapshot (the visible rows, the slot → row map), so it sees the catalog before
or after a write batch, never half of one. When hidden rows pass ``compact_ratio`` of all
rows, the catalog is rebuilt from its visible rows while the old snapshot keeps serving.
"""
from __future__ import annotations

import math
import threading
import warnings
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ctxrec import _core, csr
from ctxrec._io import CorruptArtifactError, MetaField, atomic_dir, check_meta, load_array, read_manifest

__all__ = ["Engine", "NotFittedError"]

FORMAT = "ctxrec.engine"
VERSION = 2  # 2: live catalog (slots, visible rows), named filters, seen items; 1 still loads

# Below this many eligible items exact scoring beats the graph search + rescoring on one
# thread (measured with `python benchmarks/bench_engine.py --crossover`, d = 64 + a 32-d text term:
# exact 0.12 ms vs HNSW 0.10 ms at 2,000 items, 0.23 vs 0.12 ms at 5,000; see benchmarks/results/engine.md).
DEFAULT_EXACT_THRESHOLD = 2_000

# A filtered graph search visits about ef / selectivity nodes before it holds ef eligible
# ones, while exact scoring costs one dot product per eligible item; so exact wins while
# eligible < sqrt(CROSSOVER * n_items * ef). Measured by `python benchmarks/bench_engine.py
# --crossover` (benchmarks/results/engine.md): the two paths cross at ~19,800 eligible of 1M
# items (CROSSOVER ~ 6.1) and ~5,200 of 100k (~ 4.2), ef = 64, d = 64 + a 32-d text term.
CROSSOVER = 6.0

# Rows added after a build with a norm past the graph's radius are scored exactly on every
# graph search (``_Snapshot.overflow``); past this many (or 1 % of the rows) the graph is rebuilt.
OVERFLOW_LIMIT = 1024

_BIG = 1 << 40
#: The saved engine parameters (``meta["params"]``); ``compact_ratio``/``graph`` are newer than format 1.
_PARAMS_SCHEMA = {
    "M": MetaField(int, min=2, max=1 << 12), "ef_construction": MetaField(int, min=1, max=1 << 24),
    "ef": MetaField(int, min=1, max=1 << 24), "n_candidates": MetaField(int, min=1, max=1 << 24),
    "exact_threshold": MetaField(int, min=0, max=_BIG), "num_threads": MetaField(int, min=0, max=1 << 12),
    "seed": MetaField(int), "compact_ratio": MetaField(float, min=0.0, max=1.0, required=False),
    "graph": MetaField(str, choices=("ip", "sphere"), required=False),
    "text_candidates": MetaField(int, min=0, max=1 << 20, required=False),
}
_COMMON_META = {
    "params": MetaField(dict, fields=_PARAMS_SCHEMA, allow_unknown=False),
    "dim": MetaField(int, min=1, max=1 << 16),
    "text_weight": MetaField(float), "tri_weight": MetaField(float),
}
#: What ``meta`` must hold, by format version, before any array or the HNSW file is read.
META_SCHEMAS = {
    1: {**_COMMON_META, "n_items": MetaField(int, min=0, max=_BIG)},
    2: {**_COMMON_META, "n_rows": MetaField(int, min=0, max=_BIG), "n_slots": MetaField(int, min=0, max=_BIG),
        "n_live": MetaField(int, min=0, max=_BIG), "text_dim": MetaField(int, min=1, allow_none=True),
        "tri_dim": MetaField(int, min=1, allow_none=True),
        "filters": MetaField(dict, max=1 << 16), "max_norm": MetaField(float, min=0.0),
        "seen_keys": MetaField(list, items=MetaField((int, str)))},
}


from ctxrec.ids import int_id  # noqa: E402
from ctxrec.errors import InputError, NotFittedError  # noqa: E402,F401  (re-exported: ctxrec.engine.NotFittedError)


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


def _check_query(x: Any, name: str, dim: int, batch: bool) -> np.ndarray:
    """Finite float32 queries [b, dim], C-contiguous (a single query [dim] becomes [1, dim])."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != (2 if batch else 1) or a.shape[-1] != dim:
        shape = "[b, %d]" % dim if batch else "[%d]" % dim
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not np.isfinite(a.sum()):
        raise ValueError(f"{name} holds NaN or inf")
    return np.ascontiguousarray(a.reshape(-1, dim))


# The most candidates a diversity / calibration re-rank searches per query (or 4k, if more), and
# the spread of KL differences between candidates its pool allows for (nats; Engine._rerank).
POOL_MAX = 1000
KL_SPAN = 1.0


def check_rerank_options(diversity: Any, calibrate: Any, exposure: Any) -> tuple[float, float, float]:
    """The one rule for the re-ranking weights: diversity in [0, 1], calibrate and exposure finite and >= 0.

    Returns
    -------
    (diversity, calibrate, exposure) as floats.

    Raises
    ------
    InputError
        (a ValueError) naming the option in ``field``.
    """
    out = []
    for name, x, hi in (("diversity", diversity, 1.0), ("calibrate", calibrate, math.inf),
                        ("exposure", exposure, math.inf)):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)) or \
                not (math.isfinite(float(x)) and 0.0 <= float(x) <= hi):
            raise InputError(f"{name} must be a number in [0, {hi:g}], got {x!r}"[:300], field=name, value=x)
        out.append(float(x))
    return out[0], out[1], out[2]


def _words(n: int) -> int:
    return (n + 63) // 64


def _set_bits(bits: np.ndarray, rows: np.ndarray, value: bool = True) -> None:
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return
    masks = np.left_shift(np.uint64(1), (rows & 63).astype(np.uint64))
    if value:
        np.bitwise_or.at(bits, rows >> 6, masks)
    else:
        np.bitwise_and.at(bits, rows >> 6, ~masks)


def _bits_of(rows: np.ndarray, words: int) -> np.ndarray:
    bits = np.zeros(words, np.uint64)
    _set_bits(bits, rows)
    return bits


def _bit_rows(bits: np.ndarray, n: int) -> np.ndarray:
    """Rows < n whose bit is set."""
    return np.flatnonzero(np.unpackbits(bits.view(np.uint8), bitorder="little")[:n])


def filter_key(value: Any) -> str:
    """The one spelling of a filter value.

    Returns
    -------
    str
        Booleans ``'true'`` / ``'false'``, integral numbers without a fraction, everything else
        ``str``: so ``True`` and ``"true"`` match, and ``3``, ``3.0``, ``"3"``.
    """
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    s = str(value)
    return s.lower() if s.lower() in ("true", "false") else s


def _values_of(v: Any) -> list[str]:
    """Filter values of one item's attribute: none, one, or several (lists, sets, tuples, arrays)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    if isinstance(v, (list, tuple, set, frozenset, np.ndarray)):
        return [filter_key(x) for x in v if not (x is None or (isinstance(x, float) and math.isnan(x)))]
    return [filter_key(v)]


def filter_groups(item_filters: Mapping[str, Sequence[Any]], n: int) -> dict[str, dict[str, list[int]]]:
    """Group the rows of named filter columns by value: the lists ``Engine.fit`` turns into bitsets.

    Parameters
    ----------
    item_filters : mapping name -> sequence of length n
        One value per item: None / NaN (no value), a scalar, or a list / tuple / set / array
        of values (the item has each of them).
    n : int
        The number of items (rows) every column must have.

    Returns
    -------
    dict of str -> dict of str -> list of int
        filter name -> value (spelled by :func:`filter_key`) -> the rows (0 .. n-1, ascending)
        having it.

    Raises
    ------
    ValueError
        A column without exactly ``n`` values.
    """
    out: dict[str, dict[str, list[int]]] = {}
    for name, col in item_filters.items():
        vals = list(col)
        if len(vals) != n:
            raise ValueError(f"item_filters[{name!r}] has {len(vals)} values, expected one per item ({n})")
        groups: dict[str, list[int]] = {}
        for r, v in enumerate(vals):
            for key in _values_of(v):
                groups.setdefault(key, []).append(r)
        out[str(name)] = groups
    return out


@dataclass(frozen=True)
class _Snapshot:
    """What one request reads; immutable once published (tables only grow past ``n_rows``)."""

    index: Any                 # _core.HnswIndex (shared until a compaction builds a new one)
    n_rows: int                # rows written; rows >= n_rows are invisible
    live: np.ndarray           # uint64 bitset of the visible rows
    n_live: int
    slot_row: np.ndarray       # int64 [slots]: current row of each slot, -1 = removed
    row_slot: np.ndarray       # int64 [capacity]: slot of each row (append-only)
    vecs: np.ndarray           # float32 [capacity, dim]
    bias: np.ndarray           # float32 [capacity]
    text: np.ndarray | None    # float32 [capacity, d] or None
    tri: np.ndarray | None     # float32 [capacity, t] or None
    filters: Mapping[str, Mapping[str, np.ndarray]]  # name -> value -> uint64 bitset (append-only)
    ids: np.ndarray            # [slots capacity] original id of each slot (append-only)
    n_slots: int
    identity: bool = True      # row == slot for every slot (no update or removal since fit/compaction)
    version: int = 0           # bumped by every publish (keys caches derived from a snapshot)
    overflow: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows past the graph's radius: scored on every search
    text_index: Any = None     # _core.HnswIndex over the text rows (None: no text, or text_candidates=0)


class Engine:
    """Top-K retrieval over a live item catalog: filtered HNSW search, exact compiled rescoring.

    Parameters
    ----------
    M, ef_construction : int
        hnswlib graph degree and build-time beam width.
    ef : int
        Search beam width (at least ``n_candidates``).
    n_candidates : int
        Candidates the graph search returns per query for exact rescoring (at least k).
    exact_threshold : int
        Requests with at most this many eligible items are scored exactly (no graph search);
        the selectivity rule (:data:`CROSSOVER`) raises it for selective filters.
    num_threads : int
        Threads for inserts and for batch calls (0 = all cores). Single ``recommend`` calls
        run on the calling thread.
    seed : int
        hnswlib's random seed.
    compact_ratio : float
        Rebuild the catalog from its visible rows when hidden rows (removed or replaced
        items) pass this fraction of all rows.
    graph : {"ip", "sphere"}
        "ip": an inner-product graph, best without filters (recall@10 0.978 at ef = 64 on 1M
        clustered items, 0.83 under a 10 % filter). "sphere": maximum inner product as
        nearest neighbours on a sphere, best for filter-heavy traffic (0.99 under a 10 %
        filter, 0.85 without). See csrc/index.hpp and benchmarks/results/engine*.md.
    text_candidates : int
        With item text: a second graph over the item-text embeddings; a graph-searched request
        with a text query also rescores the ``text_candidates`` items nearest to it in that
        graph, so an item the text favours and the model ranks low is still found (the model
        graph alone retrieves by the model's score). 0: off.

    Learned attributes (after ``fit``): ``n_items_`` (visible items), ``dim_``, ``item_ids_``
    (every item id ever added, by slot), ``item_vecs_`` [slots, dim], ``item_bias_`` [slots],
    ``item_text_`` [slots, d] or None, ``item_tri_`` [slots, t] or None (current version of
    each slot), ``text_weight_``, ``tri_weight_``, ``filter_names_``.

    Thread-safe: any number of threads may call ``recommend``/``recommend_batch``/
    ``similar_items`` while one thread at a time writes (``add_items``, ``update_items``,
    ``remove_items``, ``set_seen``, ``add_seen``; writers are serialized by a lock).
    """

    def __init__(self, M: int = 16, ef_construction: int = 200, ef: int = 64, n_candidates: int = 64,
                 exact_threshold: int = DEFAULT_EXACT_THRESHOLD, num_threads: int = 0, seed: int = 0,
                 compact_ratio: float = 0.25, graph: str = "ip", text_candidates: int = 64) -> None:
        self.M = M
        self.ef_construction = ef_construction
        self.ef = ef
        self.n_candidates = n_candidates
        self.exact_threshold = exact_threshold
        self.num_threads = num_threads
        self.seed = seed
        self.compact_ratio = compact_ratio
        self.graph = graph
        self.text_candidates = text_candidates
        self._write = threading.RLock()
        self._exposure = np.zeros(0, np.float64)  # per slot, times _exposure_scale (see add_exposure); not saved
        self._exposure_max = 0.0
        self._exposure_scale = 1.0
        self._cat_cache: tuple | None = None  # (weakref to the snapshot, filter name, values, stacked bitsets)

    # ------------------------------------------------------------------ build
    def _check_params(self) -> None:
        for name in ("M", "ef_construction", "ef", "n_candidates"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.M < 2:  # hnswlib's level draw divides by log(M)
            raise ValueError(f"M must be >= 2, got {self.M!r}")
        if not isinstance(self.exact_threshold, (int, np.integer)) or self.exact_threshold < 0:
            raise ValueError(f"exact_threshold must be an integer >= 0, got {self.exact_threshold!r}")
        if not isinstance(self.num_threads, (int, np.integer)) or self.num_threads < 0:
            raise ValueError(f"num_threads must be an integer >= 0 (0 = all cores), got {self.num_threads!r}")
        if not (isinstance(self.compact_ratio, (int, float)) and 0 < self.compact_ratio <= 1):
            raise ValueError(f"compact_ratio must be in (0, 1], got {self.compact_ratio!r}")
        if self.graph not in ("ip", "sphere"):
            raise ValueError(f"graph must be 'ip' or 'sphere', got {self.graph!r}")
        if not isinstance(self.text_candidates, (int, np.integer)) or isinstance(self.text_candidates, bool) \
                or self.text_candidates < 0:
            raise ValueError(f"text_candidates must be an integer >= 0, got {self.text_candidates!r}")

    def fit(self, item_vecs: Any, item_bias: Any = None, item_ids: Sequence[Any] | np.ndarray | None = None, *,
            item_text: Any = None, item_tri: Any = None, text_weight: float = 1.0, tri_weight: float = 1.0,
            item_filters: Mapping[str, Sequence[Any]] | None = None) -> "Engine":
        """Build the engine from an item table.

        Parameters
        ----------
        item_vecs : float array [n, dim]
            Item factors.
        item_bias : float array [n], optional
            Item biases (default zeros).
        item_ids : sequence of n unique ids (ints or strings), optional
            Default ``0 .. n-1``.
        item_text : float array [n, d], optional
            Item text embeddings of the text-match term.
        item_tri : float array [n, t], optional
            Item factors of the three-way term.
        text_weight, tri_weight : float
            Default weights of those terms.
        item_filters : mapping name -> sequence of n values, optional
            Categorical item columns requests can filter on (``filter={"category": ["shoes"]}``):
            one value per item, a list/set for several, None for none. Values compare by
            :func:`filter_key` (``True`` matches ``"true"``, ``3`` matches ``"3"``).

        Returns
        -------
        Engine
            self. Float64 input is converted to float32 once, here.
        """
        self._check_params()
        vecs = _table(item_vecs, "item_vecs")
        n, dim = vecs.shape
        if n == 0:
            raise ValueError("item_vecs has no rows: the catalog is empty")
        for w, name in ((text_weight, "text_weight"), (tri_weight, "tri_weight")):
            if not np.isfinite(w):
                raise ValueError(f"{name} must be finite, got {w!r}")
        self.dim_ = dim
        self.text_weight_ = float(text_weight)
        self.tri_weight_ = float(tri_weight)
        self._text_dim = None if item_text is None else int(np.shape(item_text)[1]) if np.ndim(item_text) == 2 else -1
        self._tri_dim = None if item_tri is None else int(np.shape(item_tri)[1]) if np.ndim(item_tri) == 2 else -1
        ids = self._new_ids(item_ids, n)
        cols = self._columns(vecs, item_bias, item_text, item_tri, n)
        names = sorted(item_filters or {})
        self.filter_names_ = tuple(names)
        filt = filter_groups(item_filters or {}, n)
        index = self._new_index(cols["vecs"], cols["bias"])
        words = _words(n)
        filters = {name: {v: _bits_of(np.asarray(rows, np.int64), words) for v, rows in filt[name].items()}
                   for name in names}
        self._seen: dict[Any, np.ndarray] = {}
        self._seen_cache: dict[Any, tuple[int, np.ndarray, np.ndarray]] = {}
        # the id map, read by requests as one reference: (sorted ids, their slots, ids added since -> slot)
        self._idmap: tuple[np.ndarray, np.ndarray, dict[Any, int]] = (*self._sort_ids(ids, n), {})
        self._snap = _Snapshot(index=index, n_rows=n, live=_bits_of(np.arange(n), words), n_live=n,
                               slot_row=np.arange(n, dtype=np.int64), row_slot=np.arange(n, dtype=np.int64),
                               vecs=cols["vecs"], bias=cols["bias"], text=cols["text"], tri=cols["tri"],
                               filters=filters, ids=ids, n_slots=n, text_index=self._new_text_index(cols["text"]))
        return self

    def _new_index(self, vecs: np.ndarray, bias: np.ndarray, capacity: int | None = None,
                   max_norm: float = 0.0) -> Any:
        """A graph over rows 0..n-1 = [vecs, bias] on a sphere of radius >= every row's norm."""
        n = len(vecs)
        norms = np.sqrt(np.einsum("ij,ij->i", vecs, vecs, dtype=np.float64) + bias.astype(np.float64) ** 2) \
            if n else np.zeros(1)
        radius = 0.0 if self.graph == "ip" else float(max(max_norm, norms.max() * (1 + 1e-6), 1e-6))
        # Sphere radius = the largest norm: a larger one (headroom for later items) costs recall
        # (0.92 -> 0.82 at ef = 64 on 100k clustered items with twice the radius).
        index = _core.HnswIndex(self.dim_, max(capacity or n, 1), int(self.M), int(self.ef_construction),
                                int(self.seed), radius)
        index.add(np.ascontiguousarray(vecs), np.ascontiguousarray(bias), np.arange(n, dtype=np.int64),
                  _core.resolve_threads(self.num_threads))
        index.set_ef(max(int(self.ef), int(self.n_candidates)))
        return index

    def _new_text_index(self, text: np.ndarray | None) -> Any:
        """The graph over the text rows 0..n-1 (inner product of the unit embeddings), or None."""
        if text is None or not self.text_candidates:
            return None
        n = len(text)
        index = _core.HnswIndex(int(text.shape[1]), max(n, 1), int(self.M), int(self.ef_construction), int(self.seed),
                                0.0)
        index.add(np.ascontiguousarray(text), np.zeros(n, np.float32), np.arange(n, dtype=np.int64),
                  _core.resolve_threads(self.num_threads))
        index.set_ef(max(int(self.ef), int(self.text_candidates)))
        return index

    def _columns(self, vecs: np.ndarray, bias: Any, text: Any, tri: Any, n: int) -> dict[str, np.ndarray | None]:
        """Validated float32 columns of n new rows (vecs already checked)."""
        if vecs.shape != (n, self.dim_):
            raise ValueError(f"item_vecs must have shape ({n}, {self.dim_}), got {vecs.shape}")
        b = np.zeros(n, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        if b.shape != (n,):
            raise ValueError(f"item_bias must have shape ({n},), got {b.shape}")
        if not np.isfinite(b).all():
            i = int(np.flatnonzero(~np.isfinite(b))[0])
            raise ValueError(f"item_bias holds a non-finite value {b[i]} at index {i}")
        out: dict[str, np.ndarray | None] = {"vecs": vecs, "bias": b}
        for key, x, width, name in (("text", text, self._text_dim, "item_text"), ("tri", tri, self._tri_dim, "item_tri")):
            if width is None:
                if x is not None:
                    raise ValueError(f"{name} given but the engine was fitted without an {name} table")
                out[key] = None
                continue
            if x is None:
                raise ValueError(f"{name} is required: the engine was fitted with an {name} table")
            t = _table(x, name, n)
            if t.shape[1] != width and width >= 0:
                raise ValueError(f"{name} has {t.shape[1]} columns, expected {width}")
            out[key] = t
        return out

    def _new_ids(self, item_ids: Any, n: int) -> np.ndarray:
        ids = np.arange(n) if item_ids is None else np.asarray(item_ids)
        if ids.shape != (n,):
            raise ValueError(f"item_ids must have {n} entries (one per row of item_vecs), got shape {ids.shape}")
        if ids.dtype.kind not in "iuUO":
            raise ValueError(f"item_ids must be integers or strings, got dtype {ids.dtype}")
        if ids.dtype.kind == "O":
            ids = ids.astype(str)
        if ids.dtype.kind == "u":
            ids = ids.astype(np.int64)
        uniq, counts = np.unique(ids, return_counts=True)
        if len(uniq) != n:
            raise ValueError(f"item_ids must be unique; duplicated: {uniq[counts > 1][:5].tolist()}")
        return ids

    @staticmethod
    def _sort_ids(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(ids[:n], kind="stable")
        return ids[:n][order], order.astype(np.int64)

    def _fitted(self) -> _Snapshot:
        snap = getattr(self, "_snap", None)
        if snap is None:
            raise NotFittedError("Engine is not fitted: call fit(item_vecs, ...) or Engine.load(path) first")
        return snap

    # ------------------------------------------------------------------ ids
    def _ids_key(self, raw: Any) -> np.ndarray:
        """Raw ids as an array comparable with the catalog's ids (strings stay strings)."""
        a = np.asarray(raw)
        if self._snap.ids.dtype.kind == "U":
            return a.astype(str)
        if a.dtype.kind in "iu":
            return a.astype(np.int64)
        if a.dtype.kind == "b":
            raise ValueError(f"item ids are integers, got booleans {a[:3].tolist()}")
        if a.dtype.kind == "U":
            try:  # ids over HTTP/CLI arrive as strings: one vectorised parse, kept only where every
                v = a.astype(np.int64)  # string is the canonical form (numpy also reads " 20", "+20")
                if (v.astype(str) == a).all():
                    return v
            except (ValueError, OverflowError):
                pass
        out = np.full(a.shape, -1, np.int64)
        for j, x in enumerate(a.tolist()):  # mixed or string input for an integer catalog: per-id rule
            v = int_id(x)  # ctxrec.ids: the rule the recommender uses
            out[j] = np.iinfo(np.int64).min if v is None else v  # None matches no item
        return out

    def _slots(self, raw: Iterable[Any], name: str, *, warn: bool = True) -> np.ndarray:
        """Slots of original ids (int64, -1 = unknown), resolved with one vectorised search."""
        if isinstance(raw, (str, bytes)) or np.ndim(raw) == 0:
            raise ValueError(f"{name} must be a sequence of item ids, got {raw!r}")
        keys = self._ids_key(raw if isinstance(raw, np.ndarray) else list(raw))
        srt, slots, recent = self._idmap
        out = np.full(len(keys), -1, np.int64)
        if len(srt) and len(keys):
            pos = np.minimum(np.searchsorted(srt, keys), len(srt) - 1)
            hit = srt[pos] == keys
            out[hit] = slots[pos[hit]]
        if recent and (out < 0).any():
            for j in np.flatnonzero(out < 0):
                out[j] = recent.get(keys[j].item(), -1)
        if warn and (out < 0).any():
            bad = keys[out < 0][:3].tolist()
            warnings.warn(f"{name}: {int((out < 0).sum())} unknown item id(s) ignored, e.g. {bad}", stacklevel=4)
        return out

    def _rows(self, snap: _Snapshot, raw: Iterable[Any] | None, name: str, unique: bool = True) -> np.ndarray | None:
        """Visible rows of original ids in snapshot ``snap`` (sorted and unique unless ``unique=False``:
        exclusions become a bitset in the core, so they need neither)."""
        if raw is None:
            return None
        slots = self._slots(raw, name)
        return self._slot_rows(snap, slots, unique)

    @staticmethod
    def _slot_rows(snap: _Snapshot, slots: np.ndarray, unique: bool = True) -> np.ndarray:
        slots = slots[(slots >= 0) & (slots < len(snap.slot_row))]
        rows = snap.slot_row[slots]
        rows = rows[(rows >= 0) & (rows < snap.n_rows)]
        return np.unique(rows) if unique else rows

    def item_index(self, item_id: Any) -> int:
        """The slot (stable position in ``item_ids_``) of an original item id.

        Returns
        -------
        int

        Raises
        ------
        KeyError
            The id is unknown or removed.
        """
        snap = self._fitted()
        s = int(self._slots([item_id], "item", warn=False)[0])
        if s < 0 or s >= snap.n_slots or snap.slot_row[s] < 0:
            raise KeyError(f"unknown item id {item_id!r}")
        return s

    def item_slots(self, item_ids: Iterable[Any]) -> np.ndarray:
        """Slots of original item ids, vectorised (the id rule of ``recommend``'s exclude/allow).

        Parameters
        ----------
        item_ids : sequence of original ids
            Digit strings match integer ids.

        Returns
        -------
        numpy.ndarray of int64, shape [n]
            The slot of each id (its position in ``item_ids_``), -1 where the id is unknown
            or removed.
        """
        snap = self._fitted()
        s = self._slots(item_ids, "item_ids", warn=False)
        ok = (s >= 0) & (s < snap.n_slots)
        ok[ok] = snap.slot_row[s[ok]] >= 0
        return np.where(ok, s, -1)

    def contains(self, item_id: Any) -> bool:
        """Whether ``item_id`` is in the catalog now (added and not removed).

        Returns
        -------
        bool
        """
        try:
            self.item_index(item_id)
            return True
        except KeyError:
            return False

    def _ids_of_rows(self, snap: _Snapshot, rows: np.ndarray) -> np.ndarray:
        ids = snap.ids[snap.row_slot[np.maximum(rows, 0)]]
        if (rows < 0).any():
            ids = ids.astype(object) if ids.dtype.kind == "U" else ids.copy()
            ids[rows < 0] = None if ids.dtype == object else -1
        return ids

    # ------------------------------------------------------------------ learned attributes
    def _column(self, key: str) -> np.ndarray | None:
        snap = self._fitted()
        table = getattr(snap, key)
        if table is None:
            return None
        if snap.identity:
            return table[:snap.n_rows]  # no update or removal since fit/compaction: a view
        rows = snap.slot_row[:snap.n_slots]
        last = np.where(rows >= 0, rows, self._last_rows(snap))
        return table[last]

    def _last_rows(self, snap: _Snapshot) -> np.ndarray:
        """Latest row of every slot, removed ones included."""
        last = np.full(snap.n_slots, -1, np.int64)
        last[snap.row_slot[:snap.n_rows]] = np.arange(snap.n_rows)
        return np.maximum(last, 0)

    item_vecs_ = property(lambda self: self._column("vecs"), doc="float32 [slots, dim]: vectors by slot")
    item_bias_ = property(lambda self: self._column("bias"), doc="float32 [slots]: biases by slot")
    item_text_ = property(lambda self: self._column("text"), doc="float32 [slots, d] or None")
    item_tri_ = property(lambda self: self._column("tri"), doc="float32 [slots, t] or None")
    item_ids_ = property(lambda self: self._fitted().ids[:self._snap.n_slots], doc="ids by slot")
    n_items_ = property(lambda self: self._fitted().n_live, doc="items visible now")
    n_slots_ = property(lambda self: self._fitted().n_slots, doc="items ever added (slots)")
    live_ = property(lambda self: self._fitted().slot_row[:self._snap.n_slots] >= 0,
                     doc="bool [slots]: whether each slot's item is in the catalog now")
    version_ = property(lambda self: self._fitted().version,
                        doc="int: the catalog's version, bumped by every write (keys caches derived from it)")

    def item_vector(self, item_id: Any) -> tuple[np.ndarray, float]:
        """The vector and bias of a current item.

        Returns
        -------
        (float32 array [dim], float)

        Raises
        ------
        KeyError
            The id is unknown or removed.
        """
        snap = self._snap
        r = int(snap.slot_row[self.item_index(item_id)])
        return np.array(snap.vecs[r]), float(snap.bias[r])

    def item_vectors(self, item_ids: Iterable[Any]) -> np.ndarray:
        """The vectors of many items (the id rule of ``recommend``'s exclude/allow).

        Parameters
        ----------
        item_ids : sequence of original ids

        Returns
        -------
        float32 array [n, dim]
            One row per id, zeros where the id is unknown or removed.
        """
        slots = self.item_slots(item_ids)
        snap = self._fitted()  # after the slots: a snapshot at least as new as they are
        out = np.zeros((len(slots), self.dim_), np.float32)
        ok = slots >= 0
        out[ok] = snap.vecs[snap.slot_row[slots[ok]]]
        return out

    # ------------------------------------------------------------------ serve
    def _extras(self, snap: _Snapshot, text_q: Any, tri_q: Any, b: int, batch: bool, text_weight: float | None,
                tri_weight: float | None) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if text_q is not None:
            if snap.text is None:
                raise ValueError("text_query given but the engine has no item_text table")
            kw.update(text_queries=_check_query(text_q, "text_query", snap.text.shape[1], batch), item_text=snap.text,
                      text_weight=self.text_weight_ if text_weight is None else float(text_weight))
        if tri_q is not None:
            if snap.tri is None:
                raise ValueError("tri_query given but the engine has no item_tri table")
            kw.update(tri_queries=_check_query(tri_q, "tri_query", snap.tri.shape[1], batch), item_tri=snap.tri,
                      tri_weight=self.tri_weight_ if tri_weight is None else float(tri_weight))
        for key in ("text_queries", "tri_queries"):
            if key in kw and kw[key].shape[0] != b:
                raise ValueError(f"{key} has {kw[key].shape[0]} rows but there are {b} queries")
        return kw

    def _mask(self, snap: _Snapshot, filter: Mapping[str, Any] | None) -> np.ndarray | None:
        """AND over fields of (OR over the field's values) of the named-filter bitsets."""
        if not filter:
            return None
        if not isinstance(filter, Mapping):
            raise ValueError(f"filter must be a dict of filter name -> value(s), got {type(filter).__name__}")
        words = _words(snap.n_rows)
        out = None
        for name, want in filter.items():
            if name not in snap.filters:
                raise ValueError(f"filter: unknown filter {name!r}; this catalog has {sorted(snap.filters)}")
            values = want if isinstance(want, (list, tuple, set, frozenset)) else [want]
            sets = [snap.filters[name].get(filter_key(v)) for v in values]
            sets = [s[:words] for s in sets if s is not None]
            field = np.zeros(words, np.uint64) if not sets else sets[0] if len(sets) == 1 \
                else np.bitwise_or.reduce(sets)
            out = field if out is None else out & field
        return np.ascontiguousarray(out)

    def filter_mask(self, filter: Mapping[str, Any] | None = None) -> np.ndarray:
        """Which items pass ``filter`` now.

        Returns
        -------
        numpy.ndarray of bool, shape [slots]
            True where the slot's item is in the catalog and passes every named filter
            (aligned with ``item_ids_``).
        """
        snap = self._fitted()
        bits = snap.live[:_words(snap.n_rows)]
        mask = self._mask(snap, filter)
        if mask is not None:
            bits = bits & mask
        rows = _bit_rows(bits, snap.n_rows)
        out = np.zeros(snap.n_slots, bool)
        out[snap.row_slot[rows]] = True
        return out

    def _categories(self, snap: _Snapshot, name: str, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Membership [len(rows), n_values] (0/1 float32) of rows in filter ``name``'s values.

        The values' bitsets are stacked once per snapshot and filter ([n_values, words], cached
        until the catalog changes), so a request reads all its rows' bits in one gather."""
        if name not in snap.filters:
            raise ValueError(f"calibrate_by: unknown filter {name!r}; this catalog has {sorted(snap.filters)}")
        hit = self._cat_cache
        if hit is not None and hit[0]() is snap and hit[1] == name:  # this very snapshot (a weak reference)
            values, bits = hit[2], hit[3]
        else:
            values = sorted(snap.filters[name])
            words = _words(snap.n_rows)
            bits = np.zeros((len(values), words), np.uint64)
            for c, v in enumerate(values):
                b = snap.filters[name][v][:words]
                bits[c, :len(b)] = b
            self._cat_cache = (weakref.ref(snap), name, values, bits)
        rows = np.asarray(rows, np.int64)
        r = np.where((rows >= 0) & (rows < snap.n_rows), rows, 0)
        out = ((bits[:, r >> 6] >> (r & 63).astype(np.uint64)) & np.uint64(1)).T.astype(np.float32)
        out[(rows < 0) | (rows >= snap.n_rows)] = 0.0
        return out, values

    def category_mix(self, name: str, item_ids: Iterable[Any]) -> dict[str, float]:
        """The category mix of a list of items over a named filter's values.

        Each item spreads a weight of 1 evenly over its values (an item in two genres gives each
        0.5); the mix is the mean over the items that have a value.

        Parameters
        ----------
        name : str
            A named filter (``fit(item_filters=...)``), e.g. ``"genres"``.
        item_ids : iterable of original item ids
            Unknown or removed ids are ignored.

        Returns
        -------
        dict of str to float
            Filter value (its :func:`filter_key` spelling) -> share, summing to 1; empty when
            none of the items has a value.
        """
        snap = self._fitted()
        slots = self._slots(list(item_ids), "item_ids", warn=False)
        rows = self._slot_rows(snap, slots[slots >= 0], unique=False)
        member, values = self._categories(snap, name, rows)
        tot = member.sum(axis=1, keepdims=True)
        member = member[tot[:, 0] > 0] / tot[tot[:, 0] > 0]
        if not len(member):
            return {}
        mix = member.mean(axis=0)
        return {v: float(x) for v, x in zip(values, mix) if x > 0}

    def add_exposure(self, item_ids: Iterable[Any], amount: float | Sequence[float] = 1.0, *,
                     decay: float = 1.0) -> None:
        """Record impressions: the exposure that ``recommend(..., exposure=eta)`` penalises.

        A service calls this with what it served (its serving log); each request's penalty of an
        item is its exposure over the most exposed item's, in [0, 1]. Kept in memory, not saved
        with the engine (the log it comes from is the service's).

        Parameters
        ----------
        item_ids : iterable of original item ids
            Unknown ids are ignored. An id listed twice counts twice.
        amount : float or sequence of float
            Added per listed id (>= 0).
        decay : float in [0, 1]
            Every item's exposure is multiplied by this first (1: plain counts; e.g. 0.99 per
            batch of impressions: an exponentially fading window; 0: start over).
        """
        if isinstance(decay, bool) or not (isinstance(decay, (int, float)) and 0.0 <= float(decay) <= 1.0):
            raise ValueError(f"decay must be in [0, 1], got {decay!r}")
        snap = self._fitted()
        ids = list(item_ids)
        slots = self._slots(ids, "item_ids", warn=False)
        add = np.broadcast_to(np.asarray(amount, np.float64), (len(ids),))
        if not np.all(np.isfinite(add) & (add >= 0)):
            raise ValueError("amount must be finite and >= 0")
        # stored lazily: exposure = _exposure * _exposure_scale, so a decay is one multiplication, not
        # one per item (a service calls this once per answer); the penalty is a ratio to the
        # largest stored value, where the scale cancels. Updated in place under the write lock: a
        # concurrent request may read a value mid-update, which only shifts a penalty slightly.
        with self._write:
            exp = self._exposure
            if len(exp) < snap.n_slots:
                exp = np.concatenate([exp, np.zeros(max(snap.n_slots, 2 * len(exp)) - len(exp))])
            if decay == 0.0:
                exp[:] = 0.0
                self._exposure_scale, self._exposure_max = 1.0, 0.0
            elif decay != 1.0:
                self._exposure_scale *= float(decay)
            if self._exposure_scale < 1e-100:  # renormalise before the stored values overflow
                exp *= self._exposure_scale
                self._exposure_max *= self._exposure_scale
                self._exposure_scale = 1.0
            ok = slots >= 0
            if np.any(ok):
                np.add.at(exp, slots[ok], add[ok] / self._exposure_scale)
                self._exposure_max = max(self._exposure_max, float(exp[slots[ok]].max()))
            self._exposure = exp

    def exposure(self, item_ids: Iterable[Any] | None = None) -> np.ndarray:
        """Recorded exposure (:meth:`add_exposure`) by slot, or of the given original ids (0 unknown).

        Returns
        -------
        numpy.ndarray of float64
            Shape [slots] (aligned with ``item_ids_``), or one value per given id.
        """
        snap = self._fitted()
        exp = self._exposure
        full = np.zeros(snap.n_slots)
        full[:min(len(exp), snap.n_slots)] = exp[:snap.n_slots] * self._exposure_scale
        if item_ids is None:
            return full
        slots = self._slots(list(item_ids), "item_ids", warn=False)
        return np.where(slots >= 0, full[np.maximum(slots, 0)], 0.0)

    def _rerank(self, snap: _Snapshot, search: Any, k: int, diversity: float, calibrate: float,
                calibrate_by: str | None, targets: Sequence[Mapping[Any, float] | None] | None,
                threads: int, exposure: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Search a pool of the k + 2k * |bound| best items and re-rank it with _core.rerank.

        ``bound`` = rerank_pool_bound: an item whose rel (best = 1, k-th = 0) is below it can never
        be picked; the pool is where scores falling linearly from the best to the k-th would
        cross it (twice that far: scores usually flatten below the top), so it widens with the
        options; for calibration the bound takes a KL span of KL_SPAN nats (the worst case,
        log(1/alpha) = 4.6, is rarely approached). At most max(4k, POOL_MAX) items. How often the
        pool's answer equals the re-rank of the whole catalog is measured in benchmarks/bench_beyond.
        Returns rows, scores and each pick's terms [b, k, 4] (rel, similarity, KL, exposure penalty).
        """
        lam, gam, eta = check_rerank_options(diversity, calibrate, exposure)
        rows, scores = search(self.pool_size(k, lam, gam if targets is not None else 0.0, eta, snap.n_live))
        return self._rerank_rows(snap, rows, scores, k, lam, gam, eta, calibrate_by, targets, threads)

    def pool_size(self, k: int, diversity: float = 0.0, calibrate: float = 0.0, exposure: float = 0.0,
                  n_eligible: int | None = None) -> int:
        """How many of the best-scored items a re-rank with these options looks at (see ``_rerank``).

        Returns
        -------
        int
            ``min(eligible, max(k, k + 2k * |rerank_pool_bound|))``, at most max(4k, POOL_MAX).
        """
        n_live = self._fitted().n_live if n_eligible is None else int(n_eligible)
        eta = float(exposure) if self._exposure_max > 0 else 0.0  # nothing recorded: no penalty
        bound = _core.rerank_pool_bound(float(diversity), float(calibrate) * KL_SPAN / math.log(100.0), exposure=eta)
        cap = int(min(n_live, max(4 * k, POOL_MAX)))
        n = int(min(cap, k + math.ceil(2 * k * -bound))) if math.isfinite(bound) else cap
        return max(n, min(k, n_live))

    def rerank(self, item_ids: Sequence[Any], scores: Any, k: int, *, diversity: float = 0.0, calibrate: float = 0.0,
               calibrate_by: str | None = None, target: Mapping[Any, float] | None = None,
               exposure: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Re-rank a list scored elsewhere (e.g. a conversation's belief scores) as :meth:`recommend` does.

        Parameters
        ----------
        item_ids : sequence of original item ids
            The candidates (unknown or removed ids are dropped), e.g. the best :meth:`pool_size`.
        scores : float array [len(item_ids)]
            Their scores (any order: sorted here, ties by position).
        k, diversity, calibrate, calibrate_by, target, exposure
            As in :meth:`recommend`.

        Returns
        -------
        ids : array [m]
            The picks in order, m = min(k, known candidates).
        scores : float32 array [m]
        terms : float32 array [m, 4]
            As ``recommend(..., return_terms=True)``.
        """
        snap = self._fitted()
        lam, gam, eta = check_rerank_options(diversity, calibrate, exposure)
        sc = np.asarray(scores, np.float32).reshape(-1)
        ids = list(item_ids)
        if len(sc) != len(ids) or not np.all(np.isfinite(sc)):
            raise ValueError(f"scores must be {len(ids)} finite numbers, one per item id")
        slots = self._slots(ids, "item_ids", warn=False)
        rows = np.where(slots >= 0, snap.slot_row[np.maximum(slots, 0)], -1)
        rows = np.where((rows >= 0) & (rows < snap.n_rows), rows, -1)
        order = np.lexsort((np.arange(len(sc)), -sc))
        rows, sc = rows[order], sc[order]
        keep = rows >= 0
        rows, sc = rows[keep][None], np.ascontiguousarray(sc[keep][None])
        out_rows, out_sc, terms = self._rerank_rows(snap, rows, sc, int(k), lam, gam, eta, calibrate_by,
                                                    None if target is None else [target], 1)
        m = int(np.count_nonzero(out_rows[0] >= 0))
        return self._ids_of_rows(snap, out_rows[0, :m]), out_sc[0, :m], terms[0, :m]

    def _rerank_rows(self, snap: _Snapshot, rows: np.ndarray, scores: np.ndarray, k: int, lam: float, gam: float,
                     eta: float, calibrate_by: str | None, targets: Sequence[Mapping[Any, float] | None] | None,
                     threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """_core.rerank over rows [b, c] sorted by their scores, with the categories and exposure penalties."""
        exp, top = self._exposure, self._exposure_max
        eta = eta if top > 0 else 0.0
        kw: dict[str, Any] = {}
        if targets is not None and gam > 0:
            if calibrate_by is None:
                raise ValueError(f"calibrate={gam!r} needs calibrate_by, the filter whose values are the "
                                 f"categories; this catalog has {sorted(snap.filters)}")
            member, values = self._categories(snap, calibrate_by, rows.reshape(-1))
            index = {v: c for c, v in enumerate(values)}
            target = np.zeros((rows.shape[0], len(values)), np.float32)
            for q, t in enumerate(targets):
                for v, x in (t or {}).items():
                    c = index.get(filter_key(v))
                    if c is None:
                        raise ValueError(f"target: {v!r} is not a value of filter {calibrate_by!r}")
                    if not (np.isfinite(x) and x >= 0):
                        raise ValueError(f"target[{v!r}] = {x!r}: must be a finite weight >= 0")
                    target[q, c] = x
            tot = target.sum(axis=1, keepdims=True)
            target = np.divide(target, tot, out=np.zeros_like(target), where=tot > 0)  # no target: KL 0
            nz = member > 0
            kw = dict(cat_indptr=np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype(np.int64),
                      cat_indices=np.nonzero(nz)[1].astype(np.int64), cat_weights=member[nz].astype(np.float32),
                      target=np.ascontiguousarray(target), calibrate=gam)
        if eta > 0:
            slot = snap.row_slot[np.maximum(rows, 0)]
            inside = (rows >= 0) & (slot < len(exp))
            pen = np.zeros(rows.shape, np.float32)
            pen[inside] = np.minimum(exp[slot[inside]] / top, 1.0)
            kw.update(penalty=pen, exposure=eta)
        return _core.rerank(np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(scores, np.float32), k,
                            snap.vecs, item_text=snap.text, diversity=lam, num_threads=threads, return_terms=True,
                            **kw)

    def exact_below(self, n_eligible: int | None = None) -> int:
        """Eligible-item count at or below which a request is scored exactly instead of searched.

        Parameters
        ----------
        n_eligible : int, optional
            The items a request may return (default: every visible item).

        Returns
        -------
        int
            ``max(exact_threshold, sqrt(CROSSOVER * n_eligible * ef))``; see :data:`CROSSOVER`.
        """
        snap = self._fitted()
        n = snap.n_live if n_eligible is None else n_eligible
        ef = max(int(self.ef), int(self.n_candidates))
        return int(max(self.exact_threshold, math.sqrt(CROSSOVER * max(n, 1) * ef)))

    def _seen_rows(self, snap: _Snapshot, user: Any) -> np.ndarray | None:
        """The user's seen items as rows of ``snap``, cached until the catalog or the list changes."""
        s = self._seen.get(user)
        if s is None or not len(s):
            return None
        hit = self._seen_cache.get(user)
        if hit is not None and hit[0] == snap.version and hit[1] is s:
            return hit[2]
        rows = self._slot_rows(snap, s, unique=False)
        self._seen_cache[user] = (snap.version, s, rows)
        return rows

    def _excluded(self, snap: _Snapshot, rows: np.ndarray | None, user: Any) -> np.ndarray | None:
        seen = None if user is None else self._seen_rows(snap, user)
        if rows is None:
            return seen
        return rows if seen is None else np.concatenate([rows, seen])

    def _call(self, snap: _Snapshot, q: np.ndarray, k: int, kw: dict[str, Any], excl: list[np.ndarray | None] | None,
              allow: np.ndarray | None, mask: np.ndarray | None, threads: int, bias: bool = True,
              return_plans: bool = False) -> tuple[np.ndarray, ...]:
        if excl is not None and any(e is not None and len(e) for e in excl):
            kw["exclude_indptr"], kw["exclude_indices"] = csr.from_lists([() if e is None else e for e in excl])
        if allow is not None:
            kw["allow_indptr"], kw["allow_indices"] = np.array([0, len(allow)], np.int64), allow
        always, always_ptr = snap.overflow, None
        if snap.text_index is not None and "text_queries" in kw and kw.get("text_weight") \
                and snap.n_live > self.exact_below() and 4 * int(k) < snap.n_live:
            # the graph retrieves by the model's score: each query's candidates also get the items
            # nearest its request text, and all are rescored with the whole score
            sel = {key: kw[key] for key in ("exclude_indptr", "exclude_indices", "allow_indptr", "allow_indices")
                   if key in kw}
            n_text = int(min(self.text_candidates, snap.n_live))
            rows, _ = snap.text_index.search(kw["text_queries"], snap.text, None, n_text, live=snap.live,
                                             n_rows=snap.n_rows, n_live=snap.n_live, mask=mask,
                                             n_candidates=n_text, exact_below=0, num_threads=threads, **sel)
            lists = [np.concatenate([snap.overflow, r[r >= 0].astype(np.int64)]) for r in rows]
            always_ptr, always = csr.from_lists(lists)
        return snap.index.search(q, snap.vecs, snap.bias if bias else None, int(k), live=snap.live,
                                 n_rows=snap.n_rows, n_live=snap.n_live, mask=mask,
                                 always=always if len(always) else None,
                                 always_indptr=always_ptr if len(always) else None,
                                 n_candidates=int(self.n_candidates), exact_below=self.exact_below(),
                                 num_threads=threads, return_plans=return_plans, **kw)

    def search_plans(self, queries: Any, k: int = 10, *, filter: Mapping[str, Any] | None = None,
                     allow: Iterable[Any] | None = None, text_queries: Any = None,
                     tri_queries: Any = None) -> np.ndarray:
        """Which path the native core takes for each query: an exact scan or a graph search.

        Runs the search of ``recommend_batch(queries, k, filter=..., allow=..., text_queries=...,
        tri_queries=...)`` on one thread (no exclusions, no re-ranking) and returns the plan the
        core chose per query instead of the items: exact when the eligible count is at most
        :meth:`exact_below` (or ``4 * k`` reaches it). For checking and benchmarking the rule.

        Parameters
        ----------
        queries : float array [b, dim]
        k : int
            Clamped to the visible items, as in ``recommend_batch``.
        filter, allow
            As in ``recommend_batch``.
        text_queries : float array [b, d], optional
        tri_queries : float array [b, t], optional
            With the fitted weights.

        Returns
        -------
        numpy.ndarray of int8, shape [b]
            1 = every eligible item scored exactly, 0 = graph search then exact rescoring.
        """
        snap = self._fitted()
        k = self._check_k(k, snap)
        q = _check_query(queries, "queries", self.dim_, batch=True)
        kw = self._extras(snap, text_queries, tri_queries, q.shape[0], True, None, None)
        return self._call(snap, q, k, kw, None, self._rows(snap, allow, "allow"), self._mask(snap, filter), 1,
                          return_plans=True)[2]

    @staticmethod
    def _check_k(k: Any, snap: _Snapshot) -> int:
        """k as an int, clamped to the visible items (a k past the catalog cannot allocate [b, 2**62])."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
            raise ValueError(f"k must be an integer >= 0, got {k!r}")
        return int(min(int(k), snap.n_live))

    def recommend(self, query: Any, k: int = 10, *, exclude: Iterable[Any] | None = None,
                  allow: Iterable[Any] | None = None, filter: Mapping[str, Any] | None = None,
                  user: Any = None, text_query: Any = None, tri_query: Any = None,
                  text_weight: float | None = None, tri_weight: float | None = None, diversity: float = 0.0,
                  calibrate: float = 0.0, calibrate_by: str | None = None,
                  target: Mapping[Any, float] | None = None, exposure: float = 0.0,
                  return_terms: bool = False) -> tuple[np.ndarray, ...]:
        """Top-k items for one query.

        Parameters
        ----------
        query : float array [dim]
        k : int
        exclude, allow : sequences of original item ids, optional
            Never return / only return these (unknown ids are ignored with a warning).
        filter : mapping name -> value or list of values, optional
            Named item filters (``fit(item_filters=...)``): an item passes when, for every
            name, one of its values is listed.
        user : hashable, optional
            Leave out the items recorded for this key with ``set_seen``/``add_seen``.
        text_query : float array [d], optional
            Text-match term; tri_query: float array [t], three-way term.
        text_weight, tri_weight : float, optional
            Override the fitted weights.
        diversity : float in [0, 1]
            Re-rank greedily by maximal marginal relevance: each pick maximises
            ``(1 - diversity) * rel - diversity * (max cosine to the items already picked)``,
            rel the score rescaled to best = 1, k-th best = 0; cosine over item text where both
            items have it, else over the item vectors (``_core.rerank``). 0: plain top-k.
        calibrate : float >= 0
            With ``target``: also subtract ``calibrate * KL(target || the list's mix)`` over the
            values of the filter ``calibrate_by`` (Steck's calibrated recommendations), the mix
            of the k-item list with its open slots following the target (``csrc/rerank.hpp``).
        calibrate_by : str, optional
            The named filter whose values are the categories (e.g. ``"genres"``).
        target : mapping value -> weight, optional
            The category mix to approach, e.g. :meth:`category_mix` of the user's history.
        exposure : float >= 0
            Also subtract ``exposure * (the item's recorded exposure / the most exposed
            item's)`` (:meth:`add_exposure`): long-tail exposure. 0 or nothing recorded: off.
        return_terms : bool
            Also return each pick's re-ranking terms (see Returns).

        Returns
        -------
        ids : array [m]
            Original ids, m = min(k, eligible items), by score descending (ties: lower row first);
            with ``diversity`` or ``calibrate``, in the order picked.
        scores : float32 array [m]
            The items' scores (not the re-ranking objective).
        terms : float32 array [m, 4], only with ``return_terms``
            Per pick: rel (best = 1, k-th = 0), its largest cosine to the items picked before
            it, the KL after it, its exposure penalty (zeros without re-ranking).
        """
        snap = self._fitted()
        k = self._check_k(k, snap)
        q = _check_query(query, "query", self.dim_, batch=False)
        kw = self._extras(snap, text_query, tri_query, 1, False, text_weight, tri_weight)
        excl = self._excluded(snap, self._rows(snap, exclude, "exclude", unique=False), user)
        allow_rows, mask = self._rows(snap, allow, "allow"), self._mask(snap, filter)
        if (diversity or calibrate or exposure) and k:
            rows, scores, terms = self._rerank(snap, lambda n: self._call(snap, q, n, dict(kw), [excl], allow_rows,
                                                                          mask, 1),
                                               k, diversity, calibrate, calibrate_by,
                                               None if target is None else [target], 1, exposure)
        else:
            rows, scores = self._call(snap, q, k, kw, [excl], allow_rows, mask, 1)
            terms = np.zeros((1, rows.shape[1], 4), np.float32)
        m = int(np.count_nonzero(rows[0] >= 0))
        out = self._ids_of_rows(snap, rows[0, :m]), scores[0, :m]
        return (*out, terms[0, :m]) if return_terms else out

    def recommend_batch(self, queries: Any, k: int = 10, *, exclude: Sequence[Iterable[Any] | None] | None = None,
                        allow: Iterable[Any] | None = None, filter: Mapping[str, Any] | None = None,
                        users: Sequence[Any] | None = None, text_queries: Any = None, tri_queries: Any = None,
                        text_weight: float | None = None, tri_weight: float | None = None,
                        num_threads: int | None = None, diversity: float = 0.0, calibrate: float = 0.0,
                        calibrate_by: str | None = None,
                        targets: Sequence[Mapping[Any, float] | None] | None = None,
                        exposure: float = 0.0, return_terms: bool = False) -> tuple[np.ndarray, ...]:
        """Top-k items for each of b queries in one native call, multi-threaded.

        queries: float [b, dim]; text_queries: float [b, d]; tri_queries: float [b, t];
        exclude: one sequence of original ids per query (or None); users: one seen-items key
        per query (or None); allow / filter: shared by every query. num_threads defaults to
        the engine's. diversity / calibrate / calibrate_by / exposure / return_terms as in
        :meth:`recommend`, with one target mix per query in ``targets`` (None: no calibration for
        that query); terms are then [b, k, 4].

        Returns
        -------
        ids : array [b, k]
            k is clamped to the visible items; rows with fewer eligible items are padded with -1
            (integer ids) or None.
        scores : float32 array [b, k]
            Padding is -inf.
        """
        snap = self._fitted()
        k = self._check_k(k, snap)
        q = _check_query(queries, "queries", self.dim_, batch=True)
        b = q.shape[0]
        kw = self._extras(snap, text_queries, tri_queries, b, True, text_weight, tri_weight)
        for name, seq in (("exclude", exclude), ("users", users)):
            if seq is not None and len(seq) != b:
                raise ValueError(f"{name} has {len(seq)} entries but there are {b} queries")
        excl = [self._excluded(snap, None if exclude is None or exclude[i] is None else
                               self._rows(snap, exclude[i], f"exclude[{i}]", unique=False),
                               None if users is None else users[i])
                for i in range(b)]
        threads = _core.resolve_threads(self.num_threads if num_threads is None else num_threads)
        allow_rows, mask = self._rows(snap, allow, "allow"), self._mask(snap, filter)
        if targets is not None and len(targets) != b:
            raise ValueError(f"targets has {len(targets)} entries but there are {b} queries")
        if (diversity or calibrate or exposure) and k:
            rows, scores, terms = self._rerank(snap, lambda n: self._call(snap, q, n, dict(kw), excl, allow_rows, mask,
                                                                          threads),
                                               k, diversity, calibrate, calibrate_by, targets, threads, exposure)
        else:
            rows, scores = self._call(snap, q, k, kw, excl, allow_rows, mask, threads)
            terms = np.zeros((*rows.shape, 4), np.float32)
        out = self._ids_of_rows(snap, rows), scores
        return (*out, terms) if return_terms else out

    def similar_items(self, item: Any, k: int = 10, *, by: str = "vectors", filter: Mapping[str, Any] | None = None,
                      exclude: Iterable[Any] | None = None, allow: Iterable[Any] | None = None,
                      text_weight: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Items most similar to ``item`` (never itself), with the same filters as ``recommend``.

        Parameters
        ----------
        item : original item id
        k : int
        by : {"vectors", "both", "text"}
            "vectors": inner product of item vectors (the graph search); "both": that plus
            ``text_weight`` x the text embeddings' inner product (graph search, text term at
            rescoring); "text": the text embeddings alone (exact scan of the eligible items).
        filter, exclude, allow : as in :meth:`recommend`.

        Returns
        -------
        ids : array [m]; scores : float32 array [m] (m <= k).
        """
        snap = self._fitted()
        k = self._check_k(k, snap)
        if by not in ("vectors", "both", "text"):
            raise ValueError(f"by must be 'vectors', 'both' or 'text', got {by!r}")
        s = self.item_index(item)
        r = int(snap.slot_row[s])
        ex = self._rows(snap, exclude, "exclude")
        excl = np.union1d(np.array([r], np.int64), ex if ex is not None else np.zeros(0, np.int64))
        allow_rows, mask = self._rows(snap, allow, "allow"), self._mask(snap, filter)
        if by != "vectors" and snap.text is None:
            raise ValueError(f"by={by!r} needs item text embeddings; this engine has none")
        if by == "text":
            scan = getattr(self, "_text_scan", None)
            if scan is None or scan.dim != snap.text.shape[1]:  # an empty graph: the eligible rows are scored exactly
                scan = self._text_scan = _core.HnswIndex(snap.text.shape[1], 1)
            view = replace(snap, index=scan, vecs=snap.text)
            rows, scores = self._call(view, np.ascontiguousarray(snap.text[r:r + 1]), k, {}, [excl], allow_rows, mask,
                                      1, bias=False)
        else:
            kw = {} if by == "vectors" else dict(text_queries=np.ascontiguousarray(snap.text[r:r + 1]),
                                                 item_text=snap.text,
                                                 text_weight=self.text_weight_ if text_weight is None else
                                                 float(text_weight))
            rows, scores = self._call(snap, np.ascontiguousarray(snap.vecs[r:r + 1]), k, kw, [excl], allow_rows, mask,
                                      1, bias=False)
        m = int(np.count_nonzero(rows[0] >= 0))
        return self._ids_of_rows(snap, rows[0, :m]), scores[0, :m]

    # ------------------------------------------------------------------ seen items
    def set_seen(self, user: Any, items: Iterable[Any]) -> None:
        """Record the items ``recommend(user=user)`` leaves out (replacing earlier ones)."""
        self._fitted()
        slots = self._slots(items, "items")
        with self._write:
            self._seen[user] = np.unique(slots[slots >= 0])

    def add_seen(self, user: Any, items: Iterable[Any]) -> None:
        """Add items to those ``recommend(user=user)`` leaves out."""
        self._fitted()
        slots = self._slots(items, "items")
        with self._write:
            old = self._seen.get(user)
            new = np.unique(slots[slots >= 0])
            self._seen[user] = new if old is None else np.union1d(old, new)

    def seen(self, user: Any) -> np.ndarray:
        """The items recorded as seen for ``user`` (``set_seen`` / ``add_seen``).

        Returns
        -------
        array [m]
            Original ids of the current items among them.
        """
        snap = self._fitted()
        s = self._seen.get(user, np.zeros(0, np.int64))
        s = s[snap.slot_row[s] >= 0]
        return snap.ids[s]

    def set_seen_slots(self, seen: Mapping[Any, np.ndarray]) -> None:
        """Replace every user's seen items at once: user key -> int slots (``item_index`` values)."""
        self._fitted()
        with self._write:
            self._seen = {u: np.unique(np.asarray(s, np.int64)) for u, s in seen.items()}

    # ------------------------------------------------------------------ live catalog
    def add_items(self, item_vecs: Any, item_bias: Any = None, item_ids: Sequence[Any] | None = None, *,
                  item_text: Any = None, item_tri: Any = None, item_filters: Mapping[str, Sequence[Any]] | None = None,
                  num_threads: int | None = None) -> None:
        """Add new items (ids not in the catalog now); visible to requests once the call returns.

        Shapes as in :meth:`fit`; item_ids is required. Filter columns left out give the new
        items no value for that filter. Raises ValueError (and changes nothing) for an id
        already in the catalog, a duplicate id, or a bad table.
        """
        self._write_items(item_vecs, item_bias, item_ids, item_text, item_tri, item_filters, "add", num_threads)

    def update_items(self, item_vecs: Any, item_bias: Any = None, item_ids: Sequence[Any] | None = None, *,
                     item_text: Any = None, item_tri: Any = None, item_filters: Mapping[str, Sequence[Any]] | None = None,
                     num_threads: int | None = None) -> None:
        """Replace items in the catalog (new vectors, text, filters); same arguments as :meth:`add_items`.

        Raises KeyError (and changes nothing) for an id not in the catalog now.
        """
        self._write_items(item_vecs, item_bias, item_ids, item_text, item_tri, item_filters, "update", num_threads)

    def upsert_items(self, item_vecs: Any, item_bias: Any = None, item_ids: Sequence[Any] | None = None, *,
                     item_text: Any = None, item_tri: Any = None, item_filters: Mapping[str, Sequence[Any]] | None = None,
                     num_threads: int | None = None) -> dict[str, int]:
        """Add the new ids and replace the existing ones in one batch (arguments as :meth:`add_items`).

        Returns
        -------
        dict
            ``{"added": a, "updated": u}``.
        """
        return self._write_items(item_vecs, item_bias, item_ids, item_text, item_tri, item_filters, "upsert",
                                 num_threads)

    def remove_items(self, item_ids: Iterable[Any]) -> int:
        """Remove items; they are never returned once the call returns.

        Returns
        -------
        int
            How many were removed.

        Raises
        ------
        KeyError
            An id not in the catalog now (nothing is removed).
        """
        snap = self._fitted()
        with self._write:
            snap = self._snap
            raw = item_ids if isinstance(item_ids, np.ndarray) else list(item_ids)
            slots = self._slots(raw, "item_ids", warn=False)
            rows = snap.slot_row[np.clip(slots, 0, None)] if len(slots) else np.zeros(0, np.int64)
            bad = (slots < 0) | (rows < 0)
            if bad.any():
                raise KeyError(f"item_ids: not in the catalog: {np.asarray(raw, dtype=object)[bad][:5].tolist()}")
            slots = np.unique(slots)
            if not len(slots):
                return 0
            live = snap.live.copy()
            _set_bits(live, snap.slot_row[slots], False)
            slot_row = snap.slot_row.copy()
            slot_row[slots] = -1
            self._publish(replace(snap, live=live, n_live=snap.n_live - len(slots), slot_row=slot_row,
                                  identity=False))
            return len(slots)

    def _write_items(self, item_vecs: Any, item_bias: Any, item_ids: Any, item_text: Any, item_tri: Any,
                     item_filters: Mapping[str, Sequence[Any]] | None, mode: str,
                     num_threads: int | None) -> dict[str, int]:
        self._fitted()
        if item_ids is None:
            raise ValueError("item_ids is required")
        vecs = _table(item_vecs, "item_vecs")
        n = vecs.shape[0]
        with self._write:
            snap = self._snap
            ids = np.asarray(item_ids)
            if ids.shape != (n,):
                raise ValueError(f"item_ids must have {n} entries (one per row of item_vecs), got shape {ids.shape}")
            keys = self._ids_key(ids)
            if snap.ids.dtype.kind in "iu" and (keys == np.iinfo(np.int64).min).any():
                raise ValueError(f"item_ids: this catalog has integer ids, got {ids[keys == np.iinfo(np.int64).min][:3].tolist()}")
            uniq, counts = np.unique(keys, return_counts=True)
            if len(uniq) != n:
                raise ValueError(f"item_ids must be unique; duplicated: {uniq[counts > 1][:5].tolist()}")
            cols = self._columns(vecs, item_bias, item_text, item_tri, n)
            unknown = [name for name in (item_filters or {}) if name not in snap.filters]
            if unknown:
                raise ValueError(f"item_filters: unknown filter(s) {unknown}; this catalog has {sorted(snap.filters)}")
            filt = filter_groups(item_filters or {}, n)
            slots = self._slots(keys, "item_ids", warn=False)
            current = (slots >= 0) & (snap.slot_row[np.clip(slots, 0, None)] >= 0) if len(slots) else slots >= 0
            if mode == "add" and current.any():
                raise ValueError(f"item_ids: already in the catalog: {ids[current][:5].tolist()} "
                                 "(use update_items to replace them)")
            if mode == "update" and not current.all():
                raise KeyError(f"item_ids: not in the catalog: {ids[~current][:5].tolist()}")
            self._publish(self._append(snap, keys, slots, current, cols, filt, num_threads))
            return {"added": int((~current).sum()), "updated": int(current.sum())}

    def _grow(self, snap: _Snapshot, rows_needed: int, slots_needed: int, id_keys: np.ndarray) -> _Snapshot:
        """A snapshot whose appendable arrays have room for the new rows/slots (copies when they must grow)."""
        def room(a: np.ndarray | None, need: int) -> np.ndarray | None:
            if a is None:
                return None
            if len(a) >= need and a.flags.writeable:
                return a
            cap = max(need, len(a) + len(a) // 2, 16)
            out = np.zeros((cap,) + a.shape[1:], a.dtype)
            out[:len(a)] = a
            return out

        ids = snap.ids
        if ids.dtype.kind == "U" and id_keys.dtype.itemsize > ids.dtype.itemsize:
            ids = ids.astype(id_keys.dtype)
        ids = room(ids, slots_needed)
        words = _words(rows_needed)
        filters = {name: {v: room(bits, words) for v, bits in vals.items()} for name, vals in snap.filters.items()}
        return replace(snap, vecs=room(snap.vecs, rows_needed), bias=room(snap.bias, rows_needed),
                       text=room(snap.text, rows_needed), tri=room(snap.tri, rows_needed),
                       row_slot=room(snap.row_slot, rows_needed), ids=ids, filters=filters)

    def _append(self, snap: _Snapshot, keys: np.ndarray, slots: np.ndarray, current: np.ndarray,
                cols: dict[str, np.ndarray | None], filt: dict[str, dict[str, list[int]]],
                num_threads: int | None) -> _Snapshot:
        """Write n new rows past the snapshot's rows (invisible until published) and return the new snapshot."""
        n = len(keys)
        new = slots < 0
        n_slots = snap.n_slots + int(new.sum())
        r0 = snap.n_rows
        g = self._grow(snap, r0 + n, n_slots, keys)
        slots = slots.copy()
        slots[new] = np.arange(snap.n_slots, n_slots)
        g.ids[snap.n_slots:n_slots] = keys[new]
        rows = np.arange(r0, r0 + n, dtype=np.int64)
        for key in ("vecs", "bias", "text", "tri"):
            if cols[key] is not None:
                getattr(g, key)[r0:r0 + n] = cols[key]
        g.row_slot[r0:r0 + n] = slots
        filters = {name: dict(vals) for name, vals in g.filters.items()}
        words = _words(r0 + n)
        for name, groups in filt.items():
            for v, local in groups.items():
                bits = filters[name].get(v)
                if bits is None:
                    bits = filters[name][v] = np.zeros(max(words, len(g.row_slot) // 64 + 1), np.uint64)
                _set_bits(bits, rows[np.asarray(local, np.int64)])
        threads = _core.resolve_threads(self.num_threads if num_threads is None else num_threads)
        g.index.add(np.ascontiguousarray(g.vecs[r0:r0 + n]), np.ascontiguousarray(g.bias[r0:r0 + n]), rows, threads)
        if g.text_index is not None:
            g.text_index.add(np.ascontiguousarray(g.text[r0:r0 + n]), np.zeros(n, np.float32), rows, threads)
        slot_row = np.full(n_slots, -1, np.int64)
        slot_row[:snap.n_slots] = snap.slot_row[:snap.n_slots]
        old_rows = slot_row[slots[current]]
        slot_row[slots] = rows
        live = np.zeros(max(words, len(snap.live)), np.uint64)
        live[:len(snap.live)] = snap.live
        _set_bits(live, old_rows, False)
        _set_bits(live, rows)
        for k_, s in zip(keys[new].tolist(), slots[new].tolist()):
            self._idmap[2][k_] = s
        overflow = snap.overflow
        if g.index.max_norm > 0:
            v, b = g.vecs[r0:r0 + n].astype(np.float64), g.bias[r0:r0 + n].astype(np.float64)
            past = rows[np.sqrt(np.einsum("ij,ij->i", v, v) + b * b) > g.index.max_norm]
            overflow = np.concatenate([snap.overflow, past]) if len(past) else snap.overflow
        return replace(g, n_rows=r0 + n, live=live, n_live=snap.n_live + int((~current).sum()), slot_row=slot_row,
                       filters=filters, n_slots=n_slots, overflow=overflow,
                       identity=snap.identity and r0 == snap.n_slots and not current.any())

    def _publish(self, snap: _Snapshot) -> None:
        """Make ``snap`` the snapshot new requests read; compact when hidden rows pass the ratio."""
        snap = replace(snap, version=self._snap.version + 1)
        self._snap = snap  # one reference assignment: a request reads the old or the new snapshot
        if len(self._idmap[2]) > max(4096, snap.n_slots // 16):
            self._idmap = (*self._sort_ids(snap.ids, snap.n_slots), {})
        hidden = snap.n_rows - snap.n_live
        if snap.n_rows >= 64 and (hidden > self.compact_ratio * snap.n_rows or
                                  len(snap.overflow) > max(OVERFLOW_LIMIT, snap.n_rows // 100)):
            self.compact()

    def compact(self) -> None:
        """Rebuild the graph and tables from the visible rows only (readers keep the old snapshot meanwhile)."""
        snap = self._fitted()
        with self._write:
            snap = self._snap
            slots = np.flatnonzero(snap.slot_row[:snap.n_slots] >= 0)
            old = snap.slot_row[slots]
            n = len(old)
            vecs = np.ascontiguousarray(snap.vecs[old])
            bias = np.ascontiguousarray(snap.bias[old])
            index = self._new_index(vecs, bias)
            words = _words(n)
            filters = {}
            for name, vals in snap.filters.items():
                filters[name] = {}
                for v, bits in vals.items():
                    keep = np.unpackbits(bits.view(np.uint8), bitorder="little")[old].astype(bool)
                    filters[name][v] = _bits_of(np.flatnonzero(keep), words)
            slot_row = np.full(snap.n_slots, -1, np.int64)
            slot_row[slots] = np.arange(n)
            self._snap = (replace(
                snap, version=snap.version + 1, index=index, n_rows=n, live=_bits_of(np.arange(n), words), n_live=n,
                slot_row=slot_row,
                row_slot=slots.astype(np.int64), vecs=vecs, bias=bias,
                text=None if snap.text is None else np.ascontiguousarray(snap.text[old]),
                tri=None if snap.tri is None else np.ascontiguousarray(snap.tri[old]), filters=filters,
                ids=np.array(snap.ids[:snap.n_slots]), identity=bool(n == snap.n_slots),
                overflow=np.zeros(0, np.int64),
                text_index=self._new_text_index(None if snap.text is None else np.ascontiguousarray(snap.text[old]))))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the engine to directory ``path`` atomically (arrays, hnswlib index, manifest with checksums)."""
        with self._write:
            snap = self._fitted()
            params = {k: getattr(self, k) for k in
                      ("M", "ef_construction", "ef", "n_candidates", "exact_threshold", "num_threads", "seed",
                       "compact_ratio", "graph", "text_candidates")}
            filters = {name: sorted(vals) for name, vals in snap.filters.items()}
            seen_keys = list(self._seen)
            meta = {"params": params, "n_rows": snap.n_rows, "n_slots": snap.n_slots, "n_live": snap.n_live,
                    "dim": self.dim_, "text_weight": self.text_weight_, "tri_weight": self.tri_weight_,
                    "text_dim": self._text_dim, "tri_dim": self._tri_dim, "filters": filters,
                    "max_norm": float(snap.index.max_norm),
                    "seen_keys": [k if isinstance(k, (int, str)) else int(k) for k in seen_keys]}
            n, w = snap.n_rows, _words(snap.n_rows)
            with atomic_dir(path, FORMAT, VERSION, meta) as tmp:
                np.save(tmp / "item_vecs.npy", snap.vecs[:n])
                np.save(tmp / "item_bias.npy", snap.bias[:n])
                np.save(tmp / "item_ids.npy", snap.ids[:snap.n_slots], allow_pickle=False)
                np.save(tmp / "slot_row.npy", snap.slot_row[:snap.n_slots])
                np.save(tmp / "row_slot.npy", snap.row_slot[:n])
                if snap.text is not None:
                    np.save(tmp / "item_text.npy", snap.text[:n])
                if snap.tri is not None:
                    np.save(tmp / "item_tri.npy", snap.tri[:n])
                for j, (name, values) in enumerate(filters.items()):
                    np.save(tmp / f"filter.{j}.npy", np.stack([snap.filters[name][v][:w] for v in values]) if values
                            else np.zeros((0, w), np.uint64))
                ptr, slots = csr.from_lists([self._seen[k] for k in seen_keys])
                np.save(tmp / "seen_indptr.npy", ptr)
                np.save(tmp / "seen_slots.npy", slots)
                snap.index.save(str(tmp / "hnsw.bin"))
                if snap.text_index is not None:
                    snap.text_index.save(str(tmp / "text_hnsw.bin"))

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, mmap: bool = True) -> "Engine":
        """Load an engine saved by ``save`` (format 2, or 1 from earlier ctxrec); checks every file's SHA-256.

        mmap=True maps the arrays read-only (shared between processes that load the same
        directory; the first write copies them).

        Returns
        -------
        Engine
            The loaded engine.

        Raises
        ------
        CorruptArtifactError
            A missing, truncated, altered or inconsistent file, or metadata out of range.
        """
        path = Path(path)
        manifest = read_manifest(path, FORMAT, (1, 2), verify=verify)
        meta = check_meta(manifest["meta"], META_SCHEMAS[manifest["version"]], str(path))
        v1 = manifest["version"] == 1
        for name, values in ({} if v1 else meta["filters"]).items():
            if not isinstance(values, list):
                raise CorruptArtifactError(f"{path}: meta['filters'][{name!r}] is {type(values).__name__}, "
                                           "expected a list of values", field=f"meta.filters.{name}")
        eng = cls(**meta["params"])
        try:
            eng._check_params()
        except ValueError as e:
            raise CorruptArtifactError(f"{path}: meta['params']: {e}", field="meta.params") from None

        def arr(name: str, required: bool = True) -> np.ndarray | None:
            p = path / name
            if name not in manifest["files"]:
                if required:
                    raise CorruptArtifactError(f"{p}: missing from the manifest")
                return None
            return load_array(p, mmap=mmap, finite=name in ("item_vecs.npy", "item_bias.npy", "item_text.npy",
                                                           "item_tri.npy"))

        dim = int(meta["dim"])
        n = int(meta["n_items"] if v1 else meta["n_rows"])
        n_slots = n if v1 else int(meta["n_slots"])
        vecs, bias = arr("item_vecs.npy"), arr("item_bias.npy")
        text, tri = arr("item_text.npy", False), arr("item_tri.npy", False)
        ids = arr("item_ids.npy")
        for name, a, shape in (("item_vecs", vecs, (n, dim)), ("item_bias", bias, (n,)), ("item_ids", ids, (n_slots,))):
            if a.shape != shape:
                raise CorruptArtifactError(f"{path}: {name}.npy has shape {a.shape}, the manifest says {shape}")
        for name, a in (("item_text", text), ("item_tri", tri)):
            if a is not None and (a.ndim != 2 or a.shape[0] != n):
                raise CorruptArtifactError(f"{path}: {name}.npy has shape {a.shape}, expected ({n}, d)")
        if v1:
            slot_row, row_slot = np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64)
            filters: dict[str, dict[str, np.ndarray]] = {}
            seen: dict[Any, np.ndarray] = {}
        else:
            slot_row, row_slot = np.array(arr("slot_row.npy")), np.array(arr("row_slot.npy"))
            if slot_row.shape != (n_slots,) or row_slot.shape != (n,) or (slot_row >= n).any() \
                    or (row_slot < 0).any() or (row_slot >= n_slots).any():
                raise CorruptArtifactError(f"{path}: slot_row.npy / row_slot.npy do not match the manifest's shapes")
            filters = {}
            for j, (name, values) in enumerate(meta["filters"].items()):
                bits = np.array(arr(f"filter.{j}.npy"))
                if bits.shape != (len(values), _words(n)):
                    raise CorruptArtifactError(f"{path}: filter.{j}.npy has shape {bits.shape}")
                filters[name] = {v: bits[i] for i, v in enumerate(values)}
            indptr, sl = np.array(arr("seen_indptr.npy")), np.array(arr("seen_slots.npy"))
            keys = meta["seen_keys"]
            why = csr.problem(indptr, sl, len(keys), n_slots, names=("seen_indptr.npy", "seen_slots.npy"))
            if why is not None:
                raise CorruptArtifactError(f"{path}: {why}")
            seen = {k: sl[indptr[i]:indptr[i + 1]] for i, k in enumerate(keys)}
        live_rows = slot_row[slot_row >= 0]
        eng.dim_ = dim
        if v1 and not (path / "hnsw.bin").exists():  # a format-1 catalog small enough to be exact-only
            index = eng._new_index(np.asarray(vecs), np.asarray(bias))
        else:
            try:
                index = _core.HnswIndex.load(str(path / "hnsw.bin"), dim, max(n, 1),
                                             0.0 if v1 else float(meta["max_norm"]))
            except (RuntimeError, ValueError) as e:
                raise CorruptArtifactError(f"{path / 'hnsw.bin'}: cannot load the HNSW index ({e})") from None
            if index.size != n:
                raise CorruptArtifactError(f"{path / 'hnsw.bin'}: holds {index.size} rows, the manifest says {n}")
            index.set_ef(max(int(eng.ef), int(eng.n_candidates)))
        eng.text_weight_ = float(meta["text_weight"])
        eng.tri_weight_ = float(meta["tri_weight"])
        eng._text_dim = None if text is None else int(text.shape[1])
        eng._tri_dim = None if tri is None else int(tri.shape[1])
        eng.filter_names_ = tuple(sorted(filters))
        eng._seen = seen
        eng._seen_cache = {}
        eng._idmap = (*cls._sort_ids(ids, n_slots), {})
        overflow = np.zeros(0, np.int64)
        if index.max_norm > 0:
            v64, b64 = np.asarray(vecs, np.float64), np.asarray(bias, np.float64)
            overflow = np.flatnonzero(np.sqrt(np.einsum("ij,ij->i", v64, v64) + b64 * b64) > index.max_norm)
        text_index = None
        if text is not None and eng.text_candidates:
            if "text_hnsw.bin" in manifest["files"]:
                try:
                    text_index = _core.HnswIndex.load(str(path / "text_hnsw.bin"), int(text.shape[1]), max(n, 1), 0.0)
                except (RuntimeError, ValueError) as e:
                    raise CorruptArtifactError(f"{path / 'text_hnsw.bin'}: cannot load the text graph ({e})") from None
                if text_index.size != n:
                    raise CorruptArtifactError(f"{path / 'text_hnsw.bin'}: holds {text_index.size} rows, "
                                               f"the manifest says {n}")
                text_index.set_ef(max(int(eng.ef), int(eng.text_candidates)))
            else:  # saved before the text graph existed: built here
                text_index = eng._new_text_index(np.ascontiguousarray(text[:n]))
        eng._snap = _Snapshot(index=index, n_rows=n, live=_bits_of(live_rows, _words(n)), n_live=len(live_rows),
                              overflow=overflow.astype(np.int64),
                              slot_row=slot_row, row_slot=row_slot, vecs=vecs, bias=bias, text=text, tri=tri,
                              filters=filters, ids=ids, n_slots=n_slots, text_index=text_index,
                              identity=bool(n == n_slots and np.array_equal(slot_row, np.arange(n))))
        return eng

    def set_text_weight(self, text_weight: float) -> None:
        """Change the weight of the text-match term (takes effect for later queries).

        Parameters
        ----------
        text_weight : float
            The new weight (finite); the engine must have been fitted with ``item_text``.
        """
        if isinstance(text_weight, bool) or not isinstance(text_weight, (int, float, np.floating)) \
                or not np.isfinite(text_weight):
            raise ValueError(f"text_weight must be a finite number, got {text_weight!r}")
        with self._write:
            if self._fitted().text is None:
                raise ValueError("text_weight: this engine was fitted without item_text")
            self.text_weight_ = float(text_weight)

    def set_ef(self, ef: int) -> None:
        """Change the graph search beam width (takes effect for later queries)."""
        if not isinstance(ef, (int, np.integer)) or ef < 1:
            raise ValueError(f"ef must be a positive integer, got {ef!r}")
        with self._write:
            self.ef = int(ef)
            if getattr(self, "_snap", None) is not None:
                self._snap.index.set_ef(max(self.ef, int(self.n_candidates)))

    def __repr__(self) -> str:
        snap = getattr(self, "_snap", None)
        state = f"n_items={snap.n_live}, dim={self.dim_}" if snap is not None else "unfitted"
        return f"Engine(M={self.M}, ef={self.ef}, n_candidates={self.n_candidates}, {state})"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("Engine does not pickle (it holds a native index): use save(path) / Engine.load(path)")
