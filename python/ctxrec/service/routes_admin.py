"""``GET /healthz``, ``GET /metrics`` and ``POST /admin/reload``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from ctxrec.service.deps import ServiceError, context, require_admin, run
from ctxrec.service.schemas import ReloadRequest

router = APIRouter()


@router.get("/healthz", summary="liveness and what is being served")
async def healthz(request: Request) -> Any:
    """Status, the served model directory's *name* (never its absolute path), load time, model summary."""
    state = context(request).state
    summary = state.model.summary()
    events = summary.get("events")
    if isinstance(events, dict) and events.get("path"):
        summary["events"] = {**events, "path": Path(str(events["path"])).name}
    return {"status": "ok", "model_dir": Path(state.path).name, "loaded_at": state.loaded_at, **summary}


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Any:
    """``GET /metrics``: Prometheus metrics (text exposition format)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    return PlainTextResponse(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/admin/reload", summary="load a model directory and swap it in atomically")
async def reload(request: Request, body: ReloadRequest | None = None) -> Any:
    """Load and swap; a failure (``CorruptArtifactError``, a missing directory, ...) is 422 and the old
    model keeps serving. Sessions of the old model end (410 on their next call), so it is released."""
    require_admin(request, "reload")
    ctx = context(request)
    try:
        info = await run(lambda: ctx.state.reload(body.path if body else None))
    except Exception as e:  # the old model keeps serving
        ctx.reloads.labels("error").inc()
        raise ServiceError(422, f"reload failed, still serving {ctx.state.path}: {type(e).__name__}: {e}",
                           "path") from e
    ctx.reloads.labels("ok").inc()
    return {"status": "reloaded", **info}
