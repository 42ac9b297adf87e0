"""Context features: one declared spec for training rows and live requests.

A :class:`ContextSpec` lists the context fields of a recommender:

* :class:`TimeField` — a timestamp bucketed into parts (hour, daypart, weekday, weekend,
  month, season) in a stated timezone;
* :class:`CategoricalField` — values from a vocabulary learned by :meth:`ContextSpec.fit`;
* :class:`NumericField` — a number bucketed by quantile edges learned at fit (or given);
* :class:`TextField` — free text, handed to a text encoder (``encode(texts) -> float32
  [n, d]``) only when one is given, so a purely categorical context costs no encoding.

``spec.fit(training rows)`` then ``spec.transform(rows)`` where rows are a
:class:`~ctxrec.data.Dataset`, a pandas DataFrame, a pyarrow Table, a list of dicts or
one dict (a live request such as ``{"time": "2024-05-01T18:30", "device": "mobile",
"query": "something light"}``). Every input shape goes through the same code, so a
training row and the equivalent request give identical features.

Every categorical output *slot* (one per categorical/numeric field, one per time part)
has index 0 reserved for **unknown**: a missing value, or a value not seen in training.
Invalid values (a timestamp that does not parse, a non-numeric string for a numeric
field, a dict/list for a categorical field) raise :class:`ContextError` naming the field
and the value.
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import zoneinfo
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Protocol, Sequence, Union

import numpy as np
import pandas as pd

__all__ = [
    "ContextError",
    "TimeField",
    "CategoricalField",
    "NumericField",
    "TextField",
    "ContextSpec",
    "ContextFeatures",
    "TextEncoderLike",
    "TIME_PARTS",
    "UNKNOWN",
    "check_text",
]

UNKNOWN = "<unknown>"
_SMALL = 32  # up to this many request dicts go through the pure-Python path

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december")
_DAYPART_OF_HOUR = (["night"] * 5 + ["morning"] * 7 + ["afternoon"] * 5 + ["evening"] * 5 + ["night"] * 2)
_SEASON_OF_MONTH = ("winter", "winter", "spring", "spring", "spring", "summer", "summer", "summer",
                    "autumn", "autumn", "autumn", "winter")

#: The parts a TimeField can produce and their fixed vocabularies (index 0 = unknown is added).
TIME_PARTS: dict[str, tuple[str, ...]] = {
    "hour": tuple(str(h) for h in range(24)),
    "daypart": ("night", "morning", "afternoon", "evening"),  # [22,5) [5,12) [12,17) [17,22)
    "weekday": _WEEKDAYS,
    "weekend": ("workday", "weekend"),
    "month": _MONTHS,
    "season": ("winter", "spring", "summer", "autumn"),  # meteorological, northern hemisphere
}


from ctxrec.errors import ContextError  # noqa: E402,F401  (re-exported)


class TextEncoderLike(Protocol):
    """What :meth:`ContextSpec.transform` needs from a text encoder."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:  # float32 [n, d]
        """Embed texts.

        Parameters
        ----------
        texts : sequence of str [n]
            Non-empty texts.

        Returns
        -------
        float32 array [n, d]
        """
        ...


