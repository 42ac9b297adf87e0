"""Clarifying questions derived from the catalog: item attributes and text-embedding clusters."""
from __future__ import annotations

import re
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ctxrec.session.text import STOP_WORDS, TOKEN, WORD, singular, unit


# ============================================================================ questions
@dataclass(eq=False)
class Question:
    """One clarifying question of a :class:`QuestionBank`.

    Attributes
    ----------
    id : str
        Stable identifier ("attr:genres", "clusters", "clusters/3").
    kind : str
        "attribute" or "cluster".
    field : str
        The item attribute asked about ("text" for clusters).
    prompt : str
        The question as shown.
    options : list of str
        Short option labels.
    details : list of str
        A longer description of each option (typical titles and words for a text cluster).
    membership : float32 array [n_items, n_options]
        Row i = how item i answers (sums to 1; an all-uniform row = the item gives no
        information).
    option_vecs : float32 array [n_options, d] or None
        Unit vectors in the encoder's space (to read a free-text answer).
    """

    id: str
    kind: str
    field: str
    prompt: str
    options: tuple[str, ...]
    details: tuple[str, ...]
    membership: np.ndarray = field(repr=False)
    option_vecs: np.ndarray | None = field(default=None, repr=False)
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # derived values (sessions' likelihoods)

    @property
    def n_options(self) -> int:
        """int: number of options."""
        return len(self.options)

    def to_dict(self) -> dict[str, Any]:
        """dict: ``id``, ``kind``, ``field``, ``prompt`` and ``options`` (index, label, detail), JSON-ready."""
        return {"id": self.id, "kind": self.kind, "field": self.field, "prompt": self.prompt,
                "options": [{"index": j, "label": o, "detail": d}
                            for j, (o, d) in enumerate(zip(self.options, self.details))]}

    def option_index(self, answer: Any) -> int | None:
        """The option an answer names exactly (index or label, case-insensitive).

        Parameters
        ----------
        answer : int or str
            An option index or label.

        Returns
        -------
        int or None
            The option index; None when the answer names none.

        Raises
        ------
        ValueError
            An index out of range.
        """
        if isinstance(answer, (int, np.integer)) and not isinstance(answer, bool):
            if 0 <= int(answer) < self.n_options:
                return int(answer)
            raise ValueError(f"answer: option index {answer} out of range 0..{self.n_options - 1} "
                             f"for question {self.id!r}")
        if isinstance(answer, str):
            a = answer.strip().lower()
            for j, o in enumerate(self.options):
                if a == o.lower():
                    return j
        return None

    def named_options(self, text: str) -> list[int]:
        """Options whose label occurs in ``text`` as a whole word/phrase (case-insensitive).

        Parameters
        ----------
        text : str

        Returns
        -------
        list of int
            Option indices, in option order.
        """
        t = f" {' '.join(TOKEN.findall(text.lower()))} "
        out = []
        for j, o in enumerate(self.options):
            words = " ".join(TOKEN.findall(o.lower()))
            if len(words) >= 3 and (f" {words} " in t or f" {words}s " in t):
                out.append(j)
        return out


