"""ctxrec's exceptions: one hierarchy, raised by every module, mapped to HTTP in one place.

Every error ctxrec raises on purpose derives from :class:`CtxrecError`. The ones a caller
causes carry the offending ``field`` (a dotted path such as ``"context.timestamp"`` or
``"items.3.id"``) and, where there is one, the offending ``value``, so a service can answer
``{"error": ..., "field": ...}`` without parsing messages. Each class also derives from the
built-in exception a caller would expect (``ValueError``, ``KeyError``, ...), so code written
against those keeps working.

=============================  ==========================  ======================
class                          raised when                 HTTP (``ctxrec.service``)
=============================  ==========================  ======================
:class:`InputError`            a bad argument or field     422
:class:`ContextError`          a bad context value/spec    422
:class:`DataError`             malformed input data        422
:class:`UnknownIdError`        an id not in the catalog    404
:class:`NotFittedError`        used before fit/load        503
:class:`CorruptArtifactError`  a saved artifact is bad     422 (``/admin/reload``)
=============================  ==========================  ======================
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "CtxrecError",
    "InputError",
    "ContextError",
    "DataError",
    "MissingDataError",
    "ChecksumError",
    "UnknownIdError",
    "NotFittedError",
    "CorruptArtifactError",
    "EncoderNotFoundError",
    "OutputExistsError",
]

_NO_VALUE = object()


class CtxrecError(Exception):
    """Base class of every error ctxrec raises on purpose.

    Parameters
    ----------
    message : str
        What is wrong, naming the field and the value.
    field : str or None
        The offending argument or request field (dotted path), when the caller caused it.
    value : Any
        The offending value (omitted: unknown or not worth repeating).
    """

    def __init__(self, message: str = "", *args: Any, field: str | None = None, value: Any = _NO_VALUE) -> None:
        super().__init__(message, *args)
        self.field = field
        self.value = None if value is _NO_VALUE else value
        self.has_value = value is not _NO_VALUE

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputError(CtxrecError, ValueError):
    """A caller's argument or request field is invalid (wrong type, out of range, malformed)."""


class ContextError(InputError):
    """An invalid context value or a malformed spec; the message names the field and value."""


class DataError(InputError):
    """Input data is malformed: a missing column, an id out of the catalog, a bad value."""


class MissingDataError(DataError, FileNotFoundError):
    """A dataset file (or directory) is not where it should be; the message names it."""


class ChecksumError(DataError):
    """A dataset file's size or SHA-256 differs from the one its README documents."""


class UnknownIdError(CtxrecError, KeyError):
    """An item (or user, session, question) id that is not known where it must be."""


class NotFittedError(CtxrecError, RuntimeError, AttributeError):
    """An estimator (engine, model, recommender) is used before ``fit`` or ``load``."""


class CorruptArtifactError(CtxrecError, ValueError):
    """A saved artifact is missing a file, has a wrong checksum, shape or header, or the wrong format/version."""


class EncoderNotFoundError(CtxrecError, FileNotFoundError):
    """No exported text encoder where ctxrec looks for one; the message says how to export it."""


class OutputExistsError(CtxrecError, FileExistsError, ValueError):
    """An output path exists and overwriting it was not asked for."""
