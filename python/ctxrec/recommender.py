"""Recommender: the context spec, the text encoder, the ContextFM model and the serving
engine as one object with a small scikit-learn-like API.

    rec = Recommender(ContextSpec(time=["timestamp"], text=["query"])).fit(dataset)
    rec.recommend(196, context={"timestamp": "2024-05-01T22:30", "query": "a funny animated movie"}, k=10)
    rec.feedback(196, 1234, context={...})          # online update of that user's vector
    rec.save("model/"); rec = Recommender.load("model/")

Scores. For a (user, context, request text) the model's score of item ``i`` is
``query · item_vecs[i] + item_bias[i] + const`` (ContextFM's serving form; with three-way
factors, query and item_vecs carry the user x item x context term as extra columns); the engine
retrieves by it with HNSW (or exactly, for small catalogs) and its C++ kernel adds the
text-match term ``text_match_weight · cos(request text, item text)``, so a free-text
request moves the ranking even when the model never saw request text in training.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ctxrec import csr
from ctxrec._io import CorruptArtifactError, MetaField, atomic_dir, jsonable, load_array, read_manifest
from ctxrec.context import ContextSpec, check_text, encode_texts
from ctxrec.data import Dataset
from ctxrec.data import scalar_str
from ctxrec import explore as _explore
from ctxrec.engine import Engine, check_rerank_options
from ctxrec.errors import ContextError, CtxrecError, InputError, NotFittedError, UnknownIdError
from ctxrec.ids import int_id
from ctxrec.events import EventLog, default_log_path
from ctxrec.evaluate import EvaluationReport, Factors, evaluate_ranking
from ctxrec.model import ContextFM, Interactions, SideInfo
from ctxrec.model.adapters import from_dataset

__all__ = ["Recommender", "Recommendation", "MAX_ID_LENGTH", "MAX_UNKNOWN_IDS"]

log = logging.getLogger("ctxrec.recommender")

FORMAT = "ctxrec.recommender"
VERSION = 2  # 2: live catalog (added items' rows and texts), item attribute vocabularies; 1 still loads

#: The longest id (characters) ``feedback`` accepts for a new user.
MAX_ID_LENGTH = 256
#: How many unknown ``exclude``/``allow`` ids a result lists (``Recommendation.unknown_ids``); all are counted.
MAX_UNKNOWN_IDS = 100

#: What a saved recommender's ``meta`` must hold before its parts are read (:meth:`Recommender.load`).
META_SCHEMA = {
    "params": MetaField(dict, allow_unknown=False, fields={
        "item_text": MetaField(bool), "user_text": MetaField(bool),
        "text_match_weight": MetaField((float, str)), "engine_params": MetaField(dict, allow_none=True),
        "fold_in_history": MetaField(int, min=0, max=1 << 20),
        "ignore_unknown_context": MetaField(bool, required=False),
        "max_new_users": MetaField(int, min=0, allow_none=True, required=False)}),
    "text_match_weight_": MetaField(float),
    "has_encoder": MetaField(bool),
    "encoder_variant": MetaField(str, max=64, required=False),
    "item_attrs": MetaField(dict, allow_none=True, required=False),
    "training_source": MetaField((str, dict), allow_none=True, required=False),
    "event_log": MetaField(dict, allow_none=True, required=False, fields={
        "log_id": MetaField(str, max=256), "position": MetaField(int, min=0)}),
}
_INT64 = 2 ** 63


@dataclass
class Recommendation:
    """The answer to one request: original item ids and scores, best first.

    cold_start is True when the user was unknown: the ranking then comes from the
    context, the request text and item popularity only.

    unknown_ids reports the ``exclude`` / ``allow`` ids that are not in the catalog now
    (unknown or removed; they were ignored): ``{"exclude": [...], "allow": [...],
    "count": {"exclude": n, "allow": m}}`` with only the non-empty lists, each cut to
    :data:`MAX_UNKNOWN_IDS` ids (``count`` has them all); ``{}`` when every id was known.
    ``to_dict`` carries it as ``"unknown_ids"`` when it is not empty.

    rerank holds, per item of a re-ranked answer (``diversity`` / ``calibrate`` / ``exposure``),
    the terms its pick was decided by: ``relevance`` (its score rescaled, best candidate = 1,
    k-th = 0), ``similarity`` (its largest cosine to the items before it), ``kl`` (the list's
    calibration KL once it was added) and ``exposure`` (its exposure penalty, 0..1); empty
    otherwise.

    explore holds, per item of an exploring answer (``explore="thompson"`` / ``"ucb"``), what
    exploration added to the score it was ranked by (score units: the Thompson draw's shift
    ``delta . v_i``, or the UCB bonus); ``scores`` stay the model's. Empty otherwise.
    """

    user: Any
    item_ids: list[Any]
    scores: list[float]
    cold_start: bool
    context: dict[str, Any] = field(default_factory=dict)
    unknown_ids: dict[str, Any] = field(default_factory=dict)
    rerank: list[dict[str, float]] = field(default_factory=list)
    explore: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The answer as plain JSON types.

        Returns
        -------
        dict
            ``user``, ``cold_start``, ``items`` (``[{"item_id", "score"}]``, best first; with
            ``diversity`` / ``calibrate`` / ``exposure`` each item also has ``"rerank"``: the terms
            its pick was decided by; with ``explore`` each item also has ``"explore"``, what
            exploration added to its ranking score) and ``unknown_ids`` when some ``exclude`` /
            ``allow`` ids were not in the catalog.
        """
        out = {"user": jsonable(self.user), "cold_start": self.cold_start,
               "items": [{"item_id": jsonable(i), "score": float(s)} for i, s in zip(self.item_ids, self.scores)]}
        for it, t in zip(out["items"], self.rerank):
            it["rerank"] = t
        for it, x in zip(out["items"], self.explore):
            it["explore"] = float(x)
        if self.unknown_ids:
            out["unknown_ids"] = self.unknown_ids
        return out


def _rerank_terms(terms: np.ndarray) -> list[dict[str, float]]:
    """``Recommendation.rerank`` of the engine's per-pick terms [m, 4]."""
    return [{"relevance": float(t[0]), "similarity": float(t[1]), "kl": float(t[2]), "exposure": float(t[3])}
            for t in np.asarray(terms, np.float64)]


def _unknown_report(**lists: list[Any]) -> dict[str, Any]:
    """``Recommendation.unknown_ids`` of the unknown ids per argument (empty lists left out)."""
    lists = {k: v for k, v in lists.items() if v}
    if not lists:
        return {}
    return {**{k: [jsonable(x) for x in v[:MAX_UNKNOWN_IDS]] for k, v in lists.items()},
            "count": {k: len(v) for k, v in lists.items()}}


def _short(v: Any, n: int = 80) -> str:
    """``repr(v)`` cut to ``n`` characters (a huge or nested argument must not make a huge message)."""
    try:
        r = repr(v)
    except Exception:  # noqa: BLE001  (a hostile __repr__)
        r = f"<{type(v).__name__}>"
    return r if len(r) <= n else r[:n] + "..."


def _check_id(v: Any, name: str, *, none_ok: bool = False) -> Any:
    """An id argument as a plain int or str (numpy scalars unwrapped); InputError naming ``name`` otherwise.

    An id is an int (not a bool) or a str of valid Unicode; None only where ``none_ok``
    (an anonymous request).
    """
    if v is None and none_ok:
        return None
    if isinstance(v, np.generic) and not isinstance(v, np.bool_):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise InputError(f"{name}: an id must be an int or a str, got {type(v).__name__} {_short(v)}",
                         field=name, value=v)
    if isinstance(v, str) and not v.isascii():
        try:
            check_text(v, name)
        except ContextError as e:  # an id is not context: the same message as an InputError
            raise InputError(str(e), field=name, value=v) from None
    return v


_int_id = int_id  # the one rule (ctxrec.ids)


def _at(e: ContextError, name: str, j: int) -> ContextError:
    """``e`` (about a request's ``context``) re-addressed to request ``j`` of a batch argument ``name``."""
    f = e.field or "context"
    rest = f[len("context"):] if f.startswith("context") else "." + f
    kw = {"value": e.value} if e.has_value else {}
    return ContextError(f"{name}.{j}: {e}", field=f"{name}.{j}{rest}", **kw)


