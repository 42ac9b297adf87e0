"""What the route modules share: the service context, off-loop execution and the admin check."""
from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import Request

__all__ = ["ServiceError", "ServiceContext", "context", "run", "require_admin"]


class ServiceError(Exception):
    """An HTTP answer decided by the service itself (403, 401, 410, ...), rendered by the one error mapping.

    Parameters
    ----------
    status : int
        The HTTP status.
    message : str
        The ``error`` text.
    field : str or None
        The request field at fault.
    """

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass
class ServiceContext:
    """Everything a route needs: the served model (``state``), the session store, the admin token, metrics."""

    state: Any
    sessions: Any
    token: str | None
    reloads: Any
    exposure_decay: float | None = None  # record what /recommend serves (Engine.add_exposure); None: off


def context(request: Request) -> ServiceContext:
    """The :class:`ServiceContext` of the app serving ``request``.

    Parameters
    ----------
    request : fastapi.Request

    Returns
    -------
    ServiceContext
    """
    return request.app.state.service


async def run(fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` off the event loop (the engine releases the GIL).

    Parameters
    ----------
    fn : callable
        A zero-argument function.

    Returns
    -------
    object
        What ``fn()`` returns.
    """
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def require_admin(request: Request, what: str) -> None:
    """The admin endpoints' check, before any body is read.

    Parameters
    ----------
    request : fastapi.Request
    what : str
        The endpoint's action, for the error message.

    Raises
    ------
    ServiceError
        403 without a configured token, 401 for a missing or wrong one.
    """
    token = context(request).token
    if not token:
        raise ServiceError(403, f"{what} is disabled: set CTXREC_ADMIN_TOKEN to enable it")
    auth = request.headers.get("authorization", "")
    if not hmac.compare_digest(auth.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode()):
        raise ServiceError(401, "missing or wrong bearer token", "authorization")
