"""Generated item tables and queries for benchmarks, demos and tests (no data files needed)."""
from __future__ import annotations

import numpy as np

__all__ = ["make_catalog"]


def make_catalog(n: int, kind: str = "clustered", dim: int = 64, text_dim: int = 32, n_queries: int = 1000,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A catalog of n items and n_queries queries, all float32.

    Parameters
    ----------
    n : int
        Items.
    kind : {"clustered", "normal"}
        ``"normal"``: i.i.d. standard-normal vectors (hard for HNSW); ``"clustered"``: like
        learned embeddings, max(16, n // 1000) clusters of varied size (Dirichlet(0.5)
        weights) with noise 0.35 around each center; queries drawn the same way.
    dim : int
        Item vector width.
    text_dim : int
        Text embedding width.
    n_queries : int
        Queries.
    seed : int

    Returns
    -------
    dict[str, float32 array]
        ``V`` [n, dim] item vectors, ``bias`` [n], ``T`` [n, text_dim] unit text embeddings,
        ``Q`` [n_queries, dim] queries and ``TQ`` [n_queries, text_dim] unit text queries.
    """
    if n < 1 or dim < 1:
        raise ValueError(f"n and dim must be >= 1, got n={n}, dim={dim}")
    rng = np.random.default_rng(seed)

    def unit(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)

    if kind == "normal":
        V = rng.standard_normal((n, dim), dtype=np.float32)
        Q = rng.standard_normal((n_queries, dim), dtype=np.float32)
    elif kind == "clustered":
        n_clusters = max(16, n // 1000)
        centers = rng.standard_normal((n_clusters, dim), dtype=np.float32)
        weights = rng.dirichlet(np.full(n_clusters, 0.5))
        V = centers[rng.choice(n_clusters, n, p=weights)] + 0.35 * rng.standard_normal((n, dim), dtype=np.float32)
        Q = centers[rng.choice(n_clusters, n_queries, p=weights)] + 0.35 * rng.standard_normal(
            (n_queries, dim), dtype=np.float32)
    else:
        raise ValueError(f"kind must be 'normal' or 'clustered', got {kind!r}")
    bias = (0.5 * rng.standard_normal(n)).astype(np.float32)
    return dict(V=np.ascontiguousarray(V), bias=bias, T=unit(rng.standard_normal((n, text_dim), dtype=np.float32)),
                Q=np.ascontiguousarray(Q), TQ=unit(rng.standard_normal((n_queries, text_dim), dtype=np.float32)))
