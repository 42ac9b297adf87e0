"""Interactive recommendation: clarifying questions, free-text answers, explanations.

    from ctxrec.session import Session
    s = Session(rec, user=196, context={"timestamp": "1998-03-01T21:00"})   # rec: a fitted Recommender
    s.recommend()                  # the top-K now (a ctxrec.recommender.Recommendation)
    q = s.next_question()          # the most informative question, or None when confident
    q.prompt, q.options            # "Which genre are you in the mood for?", ("Action", "Comedy", ...)
    s.answer("Comedy")             # an option (label or index) or free text -> the new top-K
    s.say("something light, not too long")   # free text at any time
    s.explain(item_id)             # why this item is recommended now (UI-ready)

The model of a conversation (all of it stated, nothing hidden)
----------------------------------------------------------------
The session keeps a belief over which catalog item the user is after:

    ranking:  score(i) = base(i) + T · Σ_answers log P(answer | i)
    belief:   p(i) ∝ [(1 − λ) softmax(base / T)(i) + λ / n] · Π_answers P(answer | i)

``base(i)`` is the recommender's own score for (user, structured context, conversation
text): the ContextFM query · item vector + item bias (+ the model's request-text input when
it was trained with one) + ``text_match_weight · cos(conversation text, item text)``.
The *conversation text* is every free-text turn (the initial request, free answers, things
said) encoded once and combined as ``Σ_t text_decay^(age_t) · e_t`` (newest turn weight 1,
the one before ``text_decay``, ...), then L2-normalized. ``T = temperature · std(base)`` over
the allowed items; λ = ``prior_mix`` keeps some belief on items the model ranks low.

Each question of the :class:`QuestionBank` has options ``a`` and, per item, a distribution
``M[i, a]`` (an item with several genres answers any of them equally; an item with no value
for the attribute gives no information: uniform). Answers are taken as truthful with noise
``answer_noise`` = ε: ``P(a | i) = (1 - ε) M[i, a] + ε / n_options``. A free-text answer to a
question is turned into option weights ``w`` (an option label named in the text wins;
otherwise ``softmax(cos(text, option vector) / text_choice_temperature)``) and the likelihood
is ``Σ_a w_a P(a | i)``; the text also joins the conversation text, unless it only names
options ("I'd like comedy" is taken as the choice, not as a description).

``next_question`` scores every unasked question by its expected information gain about the
target over the current belief (restricted to the ``pool`` most likely items):
``EIG = H(A) − E_i[H(A | i)]`` in nats, and asks the best one. It stops (returns None) when
the top-K holds at least ``confidence`` of the belief's mass, when no question gains
``min_gain`` nats, or after ``max_questions``.
"""
from __future__ import annotations

import re
import threading
import uuid
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ctxrec._io import jsonable
from ctxrec.errors import InputError, UnknownIdError

__all__ = ["ChatLLM", "Question", "QuestionBank", "Session", "SessionRetiredError", "SessionStore"]

_WORD = re.compile(r"[a-z][a-z'\-]+")
_TOK = re.compile(r"[a-z0-9][a-z0-9'\-]*")
_STOP = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once
only or other our ours out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself year years genres genre film films movie movies story life find finds one
two three new get gets take takes make makes must goes comes come back world young becomes help tries who's it's
man woman men women when's he's she's they're their's into upon around while first last later named""".split())


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        n = np.linalg.norm(x)
        return x / n if n > 0 else x
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.maximum(n, 1e-12), 0.0)


_FILLER = frozenset("like want would love prefer something anything please maybe rather mood more some kind "
                    "type sort really just quite bit little think feel i'd i'm i'll let's give show".split())


def _says_more(text: str, labels: Sequence[str]) -> bool:
    """Whether ``text`` has content words beyond the option labels it names."""
    used = {w for lab in labels for w in _TOK.findall(lab.lower())}
    used |= {w + "s" for w in used}
    return any(len(w) >= 3 and w not in _STOP and w not in _FILLER and w not in used
               for w in _TOK.findall(text.lower()))