def _check_k(k: Any, name: str = "k") -> int:
    """``k`` as an int >= 0 (bools refused); larger than the catalog is fine (the engine clamps it)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 0:
        raise InputError(f"{name} must be an integer >= 0, got {type(k).__name__} {_short(k)}", field=name, value=k)
    return int(k)


def _check_label(label: Any) -> float:
    """A feedback label as a finite float: a real number (not a bool, not a string)."""
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, float, np.integer, np.floating)):
        raise InputError(f"label must be a number, got {type(label).__name__} {_short(label)}",
                         field="label", value=label)
    try:
        out = float(label)
    except OverflowError:
        out = float("inf")
    if not np.isfinite(out):
        raise InputError(f"label must be finite, got {_short(label)}", field="label", value=label)
    return out


def _id_sequence(ids: Any, name: str) -> list[Any]:
    """A sequence-of-ids argument as a list (a str, a mapping or a scalar is refused)."""
    if isinstance(ids, (str, bytes, Mapping)) or not isinstance(ids, Iterable) or \
            (isinstance(ids, np.ndarray) and ids.ndim != 1):
        raise InputError(f"{name} must be a sequence of item ids, got {type(ids).__name__} {_short(ids)}",
                         field=name, value=ids)
    return list(ids)


def _read_part(path: Path, read: Any) -> Any:
    """``read(path)``, a part of a saved recommender; an unreadable part is a CorruptArtifactError."""
    try:
        return read(path)
    except CtxrecError:
        raise
    except Exception as e:  # noqa: BLE001  (json, pyarrow, the spec's own parsing: all mean "damaged")
        raise CorruptArtifactError(f"{path}: unreadable ({type(e).__name__}: {e})",
                                   field=f"files.{path.name}") from None


def _context_rows(spec: ContextSpec, ds: Dataset) -> pd.DataFrame:
    """The context columns of ``ds`` for ``spec``; free-text fields are often request-only
    (absent from logged interactions) and become empty strings."""
    rows = ds.context_frame()
    for name in spec.text_fields:
        if name not in rows.columns:
            rows[name] = ""
    return rows


def _copy_encoder(enc: Any, dest: Path) -> None:
    """Copy the encoder variant in use (ONNX file, tokenizer, manifest) into ``dest``.

    Hard links when the file system allows (no extra space), copies otherwise.
    """
    src = getattr(enc, "path", None)
    if src is None or not (Path(src) / "manifest.json").is_file():
        raise ValueError(f"cannot save the encoder {enc!r}: it has no export directory (.path) to copy")
    src = Path(src)
    manifest = json.loads((src / "manifest.json").read_text())
    names = {"manifest.json", "tokenizer.json", manifest["meta"]["variants"][enc.variant]["file"]}
    names |= {n for n in ("config.json",) if (src / n).is_file()}
    dest.mkdir(parents=True)
    for name in sorted(names):
        try:
            os.link(src / name, dest / name)
        except OSError:
            shutil.copy2(src / name, dest / name)


def _missing(v: Any) -> bool:
    """A cell that holds no value (None, NaN, NaT)."""
    if v is None or isinstance(v, (list, tuple, set, np.ndarray)):
        return v is None
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _attr_values(v: Any) -> list[str]:
    """An item attribute cell as value strings (lists for several values), as the data loaders read them."""
    if _missing(v):
        return []
    if isinstance(v, (list, tuple, set, np.ndarray)):
        return sorted({scalar_str(x) for x in v if not _missing(x) and scalar_str(x) != ""})
    s = scalar_str(v)
    return [s] if s != "" else []


def _histories(ds: Dataset, positive: np.ndarray | None = None) -> list[list[int]]:
    """Each user's distinct positive items, oldest first (by timestamp, ties by row order).

    ``positive`` bool [len(ds)]: which rows count (the model's rule,
    :meth:`ContextFM.is_positive`); None: rows with ``ds.label > 0``, or every row without
    labels. An item seen more than once sits where it was seen last. Without timestamps the
    row order of the interactions is taken as time order.
    """
    u, i = ds.users.astype(np.int64), ds.items.astype(np.int64)
    rows = np.arange(len(u))
    if positive is None and ds.label is not None:
        positive = ds.label > 0
    if positive is not None:
        u, i, rows = u[positive], i[positive], rows[positive]
    ts = ds.timestamp[rows] if ds.timestamp is not None else np.zeros(len(rows), np.int64)
    order = np.lexsort((rows, ts, u))
    u, i = u[order], i[order]
    key = u * max(ds.n_items, 1) + i
    _, last_rev = np.unique(key[::-1], return_index=True)
    keep = np.sort(len(key) - 1 - last_rev)  # the last occurrence of each (user, item), in order
    u, i = u[keep], i[keep]
    bounds = np.searchsorted(u, np.arange(ds.n_users + 1))
    return [i[bounds[k]:bounds[k + 1]].tolist() for k in range(ds.n_users)]


def _event_time(ev: Any, keys: Sequence[str]) -> int:
    """Unix seconds of a logged event: the first of its context's ``keys`` (time fields) that
    holds a valid time, else when it was logged."""
    stamp = next((ev.context[k] for k in keys if ev.context.get(k) not in (None, "")), None)
    try:
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
            return int(stamp)
        if isinstance(stamp, str) and stamp.strip():
            t = pd.Timestamp(stamp)
            return int((t if t.tzinfo else t.tz_localize("UTC")).timestamp())
    except (ValueError, TypeError, OverflowError):
        pass
    return int(ev.time)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(np.where(norm > 0, x / np.maximum(norm, 1e-12), 0), dtype=np.float32)


class Recommender:
    """Context-aware, text-aware recommender (spec + encoder + ContextFM + Engine).

    Parameters
    ----------
    context : ContextSpec or None
        Which request/interaction fields are context (time, categorical, numeric, free text).
    model : ContextFM or None
        Hyper-parameters of the model (cloned at fit; default ``ContextFM()``).
    encoder : "default", a path, an object with ``encode(texts) -> float32 [n, d]``, or None
        The text encoder. "default" loads ctxrec's exported all-MiniLM-L6-v2; None disables
        text (item, user and request text are then ignored).
    item_text, user_text : bool
        Feed item / user texts (encoded) to the model.
    text_match_weight : float or "auto"
        Weight of the request-text ↔ item-text cosine added at rescoring; "auto" scales it so
        that its spread over items equals the spread of the model's scores.
    engine_params : dict or None
        Keyword arguments of :class:`ctxrec.engine.Engine`.
    fold_in_history : int
        How many of a user's latest items ``feedback`` refits the user's vector on (0: none;
        the events are still recorded) and the exploration posterior observes.
    ignore_unknown_context : bool
        Default of the methods' ``ignore_unknown``: False (the default) refuses a request
        context with a key the context spec does not read (``{"event_time": ...}`` on a model
        whose time field is ``timestamp``) and non-empty free text for a model that cannot
        read request text, with :class:`~ctxrec.errors.ContextError` naming the key and
        listing the known ones; True ignores them (the behaviour before ctxrec 0.x hardening).
    max_new_users : int or None
        How many users ``feedback`` may add beyond those this object was fitted or loaded
        with (default 1,000,000; about 0.3 kB of model state each at 64 factors); feedback
        for yet another unknown user then raises :class:`~ctxrec.errors.InputError`
        (``field="user"``). None: unbounded. Users the attached event log re-creates on
        replay count towards it but are never refused (a replayed log cannot fail at
        start-up); saving the model makes its users the new base. New user ids longer than
        :data:`MAX_ID_LENGTH` characters are always refused.

    Learned attributes: ``context_`` (fitted spec), ``model_``, ``engine_``, ``item_ids_``
    (every item id ever in the catalog, by slot: the engine's), ``user_ids_``,
    ``text_match_weight_``, ``items_`` (item table by slot, added items included),
    ``item_text_`` (unit text embeddings by slot), ``item_attrs_`` (name -> vocabulary of the
    categorical item attributes the model and the named filters use).

    The catalog is live: :meth:`add_items` / :meth:`update_items` / :meth:`upsert_items` /
    :meth:`remove_items` change what ``recommend`` returns at once. Items are numbered by
    *slot*, in the order they first arrived; the fitted items' slots are their dense indices
    in the training data. An item added after fit has no id factor: its vector is the model's
    cold-start vector (attribute factors + text projection).
    """

    def __init__(self, context: ContextSpec | None = None, *, model: ContextFM | None = None,
                 encoder: Any = "default", item_text: bool = True, user_text: bool = True,
                 text_match_weight: float | str = "auto", engine_params: Mapping[str, Any] | None = None,
                 fold_in_history: int = 50, ignore_unknown_context: bool = False,
                 max_new_users: int | None = 1_000_000) -> None:
        self.context = context
        self.model = model
        self.encoder = encoder
        self.item_text = item_text
        self.user_text = user_text
        self.text_match_weight = text_match_weight
        self.engine_params = engine_params
        self.fold_in_history = fold_in_history
        self.ignore_unknown_context = ignore_unknown_context
        self.max_new_users = max_new_users

    # ------------------------------------------------------------------ helpers
    def _load_encoder(self) -> Any:
        enc = self.encoder
        if enc is None:
            return None
        if isinstance(enc, (str, os.PathLike)):  # str has .encode too: names and paths first
            from ctxrec.encoder import TextEncoder
            return TextEncoder.load() if enc == "default" else TextEncoder.load(Path(enc).expanduser())
        if callable(getattr(enc, "encode", None)):
            return enc
        raise TypeError(f"encoder must be 'default', a path, an object with encode(texts) or None, "
                        f"got {type(enc).__name__}")

    def _request_text(self, feats: Any) -> np.ndarray | None:
        """Mean of the request's free-text field vectors, float32 [n, d], or None."""
        vecs = list(feats.text_vectors.values())
        if not vecs:
            return None
        return np.ascontiguousarray(np.mean(vecs, axis=0), dtype=np.float32)

    # ------------------------------------------------------------------ fit
    def fit(self, dataset: Dataset, *, validation: Dataset | None = None) -> "Recommender":
        """Fit the context spec, encode texts, train the model and build the engine.

        Parameters
        ----------
        dataset : Dataset
            Interactions + item table / text (+ user table / text); see :class:`ctxrec.data.Dataset`.
        validation : Dataset, optional
            Held-out interactions over the same catalog, for the model's early stopping. When
            its context carries request text (a text field of the spec, e.g. ``"query"``) and
            ``text_match_weight="auto"``, the text-match weight is then chosen on these
            requests (:meth:`tune_text_weight`; the table in ``tuning_``) instead of by
            matching spreads.

        Returns
        -------
        Recommender
            ``self``, fitted.

        Raises
        ------
        TypeError
            ``dataset`` is not a Dataset.
        ValueError
            ``dataset`` has no interactions, or a model / engine parameter is invalid.
        """
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset must be a ctxrec.data.Dataset, got {type(dataset).__name__}")
        if len(dataset) == 0:
            raise ValueError("dataset has no interactions")
        spec = copy.deepcopy(self.context) if self.context is not None else ContextSpec()
        context_rows = lambda ds: _context_rows(spec, ds)  # noqa: E731

        spec.fit(context_rows(dataset))
        enc = self._load_encoder()
        self._encoder = enc
        model = ContextFM(**self.model.get_params()) if self.model is not None else ContextFM()
        train_text = enc is not None and any(any(t) for t in spec.transform(context_rows(dataset)).texts.values())

        item_emb = encode_texts(dataset.item_text, enc) if enc is not None and self.item_text else None
        user_emb = encode_texts(dataset.user_text, enc) \
            if enc is not None and self.user_text and dataset.user_text is not None else None
        # bpr / softmax learn from the label > 0 rows of a labelled dataset (ContextFM.fit drops the rest)
        label = {"rating": "rating", "binary": "label"}.get(model.loss_spec.labels,
                                                            "label" if dataset.label is not None else "none")

        def interactions(ds: Dataset) -> tuple[Interactions, SideInfo]:
            feats = spec.transform(context_rows(ds), encoder=enc if train_text else None)
            return from_dataset(ds, attrs=list(ds.item_attrs), user_attrs=list(ds.user_attrs),
                                context=feats if spec.slots else None, spec=spec, item_text=item_emb,
                                user_text=user_emb, context_text=self._request_text(feats) if train_text else None,
                                label=label)

        X, side = interactions(dataset)
        model.fit(X, side, validation=None if validation is None else interactions(validation)[0])

        self.context_ = spec
        self.model_ = model
        self.user_ids_ = dataset.user_ids
        self.items_ = dataset.item_table.assign(text=dataset.item_text)
        self.item_text_ = None if item_emb is None else _unit_rows(item_emb)
        self.item_attrs_ = {str(name): list(a.vocab) for name, a in dataset.item_attrs.items()}
        # the one record of each user's items; the model's positives are the same rows by its rule
        self._history = _histories(dataset, None if X.label is None else model.is_positive(X.label))
        self.training_source_ = dataset.meta.get("source")
        self._event_origin: tuple[str, int] | None = None
        # each item's attribute values by slot: what the model's attribute factors and the named
        # filters read (an attribute may be derived, or split from a column: not always a cell of items_)
        self._attr_rows = {str(name): [a.values(r) for r in range(a.n_rows)] for name, a in dataset.item_attrs.items()}
        self._build_serving(dataset.item_ids, self._attr_rows)
        if validation is not None and self.text_match_weight == "auto" and self._engine_has_text() \
                and self._request_texts(validation) is not None:
            self.tuning_ = self.tune_text_weight(validation)
        return self

    def _request_texts(self, requests: Dataset) -> list[dict[str, Any]] | None:
        """The contexts of ``requests`` (one dict per row, the spec's fields), or None when
        none of them carries request text."""
        frame = requests.context_frame()
        cols = [c for c in self.context_.columns if c in frame.columns]
        texts = [c for c in self.context_.text_fields if c in frame.columns]
        if not texts or not any(isinstance(v, str) and v.strip() for c in texts for v in frame[c]):
            return None
        return [{c: v for c, v in row.items() if not (v is None or (isinstance(v, float) and np.isnan(v)))}
                for row in frame[cols].to_dict("records")]

    def tune_text_weight(self, requests: Dataset, *, k: int = 10, grid: Sequence[float] | None = None
                         ) -> dict[str, Any]:
        """Choose the text-match weight on held-out requests.

        Every weight of ``grid`` answers every request (``recommend_batch``, seen items left
        out); the weight whose answers hold the requested item most often in the top ``k``
        (HR@k; ties: MRR@k) becomes ``text_match_weight_`` and the engine's. A fit-time step:
        requests answered while it runs see the weights it tries.

        Parameters
        ----------
        requests : Dataset
            Held-out interactions over this catalog whose context carries the request text
            (a text field of the spec, e.g. ``"query"``): row j is a request (user j,
            context j) and the item the user then chose.
        k : int
            The cut-off of HR@k and MRR@k.
        grid : sequence of float, optional
            The weights to try (each > 0: a model without the term is fitted with
            ``text_match_weight=0``). Default: the fitted weight (the spread-matching one)
            times 2^(j/2) for j = -8 .. 12 (1/16 .. 64, steps of sqrt 2).

        Returns
        -------
        dict
            ``grid``, ``hr`` and ``mrr`` (one per weight), ``chosen``, ``previous``, ``k``,
            ``n_requests``.

        Raises
        ------
        InputError
            The model has no item text in its engine, ``requests`` carries no request text,
            or ``grid`` holds a weight that is not finite and > 0.
        """
        self.check_fitted()
        if not isinstance(requests, Dataset):
            raise InputError(f"requests must be a ctxrec.data.Dataset, got {type(requests).__name__}",
                             field="requests")
        if not self._engine_has_text():
            raise InputError("tune_text_weight: this model serves no text-match term (no item text, or "
                             "text_match_weight=0 at fit)", field="text_match_weight")
        contexts = self._request_texts(requests)
        if contexts is None:
            raise InputError(f"requests: no request text in the context fields {self.context_.text_fields}",
                             field="requests")
        k = _check_k(k)
        previous = self.text_match_weight_
        if grid is None:
            grid = [previous * 2.0 ** (j / 2) for j in range(-8, 13)]
        grid = [float(w) for w in grid]
        if not grid or not all(np.isfinite(w) and w > 0 for w in grid):
            raise InputError(f"grid must hold finite weights > 0, got {grid!r}", field="grid")
        users = requests.user_ids[requests.users].tolist()
        targets = requests.item_ids[requests.items].tolist()
        hr, mrr = [], []
        try:
            for w in grid:
                self.engine_.set_text_weight(w)
                recs = self.recommend_batch(users, contexts, k)
                ranks = [r.item_ids.index(t) if t in r.item_ids else -1 for r, t in zip(recs, targets)]
                hr.append(float(np.mean([x >= 0 for x in ranks])))
                mrr.append(float(np.mean([1.0 / (x + 1) if x >= 0 else 0.0 for x in ranks])))
        finally:
            self.engine_.set_text_weight(previous)
        best = max(range(len(grid)), key=lambda j: (hr[j], mrr[j], grid[j] == previous, -j))
        self.text_match_weight_ = grid[best]
        self.engine_.set_text_weight(grid[best])
        return {"grid": grid, "hr": hr, "mrr": mrr, "chosen": grid[best], "previous": previous, "k": k,
                "n_requests": len(users)}

    @property
    def item_ids_(self) -> np.ndarray:
        """Every item id ever in the catalog, by slot (removed ones included: see ``engine_.live_``)."""
        return self.engine_.item_ids_

    def _build_serving(self, item_ids: np.ndarray, filters: Mapping[str, Sequence[Any]]) -> None:
        """Engine over the model's item table with the named filters; users index; text-match weight."""
        tables = self.model_.export()
        w = self.text_match_weight
        if w == "auto":
            w = self._auto_text_weight(tables) if self.item_text_ is not None else 0.0
        elif not isinstance(w, (int, float)) or not np.isfinite(w):
            raise ValueError(f"text_match_weight must be a finite number or 'auto', got {w!r}")
        self.text_match_weight_ = float(w)
        self.engine_ = Engine(**dict(self.engine_params or {})).fit(
            tables.joined(), tables.item_bias, item_ids=item_ids,
            item_text=self.item_text_ if self.text_match_weight_ else None, text_weight=self.text_match_weight_,
            item_filters=filters)
        self._sync_seen()
        self._index_users()

    def _sync_seen(self) -> None:
        """The engine's seen items (what ``recommend`` leaves out), from the users' histories.

        The history (time-ordered, the fold-in's input) is the one record; the engine holds
        its set, keyed by dense user index, kept in step by ``feedback``.
        """
        self.engine_.set_seen_slots({u: np.asarray(h, np.int64) for u, h in enumerate(self._history) if h})

    def _engine_has_text(self) -> bool:
        return bool(self.text_match_weight_) and self.item_text_ is not None

    def _index_users(self) -> None:
        self._user_pos = {u: i for i, u in enumerate(self.user_ids_.tolist())}
        self._base_users = len(self.user_ids_)  # max_new_users counts the users feedback adds beyond these
        self._lock = threading.RLock()  # readers and the swap of a feedback's result; held briefly
        self._prior: np.ndarray | None = None  # exploration's prior precision, computed on first use
        self._posteriors: OrderedDict[tuple, np.ndarray] = OrderedDict()  # user_posterior's cache (LRU)
        self._write_lock = threading.RLock()  # serializes feedback and catalog writes (log order == apply order)
        self._events: EventLog | None = None
        self._events_applied = 0  # events of the attached log this object has applied (replayed + live)

    def _auto_text_weight(self, tables: Any) -> float:
        rng = np.random.default_rng(0)
        n_users = len(self.user_ids_)
        users = rng.choice(n_users, size=min(64, n_users), replace=False)
        qb = self.model_.build_queries(users)
        model_sd = float(np.std(tables.scores(qb), axis=1).mean())
        has = np.flatnonzero(np.abs(self.item_text_).sum(axis=1) > 0)
        if len(has) < 2:
            return 0.0
        probe = self.item_text_[rng.choice(has, size=min(64, len(has)), replace=False)]
        text_sd = float(np.std(probe @ self.item_text_[has].T, axis=1).mean())
        return model_sd / text_sd if text_sd > 0 else 0.0

    def _model_text_dim(self) -> int:
        """Width of the request-text input the model was trained with (0 = none)."""
        return self.model_.text_dims_[2]

    @staticmethod
    def saved_user_ids(path: str | os.PathLike) -> np.ndarray:
        """The user ids of a saved recommender, read without loading the model.

        Parameters
        ----------
        path : str or PathLike
            A directory written by :meth:`save`.

        Returns
        -------
        numpy.ndarray [n_users]
            The raw user ids, in the model's user order.

        Raises
        ------
        CorruptArtifactError
            The file is missing, unreadable or not a 1-d array.
        """
        ids = load_array(Path(path).expanduser() / "user_ids.npy")
        if ids.ndim != 1:
            raise CorruptArtifactError(f"{path}: user_ids.npy has shape {ids.shape}, expected (n_users,)",
                                       field="files.user_ids.npy")
        return ids

    def check_fitted(self) -> None:
        """Raise :class:`~ctxrec.errors.NotFittedError` unless the recommender is fitted or loaded."""
        if not hasattr(self, "engine_"):
            raise NotFittedError("Recommender is not fitted: call fit(dataset) or Recommender.load(path) first")

    @property
    def encoder_(self) -> Any:
        """The text encoder the fitted recommender reads text with (None: no text)."""
        return getattr(self, "_encoder", None)

    def query_vector(self, u: int, context: np.ndarray | None = None,
                     text: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """The model's query for a user in a context: the owner of the serving score.

        The score of item ``i`` is ``q @ item_vecs[i] + item_bias[i] + const`` (the engine's
        tables, ``engine_.item_vector``), plus the text-match term
        ``text_match_weight_ * cos(text, item_text_[i])`` when there is request text.

        Parameters
        ----------
        u : int
            Dense user index (:meth:`user_index`; -1: anonymous / cold start).
        context : int array [n_slots] or None
            Context value indices (``context_.transform(...).indices``); None: no context.
        text : float array [d] or None
            The request-text vector; used only when the model reads request text itself.

        Returns
        -------
        (float32 array [dim], float)
            The query vector and the constant of the score.
        """
        model_text = None if text is None or not self._model_text_dim() else \
            np.asarray(text, np.float32).reshape(1, -1)
        with self._lock:
            qb = self.model_.build_queries(np.array([u]), context=context, context_text=model_text)
        return qb.joined()[0], float(qb.const[0])

    def model_contributions(self, u: int, context: np.ndarray | None, text: np.ndarray | None,
                            vec: np.ndarray, bias: float) -> dict[str, float]:
        """The model part of an item's score split by successive removal (what ``explain`` reports).

        Parameters
        ----------
        u, context, text
            As in :meth:`query_vector`.
        vec : float array [dim]
            The item's vector; ``bias`` its bias (the engine's tables, or a session's copy).

        Returns
        -------
        dict
            ``request_text`` (the model's own use of the request text), ``context``,
            ``user_affinity`` (who the user is), ``popularity`` (an anonymous request with no
            context) and ``score`` (their sum: the model part of the score).
        """
        vec = np.asarray(vec, np.float64)

        def score(user_idx: int, c: np.ndarray | None, t: np.ndarray | None) -> float:
            q, const = self.query_vector(user_idx, c, t)
            return float(q.astype(np.float64) @ vec + bias + const)

        uses_text = bool(self._model_text_dim()) and text is not None
        absent = None if context is None else np.full_like(context, -1)
        full = score(u, context, text if uses_text else None)
        no_text = score(u, context, None) if uses_text else full
        no_ctx = score(u, absent, None)
        anon = score(-1, absent, None)
        return {"request_text": full - no_text, "context": no_text - no_ctx, "user_affinity": no_ctx - anon,
                "popularity": anon, "score": full}

    # ------------------------------------------------------------------ serve
    def user_index(self, user: Any) -> int:
        """The dense index of a raw user id.

        Parameters
        ----------
        user : int, str or None
            A raw user id (checked by ``recommend``'s rules; digit strings match integer ids).

        Returns
        -------
        int
            The user's index (a row of ``user_ids_``), or -1 for an unknown user or None.
        """
        if user is None:
            return -1
        u = self._user_pos.get(user)
        if u is None and isinstance(user, str):
            n = _int_id(user)  # ids arrive as strings over HTTP/CLI
            u = None if n is None else self._user_pos.get(n)
        if u is None and not isinstance(user, str):
            u = self._user_pos.get(str(user))
        return -1 if u is None else int(u)

    def history(self, user: Any) -> np.ndarray:
        """A user's interaction history: the distinct items of their positive events, oldest first.

        The one record of it: training positives (by timestamp), then every acknowledged
        ``feedback`` (an item seen again moves to the end). ``recommend`` leaves these items out,
        a fold-in learns from its latest ``fold_in_history`` of them, and the model's positives
        for the user (:meth:`ContextFM.user_positives`) are set from it: its items the model has
        factors for. Which events count is the model's rule (:meth:`ContextFM.is_positive`).

        Parameters
        ----------
        user : int, str or None
            A raw user id (matched as :meth:`user_index` does).

        Returns
        -------
        numpy.ndarray, shape (n,)
            Raw item ids (the dtype of ``item_ids_``), oldest first; empty for an unknown user.
        """
        self.check_fitted()
        u = self.user_index(user)
        with self._lock:
            h = list(self._history[u]) if u >= 0 else []
        return self.item_ids_[np.asarray(h, np.int64)]

    def _item_slots(self, ids: Sequence[Any], name: str) -> np.ndarray:
        """Slots of raw item ids (int64, -1 = unknown or removed); InputError for a malformed id.

        Ids are checked by :func:`_check_id`; for an integer catalog, digit strings match by
        :func:`_int_id` (the rule ``feedback`` and ``recommend(user=...)`` use), other strings
        match nothing. One vectorised engine look-up (:meth:`Engine.item_slots`).
        """
        int_catalog = self.item_ids_.dtype.kind in "iu"
        try:
            a = np.asarray(ids) if len(ids) else np.zeros(0, np.int64)
        except (ValueError, TypeError, OverflowError):  # ragged or odd: the per-id path names the bad one
            a = None
        if a is not None and a.ndim == 1 and (a.dtype.kind == "i" or (a.dtype.kind == "u" and (
                not len(a) or a.max() < _INT64))):  # the common case, no per-id Python
            return self.engine_.item_slots(a.astype(np.int64) if int_catalog else a.astype(str))
        vals = [_check_id(x, f"{name}.{j}") for j, x in enumerate(ids)]
        out = np.full(len(vals), -1, np.int64)
        if int_catalog:
            keys = [_int_id(x) for x in vals]
            take = np.array([j for j, x in enumerate(keys) if x is not None], np.int64)
            query = np.array([keys[j] for j in take], np.int64)
        else:
            take = np.arange(len(vals))
            query = np.array([str(x) for x in vals], dtype=str)
        if len(take):
            out[take] = self.engine_.item_slots(query)
        return out

    def item_index(self, item: Any, name: str = "item") -> int:
        """The slot of one raw item id in the live catalog.

        Parameters
        ----------
        item : int or str
            A raw item id.
        name : str
            The argument's name in errors.

        Returns
        -------
        int
            The item's slot (a row of ``items_`` and ``item_text_``).

        Raises
        ------
        InputError
            A malformed id.
        UnknownIdError
            An id not in the catalog (unknown or removed).
        """
        s = int(self._item_slots([_check_id(item, name)], name)[0])
        if s < 0:
            raise UnknownIdError(f"{name}: unknown item id {_short(item)}", field=name, value=item)
        return s

    def _known_ids(self, ids: Iterable[Any] | None, name: str) -> tuple[np.ndarray | None, list[Any]]:
        """(the raw ids of ``ids`` in the catalog now, or None for None; the unknown ones as given).

        Unknown ids are ignored by ``recommend``: they are reported in
        ``Recommendation.unknown_ids`` and with a warning.
        """
        if ids is None:
            return None, []
        vals = _id_sequence(ids, name)
        slots = self._item_slots(vals, name)
        miss = np.flatnonzero(slots < 0)
        unknown = [vals[j] for j in miss.tolist()]
        if unknown:
            warnings.warn(f"{name}: {len(unknown)} unknown item id(s) ignored, e.g. {_short(unknown[:3])}",
                          stacklevel=3)
        return self.item_ids_[slots[slots >= 0]], unknown

    def _check_filter(self, filter: Any) -> Mapping[str, Any] | None:
        """``filter`` checked against the engine's named filters (InputError naming the field)."""
        if filter is None:
            return None
        if not isinstance(filter, Mapping):
            raise InputError(f"filter must be a dict of filter name -> value(s), got {type(filter).__name__} "
                             f"{_short(filter)}", field="filter", value=filter)
        names = self.engine_.filter_names_
        for name, want in filter.items():
            if not isinstance(name, str) or name not in names:
                raise InputError(f"filter: unknown filter {_short(name)}; this catalog has {sorted(names)}",
                                 field="filter", value=name)
            for v in want if isinstance(want, (list, tuple, set, frozenset)) else [want]:
                if isinstance(v, str):
                    check_text(v, f"filter.{name}")
                elif not (v is None or isinstance(v, (bool, int, float, np.generic))) or \
                        (isinstance(v, int) and not -_INT64 <= v < _INT64):
                    raise InputError(f"filter.{name}: invalid value {_short(v)}", field=f"filter.{name}", value=v)
        return filter

    def check_rerank(self, diversity: Any, calibrate: Any, calibrate_by: Any,
                     exposure: Any = 0.0) -> tuple[float, float, str | None, float]:
        """Check the re-ranking options of :meth:`recommend`, changing nothing.

        Returns
        -------
        (diversity, calibrate, calibrate_by, exposure)
            As floats; ``calibrate_by`` resolved (the only attribute when there is one) or None
            when ``calibrate`` is 0.

        Raises
        ------
        InputError
            diversity outside [0, 1], calibrate or exposure negative or not finite, calibrate_by
            not an item attribute (``field`` names the option).
        """
        diversity, calibrate, exposure = check_rerank_options(diversity, calibrate, exposure)
        names = sorted(self.engine_.filter_names_)
        if calibrate_by is None and calibrate and len(names) == 1:
            calibrate_by = names[0]
        if calibrate and (not isinstance(calibrate_by, str) or calibrate_by not in names):
            raise InputError(f"calibrate_by must name the item attribute whose values are the categories; "
                             f"got {_short(calibrate_by)}, this catalog has {names}",
                             field="calibrate_by", value=calibrate_by)
        return diversity, calibrate, calibrate_by if calibrate else None, exposure

    def rerank(self, user: Any, item_ids: Sequence[Any], scores: Any, k: int, *, diversity: float = 0.0,
               calibrate: float = 0.0, calibrate_by: str | None = None,
               exposure: float = 0.0) -> tuple[list[Any], list[float], list[dict[str, float]]]:
        """Re-rank a list scored elsewhere (a conversation's belief scores) as :meth:`recommend` does.

        Parameters
        ----------
        user : int, str or None
            Whose history mix calibration aims at (none for an unknown user).
        item_ids : sequence of raw item ids
            The candidates, e.g. the best ``engine_.pool_size(k, ...)`` by ``scores``.
        scores : float array [len(item_ids)]
        k, diversity, calibrate, calibrate_by, exposure
            As in :meth:`recommend` (checked the same way).

        Returns
        -------
        (item_ids, scores, terms)
            The picks in order, their scores and ``Recommendation.rerank``'s terms.
        """
        self.check_fitted()
        k = _check_k(k)
        diversity, calibrate, calibrate_by, exposure = self.check_rerank(diversity, calibrate, calibrate_by, exposure)
        target = self.history_mix(user, calibrate_by) if calibrate and self.user_index(user) >= 0 else None
        ids, sc, terms = self.engine_.rerank(item_ids, scores, k, diversity=diversity,
                                             calibrate=calibrate if target else 0.0, calibrate_by=calibrate_by,
                                             target=target or None, exposure=exposure)
        return [jsonable(x) for x in ids], sc.tolist(), _rerank_terms(terms)

    def history_mix(self, user: Any, attribute: str) -> dict[str, float]:
        """The mix of an item attribute's values over a user's history (calibration's target).

        Parameters
        ----------
        user : int, str or None
            A raw user id.
        attribute : str
            A categorical item attribute (a named filter, e.g. ``"genres"``).

        Returns
        -------
        dict of str to float
            Value -> share of the history (an item with two values gives each half), summing
            to 1; empty for a user without history.
        """
        return self.engine_.category_mix(attribute, self.history(user))

    def _reads_request_text(self) -> bool:
        """Whether request free text changes anything: an encoder, and a model or a text-match term reading it."""
        return getattr(self, "_encoder", None) is not None and \
            (self._model_text_dim() > 0 or (bool(self.text_match_weight_) and self.item_text_ is not None))

    def check_context(self, context: Mapping[str, Any] | None, *, ignore_unknown: bool | None = None,
                      also_known: Sequence[str] = (), text: bool = True) -> dict[str, Any]:
        """Validate a request context as ``recommend`` does, changing nothing; returns it as a dict.

        Parameters
        ----------
        context : mapping or None
            The request's context fields (free text included).
        ignore_unknown : bool or None
            Ignore keys the context spec does not read, and free text this model cannot read
            (no encoder, or neither the model nor the text-match term uses request text);
            None: the constructor's ``ignore_unknown_context``.
        also_known : sequence of str
            Further keys the caller reads itself (``feedback`` accepts ``"timestamp"``, the
            event time a retrain reads).
        text : bool
            Refuse non-empty free text when this model cannot read it (unless ignored).

        Returns
        -------
        dict
            The context (None -> ``{}``).

        Raises
        ------
        ContextError
            Not a mapping, a non-string or invalid key, an unknown key, unreadable text, or an
            invalid value (``field`` is ``"context.<key>"``).
        """
        self.check_fitted()
        ctx = self._check_context(context, ignore_unknown, also_known=also_known, text=text)
        self.context_.transform(ctx)  # the values (raises naming the field), no encoding
        return ctx

    def _check_context(self, context: Any, ignore_unknown: bool | None, *, also_known: Sequence[str] = (),
                       text: bool = True) -> dict[str, Any]:
        """:meth:`check_context` less the values (``_features``' transform checks them)."""
        ignore = bool(self.ignore_unknown_context if ignore_unknown is None else ignore_unknown)
        ctx = self.context_.check_request(context, ignore_unknown=ignore, also_known=also_known)
        if text and not ignore and not self._reads_request_text():
            for f in self.context_.fields:
                v = ctx.get(f.column or f.name) if f.kind == "text" else None
                if isinstance(v, str) and v:
                    raise ContextError(f"context.{f.name}: this model cannot read request text (it was loaded "
                                       "without a text encoder, or neither the model nor the text-match term "
                                       "uses it); pass ignore_unknown=True to ignore it",
                                       field=f"context.{f.name}", value=v)
        return ctx

    def _features(self, context: Mapping[str, Any] | None, *,
                  encode: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Context indices and request-text vector of a context checked by :meth:`check_context`."""
        feats = self.context_.transform(dict(context or {}),
                                        encoder=getattr(self, "_encoder", None) if encode else None)
        ctx = feats.indices if self.context_.slots else None
        return ctx, self._request_text(feats)

    def _user_query(self, u: int, context: Mapping[str, Any] | None) -> tuple[np.ndarray, float, np.ndarray | None]:
        ctx, text = self._features(context)
        q, const = self.query_vector(u, ctx, text)
        tq = None
        if text is not None and self.text_match_weight_ and np.any(text):
            tq = _unit_rows(text)[0]
        return q, const, tq

    def recommend(self, user: Any, context: Mapping[str, Any] | None = None, k: int = 10, *,
                  exclude_seen: bool = True, exclude: Iterable[Any] | None = None,
                  allow: Iterable[Any] | None = None, filter: Mapping[str, Any] | None = None,
                  ignore_unknown: bool | None = None, diversity: float = 0.0, calibrate: float = 0.0,
                  calibrate_by: str | None = None, exposure: float = 0.0, explore: str | None = None,
                  explore_scale: float = 1.0, seed: int | None = None) -> Recommendation:
        """Top-k items for ``user`` in ``context`` (a dict of context fields incl. free text).

        Every argument is checked before anything runs; a rejected request changes nothing.

        Parameters
        ----------
        user : int, str or None
            Raw user id (digit strings match integer ids); unknown users and None get the
            cold-start path (context + request text + popularity), marked ``cold_start=True``.
        context : mapping or None
            Context fields, free text included.
        k : int
            How many items (>= 0); more than the catalog holds returns them all.
        exclude_seen : bool
            Leave out the items the user interacted with.
        exclude, allow : sequences of raw item ids, optional
            Never return / only return these (digit strings match integer ids). Ids not in
            the catalog are ignored: reported in ``Recommendation.unknown_ids`` and with a
            warning.
        filter : mapping attribute -> value or list of values, optional
            Named item filters over the item attributes (``item_attrs_``), e.g.
            ``{"genres": ["Comedy", "Drama"], "decade": "1990s"}``: an item passes when, for
            every attribute, it has one of the listed values.
        ignore_unknown : bool or None
            Ignore context keys the spec does not read and free text the model cannot read
            (:meth:`check_context`); None: the constructor's ``ignore_unknown_context``.
        diversity : float in [0, 1]
            Re-rank the list for variety (maximal marginal relevance over the items' text
            embeddings, their vectors where an item has no text; :meth:`Engine.recommend`).
            0 (default): the plain top-k.
        calibrate : float >= 0
            Pull the list's mix of ``calibrate_by``'s values towards the mix of the user's
            history (:meth:`history_mix`; Steck's calibration). 0 (default): off; no effect
            for a user without history.
        calibrate_by : str, optional
            The categorical item attribute calibrated on (e.g. ``"genres"``); may be left out
            when the catalog has only one.
        exposure : float >= 0
            Penalise items by their recorded exposure (``engine_.add_exposure``, fed from the
            service's serving log): long-tail exposure. 0 (default) or nothing recorded: off.
        explore : {None, "thompson", "ucb"}
            Rank by the model's uncertainty about the user as well (:mod:`ctxrec.explore`: a
            Bayesian posterior over the user's query offset, prior = the fitted users' spread,
            narrowed by each item of the history): ``"thompson"`` ranks by one draw of it,
            ``"ucb"`` adds ``explore_scale * sqrt(v_i^T Sigma v_i)`` to each item's score (over
            a pool of the best ``explore.ucb_pool``). None (default): off. The re-ranking options
            apply after it.
        explore_scale : float >= 0
            Multiplies the posterior's standard deviation (default 1; 0: off).
        seed : int >= 0, optional
            With ``explore``: the draw is fixed by ``(seed, user)``; None: fresh each request.

        Returns
        -------
        Recommendation
            With ``diversity`` or ``calibrate`` the items are in the order picked and
            ``scores`` are still the model's scores; with ``explore`` likewise, and
            ``Recommendation.explore`` holds what exploration added to each.

        Raises
        ------
        InputError
            A malformed user or item id, k, exclude/allow, filter, diversity, calibrate,
            calibrate_by, exposure, explore, explore_scale or seed (``field`` names it).
        ContextError
            An invalid context: not a mapping, an unknown key, an invalid value.
        """
        self.check_fitted()
        user = _check_id(user, "user", none_ok=True)
        k = _check_k(k)
        ctx = self._check_context(context, ignore_unknown)
        filter = self._check_filter(filter)
        exclude, unknown_ex = self._known_ids(exclude, "exclude")
        allow, unknown_allow = self._known_ids(allow, "allow")
        diversity, calibrate, calibrate_by, exposure = self.check_rerank(diversity, calibrate, calibrate_by, exposure)
        explore, explore_scale, seed = _explore.check_explore(explore, explore_scale, seed)
        u = self.user_index(user)
        q, const, tq = self._user_query(u, ctx)
        target = self.history_mix(user, calibrate_by) if calibrate and u >= 0 else None
        if explore is not None:
            rerank = dict(diversity=diversity, calibrate=calibrate, calibrate_by=calibrate_by, exposure=exposure)
            key = u if exclude_seen and u >= 0 else None

            def call(Q: np.ndarray, n: int, opts: dict[str, Any]) -> tuple[np.ndarray, ...]:
                return self.engine_.recommend_batch(
                    Q, n, exclude=None if exclude is None else [exclude], allow=allow, filter=filter, users=[key],
                    text_queries=None if tq is None else tq[None], num_threads=1, return_terms=True, **opts)

            (ids,), (scores,), (terms,), (shift,) = self._explored(
                explore, explore_scale, seed, [user], np.array([u]), q[None], k, call, rerank,
                [target or None] if calibrate else None)
            return Recommendation(user, ids, (np.asarray(scores) + const).tolist(), u < 0, ctx,
                                  _unknown_report(exclude=unknown_ex, allow=unknown_allow),
                                  _rerank_terms(terms) if diversity or calibrate or exposure else [], shift)
        ids, scores, terms = self.engine_.recommend(q, k, exclude=exclude, allow=allow, filter=filter,
                                                    text_query=tq, user=u if exclude_seen and u >= 0 else None,
                                                    diversity=diversity, calibrate=calibrate if target else 0.0,
                                                    calibrate_by=calibrate_by, target=target or None,
                                                    exposure=exposure, return_terms=True)
        return Recommendation(user, ids.tolist(), (scores + const).tolist(), u < 0, ctx,
                              _unknown_report(exclude=unknown_ex, allow=unknown_allow),
                              _rerank_terms(terms) if diversity or calibrate or exposure else [])

    def _explore_prior(self) -> np.ndarray:
        """Exploration's prior precision over a user's query offset, from the fitted users (once).

        The fitted users are those the model learned from: the first ``_base_users`` with a
        history (a user without one has an untrained vector)."""
        with self._lock:
            if self._prior is None:
                users = np.array([u for u in range(int(self._base_users)) if len(self._history[u])], np.int64)
                if len(users) > _explore.PRIOR_USERS:
                    users = np.sort(np.random.default_rng(0).choice(users, _explore.PRIOR_USERS, replace=False))
                qb = self.model_.build_queries(users)
                anon = self.model_.build_queries(np.array([-1]))
                self._prior = _explore.prior_precision(qb.joined() - anon.joined())
            return self._prior

    def user_posterior(self, user: Any) -> np.ndarray:
        """The model's uncertainty about a user: the factor of its posterior (:mod:`ctxrec.explore`).

        Prior: the spread of the fitted users' query offsets; each of the user's latest
        ``fold_in_history`` items is one observation along its vector. An unknown user (or
        None) keeps the prior.

        Parameters
        ----------
        user : int, str or None
            A raw user id.

        Returns
        -------
        float64 array [dim, dim]
            The covariance factor ``L`` (``L @ L.T`` = the posterior covariance; what
            ``explore.ucb_bonus`` and ``explore.sample_offset`` take), ``dim`` the engine's
            vector width. Read-only; cached (a ``feedback`` computes the user's next one once
            this recommender has explored, so a request after an event reads it).
        """
        self.check_fitted()
        u = self.user_index(user)
        hist = self.history(user) if u >= 0 else np.array([])
        n = int(self.fold_in_history)
        hist = hist[len(hist) - n:] if n else hist[:0]
        # a history changes only at its end (an event appends or moves its item there): the user,
        # its length and last item, and the catalog's version (the item vectors) key the factor;
        # every user without history shares the prior's
        key = (u, len(hist), jsonable(hist[-1]), self.engine_.version_) if len(hist) else \
            (-1, 0, None, self.engine_.version_)
        with self._lock:
            hit = self._posteriors.get(key)
            if hit is not None:
                self._posteriors.move_to_end(key)
                return hit
        vecs = self.engine_.item_vectors(hist) if len(hist) else None
        factor = _explore.posterior_factor(self._explore_prior(), vecs)
        factor.flags.writeable = False
        with self._lock:
            self._posteriors[key] = factor
            while len(self._posteriors) > _explore.CACHE_SIZE:
                self._posteriors.popitem(last=False)
        return factor

    def _explored(self, policy: str, scale: float, seed: int | None, users: Sequence[Any], uidx: np.ndarray,
                  Q: np.ndarray, k: int, call: Any, rerank: dict[str, Any],
                  targets: Sequence[Mapping[str, float] | None] | None) -> tuple[list[Any], ...]:
        """The exploring answer of b requests (:func:`ctxrec.explore.rank` with each user's posterior)."""
        factors = [self.user_posterior(x) for x in users]
        gens = [_explore.rng(seed, int(u)) for u in uidx] if policy == "thompson" else [None] * len(uidx)  # UCB draws nothing
        return _explore.rank(self.engine_, policy, scale, gens, factors, Q, k, call, rerank, targets)

    def recommend_batch(self, users: Sequence[Any], contexts: Sequence[Mapping[str, Any] | None] | None = None,
                        k: int = 10, *, exclude_seen: bool = True, filter: Mapping[str, Any] | None = None,
                        num_threads: int = 1, exclude: Sequence[Iterable[Any] | None] | None = None,
                        allow: Iterable[Any] | None = None, ignore_unknown: bool | None = None,
                        diversity: float = 0.0, calibrate: float = 0.0,
                        calibrate_by: str | None = None, exposure: float = 0.0, explore: str | None = None,
                        explore_scale: float = 1.0, seed: int | None = None) -> list[Recommendation]:
        """recommend() for many (user, context) pairs, batched, with identical answers.

        Contexts are featurised once per distinct context, queries are built in one batch
        and the engine answers all of them in one native call (each request's seen items
        left out by its user key). Every request is checked before any is answered.

        Parameters
        ----------
        users : sequence of int, str or None
            One raw user id per request.
        contexts : sequence of mappings (or None), optional
            One context per request.
        k, exclude_seen, filter, ignore_unknown, diversity, calibrate, calibrate_by, exposure : as in :meth:`recommend`
            ``filter`` and the re-ranking options apply to every request (each user's own
            history mix is its calibration target).
        explore, explore_scale, seed : as in :meth:`recommend`
            Each request's draw is fixed by ``(seed, its user)``: the same answer as a single
            request with that seed.
        num_threads : int
            Threads of the engine call (0: all cores).
        exclude : sequence of (sequence of raw item ids or None), optional
            One exclusion list per request.
        allow : sequence of raw item ids, optional
            Shared by every request.

        Returns
        -------
        list of Recommendation
            One per request, in order (``unknown_ids`` per request).

        Raises
        ------
        InputError, ContextError
            As :meth:`recommend`; ``users``/``contexts``/``exclude`` not sequences of the same
            length (``field`` names the request, e.g. ``"contexts.3.timestamp"``).
        """
        self.check_fitted()
        k = _check_k(k)
        if isinstance(num_threads, (bool, np.bool_)) or not isinstance(num_threads, (int, np.integer)) or \
                not 0 <= num_threads < 1 << 16:
            raise InputError(f"num_threads must be an integer >= 0, got {_short(num_threads)}",
                             field="num_threads", value=num_threads)
        users = self._batch_seq(users, "users")
        b = len(users)
        contexts = None if contexts is None else self._batch_seq(contexts, "contexts", b)
        exclude = None if exclude is None else self._batch_seq(exclude, "exclude", b)
        users = [_check_id(u, f"users.{j}", none_ok=True) for j, u in enumerate(users)]
        filter = self._check_filter(filter)
        ctxs = []
        for j in range(b):
            try:
                ctxs.append(self._check_context(None if contexts is None else contexts[j], ignore_unknown))
            except ContextError as e:
                raise _at(e, "contexts", j) from None
        excl, unknown_ex = [], []
        for j in range(b):
            known, unk = self._known_ids(None if exclude is None else exclude[j], f"exclude.{j}")
            excl.append(known)
            unknown_ex.append(unk)
        allow, unknown_allow = self._known_ids(allow, "allow")
        diversity, calibrate, calibrate_by, exposure = self.check_rerank(diversity, calibrate, calibrate_by, exposure)
        explore, explore_scale, seed = _explore.check_explore(explore, explore_scale, seed)
        feats: dict[str, tuple[Any, Any]] = {}
        keys = []
        for j, ctx in enumerate(ctxs):
            key = json.dumps(ctx, sort_keys=True, default=repr)
            if key not in feats:
                try:
                    feats[key] = self._features(ctx)
                except ContextError as e:
                    raise _at(e, "contexts", j) from None
            keys.append(key)
        if b == 0:
            return []
        uidx = np.array([self.user_index(u) for u in users], np.int64)
        ctx_rows = np.concatenate([np.asarray(feats[key][0]).reshape(1, -1) for key in keys]) \
            if self.context_.slots else None
        texts = [feats[key][1] for key in keys]
        model_text = None
        if self._model_text_dim() and any(t is not None for t in texts):
            d = next(t.shape[-1] for t in texts if t is not None)
            model_text = np.concatenate([np.zeros((1, d), np.float32) if t is None else np.asarray(t).reshape(1, -1)
                                         for t in texts]).astype(np.float32)
        with self._lock:
            qb = self.model_.build_queries(uidx, context=ctx_rows, context_text=model_text)
        tq = [_unit_rows(t)[0] if t is not None and self.text_match_weight_ and np.any(t) else None for t in texts]
        text_queries = None
        if any(t is not None for t in tq):  # a request without text gets a zero row: a zero text term
            d = next(t.shape[0] for t in tq if t is not None)
            text_queries = np.stack([np.zeros(d, np.float32) if t is None else t for t in tq])
        keys = [int(u) if exclude_seen and u >= 0 else None for u in uidx]
        targets = [self.history_mix(user, calibrate_by) or None if u >= 0 else None for user, u in zip(users, uidx)] \
            if calibrate else None
        reranked = bool(diversity or calibrate or exposure)

        def call(Q: np.ndarray, n: int, opts: dict[str, Any]) -> tuple[np.ndarray, ...]:
            return self.engine_.recommend_batch(
                Q, n, users=keys, filter=filter, text_queries=text_queries, num_threads=int(num_threads),
                exclude=excl if exclude is not None else None, allow=allow, return_terms=True, **opts)

        rerank = dict(diversity=diversity, calibrate=calibrate, calibrate_by=calibrate_by, exposure=exposure)
        if explore is not None:
            e_ids, e_sc, e_terms, e_shift = self._explored(explore, explore_scale, seed, users, uidx, qb.joined(),
                                                           int(k), call, rerank, targets)
            return [Recommendation(users[j], e_ids[j], (np.asarray(e_sc[j]) + qb.const[j]).tolist(),
                                   bool(uidx[j] < 0), ctxs[j],
                                   _unknown_report(exclude=unknown_ex[j], allow=unknown_allow),
                                   _rerank_terms(e_terms[j]) if reranked else [], e_shift[j]) for j in range(b)]
        ids, scores, terms = call(np.ascontiguousarray(qb.joined(), dtype=np.float32), int(k),
                                  dict(rerank, targets=targets))
        out = []
        for j in range(b):
            m = int(np.count_nonzero(np.isfinite(scores[j])))
            out.append(Recommendation(users[j], ids[j, :m].tolist(), (scores[j, :m] + qb.const[j]).tolist(),
                                      bool(uidx[j] < 0), ctxs[j],
                                      _unknown_report(exclude=unknown_ex[j], allow=unknown_allow),
                                      _rerank_terms(terms[j, :m]) if reranked else []))
        return out

    @staticmethod
    def _batch_seq(seq: Any, name: str, n: int | None = None) -> Sequence[Any]:
        """A batch argument as a sequence (of ``n`` entries when given); InputError naming it otherwise."""
        if isinstance(seq, (str, bytes, Mapping)) or not isinstance(seq, (Sequence, np.ndarray, pd.Series)) or \
                (isinstance(seq, np.ndarray) and seq.ndim != 1):
            raise InputError(f"{name} must be a sequence (one entry per request), got {type(seq).__name__} "
                             f"{_short(seq)}", field=name, value=seq)
        seq = list(seq)
        if n is not None and len(seq) != n:
            raise InputError(f"{name} has {len(seq)} entries but users has {n}", field=name)
        return seq

    def evaluate(self, train: Dataset, test: Dataset, *, ks: Sequence[int] = (1, 5, 10, 20), group: str = "row",
                 name: str = "ctxrec", split: str = "", num_threads: int = 0) -> EvaluationReport:
        """Full-ranking metrics on ``test`` (every item scored exactly; ``train`` items excluded).

        Parameters
        ----------
        train, test : Dataset
            The split; both over this recommender's catalog (same item ids in the same order).
        ks : sequence of int
            Cut-offs of the ranking metrics.
        group : {"row", "user"}
            "row": each test row is one query with its own context (e.g. leave-last-out);
            "user": one query per user with no context, relevant = all their test items.
        name, split : str
            Labels of the report.
        num_threads : int
            Scoring threads (0 = all cores).

        Returns
        -------
        EvaluationReport
            The metrics (``report.metrics``), with ``name`` and ``split``.
        """
        self.check_fitted()
        if len(test.item_ids) != len(self.item_ids_) or not np.array_equal(test.item_ids, self.item_ids_):
            raise ValueError("test: its item catalog differs from the one the recommender was fitted on")
        feats = self.context_.transform(_context_rows(self.context_, test)) if group == "row" else None

        def query_fn(users: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
            ctx = None
            if self.context_.slots:
                ctx = feats.indices[rows] if rows is not None and feats is not None \
                    else np.full((len(users), len(self.context_.slots)), -1)
            with self._lock:
                return self.model_.build_queries(users, context=ctx).joined()

        model = Factors(self.engine_.item_vecs_, item_bias=self.engine_.item_bias_, query_fn=query_fn)
        return evaluate_ranking(model, train, test, ks=ks, group=group, name=name, split=split,
                                num_threads=num_threads)

    def explain(self, user: Any, item: Any, context: Mapping[str, Any] | None = None, *,
                ignore_unknown: bool | None = None) -> dict[str, Any]:
        """Why ``item`` scores what it does for ``user`` in ``context``.

        Contributions by successive removal, summing to the total score: ``text_match``
        (request text ↔ item text, at rescoring), ``request_text`` (the model's own use of the
        request text), ``context`` (the context fields), ``user_affinity`` (who the user is:
        history, attributes) and ``popularity`` (what is left for an anonymous request with
        no context: item bias and global terms).

        ``user`` (None: anonymous), ``item``, ``context`` and ``ignore_unknown`` are checked as in
        :meth:`recommend`.

        Returns
        -------
        dict
            ``user``, ``item_id``, ``cold_start``, ``score`` (the serving score),
            ``contributions`` (the five parts above, in model units; they sum to ``score``) and
            ``uncertainty``: the posterior standard deviation of the score given the user's
            history (:mod:`ctxrec.explore`; what ``explore="ucb"`` adds per unit of
            ``explore_scale``, and the spread of a Thompson draw's score).

        Raises
        ------
        UnknownIdError
            An unknown or removed item.
        InputError, ContextError
            As in :meth:`recommend`.
        """
        self.check_fitted()
        user = _check_id(user, "user", none_ok=True)
        i = self.item_index(item)
        context = self._check_context(context, ignore_unknown)
        u = self.user_index(user)
        ctx, text = self._features(context)
        vec, bias = self.engine_.item_vector(self.item_ids_[i])
        parts = self.model_contributions(u, ctx, text, vec, float(bias))
        full = parts.pop("score")
        match = 0.0
        if text is not None and self.text_match_weight_ and self.item_text_ is not None:
            match = self.text_match_weight_ * float(_unit_rows(text)[0] @ self.item_text_[i])
        return {"user": jsonable(user), "item_id": jsonable(self.item_ids_[i]), "cold_start": u < 0,
                "score": full + match, "contributions": {"text_match": match, **parts},
                "uncertainty": float(_explore.ucb_bonus(self.user_posterior(user), vec[None], 1.0)[0])}

    def feedback(self, user: Any, item: Any, context: Mapping[str, Any] | None = None,
                 label: float = 1.0, *, ignore_unknown: bool | None = None) -> dict[str, Any]:
        """Record that ``user`` interacted with ``item``; refits that user's vector (items fixed).

        The event is checked first (ids well formed, item known, label a finite number,
        context valid, a new user id representable, at most :data:`MAX_ID_LENGTH` characters
        and within ``max_new_users``): a rejected event raises and changes nothing (no user
        is created, nothing is logged). With an event log
        attached (:meth:`open_event_log`) it is then committed to the log, and only then
        applied. The fold-in runs on a copy of the user's rows without the lock that
        ``recommend`` takes; only the swap of the result is under it. A new user is added;
        the user's history keeps time order (the item moves to its end) and the fold-in refits
        on the latest ``fold_in_history`` items.

        Parameters
        ----------
        user, item : int or str
            Raw ids (ids arriving as digit strings match integer ids).
        context : mapping or None
            Context of the interaction: the spec's keys, and ``"timestamp"`` (the event time a
            retrain reads) even when the spec has no such field.
        label : float
            1 = positive, 0 = negative; a rating for ``loss="mse"`` models. A real number
            (not a string, not a bool), finite.
        ignore_unknown : bool or None
            Accept (and log) context keys the spec does not read; None: the constructor's
            ``ignore_unknown_context``.

        Returns
        -------
        dict
            ``user``, ``item_id``, ``new_user``, ``known_items`` (length of the user's history)
            and ``event`` (the log's sequence number, or None without a log).

        Raises
        ------
        UnknownIdError
            Unknown item (a KeyError).
        InputError
            A malformed user or item id, a bad label, an invalid context (ContextError), a
            new user id too long or not representable, or ``max_new_users`` reached.
        """
        self.check_fitted()
        with self._write_lock:  # checked under it: a new user's id depends on the users added before
            checked = self._check_event(user, item, context, label, ignore_unknown=ignore_unknown)
            seq = None
            if self._events is not None:
                try:
                    seq = self._events.append(checked[0], _check_id(item, "item"), checked[4], checked[2])
                except ValueError as e:  # a value the log cannot store (JSON): nothing was written
                    raise InputError(str(e), field="context") from None
            out = self._apply_event(*checked[:4], copy_model=True)
            if seq is not None:
                self._events_applied += 1
                self._event_origin = (self._events.log_id, seq)
        if self._posteriors:  # this recommender explores: the user's next request reads the new factor
            try:
                self.user_posterior(checked[0])
            except np.linalg.LinAlgError as e:  # the event is applied either way; the request recomputes
                log.warning("user_posterior after feedback of %r: %s", checked[0], e)
        return {**out, "event": seq}

    def _check_event(self, user: Any, item: Any, context: Mapping[str, Any] | None, label: float, *,
                     ignore_unknown: bool | None = None, replay: bool = False
                     ) -> tuple[Any, int, float, np.ndarray | None, dict[str, Any]]:
        """Validate a feedback event without changing anything: (user, item row, label, new ids, context).

        replay: an event of the attached log (accepted when it was logged): its context keys
        are not checked against the spec and the new-user limits do not apply, so that a
        replay reproduces the state the live object had.
        """
        user = _check_id(user, "user")
        i = self.item_index(item)
        label = _check_label(label)
        ctx = self._check_context(context, True if replay else ignore_unknown, also_known=("timestamp",), text=False)
        self._features(ctx, encode=False)  # raises ContextError naming the field (no text to encode:
        # the fold-in does not read the context)
        new_ids = None
        if self.user_index(user) < 0:
            if not replay:
                self._check_new_user(user)
            ids = self.user_ids_
            if not (isinstance(user, int) and ids.dtype.kind in "iu"):
                ids = ids.astype(object)  # a new id of another type than the trained ones
            try:
                new_ids = np.append(ids, np.array([user], dtype=ids.dtype))
            except (OverflowError, ValueError):
                raise InputError(f"user: id {_short(user)} does not fit the user id type {ids.dtype}",
                                 field="user", value=user) from None
        return user, i, label, new_ids, ctx

    def _check_new_user(self, user: Any) -> None:
        """The limits on a user ``feedback`` would add: id length and ``max_new_users``."""
        if isinstance(user, str) and len(user) > MAX_ID_LENGTH:
            raise InputError(f"user: a new user id may have at most {MAX_ID_LENGTH} characters, got {len(user)}",
                             field="user", value=user[:MAX_ID_LENGTH] + "...")
        limit = self.max_new_users
        if limit is None:
            return
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise InputError(f"max_new_users must be an integer >= 0 or None, got {_short(limit)}",
                             field="max_new_users", value=limit)
        added = len(self.user_ids_) - getattr(self, "_base_users", len(self.user_ids_))
        if added >= limit:
            raise InputError(f"user: unknown user {_short(user)} refused: this recommender has added "
                             f"max_new_users={limit} new users since it was fitted or loaded (save it, or "
                             "retrain, to make them part of the model; or raise max_new_users)",
                             field="user", value=user)

    def _apply_event(self, user: Any, i: int, label: float, new_ids: np.ndarray | None, *,
                     copy_model: bool) -> dict[str, Any]:
        """Fold one checked event into the model (caller holds ``_write_lock`` or is alone).

        copy_model: refit on a copy and swap it in (serving); False: update in place (replay
        before the object serves).
        """
        u = self.user_index(user)
        new = u < 0
        with self._lock:
            history = [] if new else list(self._history[u])
        positive = bool(self.model_.is_positive(np.array([label]))[0])
        if positive:
            history = [x for x in history if x != i] + [i]  # time order: the item is now the latest
        # the fold-in learns from the items the model has id factors for; an item added to the
        # catalog after fit (no id factor) is recorded (history, seen) but teaches the model nothing
        known = self.model_.n_items_
        n = int(self.fold_in_history)
        record = [x for x in history if x < known]  # what the model's positives become
        window = record[-n:] if n else []  # 0: feedback refits nothing
        # bpr / softmax learn from positives only: a label-0 event changes neither the record nor
        # the model (it used to train a user without history on the item as if it were a click)
        learns = positive or self.model_.loss_spec.needs_labels
        items, labels = (list(window), [1.0] * len(window)) if learns else ([], [])
        if self.model_.loss_spec.needs_labels and i < known:  # logloss / mse learn the event's own label
            if positive and window and window[-1] == i:
                labels[-1] = label
            elif not positive:  # an explicit negative, learned as one
                items, labels = items + [i], labels + [label]
        kw = dict(user=None if new else u, label=np.array(labels, np.float32), history=np.array(record, np.int64))
        if not items and not new and not (positive and i < known):  # nothing to learn, the positives unchanged
            model, u2 = self.model_, u
        elif copy_model:
            model, u2 = self.model_.refit_user(np.array(items, np.int64), **kw)
        else:
            model, u2 = self.model_, self.model_.fold_in(np.array(items, np.int64), **kw)
        with self._lock:
            self.model_ = model
            if new:
                self.user_ids_ = new_ids
                self._user_pos[user] = u2
                self._history.append([])
            if positive:
                self._history[u2] = history
                self.engine_.add_seen(u2, self.item_ids_[[i]])
        return {"user": jsonable(user), "item_id": jsonable(self.item_ids_[i]), "new_user": new,
                "known_items": len(self._history[u2])}

    # ------------------------------------------------------------------ event log
    def open_event_log(self, path: str | os.PathLike | EventLog, *, replay: bool = True) -> int:
        """Attach a durable event log: later ``feedback`` is logged before it is applied.

        With ``replay`` the log's events after the position this model already contains are
        applied first (all of them for a model that never saw this log). A model that was
        built from a different log (its recorded log id differs) is refused. Events that no
        longer apply (an item missing from this catalog) are skipped with a warning.

        Parameters
        ----------
        path : str, PathLike or EventLog
            The SQLite log (created when missing; ``~`` accepted).
        replay : bool
            Apply the events the model does not contain yet.

        Returns
        -------
        int
            The number of events replayed.
        """
        self.check_fitted()
        elog = path if isinstance(path, EventLog) else EventLog(path)
        origin = getattr(self, "_event_origin", None)
        if origin is not None and origin[0] != elog.log_id:
            raise ValueError(f"event log {elog.path}: this model was built from another log (id {origin[0]}, "
                             f"this one is {elog.log_id}); give the log it was served with")
        with self._write_lock:
            self._events = elog
            self._events_applied = 0
            self._event_origin = (elog.log_id, origin[1] if origin is not None else 0)
        return self.replay_events() if replay else 0

    def replay_events(self) -> int:
        """Apply the attached log's events after this model's position (a catch-up).

        Called by :meth:`open_event_log`; a server calls it again right before swapping in
        a model it loaded while the old one kept logging feedback. The events are applied in
        place (no copy per event): call it before this object serves requests.

        Returns
        -------
        int
            The number of events applied (skipped ones not counted).
        """
        if getattr(self, "_events", None) is None:
            raise ValueError("no event log attached: call open_event_log(path) first")
        n = skipped = 0
        with self._write_lock:
            elog, after = self._events, self._event_origin[1]
            for ev in elog.read(after=after):
                try:
                    if ev.kind == "feedback":
                        self._apply_event(*self._check_event(ev.user, ev.item, ev.context, ev.label,
                                                             replay=True)[:4], copy_model=False)
                    else:
                        self._apply_catalog(ev)
                    n += 1
                except (KeyError, ValueError) as e:
                    skipped += 1
                    log.warning("event %d (user %r, item %r) skipped on replay: %s", ev.seq, ev.user, ev.item, e)
                after = ev.seq
            self._events_applied += n
            self._event_origin = (elog.log_id, after)
        if n or skipped:
            log.info("replayed %d event(s) from %s (%d skipped); position %d", n, elog.path, skipped, after)
        return n

    def retrain(self, dataset: Dataset, event_log: str | os.PathLike | EventLog, *,
                validation: Dataset | None = None) -> "Recommender":
        """A new Recommender with these parameters, fitted on ``dataset`` plus the logged events.

        Every event of the log so far becomes an interaction (new users join the catalog;
        negative events count only where the data has labels or ratings). The new model
        records the log position it contains, so loading or swapping it in with the same log
        replays exactly the events that arrived during the retrain.

        Parameters
        ----------
        dataset : Dataset
            The original training data (same item catalog as this recommender).
        event_log : path or EventLog
            The service's feedback log.
        validation : Dataset or None
            Held-out interactions for early stopping.

        Returns
        -------
        Recommender
            Fitted, not yet saved.
        """
        self.check_fitted()
        elog = event_log if isinstance(event_log, EventLog) else EventLog(event_log, readonly=True)
        until = elog.position()
        ds = self._with_events(dataset, elog.read(until=until))
        new = Recommender(copy.deepcopy(self.context), model=ContextFM(**self.model_.get_params()),
                          encoder=getattr(self, "_encoder", None), item_text=self.item_text,
                          user_text=self.user_text, text_match_weight=self.text_match_weight,
                          engine_params=self.engine_params, fold_in_history=self.fold_in_history,
                          ignore_unknown_context=self.ignore_unknown_context, max_new_users=self.max_new_users)
        new.fit(ds, validation=validation)
        for ev in elog.read(until=until):  # catalog writes since the data: applied to the new catalog
            if ev.kind != "feedback":
                try:
                    new._apply_catalog(ev)
                except (KeyError, ValueError, TypeError) as e:
                    log.warning("retrain: catalog write %d (%s) not applied: %s", ev.seq, ev.kind, e)
        new.training_source_ = dataset.meta.get("source")
        new._event_origin = (elog.log_id, until)
        return new

    def _with_events(self, ds: Dataset, events: Iterable[Any]) -> Dataset:
        """``ds`` plus logged events as interactions (ids matched as ``feedback`` matches them)."""
        users, items, ts, labels, ctx_rows, new_users = [], [], [], [], [], {}
        skipped = 0
        time_keys = [*self.context_.time_columns, "timestamp"]
        for ev in events:
            if ev.kind != "feedback":
                continue  # catalog writes: retrain applies them after the fit
            try:
                raw_item = self.item_ids_[self.item_index(ev.item)]
                di = int(ds.item_index(jsonable(raw_item), strict=True))
            except (KeyError, ValueError):
                skipped += 1
                continue
            if float(ev.label) <= 0 and ds.label is None and ds.rating is None:
                continue  # implicit data has no negatives
            u = self.user_index(ev.user)
            raw_user = jsonable(self.user_ids_[u]) if u >= 0 else ev.user
            try:
                du = int(ds.user_index(raw_user, strict=True))
            except (KeyError, ValueError):
                du = new_users.setdefault(raw_user, ds.n_users + len(new_users))
            users.append(du)
            items.append(di)
            ts.append(_event_time(ev, time_keys))
            labels.append(float(ev.label))
            ctx_rows.append({c: ev.context.get(c) for c in ds.context.columns})
        if skipped:
            log.warning("retrain: %d logged event(s) name items outside the catalog; left out", skipped)
        n_new = len(new_users)
        user_ids = ds.user_ids
        if n_new:  # int64 ids stay int64 when every new id is an integer too, else object
            user_ids = np.concatenate([user_ids.astype(object), np.array(list(new_users), dtype=object)])
            if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in user_ids):
                user_ids = user_ids.astype(np.int64)
        lab = np.asarray(labels, np.float32)

        def cat(old: np.ndarray | None, add: np.ndarray) -> np.ndarray | None:
            return None if old is None else np.concatenate([old, add.astype(old.dtype)])
        user_table = ds.user_table
        if user_table is not None and n_new:
            user_table = pd.concat([user_table, pd.DataFrame({"user_id": list(new_users)})], ignore_index=True)
        user_attrs = {k: type(a).from_index_lists(k, a.vocab, a.lists() + [np.zeros(0, np.int32)] * n_new)
                      for k, a in ds.user_attrs.items()}
        return Dataset(
            user_ids=user_ids, item_ids=ds.item_ids,
            users=np.concatenate([ds.users, np.asarray(users, np.int32)]),
            items=np.concatenate([ds.items, np.asarray(items, np.int32)]),
            rating=cat(ds.rating, lab), label=cat(ds.label, (lab > 0).astype(np.float32)),
            count=cat(ds.count, np.ones(len(lab), np.int64)), timestamp=cat(ds.timestamp, np.asarray(ts, np.int64)),
            context=pd.concat([ds.context, pd.DataFrame(ctx_rows, columns=ds.context.columns)], ignore_index=True),
            item_table=ds.item_table, item_text=ds.item_text, item_text_fields=ds.item_text_fields,
            item_attrs=ds.item_attrs, user_table=user_table,
            user_text=None if ds.user_text is None else list(ds.user_text) + [""] * n_new,
            user_attrs=user_attrs, name=ds.name, meta=ds.meta)

    def event_status(self) -> dict[str, Any] | None:
        """Where this model stands in its event log, or None without one.

        Returns
        -------
        dict or None
            ``path``, ``log_id``, ``log_position`` (last event in the log), ``applied_position``
            (last event this model contains) and ``applied`` (events this object applied,
            replayed and live). Without an attached log but with a recorded position (a
            retrained model, a model saved with a log) only ``log_id`` and
            ``applied_position``; None when the model never saw a log.
        """
        origin = getattr(self, "_event_origin", None)
        if getattr(self, "_events", None) is None:
            return None if origin is None else {"path": None, "log_id": origin[0], "log_position": None,
                                                "applied_position": int(origin[1]), "applied": 0}
        origin = origin or (self._events.log_id, 0)
        return {"path": str(self._events.path), "log_id": self._events.log_id,
                "log_position": self._events.position(), "applied_position": int(origin[1]),
                "applied": int(self._events_applied)}

    def filter_mask(self, filter: Mapping[str, Any] | None) -> np.ndarray:
        """Which items are in the catalog now and pass ``filter`` (as in :meth:`recommend`).

        Returns
        -------
        bool array [n_slots]
            True for each live item slot that passes the filter.

        Raises
        ------
        ValueError
            An unknown filter name or a filter that is not a mapping (the engine's message).
        """
        self.check_fitted()
        return self.engine_.filter_mask(filter)

    # ------------------------------------------------------------------ live catalog
    def _catalog_id(self, raw: Any, row: int) -> Any:
        """A raw id from an item frame as the catalog's id type (int catalogs accept digit strings)."""
        name = f"items.{row}.item_id"
        if isinstance(raw, (bool, np.bool_)) or _missing(raw):
            raise InputError(f"item_id: row {row} has no valid id ({_short(raw)})", field=name, value=raw)
        if isinstance(raw, (float, np.floating)) and np.isfinite(raw) and float(raw).is_integer():
            raw = int(raw)  # a pandas column of ints with a missing cell is float
        raw = _check_id(raw, name)
        if self.item_ids_.dtype.kind in "iu":
            key = _int_id(raw.strip() if isinstance(raw, str) else raw)
            if key is None:
                raise InputError(f"item_id: this catalog has integer ids, got {_short(raw)} (row {row})",
                                 field=name, value=raw)
            return key
        return str(raw)

    def _apply_catalog(self, ev: Any) -> None:
        """Apply a logged catalog write again (replay), without logging it twice."""
        self._replaying = True
        try:
            if ev.kind == "items_upsert":
                self._write_items(pd.DataFrame(ev.context["items"]), ev.context["mode"])
            elif ev.kind == "items_remove":
                self.remove_items(ev.context["items"])
            else:
                raise ValueError(f"unknown event kind {ev.kind!r}")
        finally:
            self._replaying = False

    def _log_catalog(self, kind: str, payload: dict[str, Any]) -> None:
        """Log an applied catalog write in the attached event log (under ``_write_lock``), so a
        restart, a reload or a retrain replays it in order with the feedback."""
        if getattr(self, "_events", None) is None or getattr(self, "_replaying", False):
            return
        seq = self._events.append_catalog(kind, payload)
        self._events_applied += 1
        self._event_origin = (self._events.log_id, seq)

    def _write_items(self, frame: Any, mode: str) -> dict[str, int]:
        """Validate, vectorise and write a batch of items (see :meth:`upsert_items`)."""
        self.check_fitted()
        if not isinstance(frame, pd.DataFrame):
            raise InputError(f"items must be a pandas DataFrame, got {type(frame).__name__}", field="items")
        if self.item_attrs_ is None or self._attr_rows is None:
            raise InputError("this model was saved by a ctxrec without live catalogs (no item attribute "
                             "vocabularies): fit it again to add or update items", field="items")
        if "item_id" not in frame.columns:
            raise InputError(f"items: no 'item_id' column (columns: {_short(list(map(str, frame.columns)), 200)})",
                             field="items")
        allowed = set(map(str, self.items_.columns)) | set(self.item_attrs_)
        unknown = [str(c) for c in frame.columns if str(c) not in allowed]
        if unknown:
            raise InputError(f"items: unknown column(s) {_short(unknown, 200)}; the item table has {sorted(allowed)}",
                             field=f"items.{unknown[0]}" if unknown[0].isprintable() else "items")
        for c in frame.columns:  # strings that are not text (lone surrogates) in any cell
            for r, v in enumerate(frame[c].tolist() if frame[c].dtype == object else ()):
                if isinstance(v, str):
                    check_text(v, f"items.{r}.{c}")
        if "text" in frame.columns:
            bad = [(r, v) for r, v in enumerate(frame["text"].tolist()) if not _missing(v) and not isinstance(v, str)]
            if bad:
                raise InputError(f"text: row {bad[0][0]} holds {type(bad[0][1]).__name__} {_short(bad[0][1])}, "
                                 "expected a string", field=f"items.{bad[0][0]}.text", value=bad[0][1])
        ids = [self._catalog_id(x, r) for r, x in enumerate(frame["item_id"].tolist())]
        if len(set(ids)) != len(ids):
            dup = sorted({x for x in ids if ids.count(x) > 1}, key=str)[:5]
            raise InputError(f"item_id: duplicated in the batch: {dup}", field="items", value=dup)
        if not ids:
            return {"added": 0, "updated": 0}
        with self._write_lock:  # one catalog writer at a time (and never beside a feedback's swap)
            current = [self.engine_.contains(x) for x in ids]
            if mode == "add" and any(current):
                raise InputError(f"item_id: already in the catalog: {[x for x, c in zip(ids, current) if c][:5]} "
                                 "(use update_items or upsert_items)", field="items")
            if mode == "update" and not all(current):
                raise UnknownIdError(f"item_id: not in the catalog: {[x for x, c in zip(ids, current) if not c][:5]}",
                                     field="items")
            cols = [str(c) for c in self.items_.columns]
            given = [str(c) for c in frame.columns]
            rows = []
            for r, rec_row in enumerate(frame.to_dict("records")):
                rec_row = {str(c): v for c, v in rec_row.items()}
                if current[r]:  # an update keeps the values it does not give
                    old = self.items_.iloc[self.engine_.item_index(ids[r])].to_dict()
                    row = {c: (old.get(c) if c not in given or _missing(rec_row.get(c)) else rec_row[c]) for c in
                           set(cols) | set(given)}
                else:
                    row = {c: (None if c not in given or _missing(rec_row.get(c)) else rec_row[c])
                           for c in set(cols) | set(given)}
                row["item_id"] = ids[r]
                row["text"] = "" if _missing(row.get("text")) else str(row["text"])
                slot = self.engine_.item_index(ids[r]) if current[r] else -1
                row["__attrs__"] = {  # attribute values: given, else kept (an update), else none
                    name: _attr_values(rec_row[name]) if name in given and not _missing(rec_row.get(name))
                    else list(vals[slot]) if slot >= 0 else [] for name, vals in self._attr_rows.items()}
                rows.append(row)
            tables, unit = self._item_tables(rows, ids)
            filters = {name: [row["__attrs__"][name] for row in rows] for name in self.engine_.filter_names_}
            kw = dict(item_text=unit if self._engine_has_text() else None, item_filters=filters)
            out = self.engine_.upsert_items(tables.joined(), tables.item_bias, np.asarray(ids, dtype=object)
                                            if self.item_ids_.dtype.kind == "U" else np.asarray(ids, np.int64), **kw)
            slots = np.array([self.engine_.item_index(x) for x in ids], np.int64)
            self._store_rows(slots, rows, unit)
            self._log_catalog("items_upsert", {"mode": mode, "items": [
                {str(c): jsonable(v) for c, v in r.items()} for r in frame.to_dict("records")]})
        log.info("catalog: %d item(s) added, %d updated", out["added"], out["updated"])
        return out

    def _item_tables(self, rows: list[dict[str, Any]], ids: list[Any]) -> tuple[Any, np.ndarray | None]:
        """(ServingTables, unit text embeddings [m, d] or None) of item rows: the cold-start vectors."""
        enc = getattr(self, "_encoder", None)
        texts = [row["text"] for row in rows]
        emb = None
        if self.item_text_ is not None:  # the model reads item text
            if enc is not None:
                emb = encode_texts(texts, enc)
            else:  # loaded without its encoder: the new items' texts cannot be read
                if any(texts):
                    log.warning("catalog: no text encoder loaded; the new items' texts are not encoded")
                emb = np.zeros((len(texts), self.item_text_.shape[1]), np.float32)
        indptr, indices, off = [0], [], 0
        per_row: list[list[int]] = [[] for _ in rows]
        for name, vocab in self.item_attrs_.items():
            pos = {v: j for j, v in enumerate(vocab)}
            for r, row in enumerate(rows):
                per_row[r].extend(off + pos[v] for v in row["__attrs__"][name] if v in pos)
            off += len(vocab)
        for p in per_row:
            indices.extend(p)
            indptr.append(len(indices))
        csr = (np.asarray(indptr, np.int64), np.asarray(indices, np.int64), np.ones(len(indices), np.float32), off) \
            if self.model_.layout_.n_item_attrs else None
        known = self.model_.n_items_
        slots = [self.engine_.item_index(x) if self.engine_.contains(x) else -1 for x in ids]
        items = np.array([s if 0 <= s < known else -1 for s in slots], np.int64)
        tables = self.model_.item_vectors(csr, emb if self.model_.item_text_.shape[1] else None, items=items)
        return tables, (None if emb is None else _unit_rows(emb))

    def _store_rows(self, slots: np.ndarray, rows: list[dict[str, Any]], unit: np.ndarray | None) -> None:
        """Write item rows (table, text) at their slots (new slots at the end), swapping whole tables."""
        n = self.engine_.n_slots_
        cols = {str(c): self.items_[c].tolist() for c in self.items_.columns}
        for c, vals in cols.items():
            vals.extend([None] * (n - len(vals)))
            for s, row in zip(slots.tolist(), rows):
                vals[s] = row.get(c)
        items = pd.DataFrame(cols)
        attr_rows = {}
        for name, vals in self._attr_rows.items():
            vals = vals + [[] for _ in range(n - len(vals))]
            for s, row in zip(slots.tolist(), rows):
                vals[s] = row["__attrs__"][name]
            attr_rows[name] = vals
        text = self.item_text_
        if text is not None and unit is not None:
            text = np.concatenate([text, np.zeros((n - len(text), text.shape[1]), np.float32)]) if n > len(text) \
                else text.copy()
            text[slots] = unit
        with self._lock:
            self.items_, self.item_text_, self._attr_rows = items, text, attr_rows

    def add_items(self, items: pd.DataFrame) -> dict[str, int]:
        """Add items to the catalog; they can be recommended once the call returns.

        Parameters
        ----------
        items : pandas.DataFrame
            One row per item: ``item_id`` (required, new ids), ``text`` (encoded with this
            recommender's encoder: the item text the model and the text-match term read),
            the categorical attributes (``item_attrs_``: a value or a list of values; they
            feed the model's attribute factors and the named filters) and any other column
            of the item table (stored for ``item_info``). Unknown columns are refused.

        Returns
        -------
        dict
            ``{"added": n, "updated": 0}``.

        Raises
        ------
        ValueError
            An id already in the catalog, a duplicated or invalid id, an unknown column, a
            non-string text: nothing is changed.
        """
        return self._write_items(items, "add")

    def update_items(self, items: pd.DataFrame) -> dict[str, int]:
        """Replace items in the catalog (columns as in :meth:`add_items`; missing cells keep their values).

        A fitted item keeps its id factor; its vector is recomputed from it and the new
        attributes and text. Raises KeyError (and changes nothing) for an id not in the catalog.

        Returns
        -------
        dict
            ``{"added": 0, "updated": n}``.
        """
        return self._write_items(items, "update")

    def upsert_items(self, items: pd.DataFrame) -> dict[str, int]:
        """:meth:`add_items` for the new ids and :meth:`update_items` for the others, as one batch.

        Returns
        -------
        dict
            ``{"added": a, "updated": u}``.
        """
        return self._write_items(items, "upsert")

    def remove_items(self, item_ids: Iterable[Any]) -> int:
        """Remove items from the catalog: never recommended once the call returns.

        Their rows stay in ``items_`` (slots are permanent) but ``item_info``, ``feedback``
        and ``similar_items`` treat them as unknown; adding the id again brings it back.

        Returns
        -------
        int
            How many were removed.

        Raises
        ------
        UnknownIdError
            An id not in the catalog now (a KeyError; nothing is removed).
        InputError
            ``item_ids`` not a sequence, or a malformed id (nothing is removed).
        """
        self.check_fitted()
        raw = _id_sequence(item_ids, "item_ids")
        with self._write_lock:
            slots = []
            for j, x in enumerate(raw):
                slots.append(self.item_index(x, f"item_ids.{j}"))  # names the id; digit strings match int ids
            n = self.engine_.remove_items(self.item_ids_[np.asarray(slots, np.int64)]) if slots else 0
            if n:
                self._log_catalog("items_remove", {"items": [jsonable(x) for x in raw]})
        log.info("catalog: %d item(s) removed", n)
        return n

    def similar_items(self, item: Any, k: int = 10, *, by: str = "vectors", filter: Mapping[str, Any] | None = None,
                      exclude: Iterable[Any] | None = None, allow: Iterable[Any] | None = None) -> dict[str, Any]:
        """Items most similar to ``item`` (never itself).

        Parameters
        ----------
        item : int or str
            Raw item id.
        k : int
        by : {"vectors", "both", "text"}
            The model's item vectors (inner product), those plus the text-match term, or the
            item texts alone (cosine); "both"/"text" need item text.
        filter, exclude, allow : as in :meth:`recommend`.

        Returns
        -------
        dict
            ``{"item_id": id, "by": by, "items": [{"item_id", "score"}, ...]}``, best first.

            With ``"unknown_ids"`` (as ``Recommendation.unknown_ids``) when ``exclude``/``allow``
            named ids not in the catalog.

        Raises
        ------
        UnknownIdError
            Unknown or removed item (a KeyError).
        InputError
            A malformed id, k, by, exclude/allow or filter; ``by`` needing text the model lacks.
        """
        self.check_fitted()
        i = self.item_index(item)
        k = _check_k(k)
        if by not in ("vectors", "both", "text"):
            raise InputError(f"by must be 'vectors', 'both' or 'text', got {_short(by)}", field="by", value=by)
        if by != "vectors" and not self._engine_has_text():
            raise InputError(f"by={by!r} needs item text embeddings; this model has none", field="by", value=by)
        filter = self._check_filter(filter)
        exclude, unknown_ex = self._known_ids(exclude, "exclude")
        allow, unknown_allow = self._known_ids(allow, "allow")
        raw = self.item_ids_[i]
        ids, scores = self.engine_.similar_items(raw, k, by=by, filter=filter, exclude=exclude, allow=allow)
        out = {"item_id": jsonable(raw), "by": by,
               "items": [{"item_id": jsonable(x), "score": float(s)} for x, s in zip(ids.tolist(), scores)]}
        unknown = _unknown_report(exclude=unknown_ex, allow=unknown_allow)
        if unknown:
            out["unknown_ids"] = unknown
        return out

    def item_info(self, item: Any, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """The stored attributes and text of an item, as plain JSON types.

        Parameters
        ----------
        item : int or str
            Raw item id.
        fields : sequence of str or None
            Only these columns of the item table (None: all).

        Returns
        -------
        dict
            Column -> value (lists for multi-valued attributes, ISO strings for times,
            None for missing values).

        Raises
        ------
        KeyError
            Unknown item. ValueError: an unknown field, named.
        """
        self.check_fitted()
        if fields is not None:
            missing = [f for f in fields if f not in self.items_.columns]
            if missing:
                raise ValueError(f"fields: unknown item field(s) {missing}; the item table has "
                                 f"{list(map(str, self.items_.columns))}")
        row = self.items_.iloc[self.item_index(item)]
        if fields is not None:
            row = row[list(fields)]
        return {str(k): jsonable(v) for k, v in row.to_dict().items()}

    def summary(self) -> dict[str, Any]:
        """What the fitted recommender holds, for logs and ``/healthz``.

        Returns
        -------
        dict
            Catalog and user counts, context fields, the text-match weight, the engine, the
            encoder and the training source.
        """
        self.check_fitted()
        return {"n_items": int(self.engine_.n_items_), "n_users": int(len(self.user_ids_)),
                "context_fields": self.context_.columns, "text_match_weight": self.text_match_weight_,
                "engine": repr(self.engine_),
                "encoder_provider": getattr(getattr(self, "_encoder", None), "provider", None),
                "events": self.event_status()}

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Everything needed to serve, in one versioned directory (atomic, checksummed).

        With an event log attached, the directory records the log's id and the position
        this model contains, so loading it with that log replays only later events.
        """
        self.check_fitted()
        path = Path(path).expanduser()
        params = {"item_text": self.item_text, "user_text": self.user_text,
                  "text_match_weight": self.text_match_weight, "engine_params": dict(self.engine_params or {}),
                  "fold_in_history": self.fold_in_history, "ignore_unknown_context": self.ignore_unknown_context,
                  "max_new_users": self.max_new_users}
        origin = getattr(self, "_event_origin", None)
        meta = {"params": params, "text_match_weight_": self.text_match_weight_,
                "has_encoder": getattr(self, "_encoder", None) is not None,
                "training_source": getattr(self, "training_source_", None),
                "item_attrs": self.item_attrs_,
                "event_log": None if origin is None else {"log_id": origin[0], "position": int(origin[1])}}
        with atomic_dir(path, FORMAT, VERSION, meta) as d:
            (d / "context.json").write_text(self.context_.to_json())
            self.model_.save(d / "model")
            with self._lock:  # one consistent catalog: the engine, the item rows and texts by slot
                self.engine_.save(d / "engine")
                items, item_text, attr_rows = self.items_.copy(), self.item_text_, self._attr_rows
                history = [list(h) for h in self._history]
            items["item_id"] = items["item_id"].astype(str) if items["item_id"].dtype == object else items["item_id"]
            items.to_parquet(d / "items.parquet")
            np.save(d / "user_ids.npy", np.asarray(self.user_ids_).astype(str)
                    if self.user_ids_.dtype == object else self.user_ids_, allow_pickle=False)
            ptr, idx = csr.from_lists(history)
            np.save(d / "seen_indptr.npy", ptr)
            np.save(d / "seen_indices.npy", idx)
            if item_text is not None:
                np.save(d / "item_text.npy", item_text)
            (d / "item_attr_values.json").write_text(json.dumps(attr_rows))
            enc = getattr(self, "_encoder", None)
            if enc is not None:
                _copy_encoder(enc, d / "encoder")
                meta["encoder_variant"] = enc.variant

    @classmethod
    def load(cls, path: str | Path, *, event_log: str | os.PathLike | None = "auto") -> "Recommender":
        """Load a directory written by ``save`` (no PyTorch needed); verifies every checksum.

        Parameters
        ----------
        path : str or Path
            The model directory (``~`` accepted).
        event_log : "auto", path or None
            The feedback log to attach and replay (:meth:`open_event_log`). "auto": the log
            beside the directory (:func:`ctxrec.events.default_log_path`) when it exists;
            None: no log (feedback then lives in memory only).

        Returns
        -------
        Recommender
            The loaded recommender, with the log's later events applied.
        """
        path = Path(path).expanduser()
        man = read_manifest(path, FORMAT, (1, VERSION), meta_schema=META_SCHEMA)
        meta = man["meta"]
        if meta["has_encoder"] and "encoder_variant" not in meta:
            raise CorruptArtifactError(f"{path}: meta['encoder_variant'] is missing (the model has an encoder)",
                                       field="meta.encoder_variant")
        rec = cls(_read_part(path / "context.json", lambda p: ContextSpec.from_json(p.read_text())), **meta["params"])
        rec.context_ = rec.context
        rec.model_ = ContextFM.load(path / "model")
        rec.items_ = _read_part(path / "items.parquet", pd.read_parquet)
        rec.item_attrs_ = meta.get("item_attrs")  # None: saved by ctxrec before live catalogs
        values = path / "item_attr_values.json"
        rec._attr_rows = _read_part(values, lambda p: json.loads(p.read_text())) if values.is_file() else None
        if rec._attr_rows is not None and not (isinstance(rec._attr_rows, dict) and all(
                isinstance(v, list) for v in rec._attr_rows.values())):
            raise CorruptArtifactError(f"{values}: expected an object of attribute -> list of rows",
                                       field="files.item_attr_values.json")
        rec.user_ids_ = load_array(path / "user_ids.npy")
        ip, ix = load_array(path / "seen_indptr.npy"), load_array(path / "seen_indices.npy")
        rec.item_text_ = load_array(path / "item_text.npy", finite=True) if (path / "item_text.npy").is_file() \
            else None
        if meta["has_encoder"]:
            from ctxrec.encoder import TextEncoder
            rec.encoder = str(path / "encoder")
            rec._encoder = TextEncoder.load(path / "encoder", variant=meta["encoder_variant"])
        else:
            rec.encoder = None
        rec.text_match_weight_ = float(meta["text_match_weight_"])
        rec.engine_ = Engine.load(path / "engine", verify=False)  # verified above with the whole directory
        rec._check_parts(path, ip, ix)
        rec._history = [ix[ip[u]:ip[u + 1]].tolist() for u in range(len(ip) - 1)]
        rec._sync_seen()
        rec.training_source_ = meta.get("training_source")
        origin = meta.get("event_log")
        rec._event_origin = None if not origin else (str(origin["log_id"]), int(origin["position"]))
        rec._index_users()
        if event_log == "auto":
            event_log = default_log_path(path) if default_log_path(path).is_file() else None
        if event_log is not None:
            rec.open_event_log(event_log)
        return rec

    def _check_parts(self, path: Path, seen_indptr: np.ndarray, seen_indices: np.ndarray) -> None:
        """The loaded parts against each other: users, history, items and texts by slot."""
        def bad(msg: str) -> None:
            raise CorruptArtifactError(f"{path}: {msg}")

        n_users, n_slots = len(self.user_ids_), len(self.item_ids_)
        if self.user_ids_.ndim != 1 or n_users != self.model_.n_users_:
            bad(f"user_ids.npy holds {self.user_ids_.shape} ids, the model has {self.model_.n_users_} users")
        why = csr.problem(seen_indptr, seen_indices, n_users, n_slots, names=("seen_indptr.npy", "seen_indices.npy"))
        if why is not None:
            bad(f"{why} (the users' histories)")
        if len(self.items_) != n_slots:
            bad(f"items.parquet has {len(self.items_)} rows, the engine has {n_slots} item slots")
        if self.item_text_ is not None and (self.item_text_.ndim != 2 or len(self.item_text_) != n_slots):
            bad(f"item_text.npy has shape {self.item_text_.shape}, expected ({n_slots}, d)")

    def __repr__(self) -> str:
        state = f"n_users={len(self.user_ids_)}, n_items={self.engine_.n_items_}" if hasattr(self, "engine_") \
            else "unfitted"
        return f"Recommender({self.context!r}, {state})"