# --------------------------------------------------------------------------------------
# Field declarations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeField:
    """A timestamp, bucketed into ``parts`` in timezone ``tz``.

    Accepted values: unix seconds (int/float, UTC instants), ISO-8601 strings, ``datetime``,
    ``pandas.Timestamp``, ``numpy.datetime64``. Values with an offset/timezone are
    converted to ``tz``; naive ones are read as wall-clock time in ``tz``. Missing
    (None/NaN/"") → every part unknown.

    Output slots are named ``"{name}.{part}"``.
    """

    name: str
    column: str | None = None
    parts: tuple[str, ...] = ("hour", "daypart", "weekday", "weekend", "month", "season")
    tz: str = "UTC"
    kind: str = field(default="time", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        for p in self.parts:
            if p not in TIME_PARTS:
                raise ContextError(f"field {self.name!r}: unknown time part {p!r} (choose from {list(TIME_PARTS)})")
        try:
            pd.Timestamp(0, unit="s", tz=self.tz)
        except Exception as e:
            raise ContextError(f"field {self.name!r}: unknown timezone {self.tz!r} ({e})") from None


@dataclass(frozen=True)
class CategoricalField:
    """A categorical value; vocabulary learned at fit.

    The vocabulary holds the values seen ``min_count`` times or more, at most ``max_values``
    of them, most frequent first. Values are compared as canonical strings: ``3``, ``3.0``
    and ``"3"`` are the same value; ``"unknown"`` is an ordinary value.
    """

    name: str
    column: str | None = None
    min_count: int = 1
    max_values: int | None = None
    kind: str = field(default="categorical", init=False)


@dataclass(frozen=True)
class NumericField:
    """A number, bucketed.

    ``bins`` quantile buckets learned at fit, or explicit ascending ``edges`` (bucket ``b``
    holds ``edges[b-1] <= x < edges[b]``; values below the first edge go to the first
    bucket, at or above the last edge to the last).

    Raises
    ------
    ContextError
        Edges not finite and strictly increasing, or ``bins < 1``.
    """

    name: str
    column: str | None = None
    bins: int = 10
    edges: tuple[float, ...] | None = None
    kind: str = field(default="numeric", init=False)

    def __post_init__(self) -> None:
        if self.edges is not None:
            e = tuple(float(x) for x in self.edges)
            if any(b <= a for a, b in zip(e, e[1:])) or not all(math.isfinite(x) for x in e):
                raise ContextError(f"field {self.name!r}: edges must be finite and strictly increasing, got {e}")
            object.__setattr__(self, "edges", e)
        elif self.bins < 1:
            raise ContextError(f"field {self.name!r}: bins must be >= 1, got {self.bins}")


@dataclass(frozen=True)
class TextField:
    """Free text (a search query, an answer); "" when missing. Encoded only with an encoder."""

    name: str
    column: str | None = None
    kind: str = field(default="text", init=False)


Field = Union[TimeField, CategoricalField, NumericField, TextField]
_KINDS = {"time": TimeField, "categorical": CategoricalField, "numeric": NumericField, "text": TextField}


def _col(f: Field) -> str:
    return f.column or f.name


# --------------------------------------------------------------------------------------
# Transformed features
# --------------------------------------------------------------------------------------


@dataclass
class ContextFeatures:
    """The features of ``n`` rows.

    Attributes
    ----------
    slots : list of str
        Names of the categorical slots, in column order of ``indices``.
    indices : int32 array [n, n_slots]
        Per-slot local index; 0 = unknown.
    offsets : int64 array [n_slots]
        Start of each slot in the spec's global feature space
        (``global_indices() = indices + offsets``, total size ``ContextSpec.n_features``).
    texts : dict[str, list of str]
        Free-text field name -> n texts ("" when missing).
    text_vectors : dict[str, float32 array [n, d]]
        Free-text field name -> embeddings; filled only when an encoder was given (rows
        with empty text are zero vectors).
    cardinalities : int64 array [n_slots]
        Number of local indices per slot (unknown included).
    """

    slots: list[str]
    indices: np.ndarray
    offsets: np.ndarray
    texts: dict[str, list[str]]
    text_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    cardinalities: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def n_features(self) -> int:
        """int: size of the global feature space (sum of the slot cardinalities)."""
        if self.cardinalities is None or len(self.cardinalities) == 0:
            return 0
        return int(self.offsets[-1] + self.cardinalities[-1])

    def global_indices(self) -> np.ndarray:
        """int64 [n, n_slots]: indices shifted into one global feature space."""
        return self.indices.astype(np.int64) + self.offsets[None, :]

    def slot(self, name: str) -> np.ndarray:
        """The local indices of one slot.

        Parameters
        ----------
        name : str
            A slot name (e.g. ``"device"``, ``"timestamp.hour"``).

        Returns
        -------
        int32 array [n]
            0 = unknown.

        Raises
        ------
        KeyError
            No such slot (the message lists the slots).
        """
        try:
            return self.indices[:, self.slots.index(name)]
        except ValueError:
            raise KeyError(f"no context slot {name!r} (slots: {self.slots})") from None

    def __getitem__(self, rows: Any) -> "ContextFeatures":
        rows = np.atleast_1d(np.arange(len(self))[rows])
        return ContextFeatures(self.slots, self.indices[rows], self.offsets,
                               {k: [v[r] for r in rows] for k, v in self.texts.items()},
                               {k: v[rows] for k, v in self.text_vectors.items()}, self.cardinalities)


# --------------------------------------------------------------------------------------
# Value normalisation (shared by every input shape)
# --------------------------------------------------------------------------------------


def check_text(value: str, field: str) -> str:
    """``value`` unchanged when it is valid Unicode text (UTF-8 encodable), else :class:`ContextError`.

    A lone surrogate (``"\\ud800"``, which JSON's ``\\u`` escapes can carry) is not text: a
    tokenizer, an encoder, SQLite and a JSON response would each fail on it later with an
    error that names nothing. Used for free-text values, categorical strings, context keys
    and (by the recommender) ids.

    Parameters
    ----------
    value : str
        The string to check.
    field : str
        The field named in the error (dotted path, e.g. ``"context.query"``, ``"user"``).

    Returns
    -------
    str
        ``value``.

    Raises
    ------
    ContextError
        ``value`` holds a lone surrogate (``field`` and ``value`` set).
    """
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ContextError(f"{field}: not valid Unicode text (a lone surrogate {value[e.start]!r} at "
                               f"position {e.start}) in {value[:80]!r}", field=field, value=value) from None
    return value


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, (float, np.floating)) and math.isnan(v):
        return True
    if isinstance(v, str) and v == "":
        return True
    if isinstance(v, np.datetime64) and np.isnat(v):
        return True
    return False


