"""One conversation with one user: turns, the belief over items, the next question (see the package docstring for the model)."""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from ctxrec import explore
from ctxrec._io import jsonable
from ctxrec.session.llm import ChatLLM
from ctxrec.session.questions import Question, QuestionBank
from ctxrec.session.text import says_more, singular, unit


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
        """dict: the turn's set fields (None ones left out), JSON-ready."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _explore_options(policy: Any, scale: Any, seed: Any) -> dict[str, Any]:
    """The exploration options checked (``explore.check_explore``) as keywords."""
    policy, scale, seed = explore.check_explore(policy, scale, seed)
    return {"explore": policy, "explore_scale": scale, "seed": seed}


class Session:
    """One conversation with one user: turns, the belief over items, the next question.

    See the module docstring for the model the parameters belong to.

    Parameters
    ----------
    recommender : ctxrec.recommender.Recommender
        Fitted.
    user : raw user id, optional
        Unknown or None = cold start.
    context : mapping, optional
        Structured context fields; a free-text field of the recommender's spec (e.g.
        "query") becomes the first turn of the conversation text.
    bank : QuestionBank, optional
        Default: ``QuestionBank.for_recommender(recommender)``.
    k : int
        Top-K size.
    exclude_seen, exclude, allow, filter
        As in ``Recommender.recommend`` (removed items are never in a session's top-K).
    temperature : float
        Belief temperature as a multiple of the base scores' std (default 1).
    answer_noise : float
        ε, the chance an answer is not what the target's attributes say (0.05).
    text_decay : float
        Weight of each older free-text turn relative to the next newer one (0.5).
    text_weight : float, optional
        Weight of cos(conversation text, item text) (default: the recommender's
        ``text_match_weight_``).
    confidence : float
        Stop asking once the top-K holds this much of the belief (0.5).
    min_gain : float
        Stop asking when no question gains this many nats (0.02).
    max_questions : int, optional
        Ask at most this many questions (None = until confident).
    text_choice_temperature : float
        Softmax temperature turning a free answer's cosine to each option into option
        weights (0.1; chosen on test rows disjoint from the benchmark's).
    prior_mix : float
        Share of a uniform prior mixed into the belief the questions are chosen on
        (0.1): the model's ranking is a guess, and an overconfident belief would only ask
        questions that split items the model already likes.
    pool : int
        The belief is evaluated on the ``pool`` best items for question choice (2000).
    llm : ChatLLM, optional
        Reads free answers first (and can phrase questions, ``phrase(question)``);
        None (default) = the session's own reading only.
    diversity, calibrate, calibrate_by, exposure
        How every top-K of the session is re-ranked (``Recommender.recommend``'s options;
        default off), unless :meth:`recommend` is given others.
    explore, explore_scale, seed
        Exploration of every top-K (``Recommender.recommend``'s options; default off): the
        belief scores plus a Thompson draw's shift or the UCB bonus of the user's posterior
        (``Recommender.user_posterior``), over the whole catalog.

    Raises
    ------
    ValueError
        A bad option value (named), or a bank built for another catalog.

    Notes
    -----
    ``lock`` (a re-entrant lock) serializes the session's methods; hold it to make several
    calls one consistent step (an answer and the state it leads to).
    """

    def __init__(self, recommender: Any, user: Any = None, context: Mapping[str, Any] | None = None, *,
                 bank: QuestionBank | None = None, k: int = 10, exclude_seen: bool = True,
                 exclude: Iterable[Any] | None = None, allow: Iterable[Any] | None = None,
                 filter: Mapping[str, Any] | None = None, temperature: float = 1.0, answer_noise: float = 0.05, text_decay: float = 0.5,
                 text_weight: float | None = None, confidence: float = 0.5, min_gain: float = 0.02,
                 max_questions: int | None = None, text_choice_temperature: float = 0.1,
                 prior_mix: float = 0.1, pool: int = 2000, llm: ChatLLM | None = None, diversity: float = 0.0,
                 calibrate: float = 0.0, calibrate_by: str | None = None, exposure: float = 0.0,
                 explore: str | None = None, explore_scale: float = 1.0, seed: int | None = None) -> None:
        rec = recommender
        rec.check_fitted()
        d, c, cb, e = rec.check_rerank(diversity, calibrate, calibrate_by, exposure)
        self.rerank_options = {"diversity": d, "calibrate": c, "calibrate_by": cb, "exposure": e,
                               **_explore_options(explore, explore_scale, seed)}
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
        v = unit(w @ np.asarray(self._texts))
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
        got = q.cache.get(key)
        if got is None:
            L = (1 - self.answer_noise) * q.membership.astype(np.float64) + self.answer_noise / q.n_options
            got = (L, -np.sum(L * np.log(L), axis=1))
            q.cache[key] = got
        return got

    # ------------------------------------------------------------------ public API
    def footprint(self) -> int:
        """Estimated bytes the session holds: its numpy arrays, texts, user id, context and turns.

        Returns
        -------
        int
            The estimate (a fixed 2 KiB of object overhead included).
        """
        n = 2048
        for v in vars(self).values():
            if isinstance(v, np.ndarray):
                n += v.nbytes
        n += sum(v.nbytes for v in self._texts) + sum(ll.nbytes for _, ll in self._answer_ll)
        n += len(str(self.user)) + sum(len(str(k)) + len(str(v)) for k, v in self.context.items())
        n += sum(len(str(t)) for t in self.turns) + sum(len(q) for q in self.asked)
        return int(n)

    @property
    def scores(self) -> np.ndarray:
        """The belief score of every item now, by slot (``recommender.item_ids_`` order).

        Returns
        -------
        numpy.ndarray of float64, shape [n_items]
            Model units: the base score plus the answers' evidence; ``-inf`` where the item
            can never be recommended in this session (removed, seen, excluded, filtered out).
            A read-only view; the next turn replaces it.
        """
        with self.lock:
            v = self._score.view()
        v.flags.writeable = False
        return v

    def recommend(self, k: int | None = None, **rerank: Any) -> Any:
        """The top-K now, as a ``Recommendation`` (scores = belief scores, model units).

        Parameters
        ----------
        k : int, optional
            Top-K size (default the session's ``k``).
        **rerank
            diversity / calibrate / calibrate_by / exposure / explore / explore_scale /
            seed for this call (default: the session's ``rerank_options``), re-ranking the belief's
            best items as ``Recommender.recommend`` re-ranks the model's (``Recommender.rerank``);
            with ``explore`` the belief scores get the exploration term first
            (``Recommendation.explore``; ``scores`` stay the belief scores).

        Returns
        -------
        Recommendation

        Raises
        ------
        TypeError
            An unknown keyword.
        """
        from ctxrec.recommender import Recommendation
        unknown = set(rerank) - set(self.rerank_options)
        if unknown:
            raise TypeError(f"recommend() got unexpected keyword argument(s) {sorted(unknown)}")
        o = {**self.rerank_options, **rerank}
        d, c, cb, e = self.rec.check_rerank(o["diversity"], o["calibrate"], o["calibrate_by"], o["exposure"])
        ex = _explore_options(o["explore"], o["explore_scale"], o["seed"])
        opts = {"diversity": d, "calibrate": c, "calibrate_by": cb, "exposure": e}
        with self.lock:
            k = self.k if k is None else int(k)
            allowed = int(self._mask.sum())
            k = min(k, allowed)
            if k <= 0:
                return Recommendation(self.user, [], [], self._u < 0, dict(self.context))
            s = self._score
            explored = ex["explore"] is not None
            added = self._exploration(ex["explore"], ex["explore_scale"], ex["seed"]) if explored else None
            ranked = s + added if explored else s
            reranked = bool(d or c or e)
            n = self.rec.engine_.pool_size(k, d, c, e, allowed) if reranked else k
            top = np.argpartition(-ranked, n - 1)[:n] if n < len(s) else np.arange(len(s))
            top = top[np.lexsort((top, -ranked[top]))]
            ids = [jsonable(x) for x in np.asarray(self.rec.item_ids_)[top]]
            terms: list[dict[str, float]] = []
            if reranked:
                pos = dict(zip(ids, top.tolist()))
                ids, _, terms = self.rec.rerank(self.user, ids, ranked[top], k, **opts)
                top = np.array([pos[x] for x in ids], np.int64)
            return Recommendation(self.user, ids, s[top].tolist(), self._u < 0, dict(self.context), rerank=terms,
                                  explore=added[top].tolist() if explored else [])

    def _exploration(self, policy: str, scale: float, seed: int | None) -> np.ndarray:
        """float64 [n_items]: what exploring adds to each item's belief score (a Thompson draw's
        shift ``v_i . delta`` or the UCB bonus), from the user's posterior."""
        factor = self.rec.user_posterior(self.user if self._u >= 0 else None)
        if policy == "thompson":
            return self._vecs @ explore.sample_offset(factor, scale, explore.rng(seed, self._u)).astype(np.float64)
        return explore.ucb_bonus(factor, self._vecs, scale).astype(np.float64)

    def top_mass(self, k: int | None = None) -> float:
        """Share of the belief held by the current top-K.

        Parameters
        ----------
        k : int, optional
            Top-K size (default the session's ``k``).

        Returns
        -------
        float
            In [0, 1].
        """
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
        """The unasked question with the highest expected information gain.

        The question stays pending until answered or skipped.

        Returns
        -------
        Question or None
            None when the top-K is confident (``confidence``), nothing gains ``min_gain`` or
            ``max_questions`` were asked.
        """
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
            order = {q.id: j for j, q in enumerate(self.bank)}
            qid = max(gains, key=lambda i: (gains[i], -order[i]))
            if gains[qid] < self.min_gain:
                return None
            self.pending = self.bank[qid]
            return self.pending

    def ask(self, question: Question | str) -> Question:
        """Make ``question`` (or its id) the pending one (e.g. a UI's or a benchmark's own pick).

        Parameters
        ----------
        question : Question or str
            The question or its id in the bank.

        Returns
        -------
        Question
            The pending question.

        Raises
        ------
        ValueError
            The question was already asked.
        """
        with self.lock:
            q = self.bank[question] if isinstance(question, str) else question
            if q.id in self.asked:
                raise ValueError(f"question {q.id!r} was already asked")
            self.pending = q
            return q

    def answer(self, response: Any, question: Question | str | None = None) -> Any:
        """Answer the pending question (or ``question``).

        Free text is encoded once, joins the conversation text, and is read as option
        weights (a named option label wins; else cosine to each option's vector).
        Without a pending question, free text is taken as ``say(text)``.

        Parameters
        ----------
        response : int, str or None
            An option index, an option label, free text, or None to skip.
        question : Question or str, optional
            The question answered (default the pending one).

        Returns
        -------
        Recommendation
            The new top-K.

        Raises
        ------
        ValueError
            No question pending for a non-text answer, a question already answered, an option
            index out of range, or an answer of another type.
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
                v = self._add_text(text) if not named or says_more(text, [q.options[j] for j in named]) else None
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
        """The pending question's (or ``question``'s) wording.

        Parameters
        ----------
        question : Question, optional
            Default the pending one.

        Returns
        -------
        str or None
            The LLM's wording when one is configured and answers, else the bank's prompt;
            None without a question.
        """
        q = self.pending if question is None else question
        if q is None:
            return None
        return (self.llm.phrase(q) if self.llm is not None else None) or q.prompt

    def say(self, text: str) -> Any:
        """Free text outside any question ("something light, for kids").

        It joins the conversation text (newest weighs most).

        Parameters
        ----------
        text : str
            Non-empty text.

        Returns
        -------
        Recommendation
            The new top-K.

        Raises
        ------
        ValueError
            Empty text.
        """
        with self.lock:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("say: expected non-empty text")
            self._add_text(text.strip())
            self.turns.append(Turn("say", text=text.strip()))
            self._refresh()
            return self.recommend()

    def explain(self, item: Any) -> dict[str, Any]:
        """Why ``item`` is where it is now.

        Parameters
        ----------
        item : raw item id

        Returns
        -------
        dict
            ``item_id``, the item's fields, ``rank``, ``score`` (belief score, None when the
            item is excluded), ``probability``, ``contributions`` summing to its belief score
            (``user_affinity``, ``context``, ``request_text`` (the model's own text input),
            ``text_match`` (with what was said), ``answers``, ``popularity``), per-answer
            (``answers``) and per-text-turn (``said``) detail, and ``reasons``: short
            sentences a UI can show.
        """
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
                    what = f"its {singular(q.field)}: {', '.join(vals)}" if vals else f"no {q.field} known"
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
        """JSON-ready snapshot: items, the pending question, turns, confidence.

        Parameters
        ----------
        k : int, optional
            Top-K size (default the session's ``k``).

        Returns
        -------
        dict
            ``session_id``, ``user``, ``cold_start``, ``items``, ``question`` (or None),
            ``confidence``, ``asked``, ``turns``.
        """
        with self.lock:
            rec = self.recommend(k)
            return {"session_id": self.id, "user": jsonable(self.user), "cold_start": rec.cold_start,
                    "items": rec.to_dict()["items"],
                    "question": None if self.pending is None else self.pending.to_dict(),
                    "confidence": self.top_mass(k), "asked": list(self.asked),
                    "turns": [t.to_dict() for t in self.turns]}

    def __repr__(self) -> str:
        return f"Session(user={self.user!r}, turns={len(self.turns)}, asked={self.asked})"
