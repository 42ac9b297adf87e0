"""The feedback event log: every acknowledged interaction, durable, in order.

A served model directory plus its event log is the whole state of a service. The log is an
append-only SQLite database in WAL mode (the embedded default; one file next to the model
directory, see :func:`default_log_path`):

- ``append`` commits the event before it returns, so an event is on disk before the
  service acknowledges it. ``PRAGMA synchronous=FULL``: in WAL mode every commit fsyncs the
  write-ahead log, so an acknowledged event survives a process kill *and* a power loss
  (``NORMAL`` would survive the kill only); the price is one fsync per event.
- Rows are never updated or deleted (triggers refuse it). Each event gets a sequence
  number ``seq`` (1, 2, ...); a model records up to which ``seq`` of which log (the log's
  random ``log_id``) it has applied, so a load, a reload or a restart replays exactly the
  events after that position.
- Ids keep their JSON type (``196`` and ``"196"`` stay distinct, as the caller sent them);
  context is stored as JSON.

Readers and the writer may be different processes (WAL allows one writer beside readers).
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["CATALOG_KINDS", "Event", "EventLog", "default_log_path"]

SCHEMA_VERSION = 2  # 2: a `kind` column (feedback or a catalog write); version-1 logs are upgraded on open

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    time    REAL    NOT NULL,
    user    TEXT    NOT NULL,
    item    TEXT    NOT NULL,
    context TEXT    NOT NULL,
    label   REAL    NOT NULL,
    kind    TEXT    NOT NULL DEFAULT 'feedback'
);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
"""


def default_log_path(model_dir: str | os.PathLike) -> Path:
    """The log that belongs to a model directory: ``<model_dir>.events.sqlite`` beside it.

    It lives outside the directory because a model directory is replaced as a whole when a
    new model is saved or swapped in; the log outlives every model it feeds.

    Parameters
    ----------
    model_dir : str or path-like
        The model directory (it need not exist).

    Returns
    -------
    Path
    """
    p = Path(model_dir).expanduser()
    return p.parent / f"{p.name or 'model'}.events.sqlite"


@dataclass(frozen=True)
class Event:
    """One logged interaction.

    Attributes
    ----------
    seq : int
        Position in the log (1-based, strictly increasing).
    time : float
        When it was logged, unix seconds (UTC).
    user, item : int or str
        Raw ids as the client sent them.
    context : dict
        The request context of the interaction (may be empty); for a catalog write, its payload.
    label : float
        1 = positive, 0 = negative, or a rating for explicit-feedback models.
    kind : str
        "feedback", or a catalog write: "items_upsert" (payload ``{"mode", "items"}``: the
        item rows as sent) or "items_remove" (payload ``{"items": [ids]}``).
    """

    seq: int
    time: float
    user: Any
    item: Any
    context: dict[str, Any] = field(default_factory=dict)
    label: float = 1.0
    kind: str = "feedback"


CATALOG_KINDS = ("items_upsert", "items_remove")


def _dump(v: Any) -> str:
    # allow_nan=False: a NaN/Infinity would not read back as JSON elsewhere
    return json.dumps(v, sort_keys=True, allow_nan=False, separators=(",", ":"))


