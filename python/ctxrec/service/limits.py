"""The request-body guard: a pure ASGI middleware that counts the bytes a body really has
and gives a body a deadline.

* ``Content-Length`` over ``max_body_bytes`` -> 413 before a byte is read; an invalid one -> 400.
* Every body chunk is counted as it arrives (``Transfer-Encoding: chunked`` included, where no
  length is declared); once the count passes ``max_body_bytes`` the request is answered 413.
* The whole body must arrive within ``body_timeout_s`` of the request's start; a client that
  announces a body and stalls is answered 408.

413 and 408 are JSON (``{"error", "field", "request_id"}``) and close the connection (the
rest of the body is never read). The guard raises :class:`BodyError` (an ``HTTPException``,
which FastAPI lets through its body parsing) from ``receive``; whatever the application does
with it, the response sent is the guard's own.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable

from starlette.exceptions import HTTPException

__all__ = ["BodyError", "BodyLimitMiddleware", "error_body", "send_json"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Where the request id lives in the ASGI scope (set by the service's outer middleware).
REQUEST_ID_KEY = "ctxrec.request_id"


class BodyError(HTTPException):
    """The body broke a limit: 413 (too large), 408 (too slow) or 400 (bad length)."""

    def __init__(self, status_code: int, detail: str, field: str = "body") -> None:
        super().__init__(status_code, detail, headers={"connection": "close"})
        self.field = field


def error_body(status: int, message: str, field: str | None, request_id: str | None) -> dict[str, Any]:
    """The service's error JSON: ``{"error", "field"?, "request_id"}``.

    Parameters
    ----------
    status : int
        The HTTP status (not part of the body).
    message : str
        The ``error`` text.
    field : str or None
        The request field at fault (left out when None).
    request_id : str or None
        The request's id.

    Returns
    -------
    dict
    """
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    body["request_id"] = request_id
    return body


async def send_json(send: Send, status: int, content: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    """Send a whole JSON response through raw ASGI ``send``."""
    raw = json.dumps(content, ensure_ascii=True).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": raw})


class BodyLimitMiddleware:
    """Counted body size and a body deadline for every HTTP request (see the module docstring).

    Parameters
    ----------
    app : ASGI application
        The wrapped application.
    max_body_bytes : int
        The most body bytes a request may carry (declared or counted).
    body_timeout_s : float
        Seconds from the request's start within which its whole body must have arrived.
    """

    def __init__(self, app: Any, *, max_body_bytes: int, body_timeout_s: float) -> None:
        if max_body_bytes < 0 or not body_timeout_s > 0:
            raise ValueError("max_body_bytes must be >= 0 and body_timeout_s > 0")
        self.app, self.max_body_bytes, self.body_timeout_s = app, int(max_body_bytes), float(body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = scope.get(REQUEST_ID_KEY)
        declared = [v for k, v in scope.get("headers", ()) if k == b"content-length"]
        error: BodyError | None = None
        if declared:
            try:
                length = int(declared[0])
            except ValueError:
                length = -1
            if length < 0 or len(set(declared)) > 1:
                error = BodyError(400, "invalid Content-Length header", "content-length")
            elif length > self.max_body_bytes:
                error = BodyError(413, f"request body of {length} bytes exceeds the limit of {self.max_body_bytes}")
        if error is not None:
            await send_json(send, error.status_code, error_body(error.status_code, error.detail, error.field, rid),
                            [(b"connection", b"close")])
            return

        deadline = time.monotonic() + self.body_timeout_s
        seen = 0
        done = False
        tripped: list[BodyError] = []
        started = False

        async def counted_receive() -> Message:
            nonlocal seen, done
            if tripped:
                raise tripped[0]
            if done:  # the body is in: what follows is only a disconnect, no deadline
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                tripped.append(BodyError(408, f"the request body did not arrive within {self.body_timeout_s:g} s"))
                raise tripped[0] from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body_bytes:
                    tripped.append(BodyError(
                        413, f"request body of more than {self.max_body_bytes} bytes exceeds the limit of "
                             f"{self.max_body_bytes}"))
                    raise tripped[0]
                done = not msg.get("more_body", False)
            else:
                done = True
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal started
            if tripped:  # the app answered something after the guard tripped: the guard's answer instead
                if msg["type"] == "http.response.start" and not started:
                    started = True
                    e = tripped[0]
                    await send_json(send, e.status_code, error_body(e.status_code, e.detail, e.field, rid),
                                    [(b"connection", b"close")])
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyError:
            if not tripped:
                raise
            if not started:
                e = tripped[0]
                await send_json(send, e.status_code, error_body(e.status_code, e.detail, e.field, rid),
                                [(b"connection", b"close")])
