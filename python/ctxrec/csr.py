"""Compressed sparse rows as plain arrays: the one builder the other modules use.

A CSR list is ``(indptr, indices)`` (and optionally ``values``): row ``r`` holds
``indices[indptr[r]:indptr[r + 1]]``; ``indptr`` is int64 [n_rows + 1], ``indices`` int64.
Users' items, item attributes, histories and seen sets are all stored this way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["indptr_of", "from_pairs", "from_lists", "take", "problem"]


def indptr_of(counts: np.ndarray | Sequence[int]) -> np.ndarray:
    """The index pointer of rows with these lengths.

    Parameters
    ----------
    counts : int array [n_rows]
        Entries per row.

    Returns
    -------
    int64 array [n_rows + 1]
        ``0, counts[0], counts[0] + counts[1], ...``
    """
    counts = np.asarray(counts, np.int64)
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def from_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int, *, values: np.ndarray | None = None,
               unique: bool = False) -> tuple[np.ndarray, ...]:
    """CSR of ``(row, col)`` pairs, columns sorted within each row.

    Parameters
    ----------
    rows, cols : int arrays [nnz]
        The pairs (``0 <= rows < n_rows``, ``cols >= 0``).
    n_rows : int
        Rows of the result (rows without pairs are empty).
    values : array [nnz], optional
        A value per pair, kept aligned with its column.
    unique : bool
        Drop repeated pairs (with ``values``: the first occurrence's value is kept).

    Returns
    -------
    (indptr int64 [n_rows + 1], indices int64 [nnz'])
        and ``values`` [nnz'] when given.
    """
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    order = np.lexsort((cols, rows))
    r, c = rows[order], cols[order]
    keep = slice(None)
    if unique and len(r):
        keep = np.r_[True, (r[1:] != r[:-1]) | (c[1:] != c[:-1])]
        r, c = r[keep], c[keep]
    ptr = indptr_of(np.bincount(r, minlength=n_rows)) if len(r) else np.zeros(n_rows + 1, np.int64)
    if values is None:
        return ptr, c
    v = np.asarray(values)[order][keep]
    return ptr, c, v


def from_lists(lists: Sequence[Sequence[int] | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """CSR of per-row index lists, each row's order kept.

    Parameters
    ----------
    lists : sequence of int sequences
        Row ``r``'s entries.

    Returns
    -------
    (indptr int64 [len(lists) + 1], indices int64 [sum of lengths])
    """
    ptr = indptr_of([len(x) for x in lists])
    idx = np.concatenate([np.asarray(x, np.int64) for x in lists]) if ptr[-1] else np.zeros(0, np.int64)
    return ptr, idx


def take(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``rows`` of a CSR list as a new CSR list.

    Parameters
    ----------
    indptr, indices : CSR arrays
        The list.
    rows : int array [m]
        The rows to take, in order (repeats allowed).

    Returns
    -------
    (indptr int64 [m + 1], indices int64)
    """
    rows = np.asarray(rows, np.int64)
    lens = indptr[rows + 1] - indptr[rows]
    new_ptr = indptr_of(lens)
    if new_ptr[-1] == 0:
        return new_ptr, np.zeros(0, dtype=np.int64)
    starts = np.repeat(indptr[rows] - new_ptr[:-1], lens)
    return new_ptr, np.ascontiguousarray(indices[np.arange(new_ptr[-1]) + starts], dtype=np.int64)


def problem(indptr: np.ndarray, indices: np.ndarray, n_rows: int, n_cols: int, *,
            names: tuple[str, str] = ("indptr", "indices")) -> str | None:
    """What keeps ``(indptr, indices)`` from being a CSR list of ``n_rows`` rows over ``[0, n_cols)``.

    The check a loaded artifact passes before anything indexes with it.

    Parameters
    ----------
    indptr, indices : arrays
        The candidate list.
    n_rows, n_cols : int
        Its expected rows and the range of its indices.
    names : (str, str)
        How the two arrays are named in the message (e.g. file names).

    Returns
    -------
    str or None
        The first problem found, naming the array; None when it is a valid CSR list.
    """
    p, i = names
    if indptr.dtype.kind not in "iu" or indptr.ndim != 1:
        return f"{p} is not an integer vector (dtype {indptr.dtype}, shape {indptr.shape})"
    if indices.dtype.kind not in "iu" or indices.ndim != 1:
        return f"{i} is not an integer vector (dtype {indices.dtype}, shape {indices.shape})"
    if indptr.shape != (n_rows + 1,) or indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[-1] != len(indices):
        return f"{p} is not a valid index pointer for {n_rows} rows and {len(indices)} entries"
    if len(indices) and (indices.min() < 0 or indices.max() >= n_cols):
        return f"{i} holds indices outside [0, {n_cols})"
    return None