def _cat_str(name: str, v: Any) -> str | None:
    """Canonical string of a categorical value (None when missing)."""
    if _is_missing(v):
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str):
        return check_text(v, f"context.{name}")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        try:
            return str(v)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise ContextError(f"field {name!r}: invalid categorical value (an integer of {v.bit_length()} bits)",
                               field=f"context.{name}") from None
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ContextError(f"field {name!r}: invalid categorical value {v!r}", field=f"context.{name}", value=v)
        return str(int(v)) if v.is_integer() else repr(v)
    raise ContextError(f"field {name!r}: invalid categorical value {_short(v)} (type {type(v).__name__}); "
                       "expected a string or a number", field=f"context.{name}", value=v)


def _num(name: str, v: Any) -> float:
    """A numeric value as float (NaN when missing)."""
    if _is_missing(v):
        return math.nan
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ContextError(f"field {name!r}: invalid numeric value {_short(v)} (type {type(v).__name__})",
                           field=f"context.{name}", value=v)
    try:
        x = float(v)
    except (ValueError, OverflowError):
        raise ContextError(f"field {name!r}: invalid numeric value {_short(v)}", field=f"context.{name}",
                           value=v) from None
    if math.isinf(x):
        raise ContextError(f"field {name!r}: invalid numeric value {v!r} (infinite)", field=f"context.{name}",
                           value=v)
    return x


def _text(name: str, v: Any) -> str:
    if _is_missing(v):
        return ""
    if isinstance(v, np.str_):
        v = str(v)
    if not isinstance(v, str):
        raise ContextError(f"field {name!r}: free text must be a string, got {_short(v)} (type {type(v).__name__})",
                           field=f"context.{name}", value=v)
    return check_text(v, f"context.{name}")


def _short(v: Any, n: int = 80) -> str:
    """``repr(v)``, cut to ``n`` characters (a huge nested value must not make a huge message)."""
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


def _time_utc_ns(f: TimeField, v: Any) -> int | None:
    """A timestamp value as UTC nanoseconds (None when missing)."""
    if _is_missing(v):
        return None
    if isinstance(v, np.generic) and not isinstance(v, np.datetime64):
        v = v.item()
    try:
        if isinstance(v, bool):
            raise TypeError("bool")
        if isinstance(v, (int, float)):
            if not math.isfinite(v):
                raise ValueError("not finite")
            ts = pd.Timestamp(int(round(v * 1e9)), unit="ns", tz="UTC")
        elif isinstance(v, (str, _dt.datetime, _dt.date, pd.Timestamp, np.datetime64)):
            ts = pd.Timestamp(v)
            if ts is pd.NaT:
                return None
            ts = ts.tz_localize(f.tz, ambiguous=True, nonexistent="shift_forward") if ts.tzinfo is None \
                else ts.tz_convert("UTC")
        else:
            raise TypeError(type(v).__name__)
        return int(ts.tz_convert("UTC").value)  # inside: out-of-range times overflow here too
    except (ValueError, TypeError, OverflowError) as e:
        raise ContextError(f"field {f.name!r}: invalid timestamp {_short(v)} ({e}); times must lie within "
                           f"{pd.Timestamp.min.isoformat()} .. {pd.Timestamp.max.isoformat()} UTC",
                           field=f"context.{f.name}", value=v) from None


def _per_unique(values: np.ndarray, fn: Any) -> np.ndarray:
    """Object array ``[fn(v) for v in values]``, calling ``fn`` once per distinct hashable value."""
    n = len(values)
    try:
        codes, uniq = pd.factorize(values, use_na_sentinel=False)
    except TypeError:  # unhashable values (dicts, lists): go one by one
        out = np.empty(n, dtype=object)
        out[:] = [fn(v) for v in values]
        return out
    mapped = np.empty(len(uniq), dtype=object)
    mapped[:] = [fn(u) for u in uniq]
    return mapped[codes] if n else np.empty(0, dtype=object)


# --------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------