# ============================================================================ questions
@dataclass(eq=False)
class Question:
    """One clarifying question of a :class:`QuestionBank`.

    id: stable identifier ("attr:genres", "clusters", "clusters/3"). kind: "attribute" or
    "cluster". field: the item attribute asked about ("text" for clusters). prompt: the
    question as shown. options: short option labels; details: a longer description of each
    (typical titles and words for a text cluster). membership: float32 [n_items, n_options],
    row i = how item i answers (sums to 1; an all-uniform row = the item gives no
    information). option_vecs: unit float32 [n_options, d] in the encoder's space (to read a
    free-text answer), or None.
    """

    id: str
    kind: str
    field: str
    prompt: str
    options: tuple[str, ...]
    details: tuple[str, ...]
    membership: np.ndarray = field(repr=False)
    option_vecs: np.ndarray | None = field(default=None, repr=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_options(self) -> int:
        return len(self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "field": self.field, "prompt": self.prompt,
                "options": [{"index": j, "label": o, "detail": d}
                            for j, (o, d) in enumerate(zip(self.options, self.details))]}

    def option_index(self, answer: Any) -> int | None:
        """The option an answer names exactly (index or label, case-insensitive), else None."""
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
        """Options whose label occurs in ``text`` as a whole word/phrase (case-insensitive)."""
        t = f" {' '.join(_TOK.findall(text.lower()))} "
        out = []
        for j, o in enumerate(self.options):
            words = " ".join(_TOK.findall(o.lower()))
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
            c[j] = _unit(x[m].sum(0)) if m.any() else x[rng.integers(n)]
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
        """The default bank of ``rec``, built once per catalog and cached (per recommender object:
        a catalog write swaps ``rec.items_``, and the next call builds the bank again)."""
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

        attributes: item columns to ask about (default: detected). n_clusters=0 turns the
        text-cluster questions off; n_subclusters=0 the second level.
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
            vecs = _unit(np.asarray(enc.encode(labels), np.float64))
            pos = {o: j for j, o in enumerate(labels)}
            for q in questions:
                q.option_vecs = vecs[[pos[o] for o in q.options]].astype(np.float32)
        emb = getattr(rec, "item_text_", None)
        if n_clusters and emb is not None:
            questions += _cluster_questions(rec, np.asarray(emb, np.float64), n_clusters, n_subclusters, seed)
        return cls(questions, n)


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") and not name.endswith("ss") else name


def _attribute_question(name: str, col: pd.Series, n: int, max_options: int,
                        min_support: float) -> Question | None:
    vals = col.tolist()
    sample = [v for v in vals[:200] if v is not None and not (isinstance(v, float) and np.isnan(v))]
    if not sample:
        return None
    multi = any(isinstance(v, (list, tuple, np.ndarray)) for v in sample)
    label = _singular(name.replace("_", " "))
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
    x = _unit(emb[has])
    ids = rec.items_["item_id"].tolist() if "item_id" in rec.items_.columns else list(range(n))
    titles = [t if isinstance(t, str) and t else str(i)  # an added item may come without a title
              for t, i in zip(_title_column(rec.items_).tolist(), ids)]
    bias = np.asarray(rec.engine_.item_bias_, np.float64)
    texts = rec.items_["text"].astype(str).tolist() if "text" in rec.items_.columns else titles
    words = [{w for w in _WORD.findall(t.lower()) if len(w) >= 4 and w not in _STOP} for t in texts]
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
            vecs.append(_unit(x[other].sum(0)))
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


# ============================================================================ optional LLM
class ChatLLM:
    """Optional: a generative model behind an OpenAI-compatible endpoint (``POST
    {url}/chat/completions``) that phrases questions and reads free answers. Off by default
    (``Session(llm=None)``); any failure (unreachable, timeout, malformed reply, a reply that
    names no option) falls back to the session's own reading, so a session never depends on it.

    url: base URL, e.g. "http://127.0.0.1:8080/v1". model: the model name sent. api_key:
    sent as a bearer token when given. timeout_s: per call.
    """

    def __init__(self, url: str, model: str = "default", api_key: str | None = None, timeout_s: float = 5.0) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"llm url must be an http(s) URL, got {url!r}")
        self.url, self.model, self.api_key, self.timeout_s = url.rstrip("/"), model, api_key, float(timeout_s)
        self.failures = 0

    def _chat(self, system: str, user: str) -> str | None:
        import json
        import urllib.request
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 64,
                           "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.url}/chat/completions", data=body.encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                out = json.loads(r.read().decode())
            text = out["choices"][0]["message"]["content"]
            return text.strip() if isinstance(text, str) else None
        except Exception:  # the session works without it
            self.failures += 1
            return None

    def phrase(self, q: Question) -> str | None:
        """A friendlier wording of ``q`` (None on failure)."""
        opts = "; ".join(q.options)
        return self._chat("You rephrase a shop assistant's clarifying question in one short friendly sentence. "
                          "Reply with the sentence only.", f"Question: {q.prompt}\nOptions: {opts}")

    def parse(self, q: Question, text: str) -> int | None:
        """The option (0-based) a free answer picks, or None (no option / failure)."""
        opts = "\n".join(f"{j + 1}. {o}" for j, o in enumerate(q.options))
        reply = self._chat("Which numbered option does the user's answer choose? Reply with the number only, "
                           "or 0 if none.", f"Question: {q.prompt}\nOptions:\n{opts}\nAnswer: {text}")
        m = re.search(r"\d+", reply or "")
        j = int(m.group()) - 1 if m else -1
        return j if 0 <= j < q.n_options else None


