"""Where the encoder's recipe and exported artifacts live.

Export directory (what :meth:`ctxrec.encoder.TextEncoder.load` opens and ``ctxrec
export`` writes), first match wins:

1. an explicit path (``TextEncoder.load(path)``, ``ctxrec export --out``);
2. ``$CTXREC_ENCODER_DIR`` when set;
3. the default places, in this order:

   - in a source checkout (the package imported from ``python/ctxrec`` of the repository,
     as the Makefile's editable install does), ``models/build/all-MiniLM-L6-v2`` of the
     checkout: ``make models`` exports there and the test suite reads it;
   - the user cache, ``platformdirs.user_cache_dir("ctxrec")/encoders/all-MiniLM-L6-v2``
     (``$XDG_CACHE_HOME/ctxrec/...``, by default ``~/.cache/ctxrec/...`` on Linux): where
     ``ctxrec export`` writes in an installed package (``pip install ctxrec``).

   :func:`default_model_dir` is the first of these (where an export is written);
   :func:`find_model_dir` opens the first that holds an export, so a checkout whose
   ``models/build`` is empty still finds an export in the user cache. A developer keeps
   one rule: the checkout's own export, rebuilt by ``make models`` when the recipe
   changes, is never shadowed by an older one in the user cache.

Every path accepts ``~`` (``os.path.expanduser``), the environment variable included.

The recipe (``models/recipe.json`` of the repository, the canonical copy) is installed into
the wheel as ``ctxrec/encoder/recipe.json`` (``CMakeLists.txt``); :func:`default_recipe`
reads the checkout's file in a source checkout (an edited recipe needs no reinstall) and
the packaged one otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path

FORMAT = "ctxrec-encoder"
FORMAT_VERSION = 1
DEFAULT_NAME = "all-MiniLM-L6-v2"
ENV_VAR = "CTXREC_ENCODER_DIR"

# python/ctxrec/encoder/_paths.py -> the repository root, when imported from a checkout
_CHECKOUT_ROOT = Path(__file__).resolve().parents[3]


from ctxrec.errors import EncoderNotFoundError  # noqa: E402,F401  (re-exported)


def expand(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path` with a leading ``~`` expanded.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    Path
    """
    return Path(os.path.expanduser(os.fspath(path)))


def source_checkout() -> Path | None:
    """The repository root when ctxrec runs from a source checkout, else ``None``.

    A checkout is recognised by ``pyproject.toml``, ``models/recipe.json`` and
    ``python/ctxrec/`` next to each other above this file; an installed package
    (``site-packages/ctxrec``) has none of them.

    Returns
    -------
    Path or None
    """
    root = _CHECKOUT_ROOT
    if ((root / "pyproject.toml").is_file() and (root / "models" / "recipe.json").is_file()
            and (root / "python" / "ctxrec" / "encoder" / "_paths.py").is_file()):
        return root
    return None


def user_cache_dir() -> Path:
    """The user-level export directory: ``user_cache_dir("ctxrec")/encoders/all-MiniLM-L6-v2``."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("ctxrec", appauthor=False)) / "encoders" / DEFAULT_NAME


def default_locations() -> list[Path]:
    """The default export directories, in search order (without ``$CTXREC_ENCODER_DIR``)."""
    root = source_checkout()
    checkout = [root / "models" / "build" / DEFAULT_NAME] if root is not None else []
    return checkout + [user_cache_dir()]


def default_model_dir() -> Path:
    """Where an export is written by default: ``$CTXREC_ENCODER_DIR``, else the first default location."""
    env = os.environ.get(ENV_VAR)
    if env:
        return expand(env)
    return default_locations()[0]


def find_model_dir(path: str | os.PathLike | None = None) -> Path:
    """The export directory to open (see the module docstring for the order).

    Parameters
    ----------
    path : str or os.PathLike, optional
        An explicit export directory; ``~`` is expanded.

    Returns
    -------
    Path
        A directory holding ``manifest.json``.

    Raises
    ------
    EncoderNotFoundError
        When the explicit path, ``$CTXREC_ENCODER_DIR`` or every default location lacks an
        export; the message names the places and the commands that build one.
    """
    if path is not None:
        cands, what = [expand(path)], "at the given path"
    elif os.environ.get(ENV_VAR):
        cands, what = [expand(os.environ[ENV_VAR])], f"at ${ENV_VAR}"
    else:
        cands, what = default_locations(), "in the default locations"
    for c in cands:
        if (c / "manifest.json").is_file():
            return c
    target = cands[0]  # where `ctxrec export` writes by default (or with --out)
    command = "ctxrec export" if path is None else f"ctxrec export --out {target}"
    raise EncoderNotFoundError(
        f"no text encoder export {what} ({', '.join(map(str, cands))}). Build one with:\n"
        f"    pip install 'ctxrec[export]'\n"
        f"    {command}\n"
        f"(writes {target}; in a source checkout `make models` does both), point ${ENV_VAR} "
        "at an existing export, or run without text (`--no-text`, encoder=None)")


def default_recipe() -> Path:
    """The export recipe: the checkout's ``models/recipe.json``, else the packaged copy."""
    root = source_checkout()
    if root is not None:
        return root / "models" / "recipe.json"
    from importlib.resources import files

    res = files("ctxrec.encoder") / "recipe.json"
    if not res.is_file():
        raise FileNotFoundError(
            f"{res}: the packaged export recipe is missing (a broken install: reinstall ctxrec)")
    return Path(str(res))
