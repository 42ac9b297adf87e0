"""Embedding caches keyed by a hash of (model checksum, text).

* :class:`DiskCache` — persistent, memory-mapped: item texts are encoded once and reused
  across runs. A directory of append-only shards; each shard is ``shard-NNNNNN.npy``
  (float32 ``[m, d]``) plus ``shard-NNNNNN.keys`` (``m`` 32-byte SHA-256 digests), each
  written to a temporary name and renamed into place, so a crash never leaves a
  half-written shard visible. Shards are opened with ``np.load(mmap_mode="r")``.
* :class:`LRUCache` — per-process, bounded, for repeated request texts (common queries).

Keys include the model's checksum, so a changed model never returns stale vectors;
shards written for another model (another checksum) are simply never hit.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np


def text_key(model_sha256: str, text: str) -> bytes:
    """The cache key of a text: SHA-256 of the model checksum and the UTF-8 text.

    Parameters
    ----------
    model_sha256 : str
        The encoder's ONNX checksum.
    text : str

    Returns
    -------
    bytes
        32 bytes.
    """
    h = hashlib.sha256(model_sha256.encode("ascii"))
    h.update(b"\x00")
    h.update(text.encode("utf-8"))
    return h.digest()


class LRUCache:
    """A thread-safe bounded mapping text -> embedding row (float32 ``[d]``, read-only)."""

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize = {maxsize}: must be >= 0")
        self.maxsize = maxsize
        self._d: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> np.ndarray | None:
        """The cached row of ``text`` (counted as a hit or a miss).

        Parameters
        ----------
        text : str

        Returns
        -------
        float32 array [d] or None
            Read-only; None when not cached.
        """
        with self._lock:
            v = self._d.get(text)
            if v is None:
                self.misses += 1
                return None
            self._d.move_to_end(text)
            self.hits += 1
            return v

    def put(self, text: str, vec: np.ndarray) -> np.ndarray:
        """Store a read-only copy of ``vec`` and return it.

        Parameters
        ----------
        text : str
        vec : array-like [d]

        Returns
        -------
        float32 array [d]
            The read-only copy (not stored when ``maxsize`` is 0).
        """
        v = np.array(vec, dtype=np.float32, copy=True)
        v.setflags(write=False)
        if self.maxsize == 0:
            return v
        with self._lock:
            self._d[text] = v
            self._d.move_to_end(text)
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)
        return v

    def clear(self) -> None:
        """Drop every entry (the hit and miss counts stay)."""
        with self._lock:
            self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


class DiskCache:
    """Persistent embedding cache under ``root`` (``~`` expanded) for vectors of dimension ``dim``.

    ``get_many(keys)`` returns ``(found_mask, rows)``; ``put_many(keys, rows)`` appends a
    shard with the keys not already present. Safe for one writer per directory at a
    time; readers see only complete shards.

    Parameters
    ----------
    root : str or path-like
        The cache directory.
    dim : int
        Vector width.
    """

    def __init__(self, root: str | os.PathLike, dim: int) -> None:
        self.root = Path(os.path.expanduser(os.fspath(root)))
        self.dim = int(dim)
        self.root.mkdir(parents=True, exist_ok=True)
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """(Re)read the shard list from disk."""
        with self._lock:
            for kpath in sorted(self.root.glob("shard-*.keys")):
                sid = int(kpath.stem.split("-")[1])
                if sid in self._shards:
                    continue
                epath = kpath.with_suffix(".npy")
                if not epath.is_file():
                    continue
                emb = np.load(epath, mmap_mode="r")
                raw = kpath.read_bytes()
                if emb.ndim != 2 or emb.shape[1] != self.dim or len(raw) != 32 * emb.shape[0]:
                    raise ValueError(f"{epath}: shape {emb.shape} / {len(raw)} key bytes do not match dim {self.dim}")
                self._shards[sid] = emb
                for r in range(emb.shape[0]):
                    self._index.setdefault(raw[32 * r:32 * r + 32], (sid, r))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def get_many(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Look keys up.

        Parameters
        ----------
        keys : list of bytes [n]
            :func:`text_key` keys.

        Returns
        -------
        found : bool array [n]
        rows : float32 array [n, dim]
            Rows of misses are zero.
        """
        found = np.zeros(len(keys), dtype=bool)
        rows = np.zeros((len(keys), self.dim), dtype=np.float32)
        for i, k in enumerate(keys):
            loc = self._index.get(k)
            if loc is not None:
                rows[i] = self._shards[loc[0]][loc[1]]
                found[i] = True
        return found, rows

    def put_many(self, keys: list[bytes], rows: np.ndarray) -> int:
        """Persist rows whose keys are new.

        Parameters
        ----------
        keys : list of bytes [n]
        rows : float32 array [n, dim]

        Returns
        -------
        int
            How many rows were written.

        Raises
        ------
        ValueError
            ``rows`` is not of shape ``(n, dim)``.
        """
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape != (len(keys), self.dim):
            raise ValueError(f"rows shape {rows.shape}: expected ({len(keys)}, {self.dim})")
        with self._lock:
            new = {}
            for k, r in zip(keys, rows):
                if k not in self._index and k not in new:
                    new[k] = r
            if not new:
                return 0
            sid = max(self._shards, default=-1) + 1
            while (self.root / f"shard-{sid:06d}.keys").exists():
                sid += 1
            base = self.root / f"shard-{sid:06d}"
            emb = np.stack(list(new.values()))
            tmp_e = base.with_name(base.name + ".npy.tmp")
            tmp_k = base.with_name(base.name + ".keys.tmp")
            with open(tmp_e, "wb") as f:
                np.save(f, emb)
                f.flush()
                os.fsync(f.fileno())
            with open(tmp_k, "wb") as f:
                f.write(b"".join(new.keys()))
                f.flush()
                os.fsync(f.fileno())
            # the .npy first: a shard is visible only once its .keys exists
            os.replace(tmp_e, base.with_suffix(".npy"))
            os.replace(tmp_k, base.with_suffix(".keys"))
            self._shards[sid] = np.load(base.with_suffix(".npy"), mmap_mode="r")
            for r, k in enumerate(new):
                self._index[k] = (sid, r)
            return len(new)
