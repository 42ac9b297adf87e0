"""ctxrec: a context-aware recommendation engine with an LLM text encoder and a compiled core."""
from __future__ import annotations

__version__ = "0.1.0"

import ctxrec._log  # noqa: F401  (the "ctxrec" logger's NullHandler, before any submodule logs)
from ctxrec.engine import Engine
from ctxrec.errors import (ContextError, CorruptArtifactError, CtxrecError, InputError, NotFittedError,
                           UnknownIdError)

__all__ = ["Engine", "CtxrecError", "InputError", "ContextError", "UnknownIdError", "NotFittedError",
           "CorruptArtifactError", "__version__"]