class ContextSpec:
    """The declared context fields; fit on training rows, transform rows and requests.

    Build with field objects, names, or both::

        spec = ContextSpec(time=["timestamp"], categorical=["device", "weather"],
                           numeric=[NumericField("temperature", bins=5)], text=["query"],
                           tz="Europe/Paris")
        spec.fit(train)                       # Dataset / DataFrame / list of dicts
        feats = spec.transform(train)         # ContextFeatures
        req = spec.transform({"timestamp": "2024-05-01T18:30", "device": "mobile",
                              "query": "something light"}, encoder=enc)

    Attributes
    ----------
    slots : list of str
        Categorical slot names (time parts expand to ``"{name}.{part}"``).
    vocabularies : dict[str, tuple of str]
        Slot -> value strings (after fit); value ``j`` has local index ``j + 1`` (0 = unknown).
    cardinalities : dict[str, int]
        Slot -> number of local indices including unknown (after fit).
    offsets : int64 array [n_slots]
        Start of each slot in the global feature space (after fit).
    n_features : int
        Total size of the global feature space (after fit).
    text_fields : list of str
        Names of free-text fields.
    """

    def __init__(self, fields: Sequence[Field] = (), *, time: Sequence[str | TimeField] = (),
                 categorical: Sequence[str | CategoricalField] = (), numeric: Sequence[str | NumericField] = (),
                 text: Sequence[str | TextField] = (), tz: str = "UTC") -> None:
        fl: list[Field] = list(fields)
        fl += [TimeField(x, tz=tz) if isinstance(x, str) else x for x in time]
        fl += [CategoricalField(x) if isinstance(x, str) else x for x in categorical]
        fl += [NumericField(x) if isinstance(x, str) else x for x in numeric]
        fl += [TextField(x) if isinstance(x, str) else x for x in text]
        names = [f.name for f in fl]
        for f in fl:
            if not isinstance(f, (TimeField, CategoricalField, NumericField, TextField)):
                raise ContextError(f"not a context field declaration: {f!r}")
            if names.count(f.name) > 1:
                raise ContextError(f"field {f.name!r} is declared twice")
        self.fields: list[Field] = fl
        self._vocab: dict[str, tuple[str, ...]] = {}
        self._edges: dict[str, tuple[float, ...]] = {}
        self._fitted = False
        self._cache: Any = None
        for f in fl:  # parts of time fields and explicit numeric edges are fixed up front
            if isinstance(f, TimeField):
                for p in f.parts:
                    self._vocab[f"{f.name}.{p}"] = TIME_PARTS[p]
            if isinstance(f, NumericField) and f.edges is not None:
                self._edges[f.name] = f.edges
                self._vocab[f.name] = _bucket_names(f.edges)

    def _prepared(self) -> tuple[list[str], np.ndarray, dict[str, dict[str, int]], dict[str, np.ndarray]]:
        """(slots, offsets, value -> local index per categorical slot, edges per numeric field), cached."""
        if self._cache is None:
            self._check_fitted()
            luts = {f.name: {v: j + 1 for j, v in enumerate(self._vocab[f.name])}
                    for f in self.fields if isinstance(f, CategoricalField)}
            edges = {k: np.asarray(v, dtype=np.float64) for k, v in self._edges.items()}
            self._cache = (self.slots, self.offsets, luts, edges)
            self._cards = np.array(list(self.cardinalities.values()), dtype=np.int64)
        return self._cache

    # ---- description ------------------------------------------------------------------
    @property
    def slots(self) -> list[str]:
        """list of str: the categorical slot names, time parts expanded to ``"{name}.{part}"``."""
        out: list[str] = []
        for f in self.fields:
            if isinstance(f, TimeField):
                out += [f"{f.name}.{p}" for p in f.parts]
            elif not isinstance(f, TextField):
                out.append(f.name)
        return out

    @property
    def text_fields(self) -> list[str]:
        """list of str: names of the free-text fields."""
        return [f.name for f in self.fields if isinstance(f, TextField)]

    @property
    def columns(self) -> list[str]:
        """list of str: the input columns / request keys the spec reads."""
        return [_col(f) for f in self.fields]

    @property
    def time_columns(self) -> list[str]:
        """list of str: the input columns / request keys of the time fields."""
        return [_col(f) for f in self.fields if isinstance(f, TimeField)]

    @property
    def vocabularies(self) -> dict[str, tuple[str, ...]]:
        """dict[str, tuple of str]: slot -> value strings, value ``j`` at local index ``j + 1`` (ContextError before fit)."""
        self._check_fitted()
        return {s: self._vocab[s] for s in self.slots}

    @property
    def cardinalities(self) -> dict[str, int]:
        """dict[str, int]: slot -> number of local indices, unknown (0) included (ContextError before fit)."""
        self._check_fitted()
        return {s: len(self._vocab[s]) + 1 for s in self.slots}

    @property
    def offsets(self) -> np.ndarray:
        """int64 array [n_slots]: start of each slot in the global feature space (after fit)."""
        card = list(self.cardinalities.values())
        return np.concatenate([[0], np.cumsum(card)[:-1]]).astype(np.int64) if card else np.zeros(0, np.int64)

    @property
    def n_features(self) -> int:
        """int: total size of the global feature space (after fit)."""
        return int(sum(self.cardinalities.values()))

    @property
    def is_fitted(self) -> bool:
        """bool: every slot has a vocabulary (fit, loaded, or nothing to learn)."""
        return self._fitted or all(s in self._vocab for s in self.slots)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            missing = [s for s in self.slots if s not in self._vocab]
            raise ContextError(f"ContextSpec is not fitted (no vocabulary for {missing}); call fit(rows) first")

    def __repr__(self) -> str:
        return f"ContextSpec({[f'{f.kind}:{f.name}' for f in self.fields]}, fitted={self.is_fitted})"

    # ---- input shapes -------------------------------------------------------------------
    def _columns_of(self, rows: Any, strict_columns: bool) -> tuple[int, dict[str, np.ndarray]]:
        """Number of rows and, per declared field, an array of the raw values."""
        from ctxrec.data import Dataset  # local: data imports nothing from here

        if isinstance(rows, Dataset):
            rows = rows.context_frame()
        try:
            import pyarrow as pa
            if isinstance(rows, pa.Table):
                rows = rows.to_pandas()
        except ImportError:  # pragma: no cover
            pass
        if isinstance(rows, Mapping):
            rows = [rows]
        if isinstance(rows, pd.DataFrame):
            n = len(rows)
            out = {}
            for f in self.fields:
                c = _col(f)
                if c in rows.columns:
                    out[f.name] = rows[c].to_numpy()
                elif strict_columns:
                    raise ContextError(f"field {f.name!r}: column {c!r} not in the rows (columns: {list(rows.columns)})")
                else:
                    out[f.name] = np.full(n, None, dtype=object)
            return n, out
        if isinstance(rows, (list, tuple)):
            for r, row in enumerate(rows):
                if not isinstance(row, Mapping):
                    raise ContextError(f"row {r}: expected a dict of context values, got {type(row).__name__}")
            n = len(rows)
            out = {}
            for f in self.fields:
                a = np.empty(n, dtype=object)
                a[:] = [row.get(_col(f)) for row in rows]
                out[f.name] = a
            return n, out
        raise ContextError(f"cannot read context rows from {type(rows).__name__}: give a Dataset, a DataFrame, "
                           "a pyarrow Table, a list of dicts or one dict")

    # ---- live requests ------------------------------------------------------------------
    def check_request(self, context: Any, *, ignore_unknown: bool = False,
                      also_known: Sequence[str] = ()) -> dict[str, Any]:
        """Validate the keys of one live request's context; its values are checked by :meth:`transform`.

        Parameters
        ----------
        context : mapping or None
            The request's context (None: empty).
        ignore_unknown : bool
            Let keys the spec does not read through (they are ignored by :meth:`transform`);
            False (the default): an unknown key is an error, so that a misspelt field
            (``"event_time"`` for ``"timestamp"``) or free text sent to a model without a text
            field is not silently dropped.
        also_known : sequence of str
            Keys the caller reads itself besides the spec's (e.g. ``"timestamp"``, the event
            time of a feedback event).

        Returns
        -------
        dict
            The context as a new dict (None -> ``{}``), unknown keys included when ignored.

        Raises
        ------
        ContextError
            ``context`` is not a mapping (field ``"context"``); a key is not a string or not
            valid Unicode; a key is unknown (field ``"context.<key>"``; the message lists the
            known keys).
        """
        if context is None:
            return {}
        if not isinstance(context, Mapping):
            raise ContextError(f"context must be a dict of field -> value, got {type(context).__name__} "
                               f"{_short(context)}", field="context", value=context)
        out = dict(context)
        known = self.columns
        for key in out:
            if not isinstance(key, str):
                raise ContextError(f"context: keys must be strings, got {type(key).__name__} {_short(key)}",
                                   field="context", value=key)
            check_text(key, "context")
            if not ignore_unknown and key not in known and key not in also_known:
                raise ContextError(f"context.{key}: unknown context field {key[:80]!r}; this model reads "
                                   f"{sorted(known)} (pass ignore_unknown=True to ignore other keys)",
                                   field=f"context.{key}", value=key)
        return out

    # ---- fit / transform ----------------------------------------------------------------
    def fit(self, rows: Any) -> "ContextSpec":
        """Learn categorical vocabularies and numeric quantile edges from training rows.

        Parameters
        ----------
        rows : Dataset, DataFrame, pyarrow Table, list of dicts or dict
            Training rows; every column a field reads must be present.

        Returns
        -------
        ContextSpec
            self.

        Raises
        ------
        ContextError
            A missing column, an invalid value, or a numeric field without values.
        """
        n, cols = self._columns_of(rows, strict_columns=True)
        for f in self.fields:
            vals = cols[f.name]
            if isinstance(f, CategoricalField):
                s = pd.Series(_per_unique(vals, lambda v, _n=f.name: _cat_str(_n, v)), dtype=object).dropna()
                counts = s.value_counts(sort=False)
                counts = counts[counts >= f.min_count]
                order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                if f.max_values is not None:
                    order = order[:f.max_values]
                self._vocab[f.name] = tuple(sorted(k for k, _ in order))
            elif isinstance(f, NumericField) and f.edges is None:
                x = np.asarray(_per_unique(vals, lambda v, _n=f.name: _num(_n, v)), dtype=np.float64)
                x = x[~np.isnan(x)]
                if len(x) == 0:
                    raise ContextError(f"field {f.name!r}: no numeric values to learn bucket edges from")
                qs = np.quantile(x, np.linspace(0, 1, f.bins + 1)[1:-1]) if f.bins > 1 else np.zeros(0)
                edges = tuple(float(e) for e in np.unique(qs))
                self._edges[f.name] = edges
                self._vocab[f.name] = _bucket_names(edges)
        self._fitted = True
        self._cache = None
        return self

    def fit_transform(self, rows: Any, encoder: TextEncoderLike | None = None) -> ContextFeatures:
        """:meth:`fit` on ``rows``, then :meth:`transform` them.

        Parameters
        ----------
        rows : Dataset, DataFrame, pyarrow Table, list of dicts or dict
        encoder : TextEncoderLike, optional
            Encodes the free-text fields.

        Returns
        -------
        ContextFeatures
        """
        return self.fit(rows).transform(rows, encoder=encoder)

    def transform(self, rows: Any, encoder: TextEncoderLike | None = None, *,
                  strict_columns: bool = False) -> ContextFeatures:
        """Features of ``rows`` (Dataset, DataFrame, pyarrow Table, list of dicts, or one dict).

        A column/key a field reads that is absent gives unknown for that field (with
        ``strict_columns`` an absent DataFrame column raises instead). Keys the spec does not
        declare are ignored here (training rows carry other columns); a live request's keys
        are checked by :meth:`check_request`.

        Parameters
        ----------
        rows : Dataset, DataFrame, pyarrow Table, list of dicts or dict
            The rows (one dict: one row).
        encoder : TextEncoderLike, optional
            With one the free-text fields are encoded (``encoder.encode(non-empty texts)``
            once per field); without one only ``texts`` is set.
        strict_columns : bool
            An absent DataFrame column is an error.

        Returns
        -------
        ContextFeatures
            ``n`` rows.

        Raises
        ------
        ContextError
            The spec is not fitted, the rows are of an unreadable type, a value is invalid
            (the field named), or an absent column with ``strict_columns``.
        """
        slots, offsets, luts, edges = self._prepared()
        if isinstance(rows, Mapping):
            rows = [rows]
        if isinstance(rows, (list, tuple)) and len(rows) <= _SMALL:
            feats = self._transform_small(rows, slots, offsets, luts, edges)
        else:
            feats = self._transform_columns(rows, strict_columns, slots, offsets, edges)
        if encoder is not None:
            for name, t in feats.texts.items():
                feats.text_vectors[name] = encode_texts(t, encoder)
        return feats

    def _transform_small(self, rows: Sequence[Any], slots: list[str], offsets: np.ndarray,
                         luts: dict[str, dict[str, int]], edges: dict[str, np.ndarray]) -> ContextFeatures:
        """Pure-Python path for a few request dicts (no pandas per call): same results."""
        for r, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ContextError(f"row {r}: expected a dict of context values, got {type(row).__name__}")
        idx = np.zeros((len(rows), len(slots)), dtype=np.int32)
        texts: dict[str, list[str]] = {}
        for r, row in enumerate(rows):
            j = 0
            for f in self.fields:
                v = row.get(_col(f))
                if isinstance(f, TimeField):
                    parts = _time_parts_one(f, v)
                    idx[r, j:j + len(parts)] = parts
                    j += len(parts)
                elif isinstance(f, CategoricalField):
                    c = _cat_str(f.name, v)
                    idx[r, j] = 0 if c is None else luts[f.name].get(c, 0)
                    j += 1
                elif isinstance(f, NumericField):
                    x = _num(f.name, v)
                    idx[r, j] = 0 if math.isnan(x) else int(np.searchsorted(edges[f.name], x, side="right")) + 1
                    j += 1
                else:
                    texts.setdefault(f.name, []).append(_text(f.name, v))
        for f in self.fields:
            if isinstance(f, TextField):
                texts.setdefault(f.name, [])
        return ContextFeatures(slots, idx, offsets, texts, cardinalities=self._cards)

    def _transform_columns(self, rows: Any, strict_columns: bool, slots: list[str], offsets: np.ndarray,
                           edges: dict[str, np.ndarray]) -> ContextFeatures:
        """Vectorised path (DataFrames, Datasets, Arrow tables, long lists of dicts)."""
        n, cols = self._columns_of(rows, strict_columns)
        idx = np.zeros((n, len(slots)), dtype=np.int32)
        texts: dict[str, list[str]] = {}
        j = 0
        for f in self.fields:
            vals = cols[f.name]
            if isinstance(f, TimeField):
                parts = _time_parts(f, vals)
                for p in f.parts:
                    idx[:, j] = parts[p]
                    j += 1
            elif isinstance(f, CategoricalField):
                strs = _per_unique(vals, lambda v, _n=f.name: _cat_str(_n, v))
                look = pd.Index(self._vocab[f.name], dtype=object)
                pos = look.get_indexer(pd.Index(strs, dtype=object)) if n else np.zeros(0, np.int64)
                idx[:, j] = pos + 1  # -1 (unseen or missing) -> 0 = unknown
                j += 1
            elif isinstance(f, NumericField):
                x = np.asarray(_per_unique(vals, lambda v, _n=f.name: _num(_n, v)), dtype=np.float64) if n \
                    else np.zeros(0)
                b = np.searchsorted(edges[f.name], x, side="right") + 1
                idx[:, j] = np.where(np.isnan(x), 0, b)
                j += 1
            else:
                texts[f.name] = _per_unique(vals, lambda v, _n=f.name: _text(_n, v)).tolist()
        return ContextFeatures(slots, idx, offsets, texts, cardinalities=self._cards)

    # ---- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (declarations + learned vocabularies/edges).

        Returns
        -------
        dict
            ``{"format": "ctxrec.context_spec", "version": 1, "fields": [...],
            "vocabularies": {...}, "edges": {...}}``; :meth:`from_dict` reads it back.

        Raises
        ------
        ContextError
            The spec is not fitted.
        """
        self._check_fitted()
        return {
            "format": "ctxrec.context_spec", "version": 1,
            "fields": [{**{k: v for k, v in asdict(f).items()}, "kind": f.kind} for f in self.fields],
            "vocabularies": {k: list(v) for k, v in self._vocab.items()},
            "edges": {k: list(v) for k, v in self._edges.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ContextSpec":
        """A fitted spec from :meth:`to_dict`'s output.

        Parameters
        ----------
        d : mapping
            A version-1 ``ctxrec.context_spec`` description.

        Returns
        -------
        ContextSpec
            Fitted.

        Raises
        ------
        ContextError
            Another format or version, or an unknown field kind.
        """
        if d.get("format") != "ctxrec.context_spec" or d.get("version") != 1:
            raise ContextError(f"not a version-1 ctxrec context spec: format={d.get('format')!r} "
                               f"version={d.get('version')!r}")
        fields: list[Field] = []
        for fd in d["fields"]:
            fd = dict(fd)
            kind = fd.pop("kind")
            if kind not in _KINDS:
                raise ContextError(f"field {fd.get('name')!r}: unknown kind {kind!r}")
            for k in ("parts", "edges"):
                if fd.get(k) is not None:
                    fd[k] = tuple(fd[k])
            fields.append(_KINDS[kind](**fd))
        spec = cls(fields)
        spec._vocab.update({k: tuple(v) for k, v in d["vocabularies"].items()})
        spec._edges.update({k: tuple(float(x) for x in v) for k, v in d["edges"].items()})
        spec._fitted = True
        spec._cache = None
        return spec

    def to_json(self) -> str:
        """str: :meth:`to_dict` as JSON with sorted keys."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ContextSpec":
        """A fitted spec from :meth:`to_json`'s output.

        Parameters
        ----------
        s : str
            The JSON text.

        Returns
        -------
        ContextSpec
            Fitted (see :meth:`from_dict`).
        """
        return cls.from_dict(json.loads(s))