# ============================================================================ session
@dataclass
class Turn:
    """One step of a conversation (UI-ready through ``to_dict``)."""

    kind: str                      # "request" | "answer" | "say" | "skip"
    text: str | None = None        # free text, when any
    question: str | None = None    # question id
    prompt: str | None = None
    choice: str | None = None      # the option taken (hard choice or the strongest soft one)
    weights: list[float] | None = None  # option weights read from free text

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Session:
    """One conversation with one user: turns, the belief over items, the next question.

    Parameters (see the module docstring for the model they belong to)
    ----------
    recommender : a fitted :class:`ctxrec.recommender.Recommender`
    user : raw user id (unknown or None = cold start)
    context : structured context fields; a free-text field of the recommender's spec (e.g.
        "query") becomes the first turn of the conversation text.
    bank : QuestionBank (default: ``QuestionBank.for_recommender(recommender)``)
    k : top-K size; exclude_seen / exclude / allow / filter as in ``Recommender.recommend``
        (removed items are never in a session's top-K).
    temperature : belief temperature as a multiple of the base scores' std (default 1).
    answer_noise : ε, the chance an answer is not what the target's attributes say (0.05).
    text_decay : weight of each older free-text turn relative to the next newer one (0.5).
    text_weight : weight of cos(conversation text, item text) (default: the recommender's
        ``text_match_weight_``).
    confidence : stop asking once the top-K holds this much of the belief (0.5).
    min_gain : stop asking when no question gains this many nats (0.02).
    max_questions : ask at most this many questions (None = until confident).
    text_choice_temperature : softmax temperature turning a free answer's cosine to each
        option into option weights (0.1; chosen on test rows disjoint from the benchmark's).
    prior_mix : share of a uniform prior mixed into the belief the questions are chosen on
        (0.1): the model's ranking is a guess, and an overconfident belief would only ask
        questions that split items the model already likes.
    pool : the belief is evaluated on the ``pool`` best items for question choice (2000).
    llm : optional :class:`ChatLLM` that reads free answers first (and can phrase questions,
        ``phrase(question)``); None (default) = the session's own reading only.

    ``lock`` (a re-entrant lock) serializes the session's methods; hold it to make several
    calls one consistent step (an answer and the state it leads to).
    """

    def __init__(self, recommender: Any, user: Any = None, context: Mapping[str, Any] | None = None, *,
                 bank: QuestionBank | None = None, k: int = 10, exclude_seen: bool = True,
                 exclude: Iterable[Any] | None = None, allow: Iterable[Any] | None = None,
                 filter: Mapping[str, Any] | None = None, temperature: float = 1.0, answer_noise: float = 0.05, text_decay: float = 0.5,
                 text_weight: float | None = None, confidence: float = 0.5, min_gain: float = 0.02,
                 max_questions: int | None = None, text_choice_temperature: float = 0.1,
                 prior_mix: float = 0.1, pool: int = 2000, llm: ChatLLM | None = None) -> None:
        rec = recommender
        rec.check_fitted()
        if context is not None and not isinstance(context, Mapping):
            raise ValueError(f"context must be a dict of field -> value, got {type(context).__name__}")
        if not (isinstance(k, (int, np.integer)) and k >= 1):
            raise ValueError(f"k must be a positive integer, got {k!r}")
        for name, v, lo, hi in (("temperature", temperature, 0, None), ("answer_noise", answer_noise, 0, 1),
                                ("text_decay", text_decay, -1e-12, 1), ("confidence", confidence, 0, 1),
                                ("text_choice_temperature", text_choice_temperature, 0, None),
                                ("prior_mix", prior_mix + 1e-12, 0, 1)):
            if not np.isfinite(v) or v <= lo or (hi is not None and v > hi):
                raise ValueError(f"{name} must be in ({lo}, {hi if hi is not None else 'inf'}], got {v!r}")
        self.rec = rec
        self.bank = bank if bank is not None else QuestionBank.for_recommender(rec)
        n = len(rec.item_ids_)
        if self.bank.n_items != n:
            raise ValueError(f"bank: built for {self.bank.n_items} items, the recommender has {n}")
        self.id = uuid.uuid4().hex
        self.user = user
        self.k = int(k)
        self.temperature, self.answer_noise, self.text_decay = float(temperature), float(answer_noise), float(text_decay)
        self.text_weight = float(rec.text_match_weight_ if text_weight is None else text_weight)
        self.confidence, self.min_gain, self.max_questions = float(confidence), float(min_gain), max_questions
        self.text_choice_temperature, self.pool = float(text_choice_temperature), int(pool)
        self.prior_mix = float(prior_mix)
        self.llm = llm
        self.turns: list[Turn] = []
        self.asked: list[str] = []
        self.pending: Question | None = None
        self.lock = threading.RLock()
        self._u = rec.user_index(user) if user is not None else -1
        self._encoder = rec.encoder_
        rec.check_context(context, text=False)  # unknown keys, surrogates: an error naming the field
        text_fields = set(rec.context_.text_fields)
        ctx = dict(context or {})
        first_text = " ".join(str(ctx.pop(f)) for f in list(ctx) if f in text_fields and ctx[f])
        self.context = ctx
        feats = rec.context_.transform(ctx)  # raises naming the field on invalid values
        self._ctx = feats.indices if rec.context_.slots else None
        self._texts: list[np.ndarray] = []
        # the catalog as this session started: item vectors and biases by slot (one copy per session)
        self._vecs = np.asarray(rec.engine_.item_vecs_, np.float64)
        self._bias = np.asarray(rec.engine_.item_bias_, np.float64)
        self._loglik = np.zeros(n, np.float64)
        self._answer_ll: list[tuple[int, np.ndarray]] = []  # (turn index, log-likelihood [n]) per answer
        mask = np.array(rec.engine_.live_, bool)  # removed items are never recommended
        if exclude_seen and self._u >= 0:
            mask[self._indices(rec.engine_.seen(self._u))] = False
        if filter:
            mask &= rec.filter_mask(filter)
        if allow is not None:
            keep = np.zeros(n, bool)
            keep[self._indices(allow)] = True
            mask &= keep
        if exclude is not None:
            mask[self._indices(exclude)] = False
        self._mask = mask
        if first_text:
            self._add_text(first_text)
            self.turns.append(Turn("request", text=first_text))
        self._refresh()

    # ------------------------------------------------------------------ internals
    def _indices(self, ids: Iterable[Any]) -> np.ndarray:
        out = []
        for i in ids:
            try:
                out.append(self.rec.item_index(i))
            except KeyError:
                pass
        return np.asarray(out, np.int64)

    def _add_text(self, text: str) -> np.ndarray | None:
        if self._encoder is None:
            return None
        v = np.asarray(self._encoder.encode([text]), np.float64)[0]
        self._texts.append(v)
        return v

    def text_vector(self) -> np.ndarray | None:
        """The conversation text: decayed sum of the encoded free-text turns, unit length (or None)."""
        if not self._texts:
            return None
        w = self.text_decay ** np.arange(len(self._texts) - 1, -1, -1, dtype=np.float64)
        v = _unit(w @ np.asarray(self._texts))
        return v if np.any(v) else None

    def _refresh(self) -> None:
        rec = self.rec
        tv = self.text_vector()
        q, const = rec.query_vector(self._u, self._ctx, tv)
        base = self._vecs @ q + self._bias + const
        self._match = None
        if tv is not None and self.text_weight and rec.item_text_ is not None:
            self._match = self.text_weight * (np.asarray(rec.item_text_, np.float64) @ tv)
            base = base + self._match
        self._base = base
        sd = float(np.std(base[self._mask])) if self._mask.sum() > 1 else 1.0
        self._T = self.temperature * (sd if sd > 0 else 1.0)
        score = base + self._T * self._loglik
        score = np.where(self._mask, score, -np.inf)
        self._score = score
        if not self._mask.any():
            self._p = np.zeros(len(score))
            return
        b = np.where(self._mask, base, -np.inf)
        prior = np.exp((b - b[self._mask].max()) / self._T)
        prior = (1 - self.prior_mix) * prior / prior.sum() + self.prior_mix * self._mask / self._mask.sum()
        p = prior * np.exp(self._loglik)
        self._p = p / p.sum()

    def _likelihood(self, q: Question) -> np.ndarray:
        """P(answer | item) with the answer noise: float64 [n_items, n_options]."""
        return self._likelihood_and_entropy(q)[0]

    def _likelihood_and_entropy(self, q: Question) -> tuple[np.ndarray, np.ndarray]:
        """(P(answer | item), H(answer | item) [n_items]), computed once per question and noise."""
        key = ("lik", self.answer_noise)
        got = q._cache.get(key)
        if got is None:
            L = (1 - self.answer_noise) * q.membership.astype(np.float64) + self.answer_noise / q.n_options
            got = (L, -np.sum(L * np.log(L), axis=1))
            q._cache[key] = got
        return got

    # ------------------------------------------------------------------ public API
    def recommend(self, k: int | None = None) -> Any:
        """The top-K now, as a ``Recommendation`` (scores = belief scores, model units)."""
        from ctxrec.recommender import Recommendation
        with self.lock:
            k = self.k if k is None else int(k)
            allowed = int(self._mask.sum())
            k = min(k, allowed)
            if k <= 0:
                return Recommendation(self.user, [], [], self._u < 0, dict(self.context))
            s = self._score
            top = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
            top = top[np.lexsort((top, -s[top]))]
            ids = [jsonable(x) for x in np.asarray(self.rec.item_ids_)[top]]
            return Recommendation(self.user, ids, s[top].tolist(), self._u < 0, dict(self.context))

    def top_mass(self, k: int | None = None) -> float:
        """Share of the belief held by the current top-K."""
        with self.lock:
            k = self.k if k is None else int(k)
            return float(np.sort(self._p)[::-1][:k].sum())

    def question_gains(self) -> dict[str, float]:
        """Expected information gain (nats) of every unasked question over the current belief."""
        with self.lock:
            p = self._p
            n_pool = min(self.pool, int((p > 0).sum()))
            if n_pool == 0:
                return {}
            pool = np.argpartition(-p, n_pool - 1)[:n_pool] if n_pool < len(p) else np.arange(len(p))
            pp = p[pool] / p[pool].sum()
            out = {}
            for q in self.bank:
                if q.id in self.asked:
                    continue
                L, h = self._likelihood_and_entropy(q)
                pa = pp @ L[pool]
                h_a = -float(np.sum(pa * np.log(np.maximum(pa, 1e-300))))
                out[q.id] = max(0.0, h_a - float(pp @ h[pool]))
            return out

    def next_question(self) -> Question | None:
        """The unasked question with the highest expected information gain, or None when the
        top-K is confident (``confidence``), nothing gains ``min_gain`` or ``max_questions``
        were asked. The question stays pending until answered or skipped."""
        with self.lock:
            if self.pending is not None:
                return self.pending
            if self.max_questions is not None and len(self.asked) >= self.max_questions:
                return None
            if self.top_mass() >= self.confidence:
                return None
            gains = self.question_gains()
            if not gains:
                return None
            qid = max(gains, key=lambda i: (gains[i], -list(self.bank._by_id).index(i)))
            if gains[qid] < self.min_gain:
                return None
            self.pending = self.bank[qid]
            return self.pending

    def ask(self, question: Question | str) -> Question:
        """Make ``question`` (or its id) the pending one (e.g. a UI's or a benchmark's own pick)."""
        with self.lock:
            q = self.bank[question] if isinstance(question, str) else question
            if q.id in self.asked:
                raise ValueError(f"question {q.id!r} was already asked")
            self.pending = q
            return q

    def answer(self, response: Any, question: Question | str | None = None) -> Any:
        """Answer the pending question (or ``question``): an option index, an option label,
        free text, or None to skip. Returns the new top-K (``Recommendation``).

        Free text is encoded once, joins the conversation text, and is read as option
        weights (a named option label wins; else cosine to each option's vector).
        Without a pending question, free text is taken as ``say(text)``.
        """
        with self.lock:
            q = self.pending if question is None else (self.bank[question] if isinstance(question, str)
                                                       else question)
            if q is None:
                if response is None:
                    return self.recommend()
                if not isinstance(response, str):
                    raise ValueError("answer: no question is pending; only free text can be said")
                return self.say(response)
            if q.id in self.asked:
                raise ValueError(f"question {q.id!r} was already answered")
            if response is None or (isinstance(response, str) and not response.strip()):
                self.asked.append(q.id)
                self.pending = None if self.pending is q else self.pending
                self.turns.append(Turn("skip", question=q.id, prompt=q.prompt))
                return self.recommend()
            if not isinstance(response, (str, int, np.integer)) or isinstance(response, bool):
                raise ValueError(f"answer: expected an option index, a label or free text, "
                                 f"got {type(response).__name__}")
            j = q.option_index(response)
            turn = Turn("answer", question=q.id, prompt=q.prompt)
            if j is not None:
                w = np.zeros(q.n_options)
                w[j] = 1.0
                turn.choice = q.options[j]
            else:
                text = str(response).strip()
                turn.text = text
                named = q.named_options(text)
                # text that only names options ("I'd like comedy") is taken as the choice; text that
                # says more joins the conversation text (encoded once)
                v = self._add_text(text) if not named or _says_more(text, [q.options[j] for j in named]) else None
                picked = self.llm.parse(q, text) if self.llm is not None else None
                if picked is not None:
                    w = np.zeros(q.n_options)
                    w[picked] = 1.0
                elif named:
                    w = np.zeros(q.n_options)
                    w[named] = 1.0 / len(named)
                elif v is not None and q.option_vecs is not None:
                    sims = q.option_vecs.astype(np.float64) @ v
                    z = (sims - sims.max()) / self.text_choice_temperature
                    w = np.exp(z) / np.exp(z).sum()
                else:
                    w = np.full(q.n_options, 1.0 / q.n_options)  # nothing readable: no information
                turn.weights = [round(float(x), 4) for x in w]
                turn.choice = q.options[int(np.argmax(w))] if w.max() > 1.0 / q.n_options + 1e-9 else None
            ll = np.log(self._likelihood(q) @ w)
            ll -= ll.max()
            self._loglik += ll
            self.asked.append(q.id)
            self.pending = None if self.pending is q else self.pending
            self.turns.append(turn)
            self._answer_ll.append((len(self.turns) - 1, ll))
            self._refresh()
            return self.recommend()

    def phrase(self, question: Question | None = None) -> str | None:
        """The pending question's (or ``question``'s) wording: the LLM's when one is configured
        and answers, else the bank's prompt."""
        q = self.pending if question is None else question
        if q is None:
            return None
        return (self.llm.phrase(q) if self.llm is not None else None) or q.prompt

    def say(self, text: str) -> Any:
        """Free text outside any question ("something light, for kids"): joins the
        conversation text (newest weighs most). Returns the new top-K."""
        with self.lock:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("say: expected non-empty text")
            self._add_text(text.strip())
            self.turns.append(Turn("say", text=text.strip()))
            self._refresh()
            return self.recommend()

    def explain(self, item: Any) -> dict[str, Any]:
        """Why ``item`` is where it is now: contributions summing to its belief score
        (``user_affinity``, ``context``, ``request_text`` (the model's own text input),
        ``text_match`` (with what was said), ``answers``, ``popularity``), per-answer and
        per-text-turn detail, and short sentences a UI can show."""
        with self.lock:
            rec = self.rec
            i = rec.item_index(item)
            model = rec.model_contributions(self._u, self._ctx, self.text_vector(), self._vecs[i],
                                            float(self._bias[i]))
            model.pop("score")
            match = float(self._match[i]) if self._match is not None else 0.0
            parts = {**model, "text_match": match, "answers": float(self._T * self._loglik[i])}
            reasons: list[tuple[float, str]] = []
            per_answer = []
            for t_idx, ll in self._answer_ll:
                t = self.turns[t_idx]
                q = self.bank[t.question]
                fit = float(q.membership[i] @ (np.asarray(t.weights) if t.weights else
                                                (np.arange(q.n_options) == q.options.index(t.choice))))
                contrib = float(self._T * ll[i])
                said = t.choice if t.text is None else t.text
                fits = fit > 1.0 / q.n_options + 1e-9
                per_answer.append({"question": q.prompt, "answer": said, "fits": fits, "contribution": contrib})
                if q.kind == "attribute":
                    vals = [q.options[j] for j in np.flatnonzero(q.membership[i] > 0)] \
                        if np.ptp(q.membership[i]) > 0 else []
                    what = f"its {_singular(q.field)}: {', '.join(vals)}" if vals else f"no {q.field} known"
                else:
                    what = "what it is about"
                reasons.append((contrib, (f"fits your answer “{said}” ({what})" if fits
                                          else f"does not fit your answer “{said}” ({what})")))
            texts = [t for t in self.turns if t.text]
            per_text = []
            if texts and rec.item_text_ is not None and len(self._texts) == len(texts):
                it = np.asarray(rec.item_text_[i], np.float64)
                for t, v in zip(texts, self._texts):
                    per_text.append({"text": t.text, "similarity": float(v @ it)})
                best = max(per_text, key=lambda d: d["similarity"])
                reasons.append((match, f"close to what you said: “{best['text']}” "
                                       f"(similarity {best['similarity']:.2f})"))
            if self._u >= 0:
                reasons.append((parts["user_affinity"], "fits your history" if parts["user_affinity"] > 0
                                else "unlike what you usually pick"))
            if self._ctx is not None and abs(parts["context"]) > 1e-9:
                reasons.append((parts["context"], "suits the moment (time, place, device)" if parts["context"] > 0
                                else "less suited to the moment"))
            reasons.append((parts["popularity"], "popular overall" if parts["popularity"] >= float(
                np.median(self._bias[self._mask] if self._mask.any() else self._bias)) else "less known"))
            reasons.sort(key=lambda t: -abs(t[0]))
            order = np.argsort(-self._score, kind="stable")
            rank = int(np.flatnonzero(order == i)[0]) + 1 if self._mask[i] else None
            info = {}
            for c in ("title", "name", "genres"):
                if c in rec.items_.columns:
                    v = rec.items_.iloc[i][c]
                    info[c] = [str(x) for x in v] if isinstance(v, (list, tuple, np.ndarray)) else jsonable(v)
            return {"item_id": jsonable(rec.item_ids_[i]), **info, "rank": rank,
                    "score": float(self._score[i]) if self._mask[i] else None,
                    "probability": float(self._p[i]), "contributions": parts, "answers": per_answer,
                    "said": per_text, "reasons": [r for _, r in reasons]}

    def state(self, k: int | None = None) -> dict[str, Any]:
        """JSON-ready snapshot: items, the pending question, turns, confidence."""
        with self.lock:
            rec = self.recommend(k)
            return {"session_id": self.id, "user": jsonable(self.user), "cold_start": rec.cold_start,
                    "items": rec.to_dict()["items"],
                    "question": None if self.pending is None else self.pending.to_dict(),
                    "confidence": self.top_mass(k), "asked": list(self.asked),
                    "turns": [t.to_dict() for t in self.turns]}

    def __repr__(self) -> str:
        return f"Session(user={self.user!r}, turns={len(self.turns)}, asked={self.asked})"


