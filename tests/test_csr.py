"""ctxrec.csr against plain-Python references on random inputs, edge cases included."""
from __future__ import annotations

import numpy as np
import pytest

from ctxrec import csr


def _rows(ptr, idx):
    return [idx[ptr[r]:ptr[r + 1]].tolist() for r in range(len(ptr) - 1)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("unique", [False, True])
def test_from_pairs_matches_sorted_lists(seed, unique):
    rng = np.random.default_rng(seed)
    n_rows, nnz = int(rng.integers(1, 30)), int(rng.integers(0, 200))
    r, c = rng.integers(0, n_rows, nnz), rng.integers(0, 15, nnz)
    v = rng.random(nnz)
    ptr, idx, val = csr.from_pairs(r, c, n_rows, values=v, unique=unique)
    assert ptr.dtype == idx.dtype == np.int64 and len(ptr) == n_rows + 1 and ptr[0] == 0
    want = [[] for _ in range(n_rows)]
    first: dict[tuple[int, int], float] = {}
    for a, b, x in zip(r.tolist(), c.tolist(), v.tolist()):
        if unique and (a, b) in first:
            continue
        first.setdefault((a, b), x)
        want[a].append((b, x))
    got_rows = _rows(ptr, idx)
    for row in range(n_rows):
        assert got_rows[row] == sorted(b for b, _ in want[row])
        if unique:  # the first occurrence's value
            assert [val[ptr[row] + j] for j in range(len(got_rows[row]))] == [first[(row, b)] for b in got_rows[row]]


def test_from_pairs_empty_and_empty_rows():
    ptr, idx = csr.from_pairs(np.zeros(0, int), np.zeros(0, int), 3, unique=True)
    assert ptr.tolist() == [0, 0, 0, 0] and idx.tolist() == []
    ptr, idx = csr.from_pairs([2, 2, 0], [5, 1, 7], 4)
    assert _rows(ptr, idx) == [[7], [], [1, 5], []]


def test_from_lists_keeps_order_and_take_selects_rows():
    lists = [[3, 1], [], [9], [0, 0, 4]]
    ptr, idx = csr.from_lists(lists)
    assert _rows(ptr, idx) == lists and idx.dtype == np.int64
    assert csr.from_lists([[], []])[0].tolist() == [0, 0, 0]
    p2, i2 = csr.take(ptr, idx, np.array([3, 0, 0, 1]))
    assert _rows(p2, i2) == [[0, 0, 4], [3, 1], [3, 1], []]
    p3, i3 = csr.take(ptr, idx, np.array([1]))
    assert p3.tolist() == [0, 0] and i3.tolist() == []
    assert csr.indptr_of([2, 0, 3]).tolist() == [0, 2, 2, 5]


def test_problem_names_what_is_wrong():
    ptr, idx = csr.from_lists([[0, 2], [], [1]])
    assert csr.problem(ptr, idx, 3, 3) is None
    assert "index pointer" in csr.problem(ptr[:-1], idx, 3, 3)
    assert "index pointer" in csr.problem(ptr[::-1].copy(), idx, 3, 3)
    assert "outside [0, 2)" in csr.problem(ptr, idx, 3, 2, names=("p.npy", "i.npy"))
    assert csr.problem(ptr.astype(np.float64), idx, 3, 3).startswith("indptr is not an integer vector")
