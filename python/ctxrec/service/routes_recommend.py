"""``POST /recommend``, ``POST /recommend/batch`` and ``POST /feedback``."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ctxrec.service.deps import context, run
from ctxrec.service.schemas import BatchRequest, FeedbackRequest, RecommendRequest

router = APIRouter()


def answer(model: Any, r: RecommendRequest, exposure_decay: float | None = None) -> dict[str, Any]:
    """One request's JSON answer.

    Parameters
    ----------
    model : ctxrec.recommender.Recommender
        The served model.
    r : RecommendRequest
        The request.
    exposure_decay : float, optional
        When given, the answer's items are recorded as impressions with this decay
        (``create_app``).

    Returns
    -------
    dict
        ``Recommendation.to_dict()`` (``unknown_ids`` included), each item with its
        requested ``fields``.
    """
    rec = model.recommend(r.user, context=r.context, k=r.k, exclude_seen=r.exclude_seen,
                          exclude=r.exclude, allow=r.allow, filter=r.filter, **r.rerank(),
                          **r.exploration())
    if exposure_decay is not None:
        model.engine_.add_exposure(rec.item_ids, decay=exposure_decay)
    out = rec.to_dict()
    if r.fields:
        for it in out["items"]:
            it["fields"] = model.item_info(it["item_id"], fields=r.fields)
    return out


@router.post("/recommend", summary="top-k items for one user and context")
async def recommend(request: Request, req: RecommendRequest) -> Any:
    """``POST /recommend``: top-k items for one user and context."""
    ctx = context(request)
    model = ctx.state.model
    return await run(lambda: answer(model, req, ctx.exposure_decay))


@router.post("/recommend/batch", summary="top-k items for many requests")
async def recommend_batch(request: Request, req: BatchRequest) -> Any:
    """``POST /recommend/batch``: top-k items for many requests."""
    ctx = context(request)
    model = ctx.state.model
    return {"results": await run(lambda: [answer(model, r, ctx.exposure_decay) for r in req.requests])}


@router.post("/feedback", summary="record an interaction; the user's next recommendations reflect it")
async def feedback(request: Request, req: FeedbackRequest) -> Any:
    """``POST /feedback``: record an interaction; the user's next recommendations reflect it."""
    state = context(request).state
    return await run(lambda: state.feedback(
        lambda model: model.feedback(req.user, req.item, context=req.context, label=req.label)))