# ============================================================================ store
class SessionStore:
    """A bounded, expiring, thread-safe map session id -> Session (for the HTTP service).

    Bounds: at most ``max_sessions`` sessions and at most ``max_bytes`` of estimated session
    footprint (:meth:`footprint`: the session's arrays, ids, context, texts and turns) live at
    once; the least recently used go first when either is passed. A session unused for
    ``ttl_s`` seconds expires. A single session larger than ``max_bytes`` is refused
    (:class:`~ctxrec.errors.InputError`). ``clock`` is injectable for tests.

    Reloads: a session is bound to the model it started on. :meth:`retire` (called by the
    service after ``/admin/reload`` or ``SIGHUP``) drops every session of another model, so
    the old model is released, and remembers their ids (up to ``max_sessions``):
    :meth:`get` then raises :class:`SessionRetiredError` (HTTP 410: start a new session)
    rather than "unknown". A session created on the old model while the swap happened is
    retired on its next :meth:`get`.
    """

    def __init__(self, max_sessions: int = 10_000, ttl_s: float = 1800.0, clock: Any = None,
                 max_bytes: int = 512 << 20) -> None:
        if max_sessions < 1 or not ttl_s > 0 or max_bytes < 1:
            raise ValueError("max_sessions must be >= 1, ttl_s > 0 and max_bytes >= 1")
        import time
        from collections import OrderedDict
        self.max_sessions, self.ttl_s, self.max_bytes = int(max_sessions), float(ttl_s), int(max_bytes)
        self._clock = clock or time.monotonic
        self._items: "OrderedDict[str, tuple[float, Session, int]]" = OrderedDict()
        self._retired: "OrderedDict[str, None]" = OrderedDict()
        self._model: Any = None  # the model sessions must be bound to (None: any)
        self._lock = threading.Lock()
        self.bytes = 0
        self.evicted = 0
        self.expired = 0

    @staticmethod
    def footprint(s: Session) -> int:
        """Estimated bytes ``s`` holds: its numpy arrays, user id, context, texts and turns.

        Parameters
        ----------
        s : Session
            The session.

        Returns
        -------
        int
            The estimate (a fixed 2 KiB of object overhead included).
        """
        n = 2048
        for v in vars(s).values():
            if isinstance(v, np.ndarray):
                n += v.nbytes
        n += sum(getattr(v, "nbytes", 0) for v in getattr(s, "_texts", ()))
        n += sum(getattr(ll, "nbytes", 0) for _, ll in getattr(s, "_answer_ll", ()))
        n += len(str(s.user)) + sum(len(str(k)) + len(str(v)) for k, v in getattr(s, "context", {}).items())
        n += sum(len(str(t)) for t in getattr(s, "turns", ())) + sum(len(q) for q in getattr(s, "asked", ()))
        return int(n)

    def _drop(self, sid: str) -> None:
        self.bytes -= self._items.pop(sid)[2]

    def _purge(self, now: float) -> None:
        while self._items:
            sid, (t, _, _) = next(iter(self._items.items()))
            if now - t < self.ttl_s:
                break
            self._drop(sid)
            self.expired += 1

    def _fit(self) -> None:
        while self._items and (len(self._items) > self.max_sessions or self.bytes > self.max_bytes):
            self._drop(next(iter(self._items)))
            self.evicted += 1

    def _retire_one(self, sid: str) -> None:
        self._retired[sid] = None
        while len(self._retired) > self.max_sessions:
            self._retired.popitem(last=False)

    def add(self, s: Session) -> str:
        """Store ``s`` (the least recently used go when a bound is passed); returns its id."""
        size = self.footprint(s)
        if size > self.max_bytes:
            raise InputError(f"session: its estimated {size} bytes exceed the store's limit of {self.max_bytes}",
                             field="session")
        with self._lock:
            now = self._clock()
            self._purge(now)
            if s.id in self._items:
                self._drop(s.id)
            self._items[s.id] = (now, s, size)
            self.bytes += size
            self._fit()
            return s.id

    def get(self, sid: str) -> Session:
        """The live session ``sid`` (its expiry restarts).

        Raises
        ------
        SessionRetiredError
            It was bound to a model that has been replaced (see the class docstring).
        UnknownIdError
            Unknown or expired (a ``KeyError``; ``field`` is ``"session_id"``).
        """
        with self._lock:
            now = self._clock()
            self._purge(now)
            if sid in self._items and self._model is not None and self._items[sid][1].rec is not self._model:
                self._drop(sid)
                self._retire_one(sid)
            if sid in self._retired:
                raise SessionRetiredError(f"session {sid!r} ended: the model was reloaded; start a new session",
                                          field="session_id")
            if sid not in self._items:
                raise UnknownIdError(f"unknown or expired session {sid!r}", field="session_id")
            _, s, size = self._items.pop(sid)
            self._items[sid] = (now, s, size)
            return s

    def update(self, s: Session) -> None:
        """Re-estimate the footprint of the stored ``s`` (after an answer grew it); apply the bounds."""
        size = self.footprint(s)
        with self._lock:
            if s.id in self._items:
                t, _, old = self._items[s.id]
                self._items[s.id] = (t, s, size)
                self.bytes += size - old
                self._fit()

    def retire(self, model: Any) -> int:
        """Bind the store to ``model``: drop every session of another model; returns how many.

        Parameters
        ----------
        model : Recommender
            The model now served.
        """
        with self._lock:
            self._model = model
            old = [sid for sid, (_, s, _) in self._items.items() if s.rec is not model]
            for sid in old:
                self._drop(sid)
                self._retire_one(sid)
            return len(old)

    def remove(self, sid: str) -> bool:
        """End session ``sid``; False when it was not stored."""
        with self._lock:
            if sid not in self._items:
                return False
            self._drop(sid)
            return True

    def __len__(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._items)


class SessionRetiredError(UnknownIdError):
    """A session that ended because the model it was bound to was replaced (HTTP 410: start a new one)."""
