"""The id rule every module shares: which int64 id a raw id (an int, a digit string as ids
arrive over HTTP and the CLI, or an integral float as they arrive from numeric columns)
stands for in an integer catalog. ``Dataset``, ``Engine`` and ``Recommender`` all use it."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["int_id"]

_INT64 = 2 ** 63


def int_id(v: Any) -> int | None:
    """The int64 id an int, a decimal digit string (``"174"``, ``"-3"``) or an integral float
    (``174.0``) stands for.

    Parameters
    ----------
    v : object
        A candidate id: int, str, float or anything else.

    Returns
    -------
    int or None
        The id; None when ``v`` stands for none (a bool, ``"--5"``, ``"²"``, ``"1e3"``,
        ``174.5``, NaN, out of int64).
    """
    if isinstance(v, (float, np.floating)) and not isinstance(v, bool):
        if not np.isfinite(v) or not float(v).is_integer():
            return None
        v = int(v)
    if isinstance(v, str):
        body = v[1:] if v[:1] == "-" else v
        if not (body.isascii() and body.isdigit()) or len(body) > 19:
            return None
        v = int(v)
    elif isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        return None
    v = int(v)
    return v if -_INT64 <= v < _INT64 else None
