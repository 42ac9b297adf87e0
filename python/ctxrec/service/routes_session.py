"""Interactive sessions: ``POST /session``, ``POST /session/{id}/answer``, ``POST /session/{id}/explain``,
``DELETE /session/{id}``. A session started before a reload answers 410 (start a new one)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ctxrec.errors import UnknownIdError
from ctxrec.service.deps import ServiceError, context, run
from ctxrec.service.schemas import AnswerRequest, ExplainRequest, IdStr, SessionRequest

router = APIRouter()


def session_state(sess: Any) -> dict[str, Any]:
    """The session's JSON state after choosing its next question.

    Parameters
    ----------
    sess : ctxrec.session.Session

    Returns
    -------
    dict
        ``Session.state()`` plus ``"done"`` (no question pending).
    """
    sess.next_question()
    return {**sess.state(), "done": sess.pending is None}


def get_session(request: Request, sid: str) -> Any:
    """The live session ``sid``.

    Parameters
    ----------
    request : fastapi.Request
    sid : str
        The session id.

    Returns
    -------
    ctxrec.session.Session

    Raises
    ------
    UnknownIdError
        Unknown or expired (a ``KeyError``; 404).
    ServiceError
        410: the session was ended by a reload.
    """
    from ctxrec.session import SessionRetiredError
    try:
        return context(request).sessions.get(sid)
    except SessionRetiredError as e:
        raise ServiceError(410, str(e), "session_id") from None


@router.post("/session", summary="start an interactive session: top-k and the first clarifying question")
async def session_start(request: Request, req: SessionRequest) -> Any:
    """``POST /session``: start an interactive session: top-k and the first clarifying question."""
    from ctxrec.session import QuestionBank, Session
    ctx = context(request)
    model = ctx.state.model

    def work() -> dict[str, Any]:
        sess = Session(model, req.user, req.context, bank=QuestionBank.for_recommender(model), k=req.k,
                       exclude_seen=req.exclude_seen, max_questions=req.max_questions, **req.rerank(),
                       **req.exploration())
        out = session_state(sess)
        ctx.sessions.add(sess)
        return out
    return await run(work)


@router.post("/session/{session_id}/answer", summary="answer the pending question (or say something)")
async def session_answer(request: Request, session_id: IdStr, req: AnswerRequest) -> Any:
    """``POST /session/{id}/answer``: answer the pending question (or say something)."""
    sess = get_session(request, session_id)

    def work() -> dict[str, Any]:
        with sess.lock:  # the answer and the state it returns, one consistent step
            try:
                sess.answer(req.answer, question=req.question)
            except KeyError as e:
                raise UnknownIdError(f"unknown question {e.args[0]!r}" if e.args else str(e),
                                     field="question") from None
            out = session_state(sess)
        context(request).sessions.update(sess)
        return out
    return await run(work)


@router.post("/session/{session_id}/explain", summary="why an item is recommended now in this session")
async def session_explain(request: Request, session_id: IdStr, req: ExplainRequest) -> Any:
    """``POST /session/{id}/explain``: why an item is recommended now in this session."""
    sess = get_session(request, session_id)
    try:
        return await run(lambda: sess.explain(req.item))
    except KeyError:
        raise UnknownIdError(f"unknown item id {req.item!r}", field="item") from None


@router.delete("/session/{session_id}", summary="end a session")
async def session_end(request: Request, session_id: IdStr) -> Any:
    """``DELETE /session/{id}``: end a session."""
    if not context(request).sessions.remove(session_id):
        raise UnknownIdError(f"unknown or expired session {session_id!r}", field="session_id")
    return {"status": "ended"}
