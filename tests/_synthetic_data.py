"""A small generated dataset with a planted context effect, for fast end-to-end tests."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from ctxrec.data import Dataset

MORNING_WORDS = ["coffee", "news", "sunrise", "breakfast", "jogging"]
NIGHT_WORDS = ["jazz", "thriller", "stars", "cocktail", "midnight"]


def planted_dataset(n_users: int = 120, n_items: int = 200, per_user: int = 30, seed: int = 0) -> Dataset:
    """Items 0..n/2-1 are 'morning' items, the rest 'night' items; every user picks morning
    items in the morning (7-10h) and night items at night (21-24h); a third of the users
    are mostly-morning, a third mostly-night."""
    rng = np.random.default_rng(seed)
    half = n_items // 2
    rows = []
    base = pd.Timestamp("2024-03-04T00:00:00Z").value // 10**9
    for u in range(n_users):
        p_morning = [0.8, 0.2, 0.5][u % 3]
        for _ in range(per_user):
            morning = rng.random() < p_morning
            item = rng.integers(0, half) if morning else rng.integers(half, n_items)
            hour = rng.integers(7, 10) if morning else rng.integers(21, 24)
            day = rng.integers(0, 28)
            rows.append((f"u{u}", f"i{item}", base + day * 86400 + hour * 3600 + rng.integers(0, 3600),
                         "mobile" if morning else "tv"))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "device"])
    words = []
    for i in range(n_items):
        pool = MORNING_WORDS if i < half else NIGHT_WORDS
        words.append(" ".join(rng.choice(pool, 3)) + f" item number {i}")
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": words,
                          "kind": ["morning" if i < half else "night" for i in range(n_items)]})
    return Dataset.from_frames(inter, timestamp_col="ts", context_cols=["device"], items=items,
                               item_text_cols=["title"], item_attr_cols=["kind"], name="planted")


class HashingEncoder:
    """A deterministic bag-of-words text encoder (a stand-in for the ONNX model in fast tests)."""

    dim = 64
    provider = "test-hashing"
    path = None

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for r, t in enumerate(texts):
            for w in str(t).lower().split():
                h = int(hashlib.sha1(w.encode()).hexdigest(), 16)
                out[r, h % self.dim] += 1.0 if (h >> 8) % 2 else -1.0
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return np.where(norm > 0, out / np.maximum(norm, 1e-12), 0).astype(np.float32)


def save_planted_model(path: Any, *, n_users: int = 40, n_items: int = 100, per_user: int = 15, epochs: int = 2) -> Any:
    """A small time-aware Recommender fitted on :func:`planted_dataset` and saved at ``path``
    (what the HTTP tests serve); returns ``path``."""
    from ctxrec.context import ContextSpec
    from ctxrec.model import ContextFM
    from ctxrec.recommender import Recommender
    ds = planted_dataset(n_users=n_users, n_items=n_items, per_user=per_user)
    Recommender(ContextSpec(time=["timestamp"]), model=ContextFM(n_factors=8, epochs=epochs), encoder=None) \
        .fit(ds).save(path)
    return path
