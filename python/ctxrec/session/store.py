"""The bounded store of live sessions (count, idle expiry, estimated bytes) and the error of a retired session."""
from __future__ import annotations

import threading
from typing import Any

from ctxrec.errors import InputError, UnknownIdError
from ctxrec.session.conversation import Session


# ============================================================================ store
class SessionStore:
    """A bounded, expiring, thread-safe map session id -> Session (for the HTTP service).

    Bounds: at most ``max_sessions`` sessions and at most ``max_bytes`` of estimated session
    footprint (:meth:`footprint`: the session's arrays, ids, context, texts and turns) live at
    once; the least recently used go first when either is passed. A session unused for
    ``ttl_s`` seconds expires. A single session larger than ``max_bytes`` is refused
    (:class:`~ctxrec.errors.InputError`). ``clock`` is injectable for tests.

    Reloads: a session is bound to the model it started on. :meth:`retire` (called by the
    service after ``/admin/reload`` or ``SIGHUP``) drops every session of another model, so
    the old model is released, and remembers their ids (up to ``max_sessions``):
    :meth:`get` then raises :class:`SessionRetiredError` (HTTP 410: start a new session)
    rather than "unknown". A session created on the old model while the swap happened is
    retired on its next :meth:`get`.
    """

    def __init__(self, max_sessions: int = 10_000, ttl_s: float = 1800.0, clock: Any = None,
                 max_bytes: int = 512 << 20) -> None:
        if max_sessions < 1 or not ttl_s > 0 or max_bytes < 1:
            raise ValueError("max_sessions must be >= 1, ttl_s > 0 and max_bytes >= 1")
        import time
        from collections import OrderedDict
        self.max_sessions, self.ttl_s, self.max_bytes = int(max_sessions), float(ttl_s), int(max_bytes)
        self._clock = clock or time.monotonic
        self._items: "OrderedDict[str, tuple[float, Session, int]]" = OrderedDict()
        self._retired: "OrderedDict[str, None]" = OrderedDict()
        self._model: Any = None  # the model sessions must be bound to (None: any)
        self._lock = threading.Lock()
        self.bytes = 0
        self.evicted = 0
        self.expired = 0

    @staticmethod
    def footprint(s: Session) -> int:
        """Estimated bytes ``s`` holds: its numpy arrays, user id, context, texts and turns.

        Parameters
        ----------
        s : Session
            The session.

        Returns
        -------
        int
            The estimate (a fixed 2 KiB of object overhead included).
        """
        return s.footprint()

    def _drop(self, sid: str) -> None:
        self.bytes -= self._items.pop(sid)[2]

    def _purge(self, now: float) -> None:
        while self._items:
            sid, (t, _, _) = next(iter(self._items.items()))
            if now - t < self.ttl_s:
                break
            self._drop(sid)
            self.expired += 1

    def _fit(self) -> None:
        while self._items and (len(self._items) > self.max_sessions or self.bytes > self.max_bytes):
            self._drop(next(iter(self._items)))
            self.evicted += 1

    def _retire_one(self, sid: str) -> None:
        self._retired[sid] = None
        while len(self._retired) > self.max_sessions:
            self._retired.popitem(last=False)

    def add(self, s: Session) -> str:
        """Store ``s``; the least recently used go when a bound is passed.

        Parameters
        ----------
        s : Session

        Returns
        -------
        str
            The session's id.

        Raises
        ------
        InputError
            ``s`` alone is larger than ``max_bytes``.
        """
        size = self.footprint(s)
        if size > self.max_bytes:
            raise InputError(f"session: its estimated {size} bytes exceed the store's limit of {self.max_bytes}",
                             field="session")
        with self._lock:
            now = self._clock()
            self._purge(now)
            if s.id in self._items:
                self._drop(s.id)
            self._items[s.id] = (now, s, size)
            self.bytes += size
            self._fit()
            return s.id

    def get(self, sid: str) -> Session:
        """The live session ``sid`` (its expiry restarts).

        Parameters
        ----------
        sid : str
            The session id.

        Returns
        -------
        Session

        Raises
        ------
        SessionRetiredError
            It was bound to a model that has been replaced (see the class docstring).
        UnknownIdError
            Unknown or expired (a ``KeyError``; ``field`` is ``"session_id"``).
        """
        with self._lock:
            now = self._clock()
            self._purge(now)
            if sid in self._items and self._model is not None and self._items[sid][1].rec is not self._model:
                self._drop(sid)
                self._retire_one(sid)
            if sid in self._retired:
                raise SessionRetiredError(f"session {sid!r} ended: the model was reloaded; start a new session",
                                          field="session_id")
            if sid not in self._items:
                raise UnknownIdError(f"unknown or expired session {sid!r}", field="session_id")
            _, s, size = self._items.pop(sid)
            self._items[sid] = (now, s, size)
            return s

    def update(self, s: Session) -> None:
        """Re-estimate the footprint of the stored ``s`` (after an answer grew it); apply the bounds."""
        size = self.footprint(s)
        with self._lock:
            if s.id in self._items:
                t, _, old = self._items[s.id]
                self._items[s.id] = (t, s, size)
                self.bytes += size - old
                self._fit()

    def retire(self, model: Any) -> int:
        """Bind the store to ``model``: drop every session of another model.

        Parameters
        ----------
        model : Recommender
            The model now served.

        Returns
        -------
        int
            How many sessions were dropped.
        """
        with self._lock:
            self._model = model
            old = [sid for sid, (_, s, _) in self._items.items() if s.rec is not model]
            for sid in old:
                self._drop(sid)
                self._retire_one(sid)
            return len(old)

    def remove(self, sid: str) -> bool:
        """End session ``sid``.

        Parameters
        ----------
        sid : str

        Returns
        -------
        bool
            False when it was not stored.
        """
        with self._lock:
            if sid not in self._items:
                return False
            self._drop(sid)
            return True

    def __len__(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._items)


class SessionRetiredError(UnknownIdError):
    """A session that ended because the model it was bound to was replaced (HTTP 410: start a new one)."""
