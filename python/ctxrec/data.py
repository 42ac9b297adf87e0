"""Datasets: one shape for every source, loaders for MovieLens 100K and Frappe.

A :class:`Dataset` is a table of interactions over a fixed catalog of users and items:

* raw ids are kept exactly as given (``user_ids`` / ``item_ids``, position = dense index)
  and mapped to dense indices both ways (``user_index`` / ``item_index``);
* per interaction: dense ``users`` / ``items`` (int32), optional ``rating`` (float32),
  ``label`` (float32 0/1), ``count`` (int64), ``timestamp`` (int64 unix seconds, UTC) and
  any context columns (``context``, a DataFrame with the raw values);
* per item (dense order): an item table with the raw columns, one text per item
  (``item_text``; the parts in ``item_text_fields``) and categorical attributes
  (``item_attrs``: possibly multi-valued, CSR over items — see :class:`Categorical`);
* per user (dense order, optional): a user table, user text and user attributes.

The catalog (id maps, item and user tables) is shared by :meth:`Dataset.subset`, so a
train and a test subset use the same dense indices — items held out of training keep
their index and their text (item cold start).

Your own files (CSV, TSV, Parquet, JSON Lines) with your own column names load through a
:class:`DataConfig` (the ``"data"`` section of a training config): it names the files, maps
their columns to ids, values, context kinds, texts and attributes, checks every column
(a misnamed one is reported with the closest existing names) and builds the Dataset with
:meth:`Dataset.from_frames`. Every dataset records where it came from in
``meta["source"]``; :func:`load_source` reads it again (for a retrain).

Loaders read a directory given by the caller or the ``CTXREC_DATA_DIR`` environment
variable and verify every file's SHA-256 (from the datasets' READMEs): a missing file
raises :class:`MissingDataError`, an altered one :class:`ChecksumError`, both naming it.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ctxrec import csr
from ctxrec.ids import int_id
from ctxrec._io import sha256_file

__all__ = [
    "Categorical",
    "Dataset",
    "stack_attrs",
    "DataError",
    "MissingDataError",
    "ChecksumError",
    "read_table",
    "table_format",
    "TABLE_FORMATS",
    "DataConfig",
    "InteractionsConfig",
    "TableConfig",
    "CONTEXT_KINDS",
    "resolve_config_paths",
    "load_source",
    "resolve_data_dir",
    "verify_files",
    "load_movielens_100k",
    "download_movielens_100k",
    "ML100K_URL",
    "load_frappe",
    "load_frappe_nfm",
    "FrappeNFM",
    "ML100K_FILES",
    "ML100K_OVERVIEWS_FILES",
    "FRAPPE_FILES",
    "ML100K_GENRES",
    "FRAPPE_CONTEXT_COLUMNS",
]


from ctxrec.errors import ChecksumError, DataError, MissingDataError  # noqa: E402,F401  (re-exported)


# --------------------------------------------------------------------------------------
# Categorical attributes (CSR over rows)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Categorical:
    """A categorical attribute of items or users, possibly multi-valued (e.g. genres).

    CSR layout over rows (row = dense item or user index): the values of row ``r`` are
    ``vocab[indices[indptr[r]:indptr[r + 1]]]``. A row may have no value (empty slice).

    Attributes
    ----------
    name : str
        Attribute name (e.g. ``"genres"``).
    vocab : tuple of str
        Value strings; a value's index is its position (0-based, no unknown slot —
        models add their own).
    indptr : int64 array [n_rows + 1]
        Row offsets into ``indices``.
    indices : int32 array [nnz]
        Value indices, each in ``0 .. len(vocab) - 1``, sorted within a row.
    """

    name: str
    vocab: tuple[str, ...]
    indptr: np.ndarray
    indices: np.ndarray

    def __post_init__(self) -> None:
        ip = np.ascontiguousarray(self.indptr, dtype=np.int64)
        ix = np.ascontiguousarray(self.indices, dtype=np.int32)
        if ip.ndim != 1 or len(ip) < 1 or ip[0] != 0 or ip[-1] != len(ix) or np.any(np.diff(ip) < 0):
            raise DataError(f"attribute {self.name!r}: invalid CSR indptr")
        if len(ix) and (ix.min() < 0 or ix.max() >= len(self.vocab)):
            raise DataError(f"attribute {self.name!r}: value index out of range 0..{len(self.vocab) - 1}")
        object.__setattr__(self, "indptr", ip)
        object.__setattr__(self, "indices", ix)
        object.__setattr__(self, "vocab", tuple(str(v) for v in self.vocab))

    @property
    def n_rows(self) -> int:
        """int: number of rows (items or users)."""
        return len(self.indptr) - 1

    @property
    def n_values(self) -> int:
        """int: size of the vocabulary."""
        return len(self.vocab)

    def __len__(self) -> int:
        return self.n_rows

    @property
    def shape(self) -> tuple[int, int]:
        """(n_rows, n_values), as the equivalent sparse 0/1 matrix."""
        return (self.n_rows, self.n_values)

    @property
    def data(self) -> np.ndarray:
        """float32 [nnz] of ones: the CSR values of the equivalent 0/1 matrix."""
        return np.ones(len(self.indices), dtype=np.float32)

    def as_csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(indptr int64 [n_rows + 1], indices int64 [nnz], data float32 [nnz], n_cols)."""
        return self.indptr, self.indices.astype(np.int64), self.data, self.n_values

    def row(self, r: int) -> np.ndarray:
        """Value indices of row ``r``.

        Parameters
        ----------
        r : int
            Dense row index.

        Returns
        -------
        int32 array [n_values_of_row]
            A view into ``indices``, sorted.
        """
        return self.indices[self.indptr[r]:self.indptr[r + 1]]

    def values(self, r: int) -> list[str]:
        """Value strings of row ``r``.

        Parameters
        ----------
        r : int
            Dense row index.

        Returns
        -------
        list of str
            The row's values, in index order.
        """
        return [self.vocab[i] for i in self.row(r)]

    def lists(self) -> list[np.ndarray]:
        """One int32 index array per row."""
        return np.split(self.indices, self.indptr[1:-1])

    def multi_hot(self, dtype: Any = np.float32) -> np.ndarray:
        """The attribute as a dense 0/1 matrix.

        Parameters
        ----------
        dtype : numpy dtype
            Element type of the result (default float32).

        Returns
        -------
        array [n_rows, n_values] of ``dtype``
            1 where the row has the value, 0 elsewhere.
        """
        out = np.zeros((self.n_rows, self.n_values), dtype=dtype)
        rows = np.repeat(np.arange(self.n_rows), np.diff(self.indptr))
        out[rows, self.indices] = 1
        return out

    def first(self) -> np.ndarray:
        """int32 [n_rows]: the first value index of each row, -1 for a row without value."""
        out = np.full(self.n_rows, -1, dtype=np.int32)
        has = np.diff(self.indptr) > 0
        out[has] = self.indices[self.indptr[:-1][has]]
        return out

    def subset_rows(self, rows: np.ndarray) -> "Categorical":
        """The attribute restricted to ``rows`` (same vocabulary).

        Parameters
        ----------
        rows : int array [m]
            Dense row indices, in the order the result keeps.

        Returns
        -------
        Categorical
            ``m`` rows, same ``name`` and ``vocab``.
        """
        lists = self.lists()
        return Categorical.from_index_lists(self.name, self.vocab, [lists[r] for r in rows])

    @classmethod
    def from_index_lists(cls, name: str, vocab: Sequence[str], lists: Sequence[np.ndarray]) -> "Categorical":
        """Build from one array of value indices per row.

        Parameters
        ----------
        name : str
            Attribute name.
        vocab : sequence of str
            Value strings (index = position).
        lists : sequence of int arrays
            Value indices of each row (sorted here).

        Returns
        -------
        Categorical
            ``len(lists)`` rows over ``vocab``.
        """
        indptr = csr.indptr_of([len(x) for x in lists])
        indices = np.concatenate([np.sort(np.asarray(x, dtype=np.int32)) for x in lists]) if len(lists) else \
            np.zeros(0, np.int32)
        return cls(name, tuple(vocab), indptr, indices.astype(np.int32, copy=False))

    @classmethod
    def from_values(cls, name: str, values: Iterable[Any], *, sep: str | None = None,
                    missing: Iterable[str] = ("",)) -> "Categorical":
        """Build from one entry per row: a scalar, a ``sep``-separated string, or a list.

        ``None``/NaN and strings in ``missing`` give a row without value. The vocabulary is
        the sorted set of distinct value strings.

        Parameters
        ----------
        name : str
            Attribute name.
        values : iterable
            One entry per row.
        sep : str, optional
            Separator of multi-valued string entries (None: a string is one value).
        missing : iterable of str
            Value strings that mean "no value" (default ``("",)``).

        Returns
        -------
        Categorical
            One row per entry of ``values``.
        """
        miss = set(missing)
        rows: list[list[str]] = []
        for v in values:
            if isinstance(v, (list, tuple, set, np.ndarray)):
                items = [str(x) for x in v]
            elif v is None or (isinstance(v, float) and np.isnan(v)):
                items = []
            elif sep is not None and isinstance(v, str):
                items = [x.strip() for x in v.split(sep)]
            else:
                items = [scalar_str(v)]
            rows.append(sorted({x for x in items if x not in miss}))
        vocab = sorted({x for r in rows for x in r})
        pos = {v: i for i, v in enumerate(vocab)}
        return cls.from_index_lists(name, vocab, [np.array([pos[x] for x in r], dtype=np.int32) for r in rows])


def _py(v: Any) -> Any:
    """A numpy scalar as the Python scalar (for readable error messages)."""
    return v.item() if isinstance(v, np.generic) else v


def stack_attrs(attrs: Mapping[str, Categorical], names: Sequence[str] | None = None, *,
                normalize: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, list[str]]:
    """Several categorical attributes side by side as one sparse matrix.

    Columns are the attributes' values one after another (in ``names`` order, default all);
    column names are ``"attr=value"``. With ``normalize`` each row's weights within an
    attribute sum to 1 (a movie with 3 genres gets 1/3 per genre).

    Parameters
    ----------
    attrs : mapping name -> Categorical
        Attributes over the same rows.
    names : sequence of str, optional
        The attributes to stack, in order (default all of ``attrs``).
    normalize : bool
        Divide each row's weights within an attribute by its number of values.

    Returns
    -------
    indptr : int64 array [n_rows + 1]
    indices : int64 array [nnz]
    data : float32 array [nnz]
    n_cols : int
    column_names : list of str [n_cols]
    """
    names = list(attrs) if names is None else list(names)
    for nm in names:
        if nm not in attrs:
            raise KeyError(f"no attribute {nm!r} (have {list(attrs)})")
    if not names:
        raise ValueError("stack_attrs needs at least one attribute")
    n_rows = attrs[names[0]].n_rows
    rows, cols, vals, colnames = [], [], [], []
    off = 0
    for nm in names:
        a = attrs[nm]
        if a.n_rows != n_rows:
            raise DataError(f"attribute {nm!r} has {a.n_rows} rows, expected {n_rows}")
        lens = np.diff(a.indptr)
        r = np.repeat(np.arange(n_rows, dtype=np.int64), lens)
        w = (1.0 / lens[r]).astype(np.float32) if normalize else np.ones(len(r), np.float32)
        rows.append(r)
        cols.append(a.indices.astype(np.int64) + off)
        vals.append(w)
        colnames += [f"{nm}={v}" for v in a.vocab]
        off += a.n_values
    indptr, c, v = csr.from_pairs(np.concatenate(rows), np.concatenate(cols), n_rows, values=np.concatenate(vals))
    return indptr, c, v, off, colnames