class EventLog:
    """Append-only event log in one SQLite file (WAL, ``synchronous=FULL``).

    Parameters
    ----------
    path : str or PathLike
        The database file (created with its parent directory when missing; ``~`` accepted).
    readonly : bool
        Open for reading only (the file must exist).

    Attributes
    ----------
    path : Path
        The database file.
    log_id : str
        A random id written when the log is created; models record it with their position.

    Thread-safe: one connection guarded by a lock.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False) -> None:
        self.path = Path(path).expanduser()
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"event log {self.path}: no such file")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        try:
            with self._lock:
                if not readonly:
                    mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL (got {mode!r})")
                    self._db.execute("PRAGMA synchronous=FULL")
                    self._db.execute("BEGIN IMMEDIATE")
                    old = self._db.execute("SELECT name FROM sqlite_master WHERE name = 'meta'").fetchone()
                    version = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() \
                        if old else None
                    if version is not None and version[0] == "1":  # upgrade: every old event is feedback
                        self._db.execute("ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT 'feedback'")
                        self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                                         (str(SCHEMA_VERSION),))
                    for stmt in filter(str.strip, _SCHEMA.split(";\n")):
                        self._db.execute(stmt)
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('log_id', ?)", (uuid.uuid4().hex,))
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                    self._db.execute("COMMIT")
                meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise ValueError(f"event log {self.path}: not a ctxrec event log ({e})") from None
        if meta.get("schema_version") not in ("1", str(SCHEMA_VERSION)) or "log_id" not in meta:
            self._db.close()
            raise ValueError(f"event log {self.path}: schema version {meta.get('schema_version')!r}, "
                             f"this ctxrec reads {SCHEMA_VERSION}")
        self.log_id: str = meta["log_id"]
        self._kind_col = meta.get("schema_version") != "1"  # a read-only version-1 log has no kind column

    # ------------------------------------------------------------------ writing
    def append(self, user: Any, item: Any, context: Mapping[str, Any] | None = None, label: float = 1.0,
               *, time_s: float | None = None) -> int:
        """Write one event and commit it (fsynced) before returning.

        Parameters
        ----------
        user, item : int or str
            Raw ids.
        context : mapping or None
            JSON-serialisable context of the interaction.
        label : float
            Finite label.
        time_s : float or None
            Event time in unix seconds (default: now).

        Returns
        -------
        int
            The event's sequence number.
        """
        for name, v in (("user", user), ("item", item)):
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ValueError(f"{name}: an id must be an int or a str, got {type(v).__name__}")
        label = float(label)
        if not math.isfinite(label):
            raise ValueError(f"label must be finite, got {label!r}")
        try:
            row = (float(time.time() if time_s is None else time_s), _dump(user), _dump(item),
                   _dump(dict(context or {})), label)
        except (TypeError, ValueError) as e:
            raise ValueError(f"context: not JSON-serialisable ({e})") from None
        with self._lock:
            cur = self._db.execute("INSERT INTO events (time, user, item, context, label) VALUES (?, ?, ?, ?, ?)",
                                   row)  # autocommit: committed (and fsynced) here
            return int(cur.lastrowid)

    def append_catalog(self, kind: str, payload: Mapping[str, Any], *, time_s: float | None = None) -> int:
        """Write one catalog write (``kind`` in :data:`CATALOG_KINDS`) and commit it before returning.

        Parameters
        ----------
        kind : str
            "items_upsert" or "items_remove".
        payload : mapping
            JSON-serialisable: ``{"mode": ..., "items": [row dicts]}`` or ``{"items": [ids]}``.

        Returns
        -------
        int
            The write's sequence number.
        """
        if kind not in CATALOG_KINDS:
            raise ValueError(f"kind must be one of {CATALOG_KINDS}, got {kind!r}")
        try:
            row = (float(time.time() if time_s is None else time_s), "null", "null", _dump(dict(payload)), 0.0, kind)
        except (TypeError, ValueError) as e:
            raise ValueError(f"payload: not JSON-serialisable ({e})") from None
        with self._lock:
            cur = self._db.execute("INSERT INTO events (time, user, item, context, label, kind) "
                                   "VALUES (?, ?, ?, ?, ?, ?)", row)
            return int(cur.lastrowid)

    # ------------------------------------------------------------------ reading
    def position(self) -> int:
        """The sequence number of the last event (0 when empty)."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def read(self, after: int = 0, until: int | None = None, *, chunk: int = 10_000) -> Iterator[Event]:
        """Events with ``after < seq <= until`` (``until=None``: to the end), in order.

        Read in chunks, so a long log is never held in memory at once.

        Parameters
        ----------
        after : int
            Sequence number to start after.
        until : int or None
            Last sequence number to read.
        chunk : int
            Rows fetched per query.

        Yields
        ------
        Event
        """
        last = int(after)
        while True:
            with self._lock:
                q = "SELECT seq, time, user, item, context, label, " + ("kind" if self._kind_col else "'feedback'") + \
                    " FROM events WHERE seq > ?"
                args: list[Any] = [last]
                if until is not None:
                    q += " AND seq <= ?"
                    args.append(int(until))
                rows = self._db.execute(q + " ORDER BY seq LIMIT ?", (*args, int(chunk))).fetchall()
            if not rows:
                return
            for seq, t, u, i, c, lab, kind in rows:
                yield Event(int(seq), float(t), json.loads(u), json.loads(i), json.loads(c), float(lab), str(kind))
            last = int(rows[-1][0])

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventLog({str(self.path)!r}, log_id={self.log_id[:8]}...)"
