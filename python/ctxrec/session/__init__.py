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


Layout: :mod:`~ctxrec.session.questions` (``Question``, ``QuestionBank``),
:mod:`~ctxrec.session.conversation` (``Session``, ``Turn``), :mod:`~ctxrec.session.llm`
(``ChatLLM``), :mod:`~ctxrec.session.store` (``SessionStore``, ``SessionRetiredError``),
:mod:`~ctxrec.session.text` (word lists and helpers).
"""
from __future__ import annotations

from ctxrec.session.conversation import Session, Turn
from ctxrec.session.llm import ChatLLM
from ctxrec.session.questions import Question, QuestionBank
from ctxrec.session.store import SessionRetiredError, SessionStore

__all__ = ["ChatLLM", "Question", "QuestionBank", "Session", "SessionRetiredError", "SessionStore", "Turn"]