def scalar_str(v: Any) -> str:
    """Canonical string of a scalar id/category: integral floats print as ints.

    Parameters
    ----------
    v : scalar
        A Python or numpy scalar.

    Returns
    -------
    str
        ``"3"`` for ``3``, ``3.0`` and ``np.int64(3)``; ``str(v)`` otherwise.
    """
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, np.generic):
        v = v.item()
    return str(v)


# --------------------------------------------------------------------------------------
# Reading tables
# --------------------------------------------------------------------------------------


#: File name suffixes :func:`read_table` understands, by format (a compression suffix
#: ``.gz``/``.bz2``/``.xz``/``.zst``/``.zip`` may follow the CSV, TSV and JSON Lines ones).
TABLE_FORMATS: dict[str, tuple[str, ...]] = {
    "csv": (".csv",),
    "tsv": (".tsv", ".tab"),
    "parquet": (".parquet", ".pq"),
    "jsonl": (".jsonl", ".ndjson"),
}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


def table_format(path: str | os.PathLike) -> str | None:
    """The format of a table file from its name.

    A trailing compression suffix is looked through for the text formats
    (``events.jsonl.gz`` is JSON Lines), not for Parquet (compressed inside the file).

    Parameters
    ----------
    path : str or path-like
        The file name (it need not exist).

    Returns
    -------
    str or None
        ``"csv"``, ``"tsv"``, ``"parquet"``, ``"jsonl"``, or None when the suffix is none of
        :data:`TABLE_FORMATS`.
    """
    suffixes = [x.lower() for x in Path(path).suffixes]
    compressed = bool(suffixes) and suffixes[-1] in _COMPRESSION_SUFFIXES
    if compressed:
        suffixes = suffixes[:-1]
    if not suffixes:
        return None
    for fmt, exts in TABLE_FORMATS.items():
        if suffixes[-1] in exts and not (compressed and fmt == "parquet"):
            return fmt
    return None


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """The JSON value in ``path`` (``~`` accepted).

    Parameters
    ----------
    path : str or path-like
        The file.
    what : str
        What the file is, for error messages (e.g. ``"data config"``).

    Returns
    -------
    object
        The parsed JSON value.

    Raises
    ------
    MissingDataError
        No such file (the message names ``what`` and the path).
    DataError
        Not valid JSON (with the parser's position).
    """
    import json
    p = Path(path).expanduser()
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise MissingDataError(f"{what}: no such file {str(path)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what}: {path} is not valid JSON ({e})") from None


def read_table(source: Any, **read_kw: Any) -> pd.DataFrame:
    """A pandas DataFrame from a DataFrame, a pyarrow Table, or a CSV/TSV/Parquet/JSON Lines path.

    ``.parquet``/``.pq`` files are read with pyarrow; ``.tsv``/``.tab`` with a tab
    separator; ``.jsonl``/``.ndjson`` as JSON Lines (one JSON object per line; values keep
    their JSON types, no date or dtype guessing, so ``"007"`` stays a string); other paths
    as CSV.

    Parameters
    ----------
    source : DataFrame, pyarrow Table, str or path-like
        The table or its file.
    **read_kw
        Passed to ``pandas.read_csv`` (or ``pandas.read_json``).

    Returns
    -------
    pandas.DataFrame
        The table.
    """
    if isinstance(source, pd.DataFrame):
        return source
    try:
        import pyarrow as pa
        if isinstance(source, pa.Table):
            return source.to_pandas()
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pass
    if isinstance(source, (str, os.PathLike)):
        p = Path(source).expanduser()
        if not p.is_file():
            raise MissingDataError(f"{p}: no such file")
        fmt = table_format(p)
        if fmt == "parquet":
            return pd.read_parquet(p, **read_kw)
        if fmt == "jsonl":
            read_kw.setdefault("dtype", False)
            return pd.read_json(p, lines=True, **read_kw)
        if fmt == "tsv":
            read_kw.setdefault("sep", "\t")
        return pd.read_csv(p, **read_kw)
    raise TypeError(f"cannot read a table from {type(source).__name__}; "
                    "give a pandas DataFrame, a pyarrow Table or a CSV/TSV/Parquet/JSON Lines path")


def _require_columns(df: pd.DataFrame, cols: Iterable[str | None], what: str) -> None:
    for c in cols:
        if c is not None and c not in df.columns:
            raise DataError(f"{what}: column {c!r} not found (columns: {list(df.columns)})")


def _id_array(values: Any) -> np.ndarray:
    """Raw ids as a numpy array: int64 when integral, else object (strings as given)."""
    s = pd.Series(values)
    if pd.api.types.is_integer_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        return s.to_numpy(dtype=np.int64)
    return s.to_numpy(dtype=object)


def _build_catalog(*id_arrays: np.ndarray) -> np.ndarray:
    """Sorted distinct raw ids of all arrays (first-appearance order if not sortable)."""
    parts = [a for a in id_arrays if a is not None and len(a)]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    allv = np.concatenate([np.asarray(a, dtype=object) if a.dtype == object else a for a in parts]) \
        if any(a.dtype == object for a in parts) else np.concatenate(parts)
    uniq = pd.unique(allv)
    try:
        uniq = np.sort(uniq)
    except TypeError:
        pass
    return _id_array(uniq)


# --------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------


