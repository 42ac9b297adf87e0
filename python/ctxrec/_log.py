"""Logging and progress conventions of ctxrec.

Logging. Every module logs to a child of the ``"ctxrec"`` logger (``ctxrec.model``,
``ctxrec.evaluate``, ``ctxrec.distributed``, ``ctxrec.encoder``, ...; get one with
:func:`get_logger`). The library never configures logging and never prints: ``"ctxrec"``
carries a :class:`logging.NullHandler`, so nothing is shown unless the application
configures logging, e.g. ``logging.basicConfig(level=logging.INFO)`` or
``logging.getLogger("ctxrec").setLevel(logging.INFO)`` with a handler of its own.
Levels: INFO for what a person running a long job wants to see (one line per training
epoch of a verbose fit, where compiled kernels are cached, the cluster's dashboard),
DEBUG for the rest, WARNING for a degraded set-up (e.g. no writable kernel cache).

Progress. Long loops (training epochs, evaluation batches, distributed partitions) show a
bar through the one helper :func:`progress` (tqdm, with rate and ETA, on stderr). It is on
when the caller asks for it (``verbose=True`` / ``progress=True``), off when told
``False``, and with ``None`` ("auto") on only when stderr is an interactive terminal, so
test runs and CI logs stay free of bars by default.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Iterable, Iterator, TextIO

__all__ = ["logger", "get_logger", "progress", "progress_enabled", "Progress"]

#: the root of the library's logger hierarchy; silent unless the application configures logging
logger = logging.getLogger("ctxrec")
if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
    logger.addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The ``ctxrec`` child logger for ``name``.

    Parameters
    ----------
    name : str
        A module name (``"ctxrec.model.fm"``) or a short one (``"model"``, meaning
        ``"ctxrec.model"``).

    Returns
    -------
    logging.Logger
        ``logging.getLogger(name)`` when ``name`` already lies under ``"ctxrec"``, else
        ``logging.getLogger("ctxrec." + name)``.
    """
    if name == "ctxrec" or name.startswith("ctxrec."):
        return logging.getLogger(name)
    return logging.getLogger(f"ctxrec.{name}")


def progress_enabled(enabled: bool | None = None, stream: TextIO | None = None) -> bool:
    """Whether a progress bar is shown.

    Parameters
    ----------
    enabled : bool or None
        True / False: as told. None ("auto"): only when ``stream`` is an interactive
        terminal.
    stream : file-like or None
        Where the bar would be drawn (default ``sys.stderr``, read at call time so that
        pytest's capture or a redirect counts).

    Returns
    -------
    bool
    """
    if enabled is not None:
        return bool(enabled)
    stream = sys.stderr if stream is None else stream
    if stream is None:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or not a real file
        return False


class Progress:
    """A tqdm bar, or a silent stand-in with the same interface when disabled.

    Use it as an iterable (``for x in progress(items, ...)``), or with a total and
    :meth:`update` (``with progress(n, ...) as bar: ... bar.update(k)``). While an enabled
    bar is open, records that the root logger's console handlers print are routed through
    ``tqdm.write`` so that log lines do not tear the bar. Attributes of the underlying tqdm
    object (``n``, ``total``, ``format_dict``, ...) are reachable on this object.
    """

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str, unit: str,
                 enabled: bool, leave: bool, file: TextIO | None, **tqdm_kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self.enabled = bool(enabled)
        self._iterable = iterable
        self._redirect: Any = None
        self._bar = tqdm(iterable, total=total, desc=desc, unit=unit, disable=not self.enabled, leave=leave,
                         file=file, dynamic_ncols=True, **tqdm_kwargs)

    # -- context manager / iteration ---------------------------------------------------
    def __enter__(self) -> "Progress":
        if self.enabled and self._redirect is None:
            from tqdm.contrib.logging import logging_redirect_tqdm
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        if self._iterable is None:
            raise TypeError("this progress bar was made from a total, not an iterable: call update()")
        with self:
            yield from self._bar

    def __len__(self) -> int:
        return int(self._bar.total or 0)

    def __getattr__(self, name: str) -> Any:
        bar = self.__dict__.get("_bar")
        if bar is None:
            raise AttributeError(name)
        return getattr(bar, name)

    # -- updates -------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """Advance the bar by ``n`` units."""
        self._bar.update(n)

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True) -> None:
        """Show ``values`` (e.g. ``{"loss": 0.41}``) after the bar; floats printed with 4 significant digits."""
        vals = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in (values or {}).items()}
        self._bar.set_postfix(vals, refresh=refresh)

    def close(self) -> None:
        """Close the bar (idempotent) and stop routing log records through it."""
        self._bar.close()
        if self._redirect is not None:
            redirect, self._redirect = self._redirect, None
            redirect.__exit__(None, None, None)


def progress(iterable_or_total: Iterable[Any] | int, desc: str, unit: str = "it", *,
             enabled: bool | None = None, total: int | None = None, leave: bool = True,
             file: TextIO | None = None, **tqdm_kwargs: Any) -> Progress:
    """The progress bar of a long loop (tqdm: count, rate and ETA), or a silent stand-in.

    Parameters
    ----------
    iterable_or_total : iterable or int
        What to iterate over, or the number of units for a bar driven by ``update``.
    desc : str
        Label in front of the bar (e.g. ``"ContextFM"``).
    unit : str
        Name of one unit (``"epoch"``, ``"query"``, ``"part"``).
    enabled : bool or None
        True: show it; False: don't; None: show it only when stderr is an interactive
        terminal (see :func:`progress_enabled`).
    total : int or None
        Length of an iterable without ``len`` (for the ETA).
    leave : bool
        Keep the finished bar on screen.
    file : file-like or None
        Where to draw (default stderr).
    **tqdm_kwargs
        Passed to ``tqdm``.

    Returns
    -------
    Progress
        Iterate over it, or use it as a context manager and call ``update``; ``set_postfix``
        shows per-step figures (a loss, a metric).
    """
    on = progress_enabled(enabled, file)
    if isinstance(iterable_or_total, bool):
        raise TypeError("progress: expected an iterable or an int total, got a bool")
    if isinstance(iterable_or_total, int) or (hasattr(iterable_or_total, "__index__")
                                              and not hasattr(iterable_or_total, "__iter__")):
        n = int(iterable_or_total)  # type: ignore[arg-type]
        if n < 0:
            raise ValueError(f"progress: total={n} must be >= 0")
        return Progress(None, n, desc, unit, on, leave, file, **tqdm_kwargs)
    return Progress(iterable_or_total, total, desc, unit, on, leave, file, **tqdm_kwargs)
