"""The application factory: the served-model state, the middleware and the one error mapping."""
from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ctxrec.errors import CorruptArtifactError, InputError, NotFittedError, UnknownIdError
from ctxrec.service.deps import ServiceContext, ServiceError
from ctxrec.service.schemas import MAX_KEY_CHARS, echo
from ctxrec.service.limits import REQUEST_ID_KEY, BodyError, BodyLimitMiddleware, error_body, send_json

__all__ = ["create_app"]

log = logging.getLogger("ctxrec.service")

#: A client's ``X-Request-ID`` is echoed when it matches this; otherwise one is generated.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

#: The field a 404 names for each route when the error itself names none (path ids: always).
_NOT_FOUND_FIELD = {"/feedback": "item", "/items": "items", "/session/{session_id}/answer": "question",
                    "/session/{session_id}/explain": "item"}
_PATH_ID_FIELD = {"/items/{item_id}": "item_id", "/items/{item_id}/similar": "item_id"}
#: The field a 422 names for each route when the error names none.
_INVALID_FIELD = {"/items": "items"}


class _State:
    """The served model: one reference, swapped atomically on reload.

    With an event log, a reload loads (and replays) the new model while the old one keeps
    serving and logging feedback; then, with feedback paused for that moment only, the new
    model catches up on the events logged meanwhile and the reference is swapped, so no
    acknowledged event is missing from the model that serves next. ``on_swap(model)`` runs
    right after a swap (the session store drops the old model's sessions there).
    """

    def __init__(self, path: str | os.PathLike, loader: Callable[[str], Any],
                 on_swap: Callable[[Any], int] | None = None) -> None:
        self.loader = loader
        self.path = str(path)
        self.model = loader(self.path)
        self.loaded_at = time.time()
        self.on_swap = on_swap
        self.lock = threading.Lock()  # serializes reloads, never held by requests
        self.feedback_gate = threading.Lock()  # feedback (already serialized per model) vs the swap

    def reload(self, path: str | None = None) -> dict[str, Any]:
        """Load ``path`` (default: the served directory) completely, then swap it in.

        Returns
        -------
        dict
            ``path``, ``loaded_at`` and ``sessions_ended`` (sessions of the old model, ended).
        """
        with self.lock:
            new_path = path or self.path
            model = self.loader(new_path)  # fully loaded (and verified) before anything changes
            with self.feedback_gate:
                status = getattr(model, "event_status", lambda: None)()
                if status is not None and status["path"] is not None:
                    model.replay_events()  # events logged by the old model since the load began
                self.model, self.path, self.loaded_at = model, new_path, time.time()
            ended = self.on_swap(model) if self.on_swap is not None else 0
        return {"path": self.path, "loaded_at": self.loaded_at, "sessions_ended": ended}

    def feedback(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(model)`` on the current model with reloads' swap held off."""
        with self.feedback_gate:
            return fn(self.model)


def _decoded_path(raw: bytes) -> str | None:
    """The request path percent-decoded with invalid UTF-8 kept as lone surrogates (so the
    path parameter's schema refuses it, naming the parameter), or None when it is valid UTF-8."""
    b = unquote_to_bytes(raw.decode("latin-1"))
    try:
        b.decode("utf-8")
        return None
    except UnicodeDecodeError:
        pass
    try:
        return b.decode("utf-8", "surrogatepass")  # %ED%A0%80 -> "\ud800"
    except UnicodeDecodeError:
        return b.decode("utf-8", "surrogateescape")  # other invalid bytes -> "\udcXX"


class RequestContextMiddleware:
    """The outer layer: a request id on every response, per-route metrics, generic 500s.

    Every response carries ``X-Request-ID`` (the client's when valid, else a new one); an
    exception no handler mapped is logged with its traceback (logger ``ctxrec.service``)
    and answered ``{"error": "internal error", "request_id": ...}``, nothing more.

    Parameters
    ----------
    app : ASGI application
        The wrapped application.
    observe : callable
        ``observe(endpoint, status, seconds)`` after each request (the Prometheus metrics).
    """

    def __init__(self, app: Any, *, observe: Callable[[str, int, float], None]) -> None:
        self.app, self.observe = app, observe

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"").decode("latin-1")
        rid = given if REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        scope[REQUEST_ID_KEY] = rid
        raw = scope.get("raw_path")
        if raw and b"%" in raw:
            fixed = _decoded_path(raw.split(b"?", 1)[0])
            if fixed is not None:
                scope["path"] = fixed
        status = [500]
        started = [False]

        async def tagged_send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                started[0] = True
                status[0] = msg["status"]
                headers = [(k, v) for k, v in msg.get("headers", ()) if k.lower() != b"x-request-id"]
                msg = {**msg, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(msg)

        try:
            await self.app(scope, receive, tagged_send)
        except Exception:  # never let one request take the process down; details only in the log
            log.exception("internal error (request_id=%s) on %s %s", rid, scope.get("method"),
                          scope.get("path", "").encode("utf-8", "backslashreplace").decode())
            if not started[0]:
                await send_json(tagged_send, 500, {"error": "internal error", "request_id": rid}, [])
        route = scope.get("route")  # set by the router; label by route, not by raw path
        self.observe(getattr(route, "path", "unmatched"), status[0], time.perf_counter() - t0)


def _request_id(request: Request) -> str | None:
    return request.scope.get(REQUEST_ID_KEY)


def _route(request: Request) -> str:
    return getattr(request.scope.get("route"), "path", "")


def _safe(text: str | None) -> str | None:
    """``text`` with lone surrogates escaped (a response must always encode as UTF-8)."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _respond(request: Request, status: int, message: str, field: str | None,
             headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {**error_body(status, _safe(message) or "", _safe(field), _request_id(request)), **extra}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _field_of(message: str) -> str | None:
    """The field an error message names first ("filter: unknown filter ..." -> "filter"), or None."""
    head = message.split(":", 1)[0].strip()
    return head if head and len(head) <= 64 and head.replace("_", "").replace(".", "").isalnum() and ":" in message \
        else None


#: A pydantic union member's tag in an error location ("int", "function-after[...]", "list[...]").
_UNION_TAG = re.compile(r"^(int|str|float|bool|none|constrained-str|(function-\w+|list|dict|json-or-python|nullable)\[.*\])$")
_TYPE_MISMATCH = re.compile(r"_(type|parsing)$")


def _loc(err: dict[str, Any]) -> str | None:
    """The dotted field of a pydantic error, without "body" and union-member tags."""
    parts = [str(p) for p in err.get("loc", ()) if p != "body" and not _UNION_TAG.match(str(p))]
    return ".".join(parts) or None


def _message(e: BaseException) -> str:
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def install_error_mapping(app: FastAPI) -> None:
    """The one mapping of exceptions to HTTP answers (every body ``{"error", "field"?, "request_id"}``).

    ===================================================  =====
    ``InputError`` / ``ContextError`` / ``DataError``,   422
    other ``ValueError``, request validation
    ``UnknownIdError`` / ``KeyError``                    404
    ``NotFittedError``                                   503
    ``CorruptArtifactError`` (``/admin/reload``)         422, the old model keeps serving
    ``ServiceError`` (admin 401/403, session 410)        its status
    ``HTTPException`` (unknown route, 405, body 413/408) its status
    anything else                                        500 ``{"error": "internal error"}``
    ===================================================  =====

    ``field`` is the error's own ``field`` when it has one, else the one its message starts
    with, else the route's default.

    Parameters
    ----------
    app : fastapi.FastAPI
        The application the exception handlers are added to.
    """
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        first = errs[0] if errs else {}
        field = _loc(first)
        # a union (``int | str``) reports one error per member: the one that says what is wrong wins
        same = [e for e in errs if _loc(e) == field]
        first = next((e for e in same if not _TYPE_MISMATCH.search(str(e.get("type", "")))), first)
        msg = str(first.get("msg", "invalid request"))
        if field is None and first.get("type") == "string_unicode" and isinstance(first.get("input"), str):
            field = str(first["input"])[:MAX_KEY_CHARS]  # an object key pydantic cannot read: name the key
        detail = [{"field": _safe(_loc(e)), "message": _safe(str(e.get("msg"))), "input": echo(e.get("input"))}
                  for e in errs]
        return _respond(request, 422, f"{field}: {msg}" if field else msg, field, detail=detail)

    async def unprocessable(request: Request, exc: Exception) -> JSONResponse:
        msg = _message(exc)
        field = getattr(exc, "field", None) or _field_of(msg) or _INVALID_FIELD.get(_route(request))
        return _respond(request, 422, msg, field)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        route = _route(request)
        field = _PATH_ID_FIELD.get(route) or getattr(exc, "field", None) or _NOT_FOUND_FIELD.get(route)
        return _respond(request, 404, _message(exc), field)

    async def not_fitted(request: Request, exc: Exception) -> JSONResponse:
        return _respond(request, 503, str(exc), getattr(exc, "field", None))

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return _respond(request, exc.status, exc.message, exc.field)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        field = exc.field if isinstance(exc, BodyError) else None
        return _respond(request, exc.status_code, str(exc.detail), field, headers=exc.headers)

    for cls in (InputError, CorruptArtifactError, ValueError):
        app.add_exception_handler(cls, unprocessable)
    for cls in (UnknownIdError, KeyError):
        app.add_exception_handler(cls, not_found)
    app.add_exception_handler(NotFittedError, not_fitted)
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(HTTPException, http_error)


def create_app(model_dir: str | os.PathLike, *, loader: Callable[[str], Any] | None = None,
               event_log: str | os.PathLike | None = "default", admin_token: str | None = None,
               max_body_bytes: int = 1 << 20, body_timeout_s: float = 10.0, max_sessions: int = 10_000,
               session_ttl_s: float = 1800.0, max_session_bytes: int = 512 << 20, warmup: bool = True,
               exposure_decay: float | None = None) -> FastAPI:
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
        Bearer token for ``/admin/reload`` and the catalog writes (default: env
        ``CTXREC_ADMIN_TOKEN``; unset = those endpoints answer 403).
    max_body_bytes : int
        Request bodies larger than this (declared by ``Content-Length`` or counted as they
        arrive, chunked ones included) get 413.
    body_timeout_s : float
        A request's whole body must arrive within this many seconds of its start, else 408
        and the connection is closed.
    max_sessions, session_ttl_s, max_session_bytes : int, float, int
        Bounds of the interactive-session store: count, idle expiry, estimated bytes
        (:meth:`ctxrec.session.SessionStore.footprint`).
    warmup : bool
        Compile / load the numba kernels and run one request before serving, so the first
        request and the first feedback are as fast as later ones.
    exposure_decay : float in [0, 1] or None
        Record the items of every ``/recommend`` answer as impressions
        (``Engine.add_exposure(..., decay=exposure_decay)``: 1 keeps plain counts, 0.999 fades
        them), which requests with ``"exposure": eta`` penalise (long-tail exposure). None
        (default): nothing is recorded. In memory: a reload or restart starts over.

    Returns
    -------
    FastAPI
        The application.
    """
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from ctxrec.service.routes_admin import router as admin_router
    from ctxrec.service.routes_items import router as items_router
    from ctxrec.service.routes_recommend import router as recommend_router
    from ctxrec.service.routes_session import router as session_router
    from ctxrec.session import SessionStore

    model_dir = Path(model_dir).expanduser()
    if loader is None:
        from ctxrec.events import default_log_path
        from ctxrec.recommender import Recommender
        log_path = default_log_path(model_dir) if event_log == "default" else event_log
        log_path = None if log_path is None else Path(log_path).expanduser()

        def loader(p: str) -> Any:
            return Recommender.load(p, event_log=log_path)
    token = admin_token if admin_token is not None else os.environ.get("CTXREC_ADMIN_TOKEN")
    sessions = SessionStore(max_sessions=max_sessions, ttl_s=session_ttl_s, max_bytes=max_session_bytes)
    state = _State(model_dir, loader, on_swap=sessions.retire)
    sessions.retire(state.model)
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

    def observe(endpoint: str, status: int, seconds: float) -> None:
        requests.labels(endpoint, str(status)).inc()
        latency.labels(endpoint).observe(seconds)

    app = FastAPI(title="ctxrec", version=_version(),
                  description="Context-aware recommendations: HNSW retrieval + compiled rescoring.")
    app.state.ctxrec = state
    app.state.sessions = sessions
    app.state.registry = registry
    if exposure_decay is not None and not (isinstance(exposure_decay, (int, float)) and 0 <= exposure_decay <= 1):
        raise ValueError(f"exposure_decay must be in [0, 1] or None, got {exposure_decay!r}")
    app.state.service = ServiceContext(state=state, sessions=sessions, token=token, reloads=reloads,
                                       exposure_decay=exposure_decay)
    # add_middleware wraps from the inside out: the body guard inside, the request id outside it
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s)
    app.add_middleware(RequestContextMiddleware, observe=observe)
    install_error_mapping(app)
    for router in (recommend_router, items_router, session_router, admin_router):
        app.include_router(router)

    def on_sighup(*_: Any) -> None:
        try:
            state.reload()
            reloads.labels("ok").inc()
        except Exception:
            log.exception("SIGHUP reload failed; still serving %s", state.path)
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


def _version() -> str:
    from ctxrec import __version__
    return __version__