class Dataset:
    """Interactions over a fixed catalog of users and items (see the module docstring).

    Build one with :meth:`from_frames` (pandas / pyarrow / CSV / Parquet) or a loader.
    All per-interaction arrays have length ``len(self)``; all per-item arrays/lists have
    length ``n_items`` in dense order; all per-user ones length ``n_users``.

    Attributes
    ----------
    name : str
        A label for reports.
    user_ids : array [n_users]
        Raw user ids (int64 or object); ``user_ids[u]`` is user ``u``.
    item_ids : array [n_items]
        Raw item ids; ``item_ids[i]`` is item ``i``.
    users : int32 array [n]
        Dense user index per interaction.
    items : int32 array [n]
        Dense item index per interaction.
    rating : float32 array [n] or None
        Explicit rating.
    label : float32 array [n] or None
        0/1 label (CTR-style); None: implicit, every row positive.
    count : int64 array [n] or None
        Usage count.
    timestamp : int64 array [n] or None
        Unix seconds (UTC).
    context : DataFrame [n rows]
        Context columns with the raw values (may have 0 columns).
    item_table : DataFrame [n_items rows]
        Raw item columns, row i = item i (``item_id`` first).
    item_text : list of str [n_items]
        The text to encode per item ("" when none).
    item_text_fields : dict name -> list of str [n_items]
        The parts item_text is built from.
    item_attrs : dict name -> Categorical
        Categorical attributes over items.
    user_table : DataFrame [n_users rows] or None
        Raw user columns (``user_id`` first).
    user_text : list of str [n_users] or None
        The text per user.
    user_attrs : dict name -> Categorical
        Categorical attributes over users.
    meta : dict
        Free-form (license note, ...); ``meta["source"]`` is a JSON-able description
        of where the data came from (a built-in dataset and its directory, or a
        :class:`DataConfig` with absolute paths) that :func:`load_source` reloads.
    """

    def __init__(
        self,
        *,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        users: np.ndarray,
        items: np.ndarray,
        rating: np.ndarray | None = None,
        label: np.ndarray | None = None,
        count: np.ndarray | None = None,
        timestamp: np.ndarray | None = None,
        context: pd.DataFrame | None = None,
        item_table: pd.DataFrame | None = None,
        item_text: Sequence[str] | None = None,
        item_text_fields: Mapping[str, Sequence[str]] | None = None,
        item_attrs: Mapping[str, Categorical] | None = None,
        user_table: pd.DataFrame | None = None,
        user_text: Sequence[str] | None = None,
        user_attrs: Mapping[str, Categorical] | None = None,
        name: str = "dataset",
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.user_ids = _id_array(user_ids)
        self.item_ids = _id_array(item_ids)
        self._user_pos = pd.Index(self.user_ids)
        self._item_pos = pd.Index(self.item_ids)
        if not self._user_pos.is_unique:
            raise DataError("user_ids: raw user ids must be distinct")
        if not self._item_pos.is_unique:
            raise DataError("item_ids: raw item ids must be distinct")
        self.users = np.ascontiguousarray(users, dtype=np.int32)
        self.items = np.ascontiguousarray(items, dtype=np.int32)
        n = len(self.users)
        if self.users.ndim != 1 or self.items.shape != (n,):
            raise DataError(f"users/items must be 1-D of equal length, got {self.users.shape} and {self.items.shape}")
        if n and (self.users.min() < 0 or self.users.max() >= self.n_users):
            raise DataError(f"users: dense index out of range 0..{self.n_users - 1}")
        if n and (self.items.min() < 0 or self.items.max() >= self.n_items):
            raise DataError(f"items: dense index out of range 0..{self.n_items - 1}")

        def col(x: Any, dtype: Any, what: str) -> np.ndarray | None:
            if x is None:
                return None
            a = np.ascontiguousarray(x, dtype=dtype)
            if a.shape != (n,):
                raise DataError(f"{what}: expected shape ({n},), got {a.shape}")
            return a

        self.rating = col(rating, np.float32, "rating")
        self.label = col(label, np.float32, "label")
        self.count = col(count, np.int64, "count")
        self.timestamp = col(timestamp, np.int64, "timestamp")
        if self.label is not None and len(self.label) and not np.isin(self.label, (0.0, 1.0)).all():
            bad = self.label[~np.isin(self.label, (0.0, 1.0))][0]
            raise DataError(f"label: values must be 0 or 1, got {float(bad)!r}")
        ctx = pd.DataFrame(index=pd.RangeIndex(n)) if context is None else context.reset_index(drop=True)
        if len(ctx) != n:
            raise DataError(f"context: {len(ctx)} rows, expected {n}")
        self.context = ctx

        if item_table is None:
            item_table = pd.DataFrame({"item_id": self.item_ids})
        if len(item_table) != self.n_items:
            raise DataError(f"item_table: {len(item_table)} rows, expected n_items={self.n_items}")
        self.item_table = item_table.reset_index(drop=True)
        self.item_text_fields = {k: list(v) for k, v in (item_text_fields or {}).items()}
        for k, v in self.item_text_fields.items():
            if len(v) != self.n_items:
                raise DataError(f"item_text_fields[{k!r}]: {len(v)} entries, expected {self.n_items}")
        self.item_text = list(item_text) if item_text is not None else [""] * self.n_items
        if len(self.item_text) != self.n_items:
            raise DataError(f"item_text: {len(self.item_text)} entries, expected {self.n_items}")
        self.item_attrs = dict(item_attrs or {})
        for k, a in self.item_attrs.items():
            if a.n_rows != self.n_items:
                raise DataError(f"item_attrs[{k!r}]: {a.n_rows} rows, expected {self.n_items}")

        if user_table is not None and len(user_table) != self.n_users:
            raise DataError(f"user_table: {len(user_table)} rows, expected n_users={self.n_users}")
        self.user_table = None if user_table is None else user_table.reset_index(drop=True)
        self.user_text = None if user_text is None else list(user_text)
        if self.user_text is not None and len(self.user_text) != self.n_users:
            raise DataError(f"user_text: {len(self.user_text)} entries, expected {self.n_users}")
        self.user_attrs = dict(user_attrs or {})
        for k, a in self.user_attrs.items():
            if a.n_rows != self.n_users:
                raise DataError(f"user_attrs[{k!r}]: {a.n_rows} rows, expected {self.n_users}")
        self.meta = dict(meta or {})

    # ---- sizes -------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        """int: number of users in the catalog."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """int: number of items in the catalog."""
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def context_columns(self) -> list[str]:
        """list of str: names of the context columns."""
        return list(self.context.columns)

    @property
    def item_has_text(self) -> np.ndarray:
        """bool [n_items]: the item has a non-empty text."""
        return np.fromiter((bool(t) for t in self.item_text), dtype=bool, count=self.n_items)

    def __repr__(self) -> str:
        extras = [k for k in ("rating", "label", "count", "timestamp") if getattr(self, k) is not None]
        return (f"Dataset({self.name!r}: {len(self):,} interactions, {self.n_users:,} users, "
                f"{self.n_items:,} items, fields={extras}, context={self.context_columns}, "
                f"item_attrs={list(self.item_attrs)}, user_attrs={list(self.user_attrs)})")

    # ---- id maps -----------------------------------------------------------------------
    def user_index(self, raw: Any, *, strict: bool = False) -> Any:
        """Dense user index of a raw id, or of each id of an array.

        For int64 catalogs a scalar id given as a string (``"42"``) is accepted too.

        Parameters
        ----------
        raw : scalar or array-like
            A raw user id or ids.
        strict : bool
            Raise for an unknown id instead of returning -1.

        Returns
        -------
        int or int64 array [len(raw)]
            Dense indices; -1 for an unknown id.

        Raises
        ------
        KeyError
            With ``strict``, naming the first unknown id.
        """
        return self._lookup(self._user_pos, raw, strict, "user")

    def item_index(self, raw: Any, *, strict: bool = False) -> Any:
        """Dense item index of a raw id, or of each id of an array.

        Parameters
        ----------
        raw : scalar or array-like
            A raw item id or ids.
        strict : bool
            Raise for an unknown id instead of returning -1.

        Returns
        -------
        int or int64 array [len(raw)]
            Dense indices; -1 for an unknown id.

        Raises
        ------
        KeyError
            With ``strict``, naming the first unknown id.
        """
        return self._lookup(self._item_pos, raw, strict, "item")

    @staticmethod
    def _lookup(index: pd.Index, raw: Any, strict: bool, what: str) -> Any:
        scalar = np.ndim(raw) == 0
        vals = np.array([raw], dtype=object) if scalar else np.asarray(raw)
        if index.dtype == object or vals.dtype.kind not in "iu":
            try:
                out = index.get_indexer(pd.Index(vals, dtype=object)).astype(np.int64)
            except TypeError:
                out = np.full(len(vals), -1, dtype=np.int64)
        else:
            out = index.get_indexer(vals.astype(np.int64)).astype(np.int64)
        if index.dtype != object and scalar and out[0] < 0 and isinstance(raw, (str, float, np.floating)):
            n = int_id(raw)  # the one id rule (ctxrec.ids): "42" and 42.0 are id 42
            if n is not None:
                out = index.get_indexer(np.array([n], dtype=np.int64)).astype(np.int64)
        if strict and (out < 0).any():
            bad = _py(vals[np.flatnonzero(out < 0)[0]])
            raise KeyError(f"unknown {what} id {bad!r}")
        return int(out[0]) if scalar else out

    def user_id(self, idx: Any) -> Any:
        """Raw user id(s) of dense index/indices.

        Parameters
        ----------
        idx : int or int array
            Dense user indices.

        Returns
        -------
        scalar or array
            ``user_ids[idx]``.
        """
        return self.user_ids[idx]

    def item_id(self, idx: Any) -> Any:
        """Raw item id(s) of dense index/indices.

        Parameters
        ----------
        idx : int or int array
            Dense item indices.

        Returns
        -------
        scalar or array
            ``item_ids[idx]``.
        """
        return self.item_ids[idx]

    # ---- derived views -----------------------------------------------------------------
    def item_attr_matrix(self, names: Sequence[str] | None = None, *, normalize: bool = False
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, list[str]]:
        """Item attributes as one CSR matrix [n_items, n_cols]; see :func:`stack_attrs`.

        Parameters
        ----------
        names : sequence of str, optional
            Attributes to stack (default all).
        normalize : bool
            Weights within an attribute sum to 1 per item.

        Returns
        -------
        tuple
            ``(indptr int64 [n_items + 1], indices int64 [nnz], data float32 [nnz], n_cols,
            column_names)``.
        """
        return stack_attrs(self.item_attrs, names, normalize=normalize)

    def user_attr_matrix(self, names: Sequence[str] | None = None, *, normalize: bool = False
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, list[str]]:
        """User attributes as one CSR matrix [n_users, n_cols]; see :func:`stack_attrs`.

        Parameters
        ----------
        names : sequence of str, optional
            Attributes to stack (default all).
        normalize : bool
            Weights within an attribute sum to 1 per user.

        Returns
        -------
        tuple
            ``(indptr int64 [n_users + 1], indices int64 [nnz], data float32 [nnz], n_cols,
            column_names)``.
        """
        return stack_attrs(self.user_attrs, names, normalize=normalize)

    def user_items(self, *, positive_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """CSR of each user's distinct items.

        Indices are sorted within a user. This is the shape ``_core.topk_full`` takes for
        ``exclude_indptr`` / ``exclude_indices``.

        Parameters
        ----------
        positive_only : bool
            With a ``label`` column, only rows with label 1 count.

        Returns
        -------
        indptr : int64 array [n_users + 1]
        indices : int64 array [nnz]
            Dense item indices.
        """
        u, i = self.users, self.items
        if positive_only and self.label is not None:
            keep = self.label > 0
            u, i = u[keep], i[keep]
        return csr.from_pairs(u, i, self.n_users, unique=True)

    def item_counts(self, *, positive_only: bool = True) -> np.ndarray:
        """Number of interactions per item.

        Parameters
        ----------
        positive_only : bool
            With a ``label`` column, only rows with label 1 count.

        Returns
        -------
        int64 array [n_items]
        """
        i = self.items
        if positive_only and self.label is not None:
            i = i[self.label > 0]
        return np.bincount(i, minlength=self.n_items).astype(np.int64)

    def user_counts(self, *, positive_only: bool = True) -> np.ndarray:
        """Number of interactions per user.

        Parameters
        ----------
        positive_only : bool
            With a ``label`` column, only rows with label 1 count.

        Returns
        -------
        int64 array [n_users]
        """
        u = self.users
        if positive_only and self.label is not None:
            u = u[self.label > 0]
        return np.bincount(u, minlength=self.n_users).astype(np.int64)

    def context_frame(self, *, timestamp_column: str = "timestamp") -> pd.DataFrame:
        """The context columns plus (when present) the timestamp as a column, for ContextSpec.

        Parameters
        ----------
        timestamp_column : str
            Name of the added timestamp column (not added when a context column has that name).

        Returns
        -------
        pandas.DataFrame [n rows]
            A copy of ``context``, with the int64 unix-second timestamps when present.
        """
        df = self.context.copy()
        if self.timestamp is not None and timestamp_column not in df.columns:
            df[timestamp_column] = self.timestamp
        return df

    def to_frame(self) -> pd.DataFrame:
        """Interactions as a DataFrame: user_idx, item_idx, user_id, item_id, the value columns, context."""
        df = pd.DataFrame({
            "user_idx": self.users, "item_idx": self.items,
            "user_id": self.user_ids[self.users], "item_id": self.item_ids[self.items],
        })
        for k in ("rating", "label", "count", "timestamp"):
            v = getattr(self, k)
            if v is not None:
                df[k] = v
        for c in self.context.columns:
            df[c] = self.context[c].to_numpy()
        return df

    def subset(self, rows: np.ndarray, *, name: str | None = None) -> "Dataset":
        """Interactions ``rows``, same catalog, tables and attributes.

        Parameters
        ----------
        rows : int array [m] or bool array [n]
            Interaction indices or a mask over all interactions.
        name : str, optional
            Label of the result (default this dataset's).

        Returns
        -------
        Dataset
            ``m`` interactions (or the mask's true count) sharing this dataset's catalog.

        Raises
        ------
        DataError
            A mask whose shape is not ``(len(self),)``.
        """
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise DataError(f"subset: mask of shape {rows.shape}, expected ({len(self)},)")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        ds = Dataset.__new__(Dataset)
        ds.__dict__.update(self.__dict__)
        ds.name = name or self.name
        ds.users, ds.items = self.users[rows], self.items[rows]
        ds.rating, ds.label, ds.count, ds.timestamp = (take(self.rating), take(self.label),
                                                       take(self.count), take(self.timestamp))
        ds.context = self.context.iloc[rows].reset_index(drop=True)
        ds.meta = dict(self.meta)
        return ds

    def with_interactions(self, users: np.ndarray, items: np.ndarray, *, rating: np.ndarray | None = None,
                          label: np.ndarray | None = None, count: np.ndarray | None = None,
                          timestamp: np.ndarray | None = None, context: pd.DataFrame | None = None,
                          name: str | None = None) -> "Dataset":
        """A dataset over the same catalog (ids, tables, attributes) with other interactions.

        Parameters
        ----------
        users, items : int array [m]
            Dense user and item index per interaction.
        rating, label, count, timestamp : array [m], optional
            Value columns, as in the class attributes.
        context : DataFrame [m rows], optional
            Context columns.
        name : str, optional
            Label of the result (default this dataset's).

        Returns
        -------
        Dataset
            ``m`` interactions over this dataset's catalog.
        """
        return Dataset(
            user_ids=self.user_ids, item_ids=self.item_ids, users=users, items=items, rating=rating,
            label=label, count=count, timestamp=timestamp, context=context, item_table=self.item_table,
            item_text=self.item_text, item_text_fields=self.item_text_fields, item_attrs=self.item_attrs,
            user_table=self.user_table, user_text=self.user_text, user_attrs=self.user_attrs,
            name=name or self.name, meta=self.meta)

    # ---- construction from tables --------------------------------------------------------
    @classmethod
    def from_frames(
        cls,
        interactions: Any,
        *,
        user_col: str = "user_id",
        item_col: str = "item_id",
        rating_col: str | None = None,
        label_col: str | None = None,
        count_col: str | None = None,
        timestamp_col: str | None = None,
        context_cols: Sequence[str] | None = None,
        items: Any = None,
        item_id_col: str | None = None,
        item_text_cols: Sequence[str] = (),
        item_attr_cols: Mapping[str, str | None] | Sequence[str] = (),
        users: Any = None,
        user_id_col: str | None = None,
        user_text_cols: Sequence[str] = (),
        user_attr_cols: Mapping[str, str | None] | Sequence[str] = (),
        text_sep: str = ". ",
        name: str = "dataset",
        read_kw: Mapping[str, Any] | None = None,
    ) -> "Dataset":
        """Build a Dataset from tables (pandas DataFrame, pyarrow Table, CSV or Parquet path).

        The catalog is the sorted union of ids in ``interactions`` and in the item/user table.

        Parameters
        ----------
        interactions : DataFrame, pyarrow Table or path
            One row per interaction.
        user_col, item_col : str
            Raw id columns of ``interactions``.
        rating_col, label_col, count_col : str, optional
            Value columns (label must be 0/1; -1 is read as 0, as in libFM files).
        timestamp_col : str, optional
            Unix seconds (numbers) or anything ``pandas.to_datetime`` parses (naive date-times
            are taken as UTC); stored as int64 unix seconds.
        context_cols : sequence of str, optional
            Context columns kept as given (default: none).
        items : DataFrame, pyarrow Table or path, optional
            Item table; ``item_id_col`` (default ``item_col``) joins it.
        item_id_col : str, optional
            The item table's id column.
        item_text_cols : sequence of str
            Item columns joined with ``text_sep`` into ``item_text``.
        item_attr_cols : mapping name -> separator or None, or sequence of str
            Categorical item columns; a mapping gives a separator for multi-valued columns
            (e.g. ``{"genres": "|"}``), ``None`` for single values.
        users, user_id_col, user_text_cols, user_attr_cols
            The same for users.
        text_sep : str
            Separator of the joined text columns.
        name : str
            A label for reports.
        read_kw : mapping, optional
            Passed to the CSV reader for path inputs.

        Returns
        -------
        Dataset
            The interactions in input order over the catalog.
        """
        rk = dict(read_kw or {})
        inter = read_table(interactions, **rk)
        context_cols = list(context_cols or [])
        _require_columns(inter, [user_col, item_col, rating_col, label_col, count_col, timestamp_col, *context_cols],
                         "interactions")
        items_df = None if items is None else read_table(items, **rk)
        users_df = None if users is None else read_table(users, **rk)
        item_id_col = item_id_col or item_col
        user_id_col = user_id_col or user_col
        if items_df is not None:
            _require_columns(items_df, [item_id_col, *item_text_cols, *item_attr_cols], "items")
            if items_df[item_id_col].duplicated().any():
                dup = _py(items_df[item_id_col][items_df[item_id_col].duplicated()].iloc[0])
                raise DataError(f"items: duplicate {item_id_col} {dup!r}")
        if users_df is not None:
            _require_columns(users_df, [user_id_col, *user_text_cols, *user_attr_cols], "users")
            if users_df[user_id_col].duplicated().any():
                dup = _py(users_df[user_id_col][users_df[user_id_col].duplicated()].iloc[0])
                raise DataError(f"users: duplicate {user_id_col} {dup!r}")
        for c in (user_col, item_col):
            if inter[c].isna().any():
                raise DataError(f"interactions: column {c!r} has missing ids (row {int(inter[c].isna().argmax())})")

        raw_u = _id_array(inter[user_col])
        raw_i = _id_array(inter[item_col])
        user_ids = _build_catalog(raw_u, None if users_df is None else _id_array(users_df[user_id_col]))
        item_ids = _build_catalog(raw_i, None if items_df is None else _id_array(items_df[item_id_col]))
        upos, ipos = pd.Index(user_ids), pd.Index(item_ids)
        u = upos.get_indexer(raw_u)
        i = ipos.get_indexer(raw_i)

        label = None
        if label_col is not None:
            lab = pd.to_numeric(inter[label_col], errors="raise").to_numpy(dtype=np.float64)
            lab = np.where(lab < 0, 0.0, lab)
            label = lab
        ts = None
        if timestamp_col is not None:
            ts = _to_unix_seconds(inter[timestamp_col], f"interactions column {timestamp_col!r}")

        def table(df: pd.DataFrame | None, idcol: str, ids: np.ndarray, first: str) -> pd.DataFrame:
            if df is None:
                return pd.DataFrame({first: ids})
            out = df.set_index(df[idcol].to_numpy()).reindex(ids)
            out = out.drop(columns=[idcol]).reset_index(drop=True)
            out.insert(0, first, ids)
            return out

        item_table = table(items_df, item_id_col, item_ids, "item_id")
        user_table = None if users_df is None else table(users_df, user_id_col, user_ids, "user_id")
        tf = {c: _text_list(item_table[c]) for c in item_text_cols}
        item_text = _join_texts(tf, len(item_ids), text_sep)
        item_attrs = _attrs_from(item_table, item_attr_cols)
        user_text = None
        user_attrs: dict[str, Categorical] = {}
        if user_table is not None:
            if user_text_cols:
                user_text = _join_texts({c: _text_list(user_table[c]) for c in user_text_cols}, len(user_ids), text_sep)
            user_attrs = _attrs_from(user_table, user_attr_cols)
        return cls(
            user_ids=user_ids, item_ids=item_ids, users=u, items=i,
            rating=None if rating_col is None else pd.to_numeric(inter[rating_col]).to_numpy(np.float32),
            label=label,
            count=None if count_col is None else pd.to_numeric(inter[count_col]).to_numpy(np.int64),
            timestamp=ts, context=inter[context_cols].reset_index(drop=True),
            item_table=item_table, item_text=item_text, item_text_fields=tf, item_attrs=item_attrs,
            user_table=user_table, user_text=user_text, user_attrs=user_attrs, name=name)


def _to_unix_seconds(values: Any, what: str) -> np.ndarray:
    s = pd.Series(values)
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        if s.isna().any():
            raise DataError(f"{what}: missing timestamp at row {int(s.isna().argmax())}")
        return s.to_numpy(dtype=np.float64).astype(np.int64)
    try:
        dt = pd.to_datetime(s, utc=True, format="mixed")
    except (ValueError, TypeError) as e:
        raise DataError(f"{what}: cannot parse timestamps ({e})") from None
    if dt.isna().any():
        raise DataError(f"{what}: missing timestamp at row {int(dt.isna().argmax())}")
    return (dt.astype("datetime64[ns, UTC]").array.asi8 // 1_000_000_000).astype(np.int64)


def _text_list(col: pd.Series) -> list[str]:
    return ["" if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v) for v in col.tolist()]


def _join_texts(fields: Mapping[str, list[str]], n: int, sep: str) -> list[str]:
    if not fields:
        return [""] * n
    cols = list(fields.values())
    return [sep.join(t for t in (c[r] for c in cols) if t) for r in range(n)]


def _attrs_from(df: pd.DataFrame, cols: Mapping[str, str | None] | Sequence[str]) -> dict[str, Categorical]:
    spec = dict(cols) if isinstance(cols, Mapping) else {c: None for c in cols}
    return {c: Categorical.from_values(c, df[c].tolist(), sep=sep) for c, sep in spec.items()}


# --------------------------------------------------------------------------------------
# Files, checksums, data directory
# --------------------------------------------------------------------------------------

# name -> (bytes, sha256), from the READMEs in ../shared/data/*/README.md
ML100K_FILES: dict[str, tuple[int, str]] = {
    "u.data": (1979173, "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"),
    "u.item": (236344, "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701"),
    "u.user": (22628, "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c"),
    "u.genre": (202, "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb"),
}
ML100K_OVERVIEWS_FILES: dict[str, tuple[int, str]] = {
    "overviews.csv": (789732, "a696c9097270181a8bf73678c037a6233c7f5a81cc343137baad78516965506b"),
}
FRAPPE_FILES: dict[str, tuple[int, str]] = {
    "frappe.csv": (6313241, "409edc12f4e2153c5dd58ae171938735911d9b0f70961d5f1086b241656b2cb5"),
    "meta.csv": (6215800, "de87f6b2e7cd0428f9179167e2e7826b5dd3bf490d5af680261b685763ac214f"),
    "frappe.validation.libfm": (4163044, "fdf4be563a7dd9b15f7a6e8b32671e90e6e7a2a2bd3af4e10bf13c5ad7e76e9e"),
    "frappe.test.libfm": (2081389, "a2ebaef3a9af8e55f8bb0d08bc4923965e42e43760ebd7635ac2f8c5db99e097"),
    "nfm_feature_map.csv": (77950, "9d6a4436b81ba1087defcc18aa66bbdc58e6c3ec7b87938dc0ff33b813aece0e"),
}

ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")

FRAPPE_CONTEXT_COLUMNS: tuple[str, ...] = (
    "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city")

_verified: dict[tuple[str, int, float], str] = {}


def resolve_data_dir(name: str, path: str | os.PathLike | None = None, *, marker: str | None = None) -> Path:
    """The directory of dataset ``name``.

    Parameters
    ----------
    name : str
        The dataset's directory name (e.g. ``"ml-100k"``).
    path : str or path-like, optional
        The data root holding ``name/`` or the dataset directory itself (recognised by
        ``marker``); default ``$CTXREC_DATA_DIR``.
    marker : str, optional
        A file the dataset directory must contain.

    Returns
    -------
    Path
        The dataset directory.

    Raises
    ------
    MissingDataError
        No ``path`` and ``$CTXREC_DATA_DIR`` unset, or no such directory.
    """
    if path is None:
        env = os.environ.get("CTXREC_DATA_DIR")
        if not env:
            raise MissingDataError(
                f"dataset {name!r}: no directory given and CTXREC_DATA_DIR is not set "
                f"(point it at the folder that holds {name}/)")
        path = env
    root = Path(path)
    if marker is not None and (root / marker).is_file():
        return root
    if (root / name).is_dir():
        return root / name
    if marker is None and root.name == name and root.is_dir():
        return root
    raise MissingDataError(f"dataset {name!r}: {root / name} not found"
                           + (f" (nor {root / marker})" if marker else ""))


def verify_files(directory: Path, files: Mapping[str, tuple[int, str]], *, verify: bool = True) -> None:
    """Check that every file exists with the documented size and SHA-256.

    Results are cached per (path, size, mtime) so repeated loads do not re-hash.

    Parameters
    ----------
    directory : Path
        Where the files are.
    files : mapping name -> (size in bytes, SHA-256 hex)
        The documented files.
    verify : bool
        Check the SHA-256 (sizes are always checked).

    Raises
    ------
    MissingDataError
        A missing file (named).
    ChecksumError
        A file of another size or checksum (named).
    """
    for fname, (size, sha) in files.items():
        p = directory / fname
        if not p.is_file():
            raise MissingDataError(f"{p}: required data file is missing")
        st = p.stat()
        if st.st_size != size:
            raise ChecksumError(f"{p}: {st.st_size} bytes, the dataset README documents {size} (altered or truncated)")
        if not verify:
            continue
        key = (str(p), st.st_size, st.st_mtime)
        got = _verified.get(key) or sha256_file(p)
        if got != sha:
            raise ChecksumError(f"{p}: SHA-256 {got} does not match the documented {sha} (altered file)")
        _verified[key] = got


# --------------------------------------------------------------------------------------
# MovieLens 100K
# --------------------------------------------------------------------------------------

_ML_AGE_BINS = (0, 18, 25, 35, 45, 50, 56, 200)
_ML_AGE_LABELS = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"


def download_movielens_100k(root: str | os.PathLike, *, url: str = ML100K_URL, timeout: float = 120.0) -> Path:
    """Fetch MovieLens 100K from GroupLens into ``root/ml-100k`` and verify every file.

    Only for machines with internet access (nothing here downloads implicitly). The zip's
    ``u.data``, ``u.item``, ``u.user`` and ``u.genre`` (plus ``README``, ``u.info``,
    ``u.occupation`` when present) are extracted into a temporary folder, checked against
    the documented SHA-256 and moved into place; an existing verified copy is kept as is.
    Mind the GroupLens terms: research use, no redistribution.

    Parameters
    ----------
    root : str or path-like
        The data root (created when missing).
    url : str
        Where the zip is fetched from.
    timeout : float
        Seconds the download may take.

    Returns
    -------
    Path
        ``root/ml-100k``.

    Raises
    ------
    ChecksumError
        When the download differs from the documented files.
    """
    import shutil
    import tempfile
    import urllib.request
    import zipfile

    dest = Path(root) / "ml-100k"
    try:
        verify_files(dest, ML100K_FILES)
        return dest
    except DataError:
        pass
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed https URL or caller's
        blob = resp.read()
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile:
        raise ChecksumError(f"{url}: not a zip archive ({len(blob)} bytes)") from None
    members = {Path(n).name: n for n in zf.namelist() if not n.endswith("/")}
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ml-100k.tmp-", dir=root))
    try:
        for name in [*ML100K_FILES, "README", "u.info", "u.occupation"]:
            if name not in members:
                if name in ML100K_FILES:
                    raise MissingDataError(f"{url}: archive has no {name}")
                continue
            (tmp / name).write_bytes(zf.read(members[name]))
        verify_files(tmp, ML100K_FILES)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def load_movielens_100k(path: str | os.PathLike | None = None, *, overviews: bool | str = "auto",
                        verify: bool = True, download: bool = False) -> Dataset:
    """MovieLens 100K as a :class:`Dataset` (100,000 ratings, 943 users, 1,682 items).

    Interactions keep ``u.data``'s row order; raw ids are the ints of the files (dense index
    = id - 1). ``rating`` float32 1..5, ``timestamp`` unix seconds. No context columns (the
    time context comes from ``timestamp``).

    Items: ``item_table`` columns item_id, title, release_date (datetime64 or NaT), year
    (float, NaN when unknown), imdb_url, genres (list[str]), overview, tagline.
    ``item_text_fields``: title, genres (comma-joined), year, overview;
    ``item_text`` = "title. Genres: a, b. Year: 1995. overview" (parts that exist).
    ``item_attrs``: ``genres`` (multi-valued, vocab = the 19 ml-100k genres in sorted order),
    ``decade`` (e.g. "1990s").
    Users: ``user_table`` user_id, age, gender, occupation, zip_code; ``user_attrs``:
    ``gender``, ``occupation``, ``age_group`` (MovieLens-1M bands), ``zip1`` (first zip digit).

    Parameters
    ----------
    path : str or path-like, optional
        The data root holding ``ml-100k/`` (and ``ml-100k-overviews/``), or the
        ``ml-100k`` directory itself; default ``$CTXREC_DATA_DIR``.
    overviews : bool or "auto"
        ``"auto"`` adds TMDB plot overviews when ``ml-100k-overviews/`` is next
        to ``ml-100k/``; ``True`` requires them; ``False`` leaves them out.
    verify : bool
        Check SHA-256 checksums (sizes are always checked).
    download : bool
        When ``ml-100k/`` is missing under ``path`` (or ``$CTXREC_DATA_DIR``),
        fetch it first with :func:`download_movielens_100k` (needs internet access).

    Returns
    -------
    Dataset
        As described above.

    Raises
    ------
    MissingDataError
        A missing directory or file.
    ChecksumError
        An altered file.
    """
    if download:
        root = path if path is not None else os.environ.get("CTXREC_DATA_DIR")
        if root is None:
            raise MissingDataError("dataset 'ml-100k': download=True needs a directory (path or CTXREC_DATA_DIR)")
        if not (Path(root) / "u.data").is_file():
            download_movielens_100k(root)
    d = resolve_data_dir("ml-100k", path, marker="u.data")
    verify_files(d, ML100K_FILES, verify=verify)
    ov_dir: Path | None = None
    if overviews:
        cand = d.parent / "ml-100k-overviews"
        if (cand / "overviews.csv").is_file() or overviews is True:
            ov_dir = cand
            verify_files(cand, ML100K_OVERVIEWS_FILES, verify=verify)

    ratings = pd.read_csv(d / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"],
                          dtype=np.int64)
    genre_names = [ln.split("|")[0] for ln in (d / "u.genre").read_text(encoding="latin-1").splitlines() if ln]
    cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *genre_names]
    items = pd.read_csv(d / "u.item", sep="|", header=None, names=cols, encoding="latin-1",
                        keep_default_na=False, quoting=csv.QUOTE_NONE, dtype=str)
    items["item_id"] = items["item_id"].astype(np.int64)
    flags = items[genre_names].to_numpy(dtype=np.int64)
    rel = pd.to_datetime(items["release_date"].replace("", None), format="%d-%b-%Y", errors="coerce")
    year = rel.dt.year.astype("float64")
    genres_list = [[g for g, f in zip(genre_names, row) if f] for row in flags]
    table = pd.DataFrame({
        "item_id": items["item_id"].to_numpy(), "title": items["title"].to_numpy(dtype=object),
        "release_date": rel, "year": year.to_numpy(), "imdb_url": items["imdb_url"].to_numpy(dtype=object),
        "genres": genres_list,
    })
    overview = [""] * len(table)
    tagline = [""] * len(table)
    if ov_dir is not None:
        ov = pd.read_csv(ov_dir / "overviews.csv", dtype={"item_id": np.int64}, keep_default_na=False)
        pos = pd.Index(table["item_id"]).get_indexer(ov["item_id"])
        if (pos < 0).any():
            raise DataError(f"{ov_dir / 'overviews.csv'}: item_id {ov['item_id'][pos < 0].iloc[0]} not in u.item")
        for p, o, t in zip(pos, ov["overview"].tolist(), ov["tagline"].tolist()):
            overview[p], tagline[p] = str(o).strip(), str(t).strip()
    table["overview"] = overview
    table["tagline"] = tagline
    table = table.sort_values("item_id", kind="stable").reset_index(drop=True)

    users = pd.read_csv(d / "u.user", sep="|", header=None, names=["user_id", "age", "gender", "occupation", "zip_code"],
                        dtype={"user_id": np.int64, "age": np.int64, "gender": str, "occupation": str, "zip_code": str},
                        keep_default_na=False)
    users = users.sort_values("user_id", kind="stable").reset_index(drop=True)

    user_ids = users["user_id"].to_numpy()
    item_ids = table["item_id"].to_numpy()
    u = pd.Index(user_ids).get_indexer(ratings["user_id"].to_numpy())
    i = pd.Index(item_ids).get_indexer(ratings["item_id"].to_numpy())
    if (u < 0).any() or (i < 0).any():
        raise DataError(f"{d / 'u.data'}: ids not in u.user/u.item")

    titles = table["title"].tolist()
    genre_txt = [", ".join(g) for g in table["genres"]]
    year_txt = ["" if np.isnan(y) else str(int(y)) for y in table["year"]]
    text_fields = {"title": titles, "genres": genre_txt, "year": year_txt, "overview": list(table["overview"])}
    item_text = []
    for t, g, y, o in zip(titles, genre_txt, year_txt, text_fields["overview"]):
        parts = [t]
        if g:
            parts.append(f"Genres: {g}")
        if y:
            parts.append(f"Year: {y}")
        if o:
            parts.append(o)
        item_text.append(". ".join(parts))
    decade = ["" if np.isnan(y) else f"{int(y) // 10 * 10}s" for y in table["year"]]
    item_attrs = {
        "genres": Categorical.from_values("genres", table["genres"].tolist()),
        "decade": Categorical.from_values("decade", decade),
    }
    age_group = pd.cut(users["age"], bins=list(_ML_AGE_BINS), right=False, labels=list(_ML_AGE_LABELS))
    user_attrs = {
        "gender": Categorical.from_values("gender", users["gender"].tolist()),
        "occupation": Categorical.from_values("occupation", users["occupation"].tolist()),
        "age_group": Categorical.from_values("age_group", age_group.astype(str).tolist()),
        "zip1": Categorical.from_values("zip1", [z[:1] if z[:1].isdigit() else "other" for z in users["zip_code"]]),
    }
    return Dataset(
        user_ids=user_ids, item_ids=item_ids, users=u, items=i,
        rating=ratings["rating"].to_numpy(np.float32), timestamp=ratings["timestamp"].to_numpy(np.int64),
        item_table=table, item_text=item_text, item_text_fields=text_fields, item_attrs=item_attrs,
        user_table=users, user_attrs=user_attrs, name="ml-100k",
        meta={"source": {"dataset": "movielens-100k", "path": os.path.abspath(d), "overviews": ov_dir is not None},
              "overviews": ov_dir is not None,
              "terms": "GroupLens research-use terms; do not redistribute"})


# --------------------------------------------------------------------------------------
# Frappe
# --------------------------------------------------------------------------------------


def _frappe_meta_table(d: Path) -> tuple[pd.DataFrame, list[str], dict[str, list[str]]]:
    meta = pd.read_csv(d / "meta.csv", sep="\t", keep_default_na=False, quoting=csv.QUOTE_NONE, dtype=str)
    meta["item"] = meta["item"].astype(np.int64)
    meta = meta.sort_values("item", kind="stable").reset_index(drop=True)
    meta = meta.rename(columns={"item": "item_id", "short desc": "short_desc"})

    def clean(col: str) -> list[str]:
        return ["" if v == "unknown" else v.strip() for v in meta[col].tolist()]

    fields = {"name": clean("name"), "category": clean("category"), "short_desc": clean("short_desc"),
              "description": clean("description")}
    text = []
    for n, c, s, desc in zip(fields["name"], fields["category"], fields["short_desc"], fields["description"]):
        parts = [n] if n else []
        if c:
            parts.append(f"Category: {c}")
        if s:
            parts.append(s)
        if desc:
            parts.append(desc)
        text.append(". ".join(parts))
    return meta, text, fields


def load_frappe(path: str | os.PathLike | None = None, *, verify: bool = True) -> Dataset:
    """Frappe raw usage logs as a :class:`Dataset` (96,203 logs, 957 users, 4,082 apps).

    Interactions keep ``frappe.csv``'s row order: ``count`` = ``cnt`` (usage count), no
    rating/label/timestamp; context columns :data:`FRAPPE_CONTEXT_COLUMNS` with the raw
    values (strings; ``city`` int64; ``unknown`` is a real value, not missing).
    Items (raw id = ``item`` int, dense = id): ``item_table`` = meta.csv (``item`` renamed
    ``item_id``, ``short desc`` → ``short_desc``); ``item_text`` = name, category, short
    description and description, with the literal ``unknown`` left out — the 550 apps
    whose metadata are withheld have empty text. ``item_attrs``: category, downloads,
    language, price, developer (``unknown`` → no value).

    Parameters
    ----------
    path : str or path-like, optional
        The data root holding ``frappe/`` or that directory itself; default
        ``$CTXREC_DATA_DIR``.
    verify : bool
        Check SHA-256 checksums.

    Returns
    -------
    Dataset
        As described above.

    Raises
    ------
    MissingDataError
        A missing directory or file.
    ChecksumError
        An altered file.
    """
    d = resolve_data_dir("frappe", path, marker="frappe.csv")
    verify_files(d, FRAPPE_FILES, verify=verify)
    logs = pd.read_csv(d / "frappe.csv", sep="\t", keep_default_na=False,
                       dtype={c: str for c in FRAPPE_CONTEXT_COLUMNS if c != "city"})
    meta, text, fields = _frappe_meta_table(d)
    item_ids = meta["item_id"].to_numpy()
    user_ids = np.sort(logs["user"].unique()).astype(np.int64)
    u = pd.Index(user_ids).get_indexer(logs["user"].to_numpy())
    i = pd.Index(item_ids).get_indexer(logs["item"].to_numpy())
    if (i < 0).any():
        raise DataError(f"{d / 'frappe.csv'}: item {logs['item'][i < 0].iloc[0]} not in meta.csv")
    ctx = logs[list(FRAPPE_CONTEXT_COLUMNS)].copy()
    ctx["city"] = ctx["city"].astype(np.int64)
    for c in FRAPPE_CONTEXT_COLUMNS:
        if c != "city":
            ctx[c] = ctx[c].astype(object)
    attrs = {c: Categorical.from_values(c, meta[c].tolist(), missing=("", "unknown"))
             for c in ("category", "downloads", "language", "price", "developer")}
    return Dataset(
        user_ids=user_ids, item_ids=item_ids, users=u, items=i, count=logs["cnt"].to_numpy(np.int64),
        context=ctx, item_table=meta, item_text=text, item_text_fields=fields, item_attrs=attrs,
        name="frappe", meta={"source": {"dataset": "frappe", "path": os.path.abspath(d)},
                             "terms": "Frappe research-use terms; do not redistribute"})


@dataclass
class FrappeNFM:
    """Frappe's NFM/AFM labelled splits over the catalog of :func:`load_frappe`.

    Each part is a :class:`Dataset` with ``label`` (1 = observed log, 0 = sampled negative)
    and the 8 Frappe context columns; ``count`` is None (libFM drops it).

    Attributes
    ----------
    train : Dataset
        Reconstructed training split — the raw log rows not used as positives in
        validation/test (67,604), each followed by ``n_neg`` sampled negatives that keep
        the row's user and context and pick an app the user never used (seeded).
    validation : Dataset
        ``frappe.validation.libfm`` (57,722 lines).
    test : Dataset
        ``frappe.test.libfm`` (28,860 lines).
    raw : Dataset
        The raw log dataset the splits were built from.
    train_raw_rows : int64 array [n_train_pos]
        Raw log row of each training positive.
    """

    train: Dataset
    validation: Dataset
    test: Dataset
    raw: Dataset
    train_raw_rows: np.ndarray = field(repr=False)


def _read_libfm(p: Path, n_fields: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (float32, 1 / 0 for -1) and feature indices (int64 [n, n_fields]) of a libFM file."""
    text = p.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    toks = text.split()
    if len(toks) != len(lines) * (n_fields + 1) or text.count(":1") != len(lines) * n_fields \
            or text.count(":") != len(lines) * n_fields:
        for r, ln in enumerate(lines):
            t = ln.split()
            if len(t) != n_fields + 1 or any(not x.endswith(":1") for x in t[1:]):
                raise DataError(f"{p}: line {r + 1} is not '<label> <idx>:1 x {n_fields}': {ln[:80]!r}")
        raise DataError(f"{p}: unexpected format")
    arr = pd.read_csv(io.StringIO(text.replace(":1", "")), sep=r"\s+", header=None, dtype=np.int64,
                      engine="c").to_numpy()
    if arr.shape != (len(lines), n_fields + 1):
        raise DataError(f"{p}: parsed shape {arr.shape}, expected ({len(lines)}, {n_fields + 1})")
    labels = (arr[:, 0] > 0).astype(np.float32)
    return labels, np.ascontiguousarray(arr[:, 1:])


def _sample_unseen(rng: np.random.Generator, users: np.ndarray, n_neg: int, indptr: np.ndarray,
                   seen: np.ndarray, n_items: int) -> np.ndarray:
    """int64 [len(users), n_neg]: per row, ``n_neg`` distinct items the row's user never used.

    Vectorised rejection sampling: draw a batch of candidates per row, keep the first
    ``n_neg`` distinct unseen ones; rows left short are redrawn.
    """
    seen_key = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr)) * n_items + seen
    out = np.full((len(users), n_neg), -1, dtype=np.int64)
    todo = np.arange(len(users))
    width = max(4 * n_neg, 8)
    while len(todo):
        out[todo] = -1
        cand = rng.integers(n_items, size=(len(todo), width))
        key = users[todo, None] * n_items + cand
        pos = np.searchsorted(seen_key, key).clip(max=max(len(seen_key) - 1, 0))
        ok = seen_key[pos] != key if len(seen_key) else np.ones_like(key, dtype=bool)
        sub = np.full((len(todo), n_neg), -1, dtype=np.int64)
        for j in range(n_neg):
            free = ok & ~(cand[:, :, None] == sub[:, None, :j]).any(axis=2)
            has = free.any(axis=1)
            first = free.argmax(axis=1)
            sub[has, j] = cand[has, first[has]]
            ok &= has[:, None]
        out[todo] = sub
        todo = todo[(out[todo] < 0).any(axis=1)]
    return out


def load_frappe_nfm(path: str | os.PathLike | None = None, *, n_neg: int = 2, seed: int = 0,
                    verify: bool = True) -> FrappeNFM:
    """Frappe with the official NFM/AFM validation/test splits and a reconstructed train split.

    The libFM lines are mapped back to raw values through ``nfm_feature_map.csv``. The
    original ``frappe.train.libfm`` is not available; its positives are exactly the raw
    rows not used as positives in validation/test (matched as a multiset, so duplicate raw
    rows are consumed once each). ``n_neg`` negatives per positive are drawn (numpy
    ``default_rng(seed)``) uniformly from the apps the user never used in any raw log,
    keeping the positive's user and context. Training rows are ordered positive, its
    negatives, next positive, ...

    Parameters
    ----------
    path : str or path-like, optional
        As in :func:`load_frappe`.
    n_neg : int
        Sampled negatives per training positive.
    seed : int
        Seed of the negative sampling.
    verify : bool
        Check SHA-256 checksums.

    Returns
    -------
    FrappeNFM
        The three labelled splits and the raw logs.
    """
    raw = load_frappe(path, verify=verify)
    d = Path(raw.meta["source"]["path"])
    fmap = pd.read_csv(d / "nfm_feature_map.csv", keep_default_na=False, dtype={"field": str, "value": str})
    source = {"dataset": "frappe-nfm", "path": str(d), "n_neg": int(n_neg), "seed": int(seed)}
    field_order = ["user", "item", *FRAPPE_CONTEXT_COLUMNS]
    n_fields = len(field_order)
    fidx = fmap["feature_index"].to_numpy(np.int64)
    if not np.array_equal(fidx, np.arange(len(fmap))):
        raise DataError(f"{d / 'nfm_feature_map.csv'}: feature_index must be 0..{len(fmap) - 1} in order")
    feat_field = fmap["field"].to_numpy(dtype=object)
    feat_value = fmap["value"].to_numpy(dtype=object)
    feat_int = pd.to_numeric(fmap["value"], errors="coerce").fillna(-1).to_numpy(np.int64)

    # encode raw rows as libFM feature tuples (field value -> global index)
    raw_ctx = raw.context
    raw_cols = {"user": raw.user_ids[raw.users], "item": raw.item_ids[raw.items],
                **{c: raw_ctx[c].to_numpy() for c in FRAPPE_CONTEXT_COLUMNS}}
    raw_codes = np.empty((len(raw), n_fields), dtype=np.int64)
    for j, f in enumerate(field_order):
        sel = feat_field == f
        lut = pd.Index(feat_value[sel].astype(str))
        pos = lut.get_indexer(pd.Series(raw_cols[f]).astype(str).to_numpy())
        if (pos < 0).any():
            raise DataError(f"{d / 'nfm_feature_map.csv'}: field {f!r} lacks value {raw_cols[f][pos < 0][0]!r}")
        raw_codes[:, j] = np.flatnonzero(sel)[pos]

    def to_dataset(p: Path, name: str) -> Dataset:
        labels, feats = _read_libfm(p, n_fields)
        if feats.min() < 0 or feats.max() >= len(fmap):
            raise DataError(f"{p}: feature index out of range 0..{len(fmap) - 1}")
        for j, f in enumerate(field_order):
            if not (feat_field[feats[:, j]] == f).all():
                raise DataError(f"{p}: feature {j + 1} of some line is not a {f!r} feature")
        users = raw.user_index(feat_int[feats[:, 0]])
        items = raw.item_index(feat_int[feats[:, 1]])
        ctx = pd.DataFrame({c: pd.Series(feat_value[feats[:, j + 2]], dtype=object)
                            for j, c in enumerate(FRAPPE_CONTEXT_COLUMNS)})
        ctx["city"] = feat_int[feats[:, 2 + FRAPPE_CONTEXT_COLUMNS.index("city")]]
        ds = raw.with_interactions(users, items, label=labels, context=ctx, name=f"frappe-nfm-{name}")
        ds.meta["libfm_codes"] = feats
        ds.meta["source"] = {**source, "part": name}
        return ds

    val = to_dataset(d / "frappe.validation.libfm", "validation")
    test = to_dataset(d / "frappe.test.libfm", "test")

    # multiset anti-join: raw rows minus validation/test positives
    def keys(codes: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame(codes, columns=field_order)
        df["_occ"] = df.groupby(field_order, sort=False).cumcount()
        return df

    pos_codes = np.concatenate([val.meta["libfm_codes"][val.label > 0], test.meta["libfm_codes"][test.label > 0]])
    raw_k = keys(raw_codes)
    raw_k["_row"] = np.arange(len(raw_k))
    used = raw_k.merge(keys(pos_codes), on=[*field_order, "_occ"], how="inner")["_row"].to_numpy()
    if len(used) != len(pos_codes):
        raise DataError(f"{len(pos_codes) - len(used)} validation/test positives do not match a raw frappe.csv row")
    train_rows = np.setdiff1d(np.arange(len(raw)), used)

    # negatives: apps the user never used (in any raw log), keeping user and context
    rng = np.random.default_rng(seed)
    indptr, used_items = raw.user_items(positive_only=False)
    pu = raw.users[train_rows].astype(np.int64)
    n_pos = len(train_rows)
    neg_items = _sample_unseen(rng, pu, n_neg, indptr, used_items, raw.n_items)
    rows = np.repeat(train_rows, n_neg + 1)
    items = np.column_stack([raw.items[train_rows].astype(np.int64), neg_items]).ravel()
    labels = np.tile(np.r_[1.0, np.zeros(n_neg)], n_pos).astype(np.float32)
    train = raw.with_interactions(raw.users[rows], items, label=labels, context=raw.context.iloc[rows],
                                  name="frappe-nfm-train")
    train.meta["source"] = {**source, "part": "train"}
    return FrappeNFM(train=train, validation=val, test=test, raw=raw, train_raw_rows=train_rows)


# --------------------------------------------------------------------------------------
# Data config: bring your own files
# --------------------------------------------------------------------------------------

#: The kinds of context column a data config declares (the keyword arguments of
#: :class:`ctxrec.context.ContextSpec` of the same names).
CONTEXT_KINDS: tuple[str, ...] = ("time", "categorical", "numeric", "text")

_TOP_KEYS = ("interactions", "items", "users", "name")
_INTERACTION_KEYS = ("path", "user", "item", "timestamp", "rating", "label", "count", "context")
_TABLE_KEYS = ("path", "id", "text", "attributes")


def _unknown_keys(d: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """Raise DataError naming the first key of ``d`` not in ``allowed`` (and a close one)."""
    import difflib
    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), list(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"data config: unknown key {k!r} in {where}{hint} (allowed: {', '.join(allowed)})")


def _col_name(v: Any, where: str) -> str | None:
    """An optional column name: None, or a non-empty string."""
    return None if v is None else _req_col(v, where)


def _req_col(v: Any, where: str) -> str:
    """A column name that must be given (a non-empty string)."""
    if not isinstance(v, str) or not v:
        raise DataError(f"data config: {where} must be a column name (a non-empty string), got {v!r}")
    return v


def _col_list(v: Any, where: str) -> tuple[str, ...]:
    """A list of column names; a single string is a list of one; None is empty."""
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise DataError(f"data config: {where} must be a list of column names, got {v!r}")
    out = tuple(_req_col(x, f"{where}[{j}]") for j, x in enumerate(v))
    dup = [c for c in out if out.count(c) > 1]
    if dup:
        raise DataError(f"data config: {where} lists column {dup[0]!r} twice")
    return out


def _attr_spec(v: Any, where: str) -> dict[str, str | None]:
    """``{column: separator or None}`` from a mapping or a list of single-valued columns."""
    if v is None:
        return {}
    if isinstance(v, Mapping):
        out: dict[str, str | None] = {}
        for k, sep in v.items():
            _req_col(k, f"{where} key")
            if sep is not None and (not isinstance(sep, str) or not sep):
                raise DataError(f"data config: {where}[{k!r}] must be a separator string or null, got {sep!r}")
            out[k] = sep
        return out
    return {c: None for c in _col_list(v, where)}


def _config_path(v: Any, where: str, base_dir: Path) -> Path:
    """An absolute path: ``~`` expanded, relative paths taken from ``base_dir``."""
    if not isinstance(v, (str, os.PathLike)) or not str(v):
        raise DataError(f"data config: {where} must be a file path, got {v!r}")
    p = Path(v).expanduser()
    if not p.is_absolute():
        p = base_dir / p
    return Path(os.path.abspath(p))


def resolve_config_paths(section: Mapping[str, Any], base_dir: str | os.PathLike) -> dict[str, Any]:
    """A copy of a data config section with every table ``path`` made absolute.

    ``~`` is expanded and a relative path is taken from ``base_dir`` (the directory of the
    file the section was read from). Nothing else is checked: entries that are not
    mappings with a string ``path`` are copied as they are, for :meth:`DataConfig.from_dict`
    to report.

    Parameters
    ----------
    section : mapping
        A data config section (``"interactions"``, ``"items"``, ``"users"``, ...).
    base_dir : str or path-like
        The directory relative paths start from.

    Returns
    -------
    dict
        The section with absolute path strings, otherwise unchanged (shallow copies).
    """
    base = Path(base_dir).expanduser()
    out = dict(section)
    for key in ("interactions", "items", "users"):
        t = out.get(key)
        if isinstance(t, Mapping) and isinstance(t.get("path"), (str, os.PathLike)) and str(t["path"]):
            out[key] = {**t, "path": str(_config_path(t["path"], f"{key}.path", base))}
    return out


def _close_columns(col: str, columns: Sequence[str]) -> list[str]:
    """Existing columns that look like ``col``: case-insensitive equal first, then difflib's."""
    import difflib
    names = [str(c) for c in columns]
    same_case = [c for c in names if c.lower() == col.lower()]
    lower = {c.lower(): c for c in names}
    fuzzy = [lower[m] for m in difflib.get_close_matches(col.lower(), list(lower), n=3, cutoff=0.6)]
    return list(dict.fromkeys(same_case + fuzzy))


def _check_columns(df: pd.DataFrame, path: Path, wanted: Sequence[tuple[str | None, str]]) -> None:
    """DataError for the first (column, config key) whose column is not in ``df``.

    The message names the file, the column, the config key that named it, the closest
    existing column names and (up to 30 of) the file's columns.
    """
    cols = [str(c) for c in df.columns]
    for col, key in wanted:
        if col is None or col in df.columns:
            continue
        close = _close_columns(col, cols)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        listed = ", ".join(cols[:30]) + (f", ... ({len(cols)} in all)" if len(cols) > 30 else "")
        raise DataError(f"{path}: no column {col!r} (data config {key}){hint} (columns: {listed})")


def _read_config_table(path: Path, key: str) -> pd.DataFrame:
    """Read one table of a data config; errors name the file and the config key."""
    if not path.is_file():
        raise MissingDataError(f"{path}: no such file (data config {key}.path)"
                               + ("; it is a directory" if path.is_dir() else ""))
    if table_format(path) is None:
        known = ", ".join(x for exts in TABLE_FORMATS.values() for x in exts)
        raise DataError(f"{path}: unknown table format (data config {key}.path); name the file with one of "
                        f"{known} (CSV, TSV and JSON Lines may end in .gz/.bz2/.xz/.zst/.zip too)")
    try:
        return read_table(path)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - pandas/pyarrow parse errors of many types
        raise DataError(f"{path}: cannot read it as {table_format(path)} (data config {key}.path): "
                        f"{type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class InteractionsConfig:
    """Where the interactions are and which of their columns mean what.

    Attributes
    ----------
    path : Path
        The file (absolute): CSV, TSV, Parquet or JSON Lines.
    user, item : str
        Raw id columns (default ``user_id`` / ``item_id``).
    timestamp, rating, label, count : str or None
        Optional value columns (see :meth:`Dataset.from_frames`).
    context : dict[str, tuple[str, ...]]
        Context columns by kind, every kind of :data:`CONTEXT_KINDS` present (maybe
        empty). ``text`` columns may be absent from the file (request-only free text).
    """

    path: Path
    user: str = "user_id"
    item: str = "item_id"
    timestamp: str | None = None
    rating: str | None = None
    label: str | None = None
    count: str | None = None
    context: dict[str, tuple[str, ...]] = field(default_factory=lambda: {k: () for k in CONTEXT_KINDS})


@dataclass(frozen=True)
class TableConfig:
    """An item or user table of a data config.

    Attributes
    ----------
    path : Path
        The file (absolute).
    id : str or None
        Its id column; None: the interactions' item (user) column name.
    text : tuple[str, ...]
        Columns joined (with ``". "``) into the item (user) text the encoder reads, in order.
    attributes : dict[str, str or None]
        Categorical columns; the value is the separator of a multi-valued column (e.g.
        ``"|"``) or None for one value per row (JSON Lines / Parquet lists need none).
    """

    path: Path
    id: str | None = None
    text: tuple[str, ...] = ()
    attributes: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """A user's own data files and what their columns mean: the ``"data"`` section.

    As JSON (every key but ``interactions.path`` optional; paths relative to the config
    file's directory, ``~`` expanded)::

        {"interactions": {"path": "events.parquet", "user": "uid", "item": "sku",
                          "timestamp": "ts", "rating": "stars",
                          "context": {"time": ["ts"], "categorical": ["device"], "text": ["query"]}},
         "items": {"path": "products.csv", "id": "sku", "text": ["name", "description"],
                   "attributes": {"category": null, "tags": "|"}},
         "users": {"path": "users.jsonl", "id": "uid", "text": ["bio"], "attributes": ["country"]},
         "name": "shop"}

    ``rating`` (explicit), ``label`` (0/1) and ``count`` are alternatives or companions,
    as in :meth:`Dataset.from_frames`. Context columns keep their raw values in
    ``Dataset.context``; a ``time`` column may be the ``timestamp`` column itself (then
    both the int64 ``Dataset.timestamp`` and the raw column are kept); ``text`` columns
    may be missing from the file (free text seen only in requests).

    Attributes
    ----------
    interactions : InteractionsConfig
    items, users : TableConfig or None
    name : str or None
        A label for reports (default: the interactions file's name without suffixes).
    """

    interactions: InteractionsConfig
    items: TableConfig | None = None
    users: TableConfig | None = None
    name: str | None = None

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None) -> "DataConfig":
        """Validate a data section (a JSON object as a dict) and resolve its paths.

        Parameters
        ----------
        d : mapping
            The section (see the class docstring). A ``{"data": {...}}`` wrapper (a whole
            training config holding only a data section) is accepted too.
        base_dir : path or None
            Where relative paths start (the config file's directory); default the current
            directory.

        Returns
        -------
        DataConfig

        Raises
        ------
        DataError
            For an unknown key (named with the allowed ones), a bad value or kind, a
            missing ``interactions`` / ``path``. Files are not opened here: see :meth:`load`.
        """
        if isinstance(d, Mapping) and set(d) == {"data"}:
            d = d["data"]
        if not isinstance(d, Mapping):
            raise DataError(f"data config: expected a JSON object, got {type(d).__name__}")
        base = Path(base_dir if base_dir is not None else os.getcwd()).expanduser()
        _unknown_keys(d, _TOP_KEYS, "data")
        if "interactions" not in d:
            raise DataError("data config: no 'interactions' section (give at least {\"interactions\": "
                            "{\"path\": ..., \"user\": ..., \"item\": ...}})")
        it = d["interactions"]
        if not isinstance(it, Mapping):
            raise DataError(f"data config: data.interactions must be an object, got {it!r}")
        _unknown_keys(it, _INTERACTION_KEYS, "data.interactions")
        if "path" not in it:
            raise DataError("data config: data.interactions.path is missing (the interactions file)")
        ctx_in = it.get("context") or {}
        if not isinstance(ctx_in, Mapping):
            raise DataError(f"data config: data.interactions.context must be an object of kind -> columns "
                            f"({', '.join(CONTEXT_KINDS)}), got {ctx_in!r}")
        for kind in ctx_in:
            if kind not in CONTEXT_KINDS:
                import difflib
                close = difflib.get_close_matches(str(kind), list(CONTEXT_KINDS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise DataError(f"data config: unknown context kind {kind!r} in data.interactions.context{hint} "
                                f"(kinds: {', '.join(CONTEXT_KINDS)})")
        context = {k: _col_list(ctx_in.get(k), f"data.interactions.context.{k}") for k in CONTEXT_KINDS}
        seen: dict[str, str] = {}
        for kind, cols in context.items():
            for c in cols:
                if c in seen:
                    raise DataError(f"data config: context column {c!r} is both {seen[c]} and {kind} "
                                    "in data.interactions.context")
                seen[c] = kind
        inter = InteractionsConfig(
            path=_config_path(it["path"], "data.interactions.path", base),
            user=_req_col(it.get("user", "user_id"), "data.interactions.user"),
            item=_req_col(it.get("item", "item_id"), "data.interactions.item"),
            timestamp=_col_name(it.get("timestamp"), "data.interactions.timestamp"),
            rating=_col_name(it.get("rating"), "data.interactions.rating"),
            label=_col_name(it.get("label"), "data.interactions.label"),
            count=_col_name(it.get("count"), "data.interactions.count"),
            context=context)

        def table(key: str) -> TableConfig | None:
            t = d.get(key)
            if t is None:
                return None
            if not isinstance(t, Mapping):
                raise DataError(f"data config: data.{key} must be an object, got {t!r}")
            _unknown_keys(t, _TABLE_KEYS, f"data.{key}")
            if "path" not in t:
                raise DataError(f"data config: data.{key}.path is missing (the {key[:-1]} table file)")
            return TableConfig(path=_config_path(t["path"], f"data.{key}.path", base),
                               id=_col_name(t.get("id"), f"data.{key}.id"),
                               text=_col_list(t.get("text"), f"data.{key}.text"),
                               attributes=_attr_spec(t.get("attributes"), f"data.{key}.attributes"))

        name = d.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise DataError(f"data config: data.name must be a non-empty string, got {name!r}")
        return cls(interactions=inter, items=table("items"), users=table("users"), name=name)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "DataConfig":
        """Read a JSON data section (or ``{"data": {...}}``); relative paths start at its directory.

        Parameters
        ----------
        path : str or path-like
            The JSON file (``~`` accepted).

        Returns
        -------
        DataConfig

        Raises
        ------
        MissingDataError
            No such file.
        DataError
            Invalid JSON or any error of :meth:`from_dict`.
        """
        p = Path(path).expanduser()
        d = read_json_file(p, "data config")
        return cls.from_dict(d, base_dir=Path(os.path.abspath(p)).parent)

    @classmethod
    def from_csv_dir(cls, directory: str | os.PathLike) -> "DataConfig":
        """The data config of a directory in the fixed ``interactions.csv`` / ``items.csv`` layout.

        ``interactions.csv``: ``user_id``, ``item_id``, optional ``rating``, ``label``,
        ``timestamp``; every other column is context (numeric columns ``numeric``, the
        rest ``categorical``). ``items.csv`` (optional): ``item_id`` plus text columns
        among ``title``, ``text``, ``description`` (in that order of columns in the file).

        Parameters
        ----------
        directory : str or path-like
            The directory.

        Returns
        -------
        DataConfig

        Raises
        ------
        MissingDataError
            When ``interactions.csv`` is not in ``directory``.
        """
        d = Path(os.path.abspath(Path(directory).expanduser()))
        inter = d / "interactions.csv"
        if not inter.is_file():
            raise MissingDataError(f"{inter}: no such file (the csv dataset needs interactions.csv with "
                                   "user_id, item_id and optional timestamp, rating, label, context columns)")
        head = pd.read_csv(inter, nrows=1000)
        fixed = ("user_id", "item_id", "rating", "label", "timestamp")
        ctx: dict[str, list[str]] = {"numeric": [], "categorical": []}
        for c in head.columns:
            if c in fixed:
                continue
            numeric = pd.api.types.is_numeric_dtype(head[c].dtype) and not pd.api.types.is_bool_dtype(head[c].dtype)
            ctx["numeric" if numeric else "categorical"].append(str(c))
        section: dict[str, Any] = {
            "interactions": {"path": str(inter), **{k: k for k in fixed[2:] if k in head.columns},
                             "context": {k: v for k, v in ctx.items() if v}},
            "name": d.name}
        items = d / "items.csv"
        if items.is_file():
            item_cols = list(pd.read_csv(items, nrows=0).columns)
            section["items"] = {"path": str(items), "id": "item_id",
                                "text": [c for c in item_cols if c in ("title", "text", "description")]}
        return cls.from_dict(section, base_dir=d)

    # ---- views ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict with absolute paths (``from_dict`` reads it back).

        Returns
        -------
        dict
            ``{"interactions": {...}, "items": {...}?, "users": {...}?, "name": ...?}``; keys
            left at their default are included for the ids, left out for unset value columns.
        """
        it = self.interactions
        inter: dict[str, Any] = {"path": str(it.path), "user": it.user, "item": it.item}
        for k in ("timestamp", "rating", "label", "count"):
            if getattr(it, k) is not None:
                inter[k] = getattr(it, k)
        ctx = {k: list(v) for k, v in it.context.items() if v}
        if ctx:
            inter["context"] = ctx
        out: dict[str, Any] = {"interactions": inter}
        for key in ("items", "users"):
            t: TableConfig | None = getattr(self, key)
            if t is None:
                continue
            td: dict[str, Any] = {"path": str(t.path)}
            if t.id is not None:
                td["id"] = t.id
            if t.text:
                td["text"] = list(t.text)
            if t.attributes:
                td["attributes"] = dict(t.attributes)
            out[key] = td
        if self.name is not None:
            out["name"] = self.name
        return out

    def context_spec_kwargs(self) -> dict[str, list[str]]:
        """The context columns by kind as :class:`ctxrec.context.ContextSpec` keyword arguments.

        Returns
        -------
        dict[str, list[str]]
            ``{"time": [...], "categorical": [...], "numeric": [...], "text": [...]}`` with only
            the non-empty kinds, so ``ContextSpec(**cfg.context_spec_kwargs())`` declares every
            context column under its own name.
        """
        return {k: list(v) for k, v in self.interactions.context.items() if v}

    # ---- loading ----------------------------------------------------------------------
    def load(self) -> Dataset:
        """Read the files, check every named column, and build the Dataset.

        Returns
        -------
        Dataset
            Built by :meth:`Dataset.from_frames`: interactions in file order; context
            columns (those of the file; absent ``text`` ones left out) in ``context``; the
            item table with the id first, then the text columns, then the others in file
            order; ``meta["source"]`` = :meth:`to_dict` (reload with :func:`load_source`).

        Raises
        ------
        MissingDataError
            A file that does not exist (named, with its config key).
        DataError
            A column that is not in its file (the message names the file, the column, the
            config key and the closest existing columns), an unreadable file, interaction
            ids that share nothing with the item (user) table's ids, or any error of
            :meth:`Dataset.from_frames` (suffixed with the files read).
        """
        it = self.interactions
        inter = _read_config_table(it.path, "data.interactions")
        wanted: list[tuple[str | None, str]] = [
            (it.user, "data.interactions.user"), (it.item, "data.interactions.item"),
            (it.timestamp, "data.interactions.timestamp"), (it.rating, "data.interactions.rating"),
            (it.label, "data.interactions.label"), (it.count, "data.interactions.count")]
        for kind in ("time", "categorical", "numeric"):
            wanted += [(c, f"data.interactions.context.{kind}") for c in it.context[kind]]
        _check_columns(inter, it.path, wanted)
        ctx_cols = [c for k in CONTEXT_KINDS for c in it.context[k] if k != "text" or c in inter.columns]

        def table(t: TableConfig | None, key: str, default_id: str, ref: str) -> tuple[pd.DataFrame | None, str]:
            if t is None:
                return None, default_id
            df = _read_config_table(t.path, f"data.{key}")
            idc = t.id or default_id
            _check_columns(df, t.path, [(idc, f"data.{key}.id" if t.id else f"data.{key}.id (default: {ref})"),
                                        *[(c, f"data.{key}.text") for c in t.text],
                                        *[(c, f"data.{key}.attributes") for c in t.attributes]])
            first = [idc, *[c for c in t.text if c != idc]]
            df = df[first + [c for c in df.columns if c not in first]]
            return df, idc

        items_df, item_id_col = table(self.items, "items", it.item, "data.interactions.item")
        users_df, user_id_col = table(self.users, "users", it.user, "data.interactions.user")
        for df, col, idc, t, what in ((items_df, it.item, item_id_col, self.items, "item"),
                                      (users_df, it.user, user_id_col, self.users, "user")):
            if df is None or t is None or not len(df) or not len(inter):
                continue
            a, b = _id_array(inter[col]), _id_array(df[idc])
            if not pd.Index(pd.unique(a)).isin(pd.unique(b)).any():
                ea, eb = _py(a[0]), _py(b[0])
                raise DataError(
                    f"{t.path}: none of its {what} ids ({idc!r}, e.g. {eb!r} of type {type(eb).__name__}) "
                    f"appears in {it.path} column {col!r} (e.g. {ea!r} of type {type(ea).__name__}); "
                    "do both files name the same ids, written the same way?")
        files = [f"interactions {it.path}"] + [f"{k} {t.path}" for k, t in (("items", self.items),
                                                                         ("users", self.users)) if t is not None]
        try:
            ds = Dataset.from_frames(
                inter, user_col=it.user, item_col=it.item, rating_col=it.rating, label_col=it.label,
                count_col=it.count, timestamp_col=it.timestamp, context_cols=ctx_cols,
                items=items_df, item_id_col=item_id_col,
                item_text_cols=self.items.text if self.items else (),
                item_attr_cols=self.items.attributes if self.items else {},
                users=users_df, user_id_col=user_id_col,
                user_text_cols=self.users.text if self.users else (),
                user_attr_cols=self.users.attributes if self.users else {},
                name=self.name or it.path.name.split(".")[0])
        except DataError as e:
            raise DataError(f"{e} (data config: {'; '.join(files)})") from None
        except (ValueError, TypeError) as e:  # e.g. a non-numeric rating column
            raise DataError(f"{type(e).__name__}: {e} (data config: {'; '.join(files)})") from None
        ds.meta["source"] = self.to_dict()
        return ds


def load_source(source: Mapping[str, Any]) -> Dataset:
    """Reload a dataset from its ``Dataset.meta["source"]``.

    Parameters
    ----------
    source : mapping
        Either a built-in dataset, ``{"dataset": "movielens-100k" | "frappe", "path": dir}``
        (MovieLens also ``"overviews": bool``), ``{"dataset": "frappe-nfm", "path": dir,
        "n_neg": int, "seed": int, "part": "train" | "validation" | "test"}``, or a data
        config (``{"interactions": {...}, ...}``, as :meth:`DataConfig.to_dict` writes it).

    Returns
    -------
    Dataset
        The whole dataset the source describes, read again from its files (a subset's
        ``meta["source"]`` names the dataset it was cut from, not the subset).

    Raises
    ------
    DataError
        For a source that is neither kind, or any error of the loader.
    """
    if not isinstance(source, Mapping):
        raise DataError(f"data source: expected a dict, got {type(source).__name__}: {source!r}")
    if "dataset" in source:
        name, path = source["dataset"], source.get("path")
        if name == "movielens-100k":
            return load_movielens_100k(path, overviews=source.get("overviews", "auto"))
        if name == "frappe":
            return load_frappe(path)
        if name == "frappe-nfm":
            part = source.get("part", "train")
            if part not in ("train", "validation", "test"):
                raise DataError(f"data source: frappe-nfm part {part!r} is not train, validation or test")
            nfm = load_frappe_nfm(path, n_neg=int(source.get("n_neg", 2)), seed=int(source.get("seed", 0)))
            return getattr(nfm, part)
        raise DataError(f"data source: unknown dataset {name!r} (built-in: movielens-100k, frappe, frappe-nfm)")
    if "interactions" in source:
        return DataConfig.from_dict(source).load()
    raise DataError(f"data source: neither a built-in dataset ('dataset' key) nor a data config "
                    f"('interactions' key): {dict(source)!r}")
