"""Where each feature's parameters sit in ContextFM's tables: one value object, :class:`Layout`."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Layout:
    """The row layout of :class:`~ctxrec.model.ContextFM`'s factor tables and of its text inputs.

    Every offset is derived from the sizes below, so a layout cannot disagree with itself.
    Rows of ``V_`` / ``w_`` / ``T_``, in this order: items | item attributes | context fields
    (one block of ``cardinality`` rows per field) | user attributes | history items (one row
    per item, with ``user_history``) | users. Rows of ``P_`` / ``a_`` (text projections):
    item text | user text | request text dimensions.

    Parameters
    ----------
    n_items : int
        Items with an id row.
    n_item_attrs : int
        Item attribute values (rows).
    context_cardinalities : tuple of int
        Rows per context field.
    n_user_attrs : int
        User attribute values (rows).
    user_history : bool
        Whether a user is also represented by their history items (a block of ``n_items``
        rows).
    n_users : int
        Users with an id row (grows with :meth:`with_users`).
    text_dims : tuple of int
        Widths of the item, user and request text inputs (0 = none).
    """

    n_items: int
    n_item_attrs: int
    context_cardinalities: tuple[int, ...]
    n_user_attrs: int
    user_history: bool
    n_users: int
    text_dims: tuple[int, int, int]
    #: int64 [n_fields]: first row of each context field
    ctx_off: np.ndarray = field(init=False, repr=False, compare=False)
    #: int64 [4]: text dimension offsets (item, user, request starts, and the end)
    text_off: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cards = tuple(int(c) for c in self.context_cardinalities)
        dims = tuple(int(d) for d in self.text_dims)
        for name in ("n_items", "n_item_attrs", "n_user_attrs", "n_users"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"Layout.{name}={v!r}: expected an integer >= 0")
            object.__setattr__(self, name, int(v))
        if any(c < 0 for c in cards) or len(dims) != 3 or any(d < 0 for d in dims):
            raise ValueError(f"Layout: context_cardinalities={cards}, text_dims={dims}: expected sizes >= 0 "
                             "(three text widths)")
        object.__setattr__(self, "context_cardinalities", cards)
        object.__setattr__(self, "text_dims", dims)
        object.__setattr__(self, "user_history", bool(self.user_history))
        first = self.n_items + self.n_item_attrs
        ctx = np.cumsum((first,) + cards[:-1], dtype=np.int64) if cards else np.zeros(0, np.int64)
        object.__setattr__(self, "ctx_off", ctx)
        object.__setattr__(self, "text_off", np.cumsum((0,) + dims, dtype=np.int64))

    # ------------------------------------------------------------------ row blocks --
    @property
    def item_off(self) -> int:
        """First item row (items come first: 0)."""
        return 0

    @property
    def iattr_off(self) -> int:
        """First item attribute row."""
        return self.n_items

    @property
    def uattr_off(self) -> int:
        """First user attribute row (after the context fields)."""
        return self.n_items + self.n_item_attrs + sum(self.context_cardinalities)

    @property
    def hist_off(self) -> int:
        """First history item row; -1 without ``user_history``."""
        return self.uattr_off + self.n_user_attrs if self.user_history else -1

    @property
    def user_off(self) -> int:
        """First user row (users come last, so a new user is one more row at the end)."""
        return self.uattr_off + self.n_user_attrs + (self.n_items if self.user_history else 0)

    @property
    def n_rows(self) -> int:
        """Rows of the factor tables."""
        return self.user_off + self.n_users

    @property
    def n_text(self) -> int:
        """Rows of the text projection tables (all text widths together)."""
        return int(self.text_off[-1])

    def field_rows(self) -> dict[str, tuple[int, int]]:
        """Row range ``[lo, hi)`` of each field.

        Returns
        -------
        dict
            ``item``, ``item_attrs``, ``context``, ``user_attrs``, ``history`` (empty without
            ``user_history``) and ``user`` -> (lo, hi).
        """
        ctx_lo = self.n_items + self.n_item_attrs
        hist_lo = self.uattr_off + self.n_user_attrs
        return {"item": (0, self.n_items), "item_attrs": (self.n_items, ctx_lo), "context": (ctx_lo, self.uattr_off),
                "user_attrs": (self.uattr_off, hist_lo), "history": (hist_lo, self.user_off),
                "user": (self.user_off, self.n_rows)}

    def with_users(self, n_users: int) -> "Layout":
        """The same layout with ``n_users`` user rows.

        Returns
        -------
        Layout
        """
        return replace(self, n_users=int(n_users))

    # ---------------------------------------------------------------- persistence --
    def to_meta(self) -> dict[str, Any]:
        """The sizes as JSON-able values (what a saved model records).

        Returns
        -------
        dict
        """
        return {"n_items": self.n_items, "n_item_attrs": self.n_item_attrs,
                "context_cardinalities": list(self.context_cardinalities), "n_user_attrs": self.n_user_attrs,
                "user_history": self.user_history, "n_users": self.n_users, "text_dims": list(self.text_dims)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Layout":
        """Inverse of :meth:`to_meta`.

        Returns
        -------
        Layout

        Raises
        ------
        ValueError
            A size is missing, negative or not an integer.
        """
        keys = ("n_items", "n_item_attrs", "context_cardinalities", "n_user_attrs", "user_history", "n_users",
                "text_dims")
        missing = [k for k in keys if k not in meta]
        if missing:
            raise ValueError(f"layout: missing {missing}")
        return cls(**{k: meta[k] for k in keys})