def _bucket_names(edges: Sequence[float]) -> tuple[str, ...]:
    e = list(edges)
    if not e:
        return ("all",)
    names = [f"<{e[0]:g}"] + [f"[{a:g},{b:g})" for a, b in zip(e, e[1:])] + [f">={e[-1]:g}"]
    return tuple(names)


def _time_parts(f: TimeField, vals: np.ndarray) -> dict[str, np.ndarray]:
    """Local part indices (0 = unknown) of each value, per part."""
    n = len(vals)
    if n and vals.dtype.kind in "iu":
        ns = vals.astype(np.int64) * 1_000_000_000
        ok = np.ones(n, dtype=bool)
    elif n and vals.dtype.kind == "M":
        ser = pd.Series(vals)
        ser = ser.dt.tz_localize(f.tz, ambiguous=np.ones(n, dtype=bool), nonexistent="shift_forward") \
            if ser.dt.tz is None else ser
        ok = ser.notna().to_numpy()
        ns = np.where(ok, ser.dt.tz_convert("UTC").dt.as_unit("ns").array.asi8 if len(ser) else 0, 0)
    else:
        conv = _per_unique(vals, lambda v: _time_utc_ns(f, v))
        ok = np.fromiter((c is not None for c in conv), dtype=bool, count=n)
        ns = np.fromiter((0 if c is None else c for c in conv), dtype=np.int64, count=n)
    local = pd.DatetimeIndex(pd.to_datetime(ns, unit="ns", utc=True)).tz_convert(f.tz)
    hour = np.asarray(local.hour, dtype=np.int64)
    wd = np.asarray(local.day_of_week, dtype=np.int64)
    month = np.asarray(local.month, dtype=np.int64)
    daypart_idx = np.array([TIME_PARTS["daypart"].index(d) for d in _DAYPART_OF_HOUR])
    season_idx = np.array([TIME_PARTS["season"].index(s) for s in _SEASON_OF_MONTH])
    out = {
        "hour": hour + 1,
        "daypart": daypart_idx[hour] + 1,
        "weekday": wd + 1,
        "weekend": (wd >= 5).astype(np.int64) + 1,
        "month": month,  # 1..12 == index of january..december + 1
        "season": season_idx[month - 1] + 1,
    }
    return {p: np.where(ok, v, 0).astype(np.int32) for p, v in out.items()}


