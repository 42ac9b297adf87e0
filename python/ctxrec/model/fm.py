"""ContextFM: a context-aware, text-aware factorization machine trained with numba kernels.

Inputs are plain arrays (see :class:`Interactions` and :class:`SideInfo`); the adapter
:func:`ctxrec.model.from_dataset` builds them from a :class:`ctxrec.data.Dataset`.

Model. Every instance (user ``u``, context values ``c_1..c_C``, request text ``q``, item
``i``) is the set of features

* user side: user id, user attributes (CSR, weighted), user text ``P_u^T e_u``, one value
  per categorical context field, request text ``P_q^T e_q``;
* item side: item id, item attributes (CSR, weighted), item text ``P_i^T e_i``;

and its score is the second-order FM ``w0 + sum_a x_a w_a + sum_{a<b} x_a x_b <v_a, v_b>``,
plus, with ``n_tri_factors = t > 0``, a three-way user x item x context term
``sum_f T[u, f] T[i, f] sum_c T[c, f]`` over factors of their own.
Dense text embeddings enter through learned projections ``P`` (and linear weights), so an
item that has only a description still gets a vector (item cold start), and a request's
words move the ranking.

Serving. For a fixed (user, context, request text) the score is
``query . item_vec + item_bias + const`` with ``query`` the user-side vector sum,
``item_vec`` the item-side vector sum, ``item_bias`` the item-side linear + intra-item
pairwise terms and ``const`` (item-independent) the rest: :meth:`ContextFM.export` and
:meth:`ContextFM.build_queries` give exactly these, for :class:`ctxrec.engine.Engine`. The
three-way term is ``<tri_query, item_tri>`` with ``tri_query = T[u] * sum_c T[c]``, an inner
product too: appended to the pairwise vectors (``ServingTables.joined`` / ``QueryBatch.joined``)
the whole score is one inner product, which HNSW retrieves on and the C++ kernel rescores exactly
(:meth:`ContextFM.to_engine` and the Recommender serve it that way). ``Engine`` can also take
``item_tri`` as a separate table that its kernel adds to the candidates only.
"""
from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numba
import numpy as np

from ctxrec._io import CorruptArtifactError, MetaField, atomic_dir, check_meta, load_array, read_manifest
from ctxrec import csr
from ctxrec.errors import NotFittedError
from ctxrec.model import _kernels as K
from ctxrec.model.layout import Layout
from ctxrec.metrics import auc, logloss, ranking_metrics_from_topk

__all__ = ["ContextFM", "Interactions", "SideInfo", "ServingTables", "QueryBatch"]

FORMAT = "ctxrec.ContextFM"
FORMAT_VERSION = 3  # 2: three-way factors (T.npy); 3: the layout recorded as sizes (meta "layout")

@dataclass(frozen=True)
class Loss:
    """What a training loss needs and does: the one place ``ContextFM(loss=...)`` is interpreted.

    code: the training kernel's loss id. sampled: trained on each positive against sampled
    negatives (positives only; needs >= 1 negative). labels: what ``Interactions.label`` must
    hold: "none" (implicit: labelled rows with label <= 0 are dropped), "binary" (0/1, the
    1s are the positives) or "rating" (any finite number; every row is a positive).
    negatives: the default ``n_negatives``. metric: the default early-stopping metric.
    """

    code: int
    sampled: bool
    labels: str
    negatives: int
    metric: str

    @property
    def needs_labels(self) -> bool:
        """Training (and fold-in) needs ``Interactions.label``."""
        return self.labels != "none"


LOSSES = {"bpr": Loss(K.LOSS_BPR, True, "none", 1, "ndcg@10"),
          "softmax": Loss(K.LOSS_SOFTMAX, True, "none", 64, "ndcg@10"),
          "mse": Loss(K.LOSS_MSE, False, "rating", 0, "rmse"),
          "logloss": Loss(K.LOSS_LOGLOSS, False, "binary", 0, "auc")}
_OPTS = {"adam": K.OPT_ADAM, "adagrad": K.OPT_ADAGRAD}
_EMPTY_F32_2D = np.zeros((0, 0), dtype=np.float32)
_EMPTY_I64 = np.zeros(0, np.int64)
_EMPTY_F64 = np.zeros(0, np.float64)
_FIELDS = ("user", "item", "context", "user_attrs", "item_attrs", "history")


