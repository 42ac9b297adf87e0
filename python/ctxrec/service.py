"""HTTP service (``ctxrec serve``): a FastAPI app around a saved Recommender directory.

Endpoints: ``POST /recommend``, ``POST /recommend/batch``, ``POST /feedback``,
``GET /items/{item_id}``, ``GET /items/{item_id}/similar``, ``GET /healthz``, ``GET /metrics``
(Prometheus text), ``POST /admin/reload``, the live catalog ``PUT /items`` (batch upsert) and
``DELETE /items/{item_id}`` (the admin endpoints: bearer token from ``CTXREC_ADMIN_TOKEN``;
unset = 403), OpenAPI docs at ``/docs``. ``/recommend`` takes ``filter`` (named item filters
over the item attributes, ``{"genres": ["Comedy"]}``); ``/items/{id}/similar`` takes it as a
JSON string in the query (``?filter={"genres":["Comedy"]}``). Catalog changes apply at once
to the served model and are written to the event log (in order with the feedback) before
they are answered, so a restart, a reload and ``ctxrec retrain`` replay them (``--no-events``:
in memory only). Interactive sessions (``ctxrec.session``): ``POST /session`` starts one (top-K +
the first clarifying question), ``POST /session/{id}/answer`` answers (option index, label,
free text or null to skip), ``POST /session/{id}/explain``, ``DELETE /session/{id}``; sessions
live in a bounded store (``max_sessions``, least recently used dropped first) and expire
after ``session_ttl_s`` unused; a session keeps the model it started on across reloads.
Feedback is durable: every accepted ``/feedback`` is committed to the SQLite event log
(``ctxrec.events``) before it is answered, and the log is replayed at start-up and on every
reload (``/healthz`` reports the log position and what the serving model has applied). Bad requests get a 4xx with a JSON body naming the field; oversized bodies
get 413; an error inside a request never takes the process down. A reload loads the new
model directory completely before swapping one reference, so requests in flight finish
on the old model and none is dropped. ``SIGHUP`` reloads the same directory.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Union

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["create_app", "serve"]

log = logging.getLogger("ctxrec.service")

Id = Union[int, str]
Scalar = Union[str, int, float, bool, None]
FilterValue = Union[str, int, float, bool, list[Union[str, int, float, bool]]]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Id = Field(description="original user id; unknown users get the cold-start path")
    context: dict[str, Scalar] = Field(default_factory=dict,
                                       description='context fields, e.g. {"time": "2024-05-01T21:30", "query": "..."}')
    k: int = Field(10, ge=1, le=1000, description="number of items to return")
    exclude_seen: bool = Field(True, description="leave out items the user interacted with")
    exclude: list[Id] = Field(default_factory=list, max_length=100_000, description="item ids never to return")
    allow: list[Id] | None = Field(None, max_length=100_000, description="if given, only these items may be returned")
    filter: dict[str, FilterValue] | None = Field(
        None, description='named item filters: attribute -> value or list of values, e.g. {"genres": ["Comedy"]}')
    fields: list[str] = Field(default_factory=list, max_length=64,
                              description='item fields to include with each item, e.g. ["title"]')


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[RecommendRequest] = Field(min_length=1, max_length=1000)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Id
    item: Id
    context: dict[str, Scalar] = Field(default_factory=dict)
    label: float = Field(1.0, description="1 = positive (click, watch, buy), 0 = negative; a rating for MSE models")


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Id | None = Field(None, description="original user id; unknown or null = cold start")
    context: dict[str, Scalar] = Field(default_factory=dict,
                                       description='context fields; a free-text field (e.g. "query") opens the talk')
    k: int = Field(10, ge=1, le=1000)
    exclude_seen: bool = True
    max_questions: int | None = Field(None, ge=0, le=100, description="ask at most this many questions")


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: int | str | None = Field(description="option index, option label, free text, or null to skip")
    question: str | None = Field(None, description="question id (default: the pending question)")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: Id


class ItemIn(BaseModel):
    """One catalog item: its id, its text and any item-table columns (attributes: a value or a list)."""
    model_config = ConfigDict(extra="allow")
    id: Id = Field(description="original item id (new: added; existing: updated, absent fields kept)")
    text: str | None = Field(None, description="the item text the model reads (encoded by the served encoder)")


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ItemIn] = Field(min_length=1, max_length=10_000)


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(None, description="model directory to load (default: the one being served)")


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(status_code=status, content=body)


class _State:
    """The served model: one reference, swapped atomically on reload.

    With an event log, a reload loads (and replays) the new model while the old one keeps
    serving and logging feedback; then, with feedback paused for that moment only, the new
    model catches up on the events logged meanwhile and the reference is swapped, so no
    acknowledged event is missing from the model that serves next.
    """

    def __init__(self, path: str | os.PathLike, loader: Callable[[str], Any]) -> None:
        self.loader = loader
        self.path = str(path)
        self.model = loader(self.path)
        self.loaded_at = time.time()
        self.lock = threading.Lock()  # serializes reloads, never held by requests
        self.feedback_gate = threading.Lock()  # feedback (already serialized per model) vs the swap

    def reload(self, path: str | None = None) -> dict[str, Any]:
        with self.lock:
            new_path = path or self.path
            model = self.loader(new_path)  # fully loaded (and verified) before anything changes
            with self.feedback_gate:
                status = getattr(model, "event_status", lambda: None)()
                if status is not None and status["path"] is not None:
                    model.replay_events()  # events logged by the old model since the load began
                self.model, self.path, self.loaded_at = model, new_path, time.time()
        return {"path": self.path, "loaded_at": self.loaded_at}

    def feedback(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(model)`` on the current model with reloads' swap held off."""
        with self.feedback_gate:
            return fn(self.model)