def _kmeans(x: np.ndarray, k: int, seed: int, iters: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (k-means++ seeding): (labels [n], unit centroids [k, d])."""
    rng = np.random.default_rng(seed)
    n = len(x)
    cent = [x[rng.integers(n)]]
    d2 = np.full(n, np.inf)
    for _ in range(1, k):
        d2 = np.minimum(d2, 2 - 2 * x @ cent[-1])
        p = np.maximum(d2, 0)
        cent.append(x[rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.integers(n)])
    c = np.array(cent)
    labels = np.zeros(n, np.int64)
    for it in range(iters):
        new = np.argmax(x @ c.T, axis=1)
        if it and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            m = labels == j
            c[j] = unit(x[m].sum(0)) if m.any() else x[rng.integers(n)]
    return labels, c


class QuestionBank:
    """Clarifying questions derived automatically from a recommender's catalog.

    * one question per categorical item attribute (a column of ``rec.items_`` with a few
      distinct values, a list-valued column such as genres, a year column by decade, a
      numeric column by quartile);
    * one question over ``n_clusters`` clusters of the item text embeddings, and one per
      cluster over its ``n_subclusters`` sub-clusters (+ "something else"), each option
      described by its most typical titles and words.
    """

    _cache: "weakref.WeakKeyDictionary[Any, QuestionBank]" = weakref.WeakKeyDictionary()
    _cache_lock = threading.Lock()

    def __init__(self, questions: Sequence[Question], n_items: int) -> None:
        ids = [q.id for q in questions]
        if len(set(ids)) != len(ids):
            raise ValueError("question ids must be distinct")
        for q in questions:
            if q.membership.shape != (n_items, q.n_options):
                raise ValueError(f"question {q.id!r}: membership shape {q.membership.shape} != "
                                 f"({n_items}, {q.n_options})")
        self.questions = list(questions)
        self.n_items = n_items
        self._by_id = {q.id: q for q in self.questions}

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self):
        return iter(self.questions)

    def __getitem__(self, qid: str) -> Question:
        return self._by_id[qid]

    def __repr__(self) -> str:
        return f"QuestionBank({len(self)} questions: {', '.join(q.id for q in self.questions[:8])}" \
               f"{', ...' if len(self) > 8 else ''})"

    @classmethod
    def for_recommender(cls, rec: Any) -> "QuestionBank":
        """The default bank of ``rec``, built once per catalog and cached.

        Cached per recommender object: a catalog write swaps ``rec.items_``, and the next call
        builds the bank again.

        Parameters
        ----------
        rec : ctxrec.recommender.Recommender
            Fitted.

        Returns
        -------
        QuestionBank
        """
        with cls._cache_lock:
            got = cls._cache.get(rec)
            items = getattr(rec, "items_", None)
            if got is None or got[0] is not items:
                got = (items, cls.from_recommender(rec))
                cls._cache[rec] = got
            return got[1]

    @classmethod
    def from_recommender(cls, rec: Any, *, attributes: Sequence[str] | None = None, n_clusters: int = 6,
                         n_subclusters: int = 5, max_options: int = 20, min_support: float = 0.01,
                         seed: int = 0) -> "QuestionBank":
        """Build the bank from ``rec.items_`` (attributes) and ``rec.item_text_`` (clusters).

        Parameters
        ----------
        rec : ctxrec.recommender.Recommender
            Fitted.
        attributes : sequence of str, optional
            Item columns to ask about (default: detected).
        n_clusters : int
            Options of the text-cluster question; 0 turns the text-cluster questions off.
        n_subclusters : int
            Options of each cluster's sub-question; 0 turns the second level off.
        max_options : int
            The most options an attribute question may have.
        min_support : float
            The least share of items an attribute option must cover.
        seed : int
            Seed of the clustering.

        Returns
        -------
        QuestionBank
        """
        items: pd.DataFrame = rec.items_
        n = len(items)
        enc = rec.encoder_
        questions: list[Question] = []
        cols = list(attributes) if attributes is not None else [c for c in items.columns
                                                                  if c not in ("item_id", "text")]
        for c in cols:
            if c not in items.columns:
                raise ValueError(f"attributes: no item column {c!r} (have {list(items.columns)})")
            q = _attribute_question(c, items[c], n, max_options, min_support)
            if q is not None:
                questions.append(q)
        if enc is not None and questions:
            labels = sorted({o for q in questions for o in q.options})
            vecs = unit(np.asarray(enc.encode(labels), np.float64))
            pos = {o: j for j, o in enumerate(labels)}
            for q in questions:
                q.option_vecs = vecs[[pos[o] for o in q.options]].astype(np.float32)
        emb = getattr(rec, "item_text_", None)
        if n_clusters and emb is not None:
            questions += _cluster_questions(rec, np.asarray(emb, np.float64), n_clusters, n_subclusters, seed)
        return cls(questions, n)


def _attribute_question(name: str, col: pd.Series, n: int, max_options: int,
                        min_support: float) -> Question | None:
    vals = col.tolist()
    sample = [v for v in vals[:200] if v is not None and not (isinstance(v, float) and np.isnan(v))]
    if not sample:
        return None
    multi = any(isinstance(v, (list, tuple, np.ndarray)) for v in sample)
    label = singular(name.replace("_", " "))
    if multi:
        rows = [[str(x) for x in v] if isinstance(v, (list, tuple, np.ndarray)) else [] for v in vals]
        prompt = f"Which {label} are you in the mood for?"
    elif pd.api.types.is_bool_dtype(col):
        rows = [[("yes" if v else "no")] if v is not None else [] for v in vals]
        prompt = f"Should it be {label}?"
    elif pd.api.types.is_numeric_dtype(col):
        x = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(x)
        if ok.sum() < 2:
            return None
        distinct = np.unique(x[ok])
        if "year" in name.lower() or (np.all(distinct == np.round(distinct)) and distinct.min() >= 1800
                                      and distinct.max() <= 2100 and len(distinct) > max_options):
            rows = [[f"{int(v) // 10 * 10}s"] if f else [] for v, f in zip(x, ok)]
            prompt = "From which decade?"
        elif len(distinct) <= max_options:
            rows = [[f"{v:g}"] if f else [] for v, f in zip(x, ok)]
            prompt = f"Which {label}?"
        else:
            edges = np.unique(np.quantile(x[ok], [0, .25, .5, .75, 1]))
            if len(edges) < 3:
                return None
            names = [f"{edges[j]:g}–{edges[j + 1]:g}" for j in range(len(edges) - 1)]
            b = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(names) - 1)
            rows = [[names[j]] if f else [] for j, f in zip(b, ok)]
            prompt = f"Which range of {label}?"
    elif pd.api.types.is_object_dtype(col) or isinstance(col.dtype, pd.CategoricalDtype) \
            or pd.api.types.is_string_dtype(col):
        strs = [str(v) if v is not None and not (isinstance(v, float) and np.isnan(v)) and str(v) else None
                for v in vals]
        if len({s for s in strs if s is not None}) > max_options:
            return None  # free text or identifiers (titles, urls, overviews)
        rows = [[s] if s is not None else [] for s in strs]
        prompt = f"Which {label} would you like?"
    else:
        return None
    counts = Counter(x for r in rows for x in set(r))
    keep = [v for v, c in sorted(counts.items(), key=lambda t: (-t[1], t[0]))
            if c >= max(1, min_support * n) and c < n][:max_options]
    if len(keep) < 2:
        return None
    keep.sort(key=lambda v: (-counts[v], v)) if not re.fullmatch(r"\d+s", keep[0]) else keep.sort()
    pos = {v: j for j, v in enumerate(keep)}
    m = np.zeros((n, len(keep)), np.float32)
    for i, r in enumerate(rows):
        js = [pos[v] for v in set(r) if v in pos]
        if js:
            m[i, js] = 1.0 / len(js)
        else:
            m[i] = 1.0 / len(keep)  # no (kept) value: the item tells nothing about the answer
    details = tuple(f"{counts[v]} items" for v in keep)
    return Question(f"attr:{name}", "attribute", name, prompt, tuple(keep), details, m)


def _title_column(items: pd.DataFrame) -> pd.Series:
    for c in ("title", "name"):
        if c in items.columns:
            return items[c].astype(str)
    return items["text"].astype(str).str.slice(0, 40) if "text" in items.columns else items["item_id"].astype(str)


def _describe(members: np.ndarray, centroid: np.ndarray, emb: np.ndarray, titles: list[str], bias: np.ndarray,
              words: list[set[str]], df_all: Counter, n_all: int) -> tuple[str, str]:
    """(label, detail) of a cluster: three typical, well-known titles and its most telling words."""
    sims = emb[members] @ centroid
    near = members[np.argsort(-sims, kind="stable")[:25]]
    pick = near[np.argsort(-bias[near], kind="stable")[:3]]
    label = "like " + ", ".join(titles[i] for i in pick)
    df = Counter(w for i in members for w in words[i])
    nc = len(members)
    score = {w: (c / nc) * np.log((c / nc) / (df_all[w] / n_all)) for w, c in df.items()
             if c >= 2 and df_all[w] < n_all}
    top = [w for w, _ in sorted(score.items(), key=lambda t: (-t[1], t[0]))[:5]]
    return label, ", ".join(top)


def _cluster_questions(rec: Any, emb: np.ndarray, k: int, k_sub: int, seed: int) -> list[Question]:
    n = len(emb)
    has = np.flatnonzero(np.abs(emb).sum(axis=1) > 0)
    if len(has) < 2 * k:
        return []
    x = unit(emb[has])
    ids = rec.items_["item_id"].tolist() if "item_id" in rec.items_.columns else list(range(n))
    titles = [t if isinstance(t, str) and t else str(i)  # an added item may come without a title
              for t, i in zip(_title_column(rec.items_).tolist(), ids)]
    bias = np.asarray(rec.engine_.item_bias_, np.float64)
    texts = rec.items_["text"].astype(str).tolist() if "text" in rec.items_.columns else titles
    words = [{w for w in WORD.findall(t.lower()) if len(w) >= 4 and w not in STOP_WORDS} for t in texts]
    df_all = Counter(w for i in has for w in words[i])
    labels, cent = _kmeans(x, k, seed)

    def question(qid: str, prompt: str, groups: list[np.ndarray], cvecs: list[np.ndarray],
                 other: np.ndarray | None) -> Question:
        opts, details = [], []
        m = np.full((n, len(groups) + (other is not None)), 1.0 / (len(groups) + (other is not None)), np.float32)
        for j, (g, c) in enumerate(zip(groups, cvecs)):
            lab, det = _describe(has[g], c, emb, titles, bias, words, df_all, n)
            opts.append(lab)
            details.append(det)
            m[has[g]] = 0
            m[has[g], j] = 1
        vecs = list(cvecs)
        if other is not None:
            opts.append("something else")
            details.append("none of the above")
            m[has[other]] = 0
            m[has[other], -1] = 1
            vecs.append(unit(x[other].sum(0)))
        # same label twice (tiny catalogs): make labels distinct so a label names one option
        seen: Counter = Counter()
        for j, o in enumerate(opts):
            seen[o] += 1
            if seen[o] > 1:
                opts[j] = f"{o} ({seen[o]})"
        return Question(qid, "cluster", "text", prompt, tuple(opts), tuple(details), m,
                        np.asarray(vecs, np.float32))

    groups = [np.flatnonzero(labels == j) for j in range(k)]
    qs = [question("clusters", "Which of these is closest to what you'd like?", groups, list(cent), None)]
    if k_sub:
        for j, g in enumerate(groups):
            if len(g) < 3 * k_sub:
                continue
            sl, sc = _kmeans(x[g], k_sub, seed + 1 + j)
            sub = [g[sl == s] for s in range(k_sub)]
            other = np.flatnonzero(labels != j)
            about = qs[0].details[j] or qs[0].options[j]
            qs.append(question(f"clusters/{j}", f"More precisely, within “{about}”: which is closest?", sub,
                               list(sc), other))
    return qs