_DAYPART_IDX = [TIME_PARTS["daypart"].index(d) + 1 for d in _DAYPART_OF_HOUR]
_SEASON_IDX = [TIME_PARTS["season"].index(x) + 1 for x in _SEASON_OF_MONTH]


@functools.lru_cache(maxsize=64)
def _zone(tz: str) -> Any:
    return zoneinfo.ZoneInfo(tz) if tz.upper() != "UTC" else _dt.timezone.utc


def _time_parts_one(f: TimeField, v: Any) -> list[int]:
    """Local part indices (0 = unknown) of one value, in ``f.parts`` order (matches _time_parts)."""
    ns = _time_utc_ns(f, v)
    if ns is None:
        return [0] * len(f.parts)
    local = _dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=_zone(f.tz))
    wd = local.weekday()
    vals = {"hour": local.hour + 1, "daypart": _DAYPART_IDX[local.hour], "weekday": wd + 1,
            "weekend": 2 if wd >= 5 else 1, "month": local.month, "season": _SEASON_IDX[local.month - 1]}
    return [vals[p] for p in f.parts]


def encode_texts(texts: Sequence[str], encoder: TextEncoderLike) -> np.ndarray:
    """``encoder.encode`` of the non-empty texts, zero rows for empty ones.

    Distinct texts are encoded once each.

    Parameters
    ----------
    texts : sequence of str [n]
    encoder : TextEncoderLike

    Returns
    -------
    float32 array [n, d]

    Raises
    ------
    ContextError
        The encoder returned another number of rows or not a 2-D array.
    """
    uniq, inv = np.unique(np.asarray(list(texts), dtype=object).astype(str), return_inverse=True) if len(texts) \
        else (np.zeros(0, dtype=str), np.zeros(0, dtype=np.int64))
    nonempty = [u for u in uniq if u]
    if nonempty:
        vecs = np.asarray(encoder.encode(list(nonempty)), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(nonempty):
            raise ContextError(f"encoder.encode returned shape {vecs.shape} for {len(nonempty)} texts; "
                               "expected float32 [n, d]")
        d = vecs.shape[1]
    else:
        d = int(getattr(encoder, "dim", 0) or np.asarray(encoder.encode(["."]), dtype=np.float32).shape[1])
        vecs = np.zeros((0, d), dtype=np.float32)
    table = np.zeros((len(uniq), d), dtype=np.float32)
    table[[i for i, u in enumerate(uniq) if u]] = vecs
    return table[inv.reshape(-1)] if len(texts) else np.zeros((0, d), dtype=np.float32)