def create_app(model_dir: str | os.PathLike, *, loader: Callable[[str], Any] | None = None,
               event_log: str | os.PathLike | None = "default", admin_token: str | None = None,
               max_body_bytes: int = 1 << 20, max_sessions: int = 10_000, session_ttl_s: float = 1800.0,
               warmup: bool = True) -> FastAPI:
    """Build the ASGI app serving the Recommender saved in ``model_dir``.

    Parameters
    ----------
    model_dir : str or PathLike
        The model directory (``~`` accepted).
    loader : callable or None
        How to load a model directory (default ``Recommender.load`` with the event log).
    event_log : "default", path or None
        The durable feedback log (SQLite): every ``/feedback`` is committed to it before the
        answer, and it is replayed at start-up and on every reload. "default": the file
        beside ``model_dir`` (:func:`ctxrec.events.default_log_path`), created when missing;
        None: feedback lives in memory only (lost on reload or restart).
    admin_token : str or None
        Bearer token for ``/admin/reload`` (default: env ``CTXREC_ADMIN_TOKEN``; unset = the
        endpoint answers 403).
    max_body_bytes : int
        Larger request bodies get 413.
    max_sessions, session_ttl_s : int, float
        Bounds of the interactive-session store.
    warmup : bool
        Compile / load the numba kernels and run one request before serving, so the first
        request and the first feedback are as fast as later ones.

    Returns
    -------
    FastAPI
        The application.
    """
    model_dir = Path(model_dir).expanduser()
    if loader is None:
        from ctxrec.events import default_log_path
        from ctxrec.recommender import Recommender
        log_path = default_log_path(model_dir) if event_log == "default" else event_log
        log_path = None if log_path is None else Path(log_path).expanduser()

        def loader(p: str) -> Any:
            return Recommender.load(p, event_log=log_path)
    token = admin_token if admin_token is not None else os.environ.get("CTXREC_ADMIN_TOKEN")
    state = _State(model_dir, loader)
    if warmup:
        _warm(state.model)
    registry = CollectorRegistry()
    requests = Counter("ctxrec_requests", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram("ctxrec_request_seconds", "request latency (s) from arrival to response", ["endpoint"],
                        registry=registry,
                        buckets=(.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
    reloads = Counter("ctxrec_reloads", "model reloads", ["result"], registry=registry)
    Gauge("ctxrec_model_loaded_timestamp_seconds", "when the served model was loaded",
          registry=registry).set_function(lambda: state.loaded_at)

    app = FastAPI(title="ctxrec", version=_version(),
                  description="Context-aware recommendations: HNSW retrieval + compiled rescoring.")
    app.state.ctxrec = state

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        try:
            length = int(request.headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            response = _error(400, "invalid Content-Length header", "content-length")
        elif length > max_body_bytes:
            response = _error(413, f"request body of {length} bytes exceeds the limit of {max_body_bytes}", "body")
        else:
            try:
                response = await call_next(request)
            except Exception as e:  # never let one request take the process down
                response = _error(500, f"internal error: {type(e).__name__}: {e}")
        route = request.scope.get("route")  # set by the router; label by route, not by raw path
        endpoint = getattr(route, "path", "unmatched")
        requests.labels(endpoint, str(response.status_code)).inc()
        latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        msg = first.get("msg", "invalid request")
        detail = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg"),
                   "input": _jsonable(e.get("input"))} for e in errs]
        return JSONResponse(status_code=422, content={"error": f"{field}: {msg}" if field else msg,
                                                      "field": field, "detail": detail})

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    def bad_input(e: Exception, field: str | None = None) -> JSONResponse:
        return _error(422, str(e), getattr(e, "field", None) or _field_of(str(e)) or field)

    def admin_denied(request: Request, what: str) -> JSONResponse | None:
        """The admin endpoints' check: 403 without a configured token, 401 for a missing or wrong one."""
        if not token:
            return _error(403, f"{what} is disabled: set CTXREC_ADMIN_TOKEN to enable it")
        auth = request.headers.get("authorization", "")
        if not hmac.compare_digest(auth.encode(), f"Bearer {token}".encode()):
            return _error(401, "missing or wrong bearer token", "authorization")
        return None

    async def run(fn: Callable[[], Any]) -> Any:
        # Heavy work runs off the event loop (the engine releases the GIL).
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    def answer(model: Any, r: RecommendRequest) -> dict[str, Any]:
        rec = model.recommend(r.user, context=r.context, k=r.k, exclude_seen=r.exclude_seen,
                              exclude=r.exclude, allow=r.allow, filter=r.filter)
        out = rec.to_dict()
        if r.fields:
            for it in out["items"]:
                it["fields"] = model.item_info(it["item_id"], fields=r.fields)
        return out

    @app.post("/recommend", summary="top-k items for one user and context")
    async def recommend(req: RecommendRequest) -> Any:
        model = state.model
        try:
            return await run(lambda: answer(model, req))
        except (ValueError, KeyError) as e:
            return bad_input(e)

    @app.post("/recommend/batch", summary="top-k items for many requests")
    async def recommend_batch(req: BatchRequest) -> Any:
        model = state.model

        def work() -> list[dict[str, Any]]:
            return [answer(model, r) for r in req.requests]
        try:
            return {"results": await run(work)}
        except (ValueError, KeyError) as e:
            return bad_input(e)

    @app.post("/feedback", summary="record an interaction; the user's next recommendations reflect it")
    async def feedback(req: FeedbackRequest) -> Any:
        try:
            return await run(lambda: state.feedback(
                lambda model: model.feedback(req.user, req.item, context=req.context, label=req.label)))
        except KeyError as e:
            return _error(404, str(e.args[0]) if e.args else str(e), "item")
        except ValueError as e:
            return bad_input(e)

    @app.put("/items", summary="add or update catalog items (admin; batch upsert, live at once)")
    async def put_items(request: Request) -> Any:
        denied = admin_denied(request, "catalog writes")  # before the body is read, as for /admin
        if denied is not None:
            return denied
        import pandas as pd
        from pydantic import ValidationError
        try:
            req = ItemsRequest.model_validate_json(await request.body())
        except ValidationError as e:
            return await invalid(request, RequestValidationError(e.errors()))
        rows = []
        for j, it in enumerate(req.items):
            row = {"item_id": it.id, "text": it.text}
            for name, v in (it.model_extra or {}).items():
                ok = isinstance(v, (str, int, float, bool)) or v is None or (
                    isinstance(v, list) and all(isinstance(x, (str, int, float, bool)) for x in v))
                if not ok or name == "item_id":
                    why = "use 'id'" if name == "item_id" else "expected a value or a list of values"
                    return _error(422, f"items.{j}.{name}: {why}, got {_jsonable(v)}", f"items.{j}.{name}")
                row[name] = v
            rows.append(row)
        frame = pd.DataFrame(rows)

        def work() -> dict[str, Any]:
            return state.feedback(lambda model: {**model.upsert_items(frame), "n_items": int(model.engine_.n_items_)})
        try:
            return await run(work)
        except KeyError as e:
            return _error(404, str(e.args[0]) if e.args else str(e), "items")
        except (ValueError, TypeError) as e:
            return bad_input(e, "items")

    @app.delete("/items/{item_id}", summary="remove an item from the catalog (admin; live at once)")
    async def delete_item(request: Request, item_id: str) -> Any:
        denied = admin_denied(request, "catalog writes")
        if denied is not None:
            return denied
        try:
            await run(lambda: state.feedback(lambda model: model.remove_items([item_id])))
        except KeyError:
            return _error(404, f"unknown item id {item_id!r}", "item_id")
        return {"status": "removed", "item_id": item_id}

    @app.get("/items/{item_id}/similar", summary="items most similar to an item")
    async def similar(item_id: str, k: int = Query(10, ge=1, le=1000), by: str = "vectors",
                      filter: str | None = Query(None, description='JSON object, e.g. {"genres": ["Comedy"]}')) -> Any:
        try:
            filt = None if filter in (None, "") else json.loads(filter)
        except json.JSONDecodeError as e:
            return _error(422, f"filter: not valid JSON ({e.msg}): {filter[:200]!r}", "filter")
        if filt is not None and not isinstance(filt, dict):
            return _error(422, f"filter: expected a JSON object of attribute -> value(s), got {filter[:200]!r}",
                          "filter")
        if by not in ("vectors", "both", "text"):
            return _error(422, f"by: expected 'vectors', 'both' or 'text', got {by!r}", "by")
        model = state.model
        try:
            return await run(lambda: model.similar_items(item_id, k, by=by, filter=filt))
        except KeyError:
            return _error(404, f"unknown item id {item_id!r}", "item_id")
        except ValueError as e:
            return bad_input(e, "by" if by != "vectors" and "text" in str(e) else None)

    @app.get("/items/{item_id}", summary="an item's stored attributes and text")
    async def item(item_id: str) -> Any:
        try:
            return state.model.item_info(item_id)
        except (KeyError, ValueError):
            return _error(404, f"unknown item id {item_id!r}", "item_id")

    from ctxrec.session import QuestionBank, Session, SessionStore
    sessions = SessionStore(max_sessions=max_sessions, ttl_s=session_ttl_s)
    app.state.sessions = sessions

    def session_state(sess: Any) -> dict[str, Any]:
        sess.next_question()
        return {**sess.state(), "done": sess.pending is None}

    @app.post("/session", summary="start an interactive session: top-k and the first clarifying question")
    async def session_start(req: SessionRequest) -> Any:
        model = state.model

        def work() -> dict[str, Any]:
            sess = Session(model, req.user, req.context, bank=QuestionBank.for_recommender(model), k=req.k,
                           exclude_seen=req.exclude_seen, max_questions=req.max_questions)
            sessions.add(sess)
            return session_state(sess)
        try:
            return await run(work)
        except (ValueError, KeyError) as e:
            return bad_input(e)

    def get_session(sid: str) -> Any:
        try:
            return sessions.get(sid)
        except KeyError as e:
            raise HTTPException(404, e.args[0]) from None

    @app.post("/session/{session_id}/answer", summary="answer the pending question (or say something)")
    async def session_answer(session_id: str, req: AnswerRequest) -> Any:
        sess = get_session(session_id)

        def work() -> dict[str, Any]:
            with sess._lock:
                sess.answer(req.answer, question=req.question)
                return session_state(sess)
        try:
            return await run(work)
        except KeyError as e:
            return _error(404, f"unknown question {e.args[0]!r}" if e.args else str(e), "question")
        except ValueError as e:
            return bad_input(e)

    @app.post("/session/{session_id}/explain", summary="why an item is recommended now in this session")
    async def session_explain(session_id: str, req: ExplainRequest) -> Any:
        sess = get_session(session_id)
        try:
            return await run(lambda: sess.explain(req.item))
        except KeyError:
            return _error(404, f"unknown item id {req.item!r}", "item")

    @app.delete("/session/{session_id}", summary="end a session")
    async def session_end(session_id: str) -> Any:
        if not sessions.remove(session_id):
            return _error(404, f"unknown or expired session {session_id!r}", "session_id")
        return {"status": "ended"}

    @app.get("/healthz", summary="liveness and what is being served")
    async def healthz() -> Any:
        return {"status": "ok", "model_dir": state.path, "loaded_at": state.loaded_at, **state.model.summary()}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Any:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", summary="load a model directory and swap it in atomically")
    async def reload(request: Request, body: ReloadRequest | None = None) -> Any:
        denied = admin_denied(request, "reload")
        if denied is not None:
            return denied
        try:
            info = await run(lambda: state.reload(body.path if body else None))
        except Exception as e:  # the old model keeps serving
            reloads.labels("error").inc()
            return _error(422, f"reload failed, still serving {state.path}: {type(e).__name__}: {e}", "path")
        reloads.labels("ok").inc()
        return {"status": "reloaded", **info}

    def on_sighup(*_: Any) -> None:
        try:
            state.reload()
            reloads.labels("ok").inc()
        except Exception:
            reloads.labels("error").inc()

    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *a: threading.Thread(target=on_sighup, daemon=True).start())
    return app


def _warm(model: Any) -> None:
    """Compile (or load from numba's cache) the kernels serving uses, and run one request."""
    from ctxrec.model import warmup
    t0 = time.perf_counter()
    try:
        warmup(getattr(model, "model_", None))
        ctx = {name: "" for name in getattr(getattr(model, "context_", None), "text_fields", ())}
        ids = getattr(model, "user_ids_", None)
        model.recommend(ids[:1].tolist()[0] if ids is not None and len(ids) else None, ctx, k=10)
    except Exception as e:  # a warm-up must never keep the service from starting
        log.warning("warm-up request failed: %s: %s", type(e).__name__, e)
    log.info("warm-up took %.2f s", time.perf_counter() - t0)


def _field_of(message: str) -> str | None:
    """The field an error message names first ("filter: unknown filter ..." -> "filter"), or None."""
    head = message.split(":", 1)[0].strip()
    return head if head and len(head) <= 64 and head.replace("_", "").replace(".", "").isalnum() and ":" in message \
        else None


def _jsonable(v: Any) -> Any:
    """An echoed input as something JSON can always carry (a NaN, an infinity or a lone
    surrogate would otherwise make the error response itself fail)."""
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, str):
        v = v.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v if not isinstance(v, str) or len(v) <= 200 else v[:200] + "..."
    text = repr(v).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 200 else text[:200] + "..."


def _version() -> str:
    from ctxrec import __version__
    return __version__


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, *,
          event_log: str | os.PathLike | None = "default") -> None:
    """Run the service with uvicorn (blocking); ``event_log`` as in :func:`create_app`."""
    import uvicorn
    app = create_app(model_dir, event_log=event_log)
    uvicorn.run(app, host=host, port=port, workers=workers, log_level="info")