# ----------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------
def _as_csr(m: Any, n_rows: int, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(indptr int64, indices int64, data float32, n_cols) from a scipy CSR matrix, a
    ``(indptr, indices, data, n_cols)`` tuple, a dense 2-D array, or None (no columns)."""
    if m is None:
        return np.zeros(n_rows + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0
    if hasattr(m, "indptr") and hasattr(m, "indices"):
        m = m.tocsr() if hasattr(m, "tocsr") else m
        indptr, indices, data, n_cols = m.indptr, m.indices, m.data, m.shape[1]
    elif isinstance(m, tuple) and len(m) == 4:
        indptr, indices, data, n_cols = m
        if data is None:
            data = np.ones(len(indices), np.float32)
    else:
        d = np.asarray(m)
        if d.ndim != 2:
            raise ValueError(f"{name}: expected CSR or a 2-D array, got shape {d.shape}")
        rows, cols = np.nonzero(d)
        indptr = csr.indptr_of(np.bincount(rows, minlength=d.shape[0]))
        indices, data, n_cols = cols, d[rows, cols], d.shape[1]
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    data = np.ascontiguousarray(data, dtype=np.float32)
    if len(indptr) != n_rows + 1:
        raise ValueError(f"{name}: {len(indptr) - 1} rows, expected {n_rows}")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_cols):
        raise ValueError(f"{name}: column index out of range [0, {n_cols})")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{name}: non-finite values")
    return indptr, indices, data, int(n_cols)


def _dense(x: Any, n_rows: int | None, name: str) -> np.ndarray:
    if x is None:
        return _EMPTY_F32_2D if n_rows is None else np.zeros((n_rows, 0), np.float32)
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D float array, got shape {a.shape}")
    if n_rows is not None and a.shape[0] != n_rows:
        raise ValueError(f"{name}: {a.shape[0]} rows, expected {n_rows}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: non-finite values")
    return a


@dataclass
class SideInfo:
    """The catalog: sizes, context field cardinalities and side features.

    n_users, n_items: number of dense user / item indices.
    context_cardinalities: number of values of each categorical context field (an unknown
        bucket, if any, is one of them); context index -1 means "field absent".
    item_attrs: CSR [n_items, n_item_attrs] (scipy CSR, ``(indptr, indices, data, n_cols)``
        or dense), weights as given (see ``ContextFM.normalize_attrs``).
    user_attrs: CSR [n_users, n_user_attrs], same conventions.
    item_text: float32 [n_items, d_item] text embeddings (rows of zeros = no text).
    user_text: float32 [n_users, d_user].
    context_text_dim: width d_q of the per-request text embedding (0 = none).
    """

    n_users: int
    n_items: int
    context_cardinalities: Sequence[int] = ()
    item_attrs: Any = None
    user_attrs: Any = None
    item_text: np.ndarray | None = None
    user_text: np.ndarray | None = None
    context_text_dim: int = 0


@dataclass
class Interactions:
    """Training or scoring rows as plain arrays.

    user: int [n] dense user index (-1 = anonymous request, only for scoring).
    item: int [n] dense item index.
    context: int [n, C] per-field context value index, -1 = absent (None = no context).
    context_text: float32 [n, d_q] request text embedding per row (None = none).
    label: float [n] rating (MSE) or 0/1 label (logloss); ignored by BPR / softmax.
    timestamp: int [n] time of each row (any unit; ties keep row order), or None. Only
        ``ContextFM(history_window=...)`` reads it, to put each user's history in time order.
    """

    user: np.ndarray
    item: np.ndarray
    context: np.ndarray | None = None
    context_text: np.ndarray | None = None
    label: np.ndarray | None = None
    timestamp: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, rows: np.ndarray) -> "Interactions":
        """The interactions at ``rows``.

        Returns
        -------
        Interactions
            Those rows of every array.
        """
        pick = (lambda a: None if a is None else np.asarray(a)[rows])
        return Interactions(np.asarray(self.user)[rows], np.asarray(self.item)[rows],
                            pick(self.context), pick(self.context_text), pick(self.label), pick(self.timestamp))


@dataclass
class ServingTables:
    """Item side of the serving form (for ``Engine.fit``).

    item_vecs: float32 [n_items, k]; item_bias: float32 [n_items];
    score(q, i) = queries[q] . item_vecs[i] + item_bias[i] + const[q].
    """

    item_vecs: np.ndarray
    item_bias: np.ndarray
    item_tri: np.ndarray | None = None

    def joined(self) -> np.ndarray:
        """f32 [n_items, k + t]: item_vecs with item_tri appended (item_vecs when there is no
        three-way term). With :meth:`QueryBatch.joined` the whole model score, three-way term
        included, is one inner product + item_bias + const: what an index retrieves on exactly."""
        if self.item_tri is None:
            return self.item_vecs
        return np.ascontiguousarray(np.hstack([self.item_vecs, self.item_tri]))

    def scores(self, queries: "QueryBatch") -> np.ndarray:
        """The serving score of every item for every query, three-way term included.

        Returns
        -------
        float32 array [b, n_items]
            ``queries.joined() @ joined().T + item_bias + queries.const`` (= ``predict`` of each
            (query, item) pair up to float32 rounding; what the engine scores exactly).
        """
        return (queries.joined() @ self.joined().T + self.item_bias[None, :] + queries.const[:, None]).astype(np.float32)


@dataclass
class QueryBatch:
    """Query side of the serving form: queries float32 [b, k], const float32 [b]
    (item-independent; add it to get model.predict exactly)."""

    queries: np.ndarray
    const: np.ndarray
    tri_queries: np.ndarray | None = None

    def joined(self) -> np.ndarray:
        """f32 [b, k + t]: queries with tri_queries appended (see :meth:`ServingTables.joined`)."""
        if self.tri_queries is None:
            return self.queries
        return np.ascontiguousarray(np.hstack([self.queries, self.tri_queries]))


# ----------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------
class ContextFM:
    """Context-aware, text-aware factorization machine.

    Parameters
    ----------
    n_factors : int
        Embedding width k (default 64).
    n_tri_factors : int
        Width t of the three-way user x item x context factors (default 0 = off). Each user,
        item and context value gets a vector ``T[., :t]``; an instance adds
        ``sum_f T[u, f] T[i, f] sum_c T[c, f]``, so how much a user likes an item can depend on
        the context (a user's weekend taste), which pairwise terms cannot express. Needs
        context fields to do anything.
    l2_tri : float or None
        L2 on the three-way factors (default None: each row's ``l2`` / ``l2_fields``).
    loss : {"bpr", "softmax", "mse", "logloss"}
        BPR and sampled softmax (with logQ correction) for implicit feedback, MSE for
        ratings, logloss for 0/1 labels (with ``n_negatives > 0`` extra sampled negatives
        per row are added with label 0).
    n_negatives : int
        Sampled negatives per training row (BPR averages over them). Default 1 for BPR, 0 for
        MSE/logloss; softmax needs more (e.g. 64).
    negative_sampling : {"uniform", "popularity"}
        Draw negatives uniformly over the training items or proportionally to
        ``count ** popularity_alpha``. A user's own training positives are rejected.
    popularity_alpha : float
    optimizer : {"adam", "adagrad"}
        Adam is "lazy": moments of sparse rows are updated when the row is in a batch.
    learning_rate : float
    batch_size : int
        Rows per mini-batch; gradients of a batch are summed, then applied at once.
    epochs : int
        Maximum number of epochs.
    l2 : float
        L2 on embedding rows (applied to the rows in each batch).
    l2_fields : dict or None
        Per-field L2 on embedding rows overriding ``l2``: keys among "user", "item",
        "context", "user_attrs", "item_attrs", "history" (e.g. ``{"context": 1e-2}``).
    l2_bias : float
        L2 on linear weights.
    l2_text : float
        L2 on the text projections (dense, every step).
    text_step_every : int
        The item-text projection takes one optimizer step per this many mini-batches, on
        their summed gradient (the other parameters step every batch). While it is constant,
        each item's projected text is computed once and its gradient summed per item, so
        the two dense products per batch (each batch's distinct items' 384-d embeddings
        through the projection, and back) become two per this many batches over their
        distinct items. It changes what is learned: on ml-100k, 8 cut a softmax epoch with
        text from 2.1x to 1.2x the no-text time and item cold-start Recall@10 from 0.265 to
        0.24 (``benchmarks/results/training.md``). 1 (default) = a step every batch.
    dropout : float
        Training-time dropout of user-side sparse features other than the user id: each user
        attribute, history item (``user_history``) and context value of a training example is
        left out with this probability and the kept ones are scaled by ``1 / (1 - dropout)``
        (inverted dropout; scoring uses all features unscaled). Regularizes the user vector
        built from a history (denoising, as Mult-VAE's input dropout) and keeps the model
        from leaning on any one context field. Default 0 (off); must be in [0, 1).
    init_std : float
        Std of the normal initialisation of embedding rows. Rows of users / items that have
        no training row start (and stay) at zero, so cold ids do not add noise.
    text_init_std : float or None
        Std of projection entries (default ``init_std / sqrt(d)``, d the text width).
    normalize_attrs : bool
        Scale each item's / user's attribute weights to unit L2 norm.
    user_history : bool
        Add each user's training items as user-side features with their own vectors
        (FISM / SVD++ style, weight ``1 / |history| ** history_alpha``). In training the
        example's own item is left out of its user's history (no target leakage). New users
        (fold-in) get their history from the folded-in items.
    history_alpha : float
    history_window : int or None
        Time-local history (needs ``user_history`` and ``X.timestamp``). In training, an
        example's user side holds only the history items rated within this many positions
        of the example's own item in its user's time-ordered history, weighted
        ``1 / |window| ** history_alpha``; so the history vectors learn which items go
        together in a user's sessions rather than over a user's lifetime. Scoring, serving and
        fold-in use the whole history as without it. None (default) = off.
    early_stopping_rounds : int or None
        Stop when the validation metric has not improved for this many evaluations and
        restore the best parameters (needs ``validation`` in ``fit``).
    eval_every : int
        Evaluate on the validation set every this many epochs.
    eval_metric : str or None
        "ndcg@K", "recall@K", "precision@K", "map@K" (full ranking, training items
        excluded), "auc", "logloss" or "rmse". Default: ndcg@10 for bpr/softmax,
        auc for logloss, rmse for mse.
    random_state : int
        Seed. Training is bit-for-bit deterministic for a seed, whatever ``num_threads``.
    num_threads : int or None
        numba threads for training. None (the default) adapts: each epoch runs in chunks of
        whole mini-batches, and :class:`ThreadChooser` gives each chunk either all of numba's
        threads or one, whichever has been faster per example lately (the other is probed
        again now and then), so that a machine whose cores are taken by other processes does
        not stall every mini-batch's parallel regions behind a descheduled thread. An int:
        exactly that many threads. The parameters learned are identical either way.
    verbose : bool or None
        Show an epoch progress bar (ETA; loss and validation metric as its postfix) on stderr
        and log each epoch (loss, examples/s, validation metric) at INFO to the
        ``ctxrec.model`` logger (at DEBUG when False). None: the bar only when stderr is a
        terminal. Nothing is printed: configure logging to see the records.
    """

    def __init__(
        self,
        n_factors: int = 64,
        n_tri_factors: int = 0,
        l2_tri: float | None = None,
        loss: str = "bpr",
        n_negatives: int | None = None,
        negative_sampling: str = "uniform",
        popularity_alpha: float = 0.75,
        optimizer: str = "adam",
        learning_rate: float = 0.005,
        batch_size: int = 256,
        epochs: int = 30,
        l2: float = 1e-4,
        l2_fields: dict[str, float] | None = None,
        l2_bias: float = 1e-5,
        l2_text: float = 1e-5,
        text_step_every: int = 1,
        dropout: float = 0.0,
        init_std: float = 0.05,
        text_init_std: float | None = None,
        normalize_attrs: bool = True,
        user_history: bool = False,
        history_alpha: float = 0.5,
        history_window: int | None = None,
        early_stopping_rounds: int | None = None,
        eval_every: int = 1,
        eval_metric: str | None = None,
        random_state: int = 0,
        num_threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.n_factors = n_factors
        self.n_tri_factors = n_tri_factors
        self.l2_tri = l2_tri
        self.loss = loss
        self.n_negatives = n_negatives
        self.negative_sampling = negative_sampling
        self.popularity_alpha = popularity_alpha
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.l2 = l2
        self.l2_fields = l2_fields
        self.l2_bias = l2_bias
        self.l2_text = l2_text
        self.text_step_every = text_step_every
        self.dropout = dropout
        self.init_std = init_std
        self.text_init_std = text_init_std
        self.normalize_attrs = normalize_attrs
        self.user_history = user_history
        self.history_alpha = history_alpha
        self.history_window = history_window
        self.early_stopping_rounds = early_stopping_rounds
        self.eval_every = eval_every
        self.eval_metric = eval_metric
        self.random_state = random_state
        self.num_threads = num_threads
        self.verbose = verbose

    # ------------------------------------------------------------------ parameters --
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters (scikit-learn convention).

        Returns
        -------
        dict
            Name -> value.
        """
        return {k: getattr(self, k) for k in _PARAM_NAMES}

    def set_params(self, **params: Any) -> "ContextFM":
        """Set constructor parameters (scikit-learn convention); takes effect at the next ``fit``.

        Returns
        -------
        ContextFM
            ``self``.

        Raises
        ------
        ValueError
            A name that is not a parameter.
        """
        for k, v in params.items():
            if k not in _PARAM_NAMES:
                raise ValueError(f"ContextFM has no parameter {k!r}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        diff = {k: v for k, v in self.get_params().items() if v != _DEFAULTS[k]}
        return "ContextFM(" + ", ".join(f"{k}={v!r}" for k, v in diff.items()) + ")"

    def _check_params(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: expected one of {sorted(LOSSES)}")
        if self.optimizer not in _OPTS:
            raise ValueError(f"optimizer={self.optimizer!r}: expected one of {sorted(_OPTS)}")
        if self.negative_sampling not in ("uniform", "popularity"):
            raise ValueError(f"negative_sampling={self.negative_sampling!r}: expected 'uniform' or 'popularity'")
        if int(self.n_factors) < 1:
            raise ValueError(f"n_factors={self.n_factors!r}: must be >= 1")
        if int(self.n_tri_factors) < 0:
            raise ValueError(f"n_tri_factors={self.n_tri_factors!r}: must be >= 0 (0 = off)")
        if self.l2_tri is not None and not self.l2_tri >= 0:
            raise ValueError(f"l2_tri={self.l2_tri!r}: must be >= 0 (or None)")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: must be >= 1")
        if not (self.learning_rate > 0):
            raise ValueError(f"learning_rate={self.learning_rate!r}: must be > 0")
        for name in ("l2", "l2_bias", "l2_text"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 0")
        for fld, v in (self.l2_fields or {}).items():
            if fld not in _FIELDS:
                raise ValueError(f"l2_fields: unknown field {fld!r}; expected one of {list(_FIELDS)}")
            if not v >= 0:
                raise ValueError(f"l2_fields[{fld!r}]={v!r}: must be >= 0")
        if isinstance(self.text_step_every, bool) or not isinstance(self.text_step_every, (int, np.integer)) \
                or self.text_step_every < 1:
            raise ValueError(f"text_step_every={self.text_step_every!r}: must be an integer >= 1")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout={self.dropout!r}: must be in [0, 1)")
        if self.history_window is not None:
            if not self.user_history:
                raise ValueError(f"history_window={self.history_window!r}: needs user_history=True")
            if int(self.history_window) < 1:
                raise ValueError(f"history_window={self.history_window!r}: must be >= 1 (or None = off)")
            if self.loss_spec.labels == "binary":
                raise ValueError(f"history_window={self.history_window!r}: loss={self.loss!r} rows with label 0 "
                                 "have no place in a user's history; use bpr, softmax or mse")
        nn = self._n_neg()
        if self.loss_spec.sampled and nn < 1:
            raise ValueError(f"n_negatives={self.n_negatives!r}: loss={self.loss!r} needs >= 1")
        if self.loss_spec.labels == "rating" and nn != 0:
            raise ValueError(f"n_negatives={self.n_negatives!r}: loss={self.loss!r} takes no sampled negatives")

    @property
    def text_dims_(self) -> tuple[int, int, int]:
        """The widths of the text inputs the model reads: ``(item, user, request)``; 0 = none."""
        return self.layout_.text_dims

    @property
    def n_users_(self) -> int:
        """Users with an id row (fitted ones and those a fold-in added): ``layout_.n_users``."""
        return self.layout_.n_users

    @property
    def n_items_(self) -> int:
        """Items with an id row: ``layout_.n_items``."""
        return self.layout_.n_items

    @property
    def loss_spec(self) -> Loss:
        """The :class:`Loss` entry of ``loss`` (what it needs and does)."""
        return LOSSES[self.loss]

    def is_positive(self, labels: np.ndarray) -> np.ndarray:
        """Which interactions make an item part of a user's positives under this loss.

        The one rule both the model's positives (negative rejection, the ``user_history``
        features, the ranking evaluation's exclusions) and a recommender's user histories
        follow: for mse every rated item (a rating of 0 is still an interaction), otherwise a
        label > 0 (bpr / softmax drop label-0 rows before training, logloss keeps them as
        negatives).

        Parameters
        ----------
        labels : ndarray of float, shape (n,)
            The interactions' labels (all ones when a dataset has none).

        Returns
        -------
        ndarray of bool, shape (n,)
        """
        labels = np.asarray(labels)
        if self.loss_spec.labels == "rating":
            return np.ones(labels.shape, bool)
        return labels > 0

    def user_positives(self, user: int) -> np.ndarray:
        """The items the model holds as ``user``'s positives (sorted, distinct).

        Parameters
        ----------
        user : int
            A user index in [0, n_users_).

        Returns
        -------
        ndarray of int64, shape (n,)
            Item indices in [0, n_items_).
        """
        self.check_fitted()
        if not (0 <= int(user) < self.n_users_):
            raise ValueError(f"user={user}: out of range [0, {self.n_users_})")
        return self.pos_idx_[self.pos_ptr_[int(user)]:self.pos_ptr_[int(user) + 1]].copy()

    def _n_neg(self) -> int:
        if self.n_negatives is None:
            return self.loss_spec.negatives
        return int(self.n_negatives)

    def _metric_name(self) -> str:
        if self.eval_metric is not None:
            return str(self.eval_metric).lower()
        return self.loss_spec.metric

    # --------------------------------------------------------------------- layout --
    def _setup(self, side: SideInfo) -> None:
        nU, nI = int(side.n_users), int(side.n_items)
        if nU < 1 or nI < 1:
            raise ValueError(f"SideInfo: n_users={nU}, n_items={nI}: both must be >= 1")
        cards = [int(c) for c in side.context_cardinalities]
        for f, c in enumerate(cards):
            if c < 1:
                raise ValueError(f"SideInfo.context_cardinalities[{f}]={c}: must be >= 1")
        ia_ptr, ia_idx, ia_val, n_ia = _as_csr(side.item_attrs, nI, "SideInfo.item_attrs")
        ua_ptr, ua_idx, ua_val, n_ua = _as_csr(side.user_attrs, nU, "SideInfo.user_attrs")
        if self.normalize_attrs:
            ia_val = _row_normalize(ia_ptr, ia_val)
            ua_val = _row_normalize(ua_ptr, ua_val)
        self.item_text_ = _dense(side.item_text, nI, "SideInfo.item_text")
        self.user_text_ = _dense(side.user_text, nU, "SideInfo.user_text")
        lay = self.layout_ = Layout(nI, n_ia, tuple(cards), n_ua, bool(self.user_history), nU,
                                    (self.item_text_.shape[1], self.user_text_.shape[1], int(side.context_text_dim)))
        self.ia_ptr_, self.ia_idx_, self.ia_val_ = ia_ptr, ia_idx + lay.iattr_off, ia_val
        self.ua_base_ = (ua_ptr, ua_idx + lay.uattr_off, ua_val)
        self.ua_ptr_, self.ua_idx_, self.ua_val_ = self.ua_base_

    def _init_params(self, seen_rows: np.ndarray) -> None:
        k = int(self.n_factors)
        rng = np.random.default_rng(self.random_state)
        V = rng.normal(0.0, self.init_std, size=(self.layout_.n_rows, k)).astype(np.float32)
        V[~seen_rows] = 0.0
        self.V_ = V
        self.w_ = np.zeros(self.layout_.n_rows, np.float32)
        P = np.zeros((int(self.layout_.text_off[-1]), k), np.float32)
        for f in range(3):
            lo, hi = self.layout_.text_off[f], self.layout_.text_off[f + 1]
            if hi > lo:
                std = self.text_init_std if self.text_init_std is not None else self.init_std / math.sqrt(hi - lo)
                P[lo:hi] = rng.normal(0.0, std, size=(hi - lo, k))
        self.P_ = P
        self.a_ = np.zeros(int(self.layout_.text_off[-1]), np.float32)
        self.w0_ = np.zeros(1, np.float32)
        # three-way factors: own stream (the pairwise init does not depend on t); only seen
        # users / items and context values get random rows
        t = int(self.n_tri_factors)
        T = np.random.default_rng([self.random_state, 3]).normal(
            0.0, self.init_std, size=(self.layout_.n_rows, t)).astype(np.float32)
        if t:
            tri_rows = seen_rows.copy()
            tri_rows[self.layout_.iattr_off:self.layout_.user_off] = False
            ctx_lo, ctx_hi = self.layout_.field_rows()["context"]
            tri_rows[ctx_lo:ctx_hi] = True
            T[~tri_rows] = 0.0
        self.T_ = T
        self._reset_opt_state()

    def _reset_opt_state(self) -> None:
        self._opt = dict(
            mV=np.zeros_like(self.V_), sV=np.zeros_like(self.V_),
            mw=np.zeros_like(self.w_), sw=np.zeros_like(self.w_),
            mP=np.zeros_like(self.P_), sP=np.zeros_like(self.P_),
            ma=np.zeros_like(self.a_), sa=np.zeros_like(self.a_),
            m0=np.zeros(1, np.float32), s0=np.zeros(1, np.float32),
            mT=np.zeros_like(self.T_), sT=np.zeros_like(self.T_),
        )
        self.step_ = 0

    def _check_rows(self, X: Interactions, name: str, *, allow_anon: bool) -> dict[str, np.ndarray]:
        n = len(X.user)
        users = np.ascontiguousarray(X.user, dtype=np.int64)
        items = np.ascontiguousarray(X.item, dtype=np.int64)
        if items.shape != (n,):
            raise ValueError(f"{name}.item: shape {items.shape}, expected ({n},)")
        lo = -1 if allow_anon else 0
        if n and (users.min() < lo or users.max() >= self.n_users_):
            bad = users[(users < lo) | (users >= self.n_users_)][0]
            raise ValueError(f"{name}.user: index {bad} out of range [{lo}, {self.n_users_})")
        if n and (items.min() < 0 or items.max() >= self.n_items_):
            bad = items[(items < 0) | (items >= self.n_items_)][0]
            raise ValueError(f"{name}.item: index {bad} out of range [0, {self.n_items_})")
        C = len(self.layout_.context_cardinalities)
        if X.context is None:
            ctx = np.full((n, C), -1, np.int64)
        else:
            ctx = np.ascontiguousarray(X.context, dtype=np.int64)
            if ctx.ndim == 1:
                ctx = ctx.reshape(n, -1) if C else ctx.reshape(n, 0)
            if ctx.shape != (n, C):
                raise ValueError(f"{name}.context: shape {ctx.shape}, expected ({n}, {C})")
            for f, c in enumerate(self.layout_.context_cardinalities):
                col = ctx[:, f]
                bad = (col < -1) | (col >= c)
                if bad.any():
                    raise ValueError(f"{name}.context[:, {f}]: value {col[bad][0]} out of range [-1, {c})")
        dq = int(self.layout_.text_off[3] - self.layout_.text_off[2])
        if X.context_text is None:
            qt = np.zeros((n, dq), np.float32)
        else:
            qt = _dense(X.context_text, n, f"{name}.context_text")
            if qt.shape[1] != dq:
                raise ValueError(f"{name}.context_text: width {qt.shape[1]}, expected {dq}")
        if X.label is None:
            lab = np.ones(n, np.float64)
        else:
            lab = np.ascontiguousarray(X.label, dtype=np.float64)
            if lab.shape != (n,):
                raise ValueError(f"{name}.label: shape {lab.shape}, expected ({n},)")
            if not np.all(np.isfinite(lab)):
                raise ValueError(f"{name}.label: non-finite values")
            if self.loss_spec.labels == "binary" and not np.all((lab == 0) | (lab == 1)):
                raise ValueError(f"{name}.label: loss={self.loss!r} needs labels in {{0, 1}}, got {np.unique(lab)[:5]}")
        return dict(users=users, items=items, ctx=ctx, qtext=qt, labels=lab)

    # ------------------------------------------------------------------------ fit --
    def fit(self, X: Interactions, side: SideInfo, *, validation: Interactions | None = None,
            callback: Callable[[int, dict[str, float]], bool | None] | None = None) -> "ContextFM":
        """Train on ``X`` over the catalog ``side``; returns self.

        For bpr/softmax every row of ``X`` is a positive (rows with label 0, if labels are
        given, are dropped); for mse ``X.label`` is the rating; for logloss the 0/1 label.
        ``validation`` (same form) drives early stopping and the recorded metric curve.
        ``callback(epoch, record)`` is called after every epoch; returning True stops training.

        Learned attributes: ``V_`` f32 [n_rows, k], ``w_`` f32 [n_rows], ``P_`` / ``a_`` text
        projections, ``w0_``, ``T_`` f32 [n_rows, n_tri_factors] three-way factors,
        ``history_`` (per-epoch loss, examples/s, metric, and ``threads``: the mean thread count
        when ``num_threads=None``), ``best_epoch_``, ``fit_time_s_``.

        Returns
        -------
        ContextFM
            ``self``, fitted.
        """
        self._check_params()
        self._setup(side)
        rows = self._check_rows(X, "X", allow_anon=False)
        if self.history_window is not None:
            rows["ts"] = _check_timestamps(X, len(rows["users"]))
        if self.loss_spec.labels == "none" and X.label is not None:
            keep = rows["labels"] > 0
            rows = {k_: v[keep] for k_, v in rows.items()}
        if self.loss_spec.needs_labels and X.label is None:
            raise ValueError(f"X.label: loss={self.loss!r} needs labels")
        n = len(rows["users"])
        if n == 0:
            raise ValueError("X: no training rows")
        self._train_rows = rows
        # positives per user (for negative rejection and ranking evaluation)
        pos_mask = self.is_positive(rows["labels"])
        self.pos_ptr_, self.pos_idx_ = csr.from_pairs(rows["users"][pos_mask], rows["items"][pos_mask], self.n_users_, unique=True)
        self._rebuild_user_attrs()
        window = self._history_windows(rows) if self.history_window is not None else None
        # negative sampling distribution over items seen in training
        counts = np.bincount(rows["items"], minlength=self.n_items_)
        self.item_counts_ = counts.astype(np.int64)
        neg_items = np.flatnonzero(counts > 0).astype(np.int64)
        self._neg = _neg_tables(neg_items, counts, self.negative_sampling, self.popularity_alpha, self.n_items_)
        # rows that occur in training get random init, the others stay 0
        seen = np.zeros(self.layout_.n_rows, bool)
        seen[self.layout_.item_off + np.unique(rows["items"])] = True
        seen[self.layout_.user_off + np.unique(rows["users"])] = True
        seen[self.layout_.iattr_off:self.layout_.user_off] = True
        self._init_params(seen)
        val = None
        if validation is not None:
            val = self._check_rows(validation, "validation", allow_anon=False)
            if self.loss_spec.labels == "none" and validation.label is not None:  # as the training rows
                val = {k_: v[val["labels"] > 0] for k_, v in val.items()}
        metric = self._metric_name()
        higher_better = metric not in ("logloss", "rmse")
        best, best_epoch, since_best, best_params = -np.inf, -1, 0, None
        self.history_ = []
        nthreads = self.num_threads
        # pieces of whole mini-batches (batches and their random draws are those of one call), big
        # enough that a kernel call's per-call work (zeroed gradient tables of n_rows) stays small
        # and whole periods of text_step_every batches (a piece ends a period: the pieces' periods are
        # then those of one call, so the parameters do not depend on how the epoch was cut)
        bsz = int(min(self.batch_size, n))
        unit = bsz * int(self.text_step_every)
        chunk = 2 * unit * -(-bsz * max(64, -(-self.layout_.n_rows // (4 * bsz))) // (2 * unit))
        chooser = ThreadChooser(numba.get_num_threads(), chunk, unit * -(-4 * bsz // unit)) \
            if nthreads is None and numba.get_num_threads() > 1 else None
        t_fit = time.perf_counter()
        import logging  # fit's reporting: one log record per epoch, an epoch bar when verbose
        from ctxrec._log import get_logger, progress
        log = get_logger("ctxrec.model")
        level = logging.INFO if self.verbose else logging.DEBUG
        with _threads(nthreads), progress(int(self.epochs), "ContextFM", "epoch", enabled=self.verbose) as bar:
            for epoch in range(int(self.epochs)):
                t0 = time.perf_counter()
                order = np.random.default_rng([self.random_state, epoch]).permutation(n).astype(np.int64)
                if chooser is None:
                    tot = self._run_epoch(rows, order, epoch, 0, self.layout_.n_rows, True, self.step_, window=window)
                else:
                    tot, lo = 0.0, 0
                    while lo < n:
                        threads, size = chooser.next()
                        part, lo = order[lo:lo + size], lo + size
                        numba.set_num_threads(threads)
                        t_c = time.perf_counter()
                        tot += self._run_epoch(rows, part, epoch, 0, self.layout_.n_rows, True, self.step_, window=window)
                        chooser.record(threads, time.perf_counter() - t_c, len(part))
                dt = time.perf_counter() - t0
                rec: dict[str, float] = {"epoch": epoch, "loss": tot / n, "seconds": dt,
                                         "examples_per_s": n / max(dt, 1e-9)}
                if chooser is not None:
                    rec["threads"] = chooser.mean_threads(reset=True)
                if val is not None and (epoch + 1) % max(1, int(self.eval_every)) == 0:
                    m = self._evaluate_rows(val, metric)
                    rec[metric] = m
                    score = m if higher_better else -m
                    if score > best:
                        best, best_epoch, since_best = score, epoch, 0
                        if self.early_stopping_rounds is not None:
                            best_params = self._snapshot()
                    else:
                        since_best += 1
                self.history_.append(rec)
                extra = f" {metric}={rec[metric]:.5f}" if metric in rec else ""
                log.log(level, "ContextFM epoch %d/%d loss=%.5f %s ex/s%s", epoch + 1, int(self.epochs),
                        rec["loss"], f"{rec['examples_per_s']:,.0f}", extra)
                bar.set_postfix({"loss": rec["loss"], **({metric: rec[metric]} if metric in rec else {})})
                bar.update(1)
                if callback is not None and callback(epoch, rec) is True:
                    break
                if (self.early_stopping_rounds is not None and val is not None
                        and since_best >= int(self.early_stopping_rounds)):
                    log.log(level, "ContextFM early stopping after epoch %d: best %s at epoch %d",
                            epoch + 1, metric, best_epoch + 1)
                    break
        if best_params is not None:
            self._restore(best_params)
        self.best_epoch_ = best_epoch if best_epoch >= 0 else len(self.history_) - 1
        self.fit_time_s_ = time.perf_counter() - t_fit
        del self._train_rows
        return self

    def _run_epoch(self, rows: dict[str, np.ndarray], order: np.ndarray, epoch: int, row_lo: int,
                   row_hi: int, train_dense: bool, step0: int, *, pos: tuple | None = None,
                   seed: int | None = None, window: tuple | None = None) -> float:
        o = self._opt
        neg_items, neg_cdf, neg_logq = self._neg
        pos_ptr, pos_idx = pos if pos is not None else (self.pos_ptr_, self.pos_idx_)
        # window: the time-local history arrays of fit (``_history_windows``); None = whole history
        hwin, ua_rank, ex_rank, ex_hscale = (int(self.history_window), *window) if window is not None else \
            (0, _EMPTY_I64, _EMPTY_I64, _EMPTY_F64)
        out = np.zeros(1, np.float64)
        l2_rows = self._row_l2()
        b1, b2 = 0.9, 0.999
        eps = 1e-8 if self.optimizer == "adam" else 1e-6
        # order int64 [n]: one epoch numbered ``epoch``; [epochs, n]: epochs 0.. in one call
        several = order.ndim == 2
        examples = K.Examples(rows["users"], rows["items"], rows["ctx"], rows["labels"], rows["qtext"])
        layout = K.Layout(self.layout_.ctx_off, self.layout_.item_off, self.layout_.user_off, self.ia_ptr_, self.ia_idx_, self.ia_val_,
                          self.ua_ptr_, self.ua_idx_, self.ua_val_, self.item_text_, self.user_text_, self.layout_.text_off,
                          int(self.layout_.hist_off), int(self.layout_.uattr_off))
        sampler = K.Sampler(pos_ptr, pos_idx, neg_items, neg_cdf, neg_logq)
        params = K.Params(self.V_, self.w_, self.P_, self.a_, self.w0_, self.T_)
        moments = K.Moments(o["mV"], o["sV"], o["mw"], o["sw"], o["mP"], o["sP"], o["ma"], o["sa"], o["m0"], o["s0"],
                            o["mT"], o["sT"])
        settings = K.Settings(self.loss_spec.code, self._n_neg(), int(min(self.batch_size, order.shape[-1])),
                              float(self.learning_rate), l2_rows, float(self.l2_bias), float(self.l2_text),
                              l2_rows if self.l2_tri is None else np.full(len(l2_rows), float(self.l2_tri)),
                              _OPTS[self.optimizer], b1, b2, eps, float(self.dropout), int(self.text_step_every))
        step = (K.train_epochs if several else K.train_epoch)(
            order, examples, layout, sampler, params, moments, settings, K.Window(hwin, ua_rank, ex_rank, ex_hscale),
            int(step0), int(self.random_state if seed is None else seed), *(() if several else (int(epoch),)),
            int(row_lo), int(row_hi), bool(train_dense), int(numba.get_num_threads()), out)
        if row_lo == 0 and row_hi == self.layout_.n_rows and train_dense:
            self.step_ = int(step)
        return float(out[0])

    def _row_l2(self) -> np.ndarray:
        """L2 coefficient per embedding row (float64 [n_rows]): ``l2`` with ``l2_fields`` applied."""
        out = np.full(self.V_.shape[0], float(self.l2), np.float64)
        rng = self.layout_.field_rows()
        for fld, v in (self.l2_fields or {}).items():
            lo, hi = rng[fld]
            out[lo:hi] = float(v)
        return out

    def _history_windows(self, rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Arrays of the time-local history for ``train_epoch`` (see its docstring): time rank of
        each history entry of ``ua_idx_`` (-1 for other entries), rank of each training row's
        own item in its user's history, and the row's ``(|history| / |window|) ** alpha``."""
        users, items, ts = rows["users"], rows["items"], rows["ts"]
        nI = self.n_items_
        key = users * nI + items
        order = np.lexsort((np.arange(len(key)), ts, users))  # by user, then time, then row
        uniq, first = np.unique(key[order], return_index=True)  # each (user, item) at its first time
        by_time = np.lexsort((first, uniq // nI))
        u_sorted = (uniq // nI)[by_time]
        starts = np.searchsorted(u_sorted, np.arange(self.n_users_))
        rank = np.empty(len(uniq), np.int64)
        rank[by_time] = np.arange(len(uniq)) - starts[u_sorted]
        ex_rank = rank[np.searchsorted(uniq, key)]
        hist = (self.ua_idx_ >= self.layout_.hist_off) & (self.ua_idx_ < self.layout_.hist_off + nI)
        ua_user = np.repeat(np.arange(self.n_users_), np.diff(self.ua_ptr_))
        ua_rank = np.full(len(self.ua_idx_), -1, np.int64)
        ua_rank[hist] = rank[np.searchsorted(uniq, ua_user[hist] * nI + (self.ua_idx_[hist] - self.layout_.hist_off))]
        nh = np.diff(self.pos_ptr_)[users]
        W = int(self.history_window)
        m = np.minimum(ex_rank + W, nh - 1) - np.maximum(ex_rank - W, 0)  # window size, own item excluded
        hs = np.where(m > 0, (nh / np.maximum(m, 1)) ** float(self.history_alpha), 0.0)
        return ua_rank, ex_rank.astype(np.int64), hs.astype(np.float64)

    def _rebuild_user_attrs(self) -> None:
        """User-side attribute CSR = base attributes (+ history items when user_history)."""
        bp, bi, bv = self.ua_base_
        if not self.user_history:
            self.ua_ptr_, self.ua_idx_, self.ua_val_ = bp, bi, bv
            return
        hp, hi_ = self.pos_ptr_, self.pos_idx_
        n = len(hp) - 1
        hl = np.diff(hp)
        hv = np.repeat(np.where(hl > 0, 1.0 / np.maximum(hl, 1) ** float(self.history_alpha), 0.0), hl)
        bl = np.diff(bp)
        ptr = np.zeros(n + 1, np.int64)
        ptr[1:] = np.cumsum(bl + hl)
        idx = np.empty(ptr[-1], np.int64)
        val = np.empty(ptr[-1], np.float32)
        # positions: base block first, then history block, per user
        row = np.repeat(np.arange(n), bl)
        pos_b = ptr[row] + (np.arange(len(bi)) - bp[row])
        idx[pos_b], val[pos_b] = bi, bv
        row = np.repeat(np.arange(n), hl)
        pos_h = ptr[row] + bl[row] + (np.arange(len(hi_)) - hp[row])
        idx[pos_h], val[pos_h] = hi_ + self.layout_.hist_off, hv
        self.ua_ptr_, self.ua_idx_, self.ua_val_ = ptr, idx, val

    def _snapshot(self) -> dict[str, np.ndarray]:
        return {k_: getattr(self, k_).copy() for k_ in ("V_", "w_", "P_", "a_", "w0_", "T_")}

    def _restore(self, snap: dict[str, np.ndarray]) -> None:
        for k_, v in snap.items():
            setattr(self, k_, v)

    # --------------------------------------------------------------- evaluation --
    def _evaluate_rows(self, val: dict[str, np.ndarray], metric: str) -> float:
        if "@" in metric:
            name, kk = metric.split("@")
            if name not in ("ndcg", "recall", "precision", "map", "map_nrel", "hr"):
                raise ValueError(f"eval_metric={metric!r}: unknown ranking metric {name!r}")
            return self._rank_eval(val, int(kk), name)[f"{name}@{int(kk)}"]
        s = self._predict_rows(val)
        y = val["labels"]
        if metric == "auc":
            return auc(y, s)
        if metric == "logloss":
            return logloss(y, 1.0 / (1.0 + np.exp(-s)))
        if metric == "rmse":
            return float(np.sqrt(np.mean((s - y) ** 2)))
        raise ValueError(f"eval_metric={metric!r}: expected ndcg@K/recall@K/precision@K/map@K/auc/logloss/rmse")

    def _rank_eval(self, val: dict[str, np.ndarray], k: int, metric: str) -> dict[str, float]:
        """Full-ranking ``metric@k`` (:mod:`ctxrec.metrics`, the definitions reports use): one query
        per distinct (user, context row); training positives of the user are excluded."""
        users, ctx, qt = val["users"], val["ctx"], val["qtext"]
        keycols = [users[:, None], ctx]
        if qt.shape[1]:
            keycols.append(np.ascontiguousarray(qt).view(np.int32))
        key = np.concatenate(keycols, axis=1) if len(keycols) > 1 else users[:, None]
        _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
        inv = inv.ravel()
        qb = self._queries(users[first], ctx[first], qt[first])
        ids = self._topk(qb, users[first], k)
        rel_ptr, rel_idx = csr.from_pairs(inv, val["items"], len(first), unique=True)
        return ranking_metrics_from_topk(ids, rel_ptr, rel_idx, [k], n_candidates=self.n_items_, metrics=(metric,))

    def _topk(self, qb: QueryBatch, users: np.ndarray, k: int, exclude_seen: bool = True) -> np.ndarray:
        from ctxrec import _core
        tab = self.export()
        kw: dict[str, Any] = {}
        if exclude_seen:
            ptr = np.zeros(len(users) + 1, np.int64)
            lens = np.where(users >= 0, self.pos_ptr_[np.maximum(users, 0) + 1] - self.pos_ptr_[np.maximum(users, 0)], 0)
            ptr[1:] = np.cumsum(lens)
            idx = np.concatenate([self.pos_idx_[self.pos_ptr_[u]:self.pos_ptr_[u + 1]] for u in users if u >= 0]
                                 or [np.zeros(0, np.int64)]).astype(np.int64)
            kw = dict(exclude_indptr=ptr, exclude_indices=np.ascontiguousarray(idx))
        if qb.tri_queries is not None:
            kw.update(tri_queries=qb.tri_queries, item_tri=tab.item_tri)
        ids, _ = _core.topk_full(qb.queries, tab.item_vecs, tab.item_bias, int(k),
                                 num_threads=int(self.num_threads or 0), **kw)
        return ids

    # ------------------------------------------------------------------- scoring --
    def _predict_rows(self, r: dict[str, np.ndarray]) -> np.ndarray:
        out = np.zeros(len(r["users"]), np.float64)
        K.predict_full(r["users"], r["items"], r["ctx"], r["qtext"], self.layout_.ctx_off, self.layout_.item_off,
                       self.layout_.user_off, self.ia_ptr_, self.ia_idx_, self.ia_val_, self.ua_ptr_,
                       self.ua_idx_, self.ua_val_, self.item_text_, self.user_text_, self.layout_.text_off,
                       self.V_, self.w_, self.P_, self.a_, self.w0_, self.T_, out)
        return out

    def predict(self, X: Interactions) -> np.ndarray:
        """The model's score of each row (user -1: anonymous).

        Returns
        -------
        float64 array [n]
            The rating for ``loss="mse"``, the logit for logloss, the ranking score otherwise.
        """
        self.check_fitted()
        return self._predict_rows(self._check_rows(X, "X", allow_anon=True))

    def predict_proba(self, X: Interactions) -> np.ndarray:
        """The probability of each row: ``sigmoid(predict(X))`` (meaningful for ``loss="logloss"``).

        Returns
        -------
        float64 array [n]
        """
        s = self.predict(X)
        return 1.0 / (1.0 + np.exp(-s))

    def recommend(self, users: np.ndarray, k: int = 10, *, context: np.ndarray | None = None,
                  context_text: np.ndarray | None = None, exclude_seen: bool = True) -> np.ndarray:
        """Top-k items for each (user, context) by exact full-catalog scoring in ``ctxrec._core``.

        Returns
        -------
        int64 array [b, k]
            Item indices, best first, -1 padded; training positives excluded unless
            ``exclude_seen=False``.
        """
        self.check_fitted()
        users = np.ascontiguousarray(users, dtype=np.int64)
        qb = self.build_queries(users, context=context, context_text=context_text)
        return self._topk(qb, users, k, exclude_seen)

    # ------------------------------------------------------------------- export --
    def export(self) -> ServingTables:
        """The item side of the serving score.

        Returns
        -------
        ServingTables
            ``item_vecs`` f32 [n_items, k], ``item_bias`` f32 [n_items] and, with three-way
            factors, ``item_tri`` f32 [n_items, n_tri_factors] (else None).
        """
        self.check_fitted()
        k = self.V_.shape[1]
        vecs = np.zeros((self.n_items_, k), np.float32)
        bias = np.zeros(self.n_items_, np.float32)
        K.item_table(self.V_, self.w_, self.P_, self.a_, self.layout_.item_off, self.ia_ptr_, self.ia_idx_,
                     self.ia_val_, self.item_text_, int(self.layout_.text_off[0]), vecs, bias)
        tri = None
        if self.T_.shape[1]:
            tri = np.ascontiguousarray(self.T_[self.layout_.item_off:self.layout_.item_off + self.n_items_])
        return ServingTables(vecs, bias, item_tri=tri)

    def item_vectors(self, item_attrs: Any = None, item_text: np.ndarray | None = None, *,
                     items: np.ndarray | None = None) -> ServingTables:
        """Serving rows for items described by attributes and text: the cold-start path.

        An item's vector is the sum of its attribute factors, the projection of its text
        embedding and, where it has one, its id factor; the bias likewise (linear weights +
        pairwise terms within the item side), exactly as :meth:`export` computes them for
        the fitted items. An item added after training has no id factor: its vector comes
        from attributes and text alone.

        Parameters
        ----------
        item_attrs : CSR [m, n_item_attrs] or None
            Attribute columns as in ``SideInfo.item_attrs`` at fit (same column order;
            scipy CSR, ``(indptr, indices, data, n_cols)``, dense, or None for none).
            Weights are normalized as at fit (``normalize_attrs``).
        item_text : float32 [m, d_item] or None
            Item text embeddings as given to fit (zero rows: no text; None: no text at all).
        items : int [m] or None
            The fitted item index whose id factor (and three-way factors) each row uses,
            -1 for none (default: -1 for every row).

        Returns
        -------
        ServingTables
            item_vecs f32 [m, k], item_bias f32 [m], item_tri f32 [m, n_tri_factors] (zeros
            for rows without an id) or None.

        Raises
        ------
        ValueError
            Shapes that do not match the fitted model, or an ``items`` index out of range.
        """
        self.check_fitted()
        if item_text is not None:
            m = int(np.shape(item_text)[0])
        elif items is not None:
            m = len(np.atleast_1d(items))
        elif item_attrs is not None:
            m = len(item_attrs[0]) - 1 if isinstance(item_attrs, tuple) else int(item_attrs.shape[0])
        else:
            raise ValueError("item_vectors: give item_attrs, item_text or items (the number of rows)")
        ptr, idx, val, n_cols = _as_csr(item_attrs, m, "item_attrs")
        if item_attrs is not None and n_cols != self.layout_.n_item_attrs:
            raise ValueError(f"item_attrs: {n_cols} columns, the model was fitted with {self.layout_.n_item_attrs}")
        if self.normalize_attrs:
            val = _row_normalize(ptr, val)
        d = self.item_text_.shape[1]
        text = np.zeros((m, d), np.float32) if item_text is None else _dense(item_text, m, "item_text")
        if text.shape[1] != d:
            raise ValueError(f"item_text: width {text.shape[1]}, the model was fitted with {d}")
        rows = np.full(m, -1, np.int64) if items is None else np.asarray(items, np.int64).reshape(-1)
        if rows.shape != (m,):
            raise ValueError(f"items: {len(rows)} entries, expected {m}")
        if len(rows) and (rows.min() < -1 or rows.max() >= self.n_items_):
            bad = rows[(rows < -1) | (rows >= self.n_items_)][:3].tolist()
            raise ValueError(f"items: index {bad} out of range [-1, {self.n_items_})")
        k = self.V_.shape[1]
        vecs = np.zeros((m, k), np.float32)
        bias = np.zeros(m, np.float32)
        id_rows = np.where(rows >= 0, rows + self.layout_.item_off, -1)
        K.item_table_rows(id_rows, self.V_, self.w_, self.P_, self.a_, ptr, idx + self.layout_.iattr_off,
                          np.ascontiguousarray(val, np.float32), np.ascontiguousarray(text), int(self.layout_.text_off[0]),
                          vecs, bias)
        tri = None
        if self.T_.shape[1]:
            tri = np.zeros((m, self.T_.shape[1]), np.float32)
            has = rows >= 0
            tri[has] = self.T_[id_rows[has]]
        return ServingTables(vecs, bias, item_tri=tri)

    def to_engine(self, item_ids: Any = None, **engine_params: Any) -> Any:
        """A :class:`ctxrec.engine.Engine` fitted on :meth:`export`'s item table, three-way
        factors appended (``ServingTables.joined``), so HNSW retrieves on the whole score.

        Query it with ``build_queries(...).joined()``; its scores are the model's minus the
        item-independent ``const`` of each query.

        Returns
        -------
        Engine
            Keyword arguments go to its constructor; ``item_ids`` name the items.
        """
        from ctxrec.engine import Engine
        tab = self.export()
        return Engine(**engine_params).fit(tab.joined(), tab.item_bias, item_ids)

    def _queries(self, users: np.ndarray, ctx: np.ndarray, qt: np.ndarray) -> QueryBatch:
        b = len(users)
        k = self.V_.shape[1]
        q = np.zeros((b, k), np.float32)
        c = np.zeros(b, np.float64)
        t = self.T_.shape[1]
        tri = np.zeros((b, t), np.float32)
        kernel = K.query_table if b >= 64 else K.query_table_serial  # live requests: no thread pool
        kernel(users, ctx, qt, self.layout_.ctx_off, self.V_, self.w_, self.P_, self.a_, self.layout_.user_off,
               self.ua_ptr_, self.ua_idx_, self.ua_val_, self.user_text_, int(self.layout_.text_off[1]),
               int(self.layout_.text_off[2]), self.w0_, self.T_, q, c, tri)
        return QueryBatch(q, c.astype(np.float32), tri_queries=tri if t else None)

    def build_queries(self, users: np.ndarray, *, context: np.ndarray | None = None,
                      context_text: np.ndarray | None = None) -> QueryBatch:
        """Query vectors for (user, context, request text) rows (user -1 = anonymous).

        ``queries[q] . item_vecs[i] + item_bias[i] + const[q]`` (+ ``tri_queries[q] .
        item_tri[i]`` with three-way factors) equals ``predict`` of that (user, context, text,
        item) row up to float32 rounding.

        Returns
        -------
        QueryBatch
            ``queries`` f32 [b, k], ``const`` f32 [b], ``tri_queries`` f32 [b, n_tri_factors]
            or None.
        """
        self.check_fitted()
        users = np.atleast_1d(np.asarray(users, dtype=np.int64))
        X = Interactions(users, np.zeros(len(users), np.int64), context, context_text)
        r = self._check_rows(X, "query", allow_anon=True)
        return self._queries(r["users"], r["ctx"], r["qtext"])

    # ------------------------------------------------------------------- fold-in --
    def fold_in(self, items: np.ndarray, *, user: int | None = None, context: np.ndarray | None = None,
                context_text: np.ndarray | None = None, label: np.ndarray | None = None,
                user_text: np.ndarray | None = None, user_attrs: Sequence[int] | None = None,
                epochs: int = 50, history: np.ndarray | None = None) -> int:
        """Learn (or update) one user's vector from a handful of interactions, items fixed.

        Only the user's id row (and linear weight) is trained, with the model's loss and
        optimizer settings, for ``epochs`` passes; items, attributes, context and text
        projections are untouched. ``user=None`` appends a new user (optionally with
        ``user_text`` f32 [d_user] and ``user_attrs`` attribute indices) and returns its
        index; otherwise the given user is updated in place and returned. Deterministic.

        ``history`` (item indices, any order) is the user's whole record as its owner keeps
        it (a :class:`~ctxrec.Recommender`'s user history): the model's positives for the
        user become exactly those items. Without it the fold-in's positive items are merged
        into the user's positives.

        Returns
        -------
        int
            The user's index.
        """
        self.check_fitted()
        items = np.atleast_1d(np.asarray(items, dtype=np.int64))
        hist = None if history is None else self._check_history(history)
        if user is None:
            user = self._append_user(user_text, user_attrs)
        elif not (0 <= int(user) < self.n_users_):
            raise ValueError(f"user={user}: out of range [0, {self.n_users_})")
        user = int(user)
        n = len(items)
        if n == 0:
            if hist is not None:
                self._set_user_positives(user, hist, replace=True)
            return user
        X = Interactions(np.full(n, user, np.int64), items, context, context_text, label)
        rows = self._check_rows(X, "fold_in", allow_anon=False)
        if self.loss_spec.needs_labels and label is None:
            raise ValueError(f"label: loss={self.loss!r} needs labels for fold_in")
        if hist is not None:  # the caller's record: the user's positives become it
            self._set_user_positives(user, hist, replace=True)
        else:  # merge this fold-in's positives into the user's
            self._set_user_positives(user, np.unique(items if self.loss_spec.labels != "binary"
                                                     else items[rows["labels"] > 0]))
        r = self.layout_.user_off + user
        # one thread: a fold-in is a handful of examples, and a parallel region's barrier per
        # mini-batch stalls when a request thread holds the other core (results do not depend
        # on the thread count)
        with _threads(1):
            orders = np.stack([np.random.default_rng([self.random_state, user, ep]).permutation(n)
                               for ep in range(int(epochs))]).astype(np.int64) if int(epochs) > 0 else None
            if orders is not None:  # every epoch in one kernel call (one GIL release: see K.train_epochs)
                self._run_epoch(rows, orders, 0, r, r + 1, False, 0, seed=self.random_state + 7919 * (user + 1))
        return user

    def refit_user(self, items: np.ndarray, *, user: int | None = None, context: np.ndarray | None = None,
                   context_text: np.ndarray | None = None, label: np.ndarray | None = None,
                   user_text: np.ndarray | None = None, user_attrs: Sequence[int] | None = None,
                   epochs: int = 50, history: np.ndarray | None = None) -> tuple["ContextFM", int]:
        """:meth:`fold_in` on a copy of the model: ``self`` is not changed at all.

        The copy shares every array that a fold-in does not write (items, attributes,
        context, projections) and owns copies of the rows it trains (user factors, linear
        weights, three-way factors and their optimizer state), so a server can keep
        answering from ``self`` while this runs and then swap one reference. Costs one copy
        of the embedding table (n_rows x (n_factors + n_tri_factors) x 3 float32 arrays).

        Returns
        -------
        model : ContextFM
            The updated copy.
        user : int
            The user's index in ``model`` (a new index when ``user`` is None).
        """
        self.check_fitted()
        m = copy.copy(self)
        m._opt = dict(self._opt)
        if user is not None:  # a new user re-allocates these arrays anyway (_append_user)
            m.V_, m.w_, m.T_ = self.V_.copy(), self.w_.copy(), self.T_.copy()
            for name in ("mV", "sV", "mw", "sw", "mT", "sT"):
                m._opt[name] = self._opt[name].copy()
        u = m.fold_in(items, user=user, context=context, context_text=context_text, label=label,
                      user_text=user_text, user_attrs=user_attrs, epochs=epochs, history=history)
        return m, u

    def _append_user(self, user_text: np.ndarray | None, user_attrs: Sequence[int] | None) -> int:
        k = self.V_.shape[1]
        self.V_ = np.vstack([self.V_, np.zeros((1, k), np.float32)])
        self.w_ = np.append(self.w_, np.float32(0))
        self.T_ = np.vstack([self.T_, np.zeros((1, self.T_.shape[1]), np.float32)])
        for name in ("mV", "sV"):
            self._opt[name] = np.vstack([self._opt[name], np.zeros((1, k), np.float32)])
        for name in ("mT", "sT"):
            self._opt[name] = np.vstack([self._opt[name], np.zeros((1, self.T_.shape[1]), np.float32)])
        for name in ("mw", "sw"):
            self._opt[name] = np.append(self._opt[name], np.float32(0))
        attrs = np.asarray(user_attrs if user_attrs is not None else [], dtype=np.int64)
        if len(attrs) and (attrs.min() < 0 or attrs.max() >= self.layout_.n_user_attrs):
            raise ValueError(f"user_attrs: index out of range [0, {self.layout_.n_user_attrs})")
        vals = np.ones(len(attrs), np.float32)
        if self.normalize_attrs and len(attrs):
            vals /= np.sqrt(len(attrs))
        bp, bi, bv = self.ua_base_
        self.ua_base_ = (np.append(bp, bp[-1] + len(attrs)), np.concatenate([bi, attrs + self.layout_.uattr_off]),
                         np.concatenate([bv, vals]).astype(np.float32))
        du = self.user_text_.shape[1]
        row = np.zeros((1, du), np.float32)
        if user_text is not None:
            t = np.asarray(user_text, np.float32).reshape(-1)
            if t.shape[0] != du:
                raise ValueError(f"user_text: width {t.shape[0]}, expected {du}")
            row[0] = t
        self.user_text_ = np.ascontiguousarray(np.vstack([self.user_text_, row]))
        self.pos_ptr_ = np.append(self.pos_ptr_, self.pos_ptr_[-1])
        self.layout_ = self.layout_.with_users(self.layout_.n_users + 1)
        self._rebuild_user_attrs()
        return self.n_users_ - 1

    def _check_history(self, history: np.ndarray) -> np.ndarray:
        h = np.asarray(history)
        if h.ndim != 1 or (len(h) and not np.issubdtype(h.dtype, np.integer)):
            raise ValueError(f"history: expected a 1-d array of item indices, got shape {h.shape} dtype {h.dtype}")
        h = np.unique(h.astype(np.int64))
        if len(h) and (h[0] < 0 or h[-1] >= self.n_items_):
            raise ValueError(f"history: item index out of range [0, {self.n_items_})")
        return h

    def _set_user_positives(self, u: int, new: np.ndarray, *, replace: bool = False) -> None:
        lo, hi = self.pos_ptr_[u], self.pos_ptr_[u + 1]
        merged = new.astype(np.int64) if replace else np.union1d(self.pos_idx_[lo:hi], new).astype(np.int64)
        self.pos_idx_ = np.concatenate([self.pos_idx_[:lo], merged, self.pos_idx_[hi:]])
        self.pos_ptr_ = self.pos_ptr_.copy()
        self.pos_ptr_[u + 1:] += len(merged) - (hi - lo)
        self._rebuild_user_attrs()

    # ---------------------------------------------------------------- save / load --
    _ARRAYS = ("V_", "w_", "P_", "a_", "w0_", "T_", "ia_ptr_", "ia_idx_", "ia_val_",
               "ua_ptr_", "ua_idx_", "ua_val_", "item_text_", "user_text_", "pos_ptr_", "pos_idx_",
               "item_counts_", "uab_ptr_", "uab_idx_", "uab_val_")
    _SCALARS = ("step_", "best_epoch_", "fit_time_s_")

    def save(self, path: str | Path) -> Path:
        """Write the fitted model to the directory ``path`` (atomic; manifest with checksums).

        Returns
        -------
        pathlib.Path
            The directory written.
        """
        self.check_fitted()
        meta = {
            "params": self.get_params(),
            "layout": self.layout_.to_meta(),
            "scalars": {k_: (float(getattr(self, k_)) if isinstance(getattr(self, k_), float)
                             else int(getattr(self, k_))) for k_ in self._SCALARS},
            "history": self.history_,
        }
        self.uab_ptr_, self.uab_idx_, self.uab_val_ = self.ua_base_
        with atomic_dir(path, FORMAT, FORMAT_VERSION, meta) as d:
            for k_ in self._ARRAYS:
                np.save(d / f"{k_.rstrip('_')}.npy", np.ascontiguousarray(getattr(self, k_)), allow_pickle=False)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "ContextFM":
        """Read a directory written by :meth:`save` (this format, or version 2's).

        Returns
        -------
        ContextFM
            The fitted model.

        Raises
        ------
        CorruptArtifactError
            A wrong format or version, a missing / altered / inconsistent file, or metadata
            out of range.
        """
        man = read_manifest(path, FORMAT, (2, FORMAT_VERSION))
        meta = check_meta(man["meta"], _meta_schema(man["version"]), str(path))
        unknown = sorted(set(meta["params"]) - set(_PARAM_NAMES))
        if unknown:
            raise CorruptArtifactError(f"{path}: meta['params'] has unknown key(s) {unknown}",
                                       field=f"meta.params.{unknown[0]}")
        m = cls(**meta["params"])
        try:
            m._check_params()
        except (TypeError, ValueError) as e:
            raise CorruptArtifactError(f"{path}: meta['params']: {e}", field="meta.params") from None
        for k_ in cls._ARRAYS:
            p = Path(path) / f"{k_.rstrip('_')}.npy"
            if not p.is_file():
                raise CorruptArtifactError(f"{p}: missing array file")
            setattr(m, k_, load_array(p, finite=True))
        m.layout_ = _read_layout(path, man["version"], meta, bool(m.user_history))
        for k_ in cls._SCALARS:
            setattr(m, k_, meta["scalars"][k_])
        m.ua_base_ = (m.uab_ptr_, m.uab_idx_, m.uab_val_)
        m.history_ = meta["history"]
        m._reset_opt_state()
        m._validate_arrays(path)
        m._neg = _neg_tables(np.flatnonzero(m.item_counts_ > 0).astype(np.int64), m.item_counts_,
                             m.negative_sampling, m.popularity_alpha, m.n_items_)
        return m

    def _validate_arrays(self, path: Any) -> None:
        """Shapes, dtypes and index ranges of loaded arrays, against the scalars and each other,
        before a numba kernel reads them (a short or altered array would be read out of bounds)."""
        def bad(msg: str) -> None:
            raise CorruptArtifactError(f"{path}: {msg}")

        nr, ni, nu, k = int(self.layout_.n_rows), int(self.n_items_), int(self.n_users_), int(self.n_factors)
        for name in self._ARRAYS:
            a = getattr(self, name)
            want = np.float32 if a.dtype.kind == "f" or name in ("V_", "w_", "P_", "a_", "w0_", "T_") else np.int64
            if a.dtype != want:
                bad(f"{name.rstrip('_')}.npy has dtype {a.dtype}, expected {np.dtype(want)}")
        nt = self.layout_.n_text
        di, du, _ = self.layout_.text_dims
        shapes = {"V_": (nr, k), "T_": (nr, int(self.n_tri_factors)), "w_": (nr,), "w0_": (1,),
                  "a_": (nt,), "P_": (nt, k), "item_counts_": (ni,), "item_text_": (ni, di), "user_text_": (nu, du)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                bad(f"{name.rstrip('_')}.npy has shape {getattr(self, name).shape}, expected {shape}")
        for ptr, idx, val, rows, hi in (("ia_ptr_", "ia_idx_", "ia_val_", ni, nr), ("ua_ptr_", "ua_idx_", "ua_val_", nu, nr),
                                        ("uab_ptr_", "uab_idx_", "uab_val_", nu, nr), ("pos_ptr_", "pos_idx_", None, nu, ni)):
            p, ix = getattr(self, ptr), getattr(self, idx)
            why = csr.problem(p, ix, rows, hi, names=(f"{ptr.rstrip('_')}.npy", f"{idx.rstrip('_')}.npy"))
            if why is not None:
                bad(why)
            if val is not None and getattr(self, val).shape != ix.shape:
                bad(f"{val.rstrip('_')}.npy has {len(getattr(self, val))} entries, expected {len(ix)}")

    def check_fitted(self) -> None:
        """Raise :class:`~ctxrec.errors.NotFittedError` unless the model is fitted or loaded."""
        if not hasattr(self, "V_"):
            raise NotFittedError("ContextFM is not fitted: call fit() first")


_DEFAULTS = {k: v.default for k, v in __import__("inspect").signature(ContextFM.__init__).parameters.items()
             if k != "self"}
_PARAM_NAMES = tuple(_DEFAULTS)


def _meta_schema(version: int = FORMAT_VERSION) -> dict[str, MetaField]:
    """What a saved model's ``meta`` must hold before its arrays are read (see :meth:`ContextFM.load`)."""
    count = MetaField(int, min=0, max=1 << 40)
    scalars = {"step_": count, "fit_time_s_": MetaField(float, min=0.0),
               "best_epoch_": MetaField(int, min=-1, max=1 << 40, allow_none=True)}
    common = {"params": MetaField(dict), "history": MetaField((list, dict), allow_none=True)}
    cards = MetaField(list, max=1 << 16, items=MetaField(int, min=0, max=1 << 40))
    if version == 2:  # the offsets themselves were recorded (ctx_off.npy / toff.npy beside)
        scalars.update({k: count for k in ("n_rows_", "n_users_", "n_items_", "n_item_attrs_", "n_user_attrs_")})
        for k in _V2_OFFSETS:  # -1: the block is absent
            scalars[k] = MetaField(int, min=-1, max=1 << 40)
        return {**common, "scalars": MetaField(dict, fields=scalars, allow_unknown=False),
                "context_cardinalities": cards}
    size = MetaField(int, min=0, max=1 << 40, required=True)
    layout = {"n_items": MetaField(int, min=1, max=1 << 40, required=True), "n_item_attrs": size,
              "context_cardinalities": MetaField(list, max=1 << 16, items=MetaField(int, min=1, max=1 << 40),
                                                 required=True),
              "n_user_attrs": size, "user_history": MetaField(bool, required=True),
              "n_users": MetaField(int, min=1, max=1 << 40, required=True),
              "text_dims": MetaField(list, min=3, max=3, items=MetaField(int, min=0, max=1 << 20), required=True)}
    return {**common, "scalars": MetaField(dict, fields=scalars, allow_unknown=False),
            "layout": MetaField(dict, fields=layout, allow_unknown=False, required=True)}


_V2_OFFSETS = ("item_off_", "iattr_off_", "uattr_off_", "hist_off_", "user_off_")


def _read_layout(path: Any, version: int, meta: dict[str, Any], user_history: bool) -> Layout:
    """The saved model's :class:`Layout`. Version 2 recorded the offsets themselves: they are
    read back from the sizes and must equal what was recorded (else CorruptArtifactError)."""
    if version != 2:
        lay = Layout.from_meta(meta["layout"])
        if lay.user_history != user_history:
            raise CorruptArtifactError(f"{path}: meta layout.user_history={lay.user_history} but "
                                       f"params.user_history={user_history}", field="meta.layout.user_history")
        return lay
    sc = meta["scalars"]
    toff = load_array(Path(path) / "toff.npy")
    if toff.shape != (4,) or (np.diff(toff) < 0).any() or toff[0] != 0:
        raise CorruptArtifactError(f"{path}: toff.npy must be 4 non-decreasing offsets from 0, got {toff.tolist()}",
                                   field="toff")
    lay = Layout(sc["n_items_"], sc["n_item_attrs_"], tuple(meta["context_cardinalities"]), sc["n_user_attrs_"],
                 user_history, sc["n_users_"], tuple(int(d) for d in np.diff(toff)))
    ctx_off = load_array(Path(path) / "ctx_off.npy")
    recorded = {**{k: sc[k] for k in _V2_OFFSETS}, "n_rows_": sc["n_rows_"], "ctx_off_": ctx_off.tolist()}
    derived = {**{k: getattr(lay, k.rstrip("_")) for k in _V2_OFFSETS}, "n_rows_": lay.n_rows,
               "ctx_off_": lay.ctx_off.tolist()}
    for k in recorded:
        if recorded[k] != derived[k]:
            raise CorruptArtifactError(f"{path}: {k} = {recorded[k]} disagrees with the sizes saved beside it "
                                       f"(they give {derived[k]})", field=k)
    return lay


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def _row_normalize(indptr: np.ndarray, data: np.ndarray) -> np.ndarray:
    out = data.astype(np.float32).copy()
    for r in range(len(indptr) - 1):
        lo, hi = indptr[r], indptr[r + 1]
        if hi > lo:
            nrm = float(np.sqrt(np.sum(out[lo:hi].astype(np.float64) ** 2)))
            if nrm > 0:
                out[lo:hi] /= nrm
    return out


def _check_timestamps(X: Interactions, n: int) -> np.ndarray:
    """X.timestamp as int64 [n]; a clear error when missing or malformed."""
    if X.timestamp is None:
        raise ValueError("X.timestamp: ContextFM(history_window=...) needs the time of each row "
                         "(from_dataset fills it from Dataset.timestamp)")
    ts = np.asarray(X.timestamp)
    if ts.shape != (n,):
        raise ValueError(f"X.timestamp: shape {ts.shape}, expected ({n},)")
    if not np.issubdtype(ts.dtype, np.number) or (ts.dtype.kind == "f" and not np.all(np.isfinite(ts))):
        raise ValueError(f"X.timestamp: expected finite numbers, got dtype {ts.dtype}")
    return ts.astype(np.int64) if ts.dtype.kind != "f" else ts


def _neg_tables(neg_items: np.ndarray, counts: np.ndarray, how: str, alpha: float,
                n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate items, cumulative weights or empty for uniform, log q per item)."""
    if len(neg_items) == 0:
        neg_items = np.arange(n_items, dtype=np.int64)
    logq = np.zeros(n_items, np.float64)
    if how == "popularity":
        wts = counts[neg_items].astype(np.float64) ** float(alpha)
        wts = np.maximum(wts, 1e-12)
        cdf = np.cumsum(wts)
        logq[neg_items] = np.log(wts / cdf[-1])
        return neg_items, cdf, logq
    logq[neg_items] = -np.log(len(neg_items))
    return neg_items, np.zeros(0, np.float64), logq


class ThreadChooser:
    """Chooses, piece by piece, between ``n_max`` threads and one for a kernel whose result does
    not depend on the thread count (``ContextFM(num_threads=None)``).

    Each piece is timed (seconds per example). Work goes to the current choice in pieces of
    ``chunk`` examples with one thread; with ``n_max`` threads the pieces start at ``probe``
    examples after a switch and double up to ``chunk // 2`` while the threads keep up (so
    that a slow stretch costs little and is seen soon); the other choice is probed on a ``probe``-example piece once the time spent since
    the last probe is ``1 / overhead`` times what that probe would cost beyond the current
    choice, so probing costs about ``overhead`` of the time however lopsided the two are.
    A probe must beat the current choice by ``margin``; a switch to ``n_max`` threads needs two
    such probes in a row (beside a busy process a lucky probe is common, a slow stretch of
    threads costly), a switch to one thread one probe, or the threads' own pieces falling
    ``margin`` behind one thread's last rate. On an idle machine the threads win; beside
    processes that hold the cores one thread wins and the threads are retried rarely.

    Parameters
    ----------
    n_max : int
        The thread count chosen against one (numba's current count).
    chunk, probe : int
        Examples per piece of work and per probe (whole mini-batches).
    overhead : float
        The share of time that probes may cost.
    margin : float
        How much faster (relative) the other choice must be to be taken.
    """

    def __init__(self, n_max: int, chunk: int, probe: int, overhead: float = 0.02, margin: float = 0.2) -> None:
        self.n_max, self.chunk, self.probe = max(1, int(n_max)), int(chunk), int(probe)
        self.overhead, self.margin = float(overhead), float(margin)
        self.rate: dict[int, float | None] = {self.n_max: None, 1: None}
        self.best = 1
        self.since, self.due = 0.0, 0.0
        self._probing: int | None = None
        self._confirm = False
        self._piece = self.probe  # pieces with n_max threads: from ``probe``, doubling to chunk // 2
        self._used: list[tuple[int, int]] = []

    def _other(self) -> int:
        return 1 if self.best == self.n_max else self.n_max

    def next(self) -> tuple[int, int]:
        """The thread count and the examples of the next piece of work.

        Returns
        -------
        (int, int)
            ``n_max`` or 1, and the piece's size in examples.
        """
        self._probing = None
        if self.n_max == 1:
            return 1, self.chunk
        for n, r in self.rate.items():
            if r is None:
                self._probing = n
                return n, self.probe
        if self._confirm or self.since >= self.due:
            self._probing = self._other()
            return self._probing, self.probe
        return self.best, self.chunk if self.best == 1 else self._piece

    def record(self, n: int, seconds: float, examples: int) -> None:
        """Record that ``examples`` took ``seconds`` with ``n`` threads (the piece :meth:`next` gave)."""
        r = seconds / max(1, examples)
        self._used.append((n, examples))
        if self._probing is None and self.rate[n] is not None:  # a piece of the current choice
            self.rate[n] = 0.5 * (self.rate[n] + r)  # type: ignore[operator]
            self.since += seconds
            other = self._other()
            if n == self.n_max and self.rate[n] > (1 + self.margin) * self.rate[other]:  # type: ignore[operator]
                # the threads fell behind: back to one, retried once what a probe would lose is paid for
                self.best, self.since = 1, 0.0
                self.due = self.probe * (self.rate[n] - self.rate[1]) / self.overhead  # type: ignore[operator]
            elif n == self.n_max:
                self._piece = min(2 * self._piece, max(self.probe, self.chunk // 2))
            return
        self.rate[n] = r
        if any(v is None for v in self.rate.values()):
            return
        if self._probing is not None and n == self.best:  # (first measurements)
            return
        better = (1 + self.margin) * r < self.rate[self.best]  # type: ignore[operator]
        if better and (n == 1 or self._confirm):
            self.best, self._confirm, self._piece = n, False, self.probe
            self.since, self.due = 0.0, 0.0  # probe back soon: the first rates are noisy
            return
        self._confirm = bool(better)  # to the threads: probe once more, right away
        if not better:
            loss = self.probe * max(0.0, r - self.rate[self.best])  # type: ignore[operator]
            self.since, self.due = 0.0, loss / self.overhead

    def mean_threads(self, reset: bool = False) -> float:
        """Threads per example since the last reset (e.g. 1.9 = mostly ``n_max`` threads).

        Returns
        -------
        float
            The example-weighted mean thread count (0.0 when nothing was recorded).
        """
        total = sum(e for _, e in self._used)
        mean = sum(n * e for n, e in self._used) / total if total else 0.0
        if reset:
            self._used = []
        return mean


class _OneBlasThread:
    """Holds the BLAS libraries (scipy's, which numba's ``np.dot`` calls, and numpy's) to one
    thread while any holder is inside; the first to enter limits, the last to leave restores
    (fold-ins run concurrently in request threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._limit: Any = None
        self._blas: Any = None

    def __enter__(self) -> None:
        with self._lock:
            if self._holders == 0:
                if self._blas is None:  # found once (milliseconds); a limit then costs ~20 us
                    import scipy.linalg.cython_blas  # noqa: F401  (load the library numba's np.dot uses)
                    from threadpoolctl import ThreadpoolController
                    self._blas = ThreadpoolController().select(user_api="blas")
                self._limit = self._blas.limit(limits=1)
            self._holders += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._limit is not None:
                self._limit.restore_original_limits()
                self._limit = None


_ONE_BLAS_THREAD = _OneBlasThread()


class _threads:
    """Context manager setting numba's thread count (None = leave as is) and holding the BLAS
    libraries to one thread: the kernels call BLAS from their serial parts, where more BLAS
    threads would only compete with numba's (and stall on a loaded machine)."""

    def __init__(self, n: int | None) -> None:
        self.n = n

    def __enter__(self) -> None:
        import numba
        self.old = numba.get_num_threads()
        if self.n:
            numba.set_num_threads(min(int(self.n), numba.config.NUMBA_NUM_THREADS))
        _ONE_BLAS_THREAD.__enter__()

    def __exit__(self, *exc: Any) -> None:
        import numba
        _ONE_BLAS_THREAD.__exit__(*exc)
        numba.set_num_threads(self.old)
