"""ctxrec.model: ContextFM, the context-aware, text-aware factorization model (numba)."""
from __future__ import annotations

from ctxrec.model.fm import ContextFM, Interactions, QueryBatch, ServingTables, SideInfo
from ctxrec.model.warmup import warmup

__all__ = ["ContextFM", "Interactions", "SideInfo", "ServingTables", "QueryBatch", "warmup"]
