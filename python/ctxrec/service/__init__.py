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
after ``session_ttl_s`` unused or when ``max_session_bytes`` of them are held; a reload ends the
sessions of the old model (their next call answers 410: start a new session), so the old
model is released.
Feedback is durable: every accepted ``/feedback`` is committed to the SQLite event log
(``ctxrec.events``) before it is answered, and the log is replayed at start-up and on every
reload (``/healthz`` reports the log position and what the serving model has applied). Bad requests get a 4xx with a JSON body ``{"error", "field", "request_id"}`` (one mapping,
:func:`ctxrec.service.app.install_error_mapping`); strings are limited and lone surrogates
refused at the schema (:mod:`ctxrec.service.schemas`); bodies over ``max_body_bytes``
(declared or counted, chunked too) get 413 and bodies slower than ``body_timeout_s`` 408
(:mod:`ctxrec.service.limits`); an error inside a request never takes the process down and is
answered ``{"error": "internal error", "request_id"}`` (the traceback is logged). Every
response carries ``X-Request-ID``. A reload loads the new
model directory completely before swapping one reference, so requests in flight finish
on the old model and none is dropped. ``SIGHUP`` reloads the same directory.

Layout: :mod:`~ctxrec.service.schemas` (request bodies), :mod:`~ctxrec.service.app`
(``create_app``, state, middleware, error mapping), :mod:`~ctxrec.service.limits` (the body
guard), ``routes_recommend``, ``routes_items``, ``routes_session``, ``routes_admin``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ctxrec.service.app import create_app

__all__ = ["create_app", "serve"]


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, *,
          event_log: str | os.PathLike | None = "default", **app_kw: Any) -> None:
    """Run the service with uvicorn (blocking).

    Parameters
    ----------
    model_dir : str or Path
        The model directory.
    host, port, workers : str, int, int
        Where uvicorn listens, and its worker count.
    event_log : "default", path or None
        As in :func:`create_app`.
    **app_kw
        Further :func:`create_app` arguments (``max_body_bytes``, ``body_timeout_s``, ...).
    """
    import uvicorn
    app = create_app(model_dir, event_log=event_log, **app_kw)
    uvicorn.run(app, host=host, port=port, workers=workers, log_level="info")
