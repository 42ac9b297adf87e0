"""Thin adapters from ctxrec's Dataset / ContextSpec to ContextFM's plain-array inputs."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ctxrec.data import stack_attrs
from ctxrec.model.fm import Interactions, SideInfo

__all__ = ["from_dataset", "context_cardinalities"]


def from_dataset(ds: Any, *, attrs: Sequence[str] = (), user_attrs: Sequence[str] = (),
                 context: Any = None, spec: Any = None, item_text: np.ndarray | None = None,
                 user_text: np.ndarray | None = None, context_text: np.ndarray | None = None,
                 label: str = "auto") -> tuple[Interactions, SideInfo]:
    """(Interactions, SideInfo) for a :class:`ctxrec.data.Dataset`.

    attrs / user_attrs: names of ``ds.item_attrs`` / ``ds.user_attrs`` to use as features.
    context: a :class:`ctxrec.context.ContextFeatures` for the rows of ``ds`` (from
        ``ContextSpec.transform(ds)``), or None. Slot index 0 (unknown) is a real value.
    spec: the fitted ContextSpec, for the slot cardinalities (without it the last slot's
        cardinality is taken from the largest index seen).
    item_text / user_text: float32 [n_items, d] / [n_users, d] embeddings (e.g. from
        ``TextEncoder.encode(ds.item_text)``); rows of zeros for "no text".
    context_text: float32 [n, d_q] request text embeddings per row.
    label: "auto" (``ds.label`` if present, else ``ds.rating``, else None), "label",
        "rating" or "none".

    Returns
    -------
    (Interactions, SideInfo)
        One row per interaction of ``ds``; its catalog (sizes, attributes, text, context
        cardinalities).
    """
    n = len(ds.users)
    ctx = None
    cards: tuple[int, ...] = ()
    if context is not None:
        if len(context) != n:
            raise ValueError(f"context: {len(context)} rows, expected {n} (one per interaction)")
        ctx = np.asarray(context.indices, np.int64)
        cards = context_cardinalities(spec) if spec is not None else _cards_of(context)
        if len(cards) != ctx.shape[1]:
            raise ValueError(f"context: {ctx.shape[1]} slots, spec has {len(cards)}")
    if label == "auto":
        y = ds.label if ds.label is not None else ds.rating
    elif label == "label":
        y = ds.label
    elif label == "rating":
        y = ds.rating
    elif label == "none":
        y = None
    else:
        raise ValueError(f"label={label!r}: expected 'auto', 'label', 'rating' or 'none'")
    X = Interactions(ds.users.astype(np.int64), ds.items.astype(np.int64), ctx, context_text,
                     None if y is None else np.asarray(y, np.float64),
                     None if ds.timestamp is None else np.asarray(ds.timestamp, np.int64))
    side = SideInfo(
        ds.n_users, ds.n_items, cards,
        item_attrs=stack_attrs(ds.item_attrs, attrs)[:4] if attrs else None,
        user_attrs=stack_attrs(ds.user_attrs, user_attrs)[:4] if user_attrs else None,
        item_text=item_text, user_text=user_text,
        context_text_dim=0 if context_text is None else int(np.asarray(context_text).shape[1]),
    )
    return X, side


def _cards_of(context: Any) -> tuple[int, ...]:
    """Cardinality per slot from the offsets of ContextFeatures (last slot: max seen + 1,
    unless a ``cardinalities`` mapping is attached)."""
    off = np.asarray(context.offsets, np.int64)
    cards = list(np.diff(off))
    if hasattr(context, "n_features"):
        cards.append(int(context.n_features) - int(off[-1]))
    else:
        cards.append(int(np.asarray(context.indices)[:, -1].max()) + 1 if len(context) else 1)
    return tuple(int(c) for c in cards)


def context_cardinalities(spec: Any) -> tuple[int, ...]:
    """The slot cardinalities of a fitted :class:`ctxrec.context.ContextSpec`.

    Returns
    -------
    tuple of int
        One per context slot, its unknown bucket included.
    """
    return tuple(int(c) for c in spec.cardinalities.values())
