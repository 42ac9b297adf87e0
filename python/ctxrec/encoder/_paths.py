"""Where the encoder's recipe and exported artifacts live."""
from __future__ import annotations

import os
from pathlib import Path

FORMAT = "ctxrec-encoder"
FORMAT_VERSION = 1
DEFAULT_NAME = "all-MiniLM-L6-v2"

# python/ctxrec/encoder/_paths.py -> repository root
_REPO_ROOT = Path(__file__).resolve().parents[3]


def models_dir() -> Path:
    """The project's ``models/`` directory (recipe, and artifacts under ``models/build/``)."""
    return _REPO_ROOT / "models"


def default_recipe() -> Path:
    return models_dir() / "recipe.json"


def default_model_dir() -> Path:
    """``$CTXREC_ENCODER_DIR`` if set, else ``models/build/all-MiniLM-L6-v2`` in the project."""
    env = os.environ.get("CTXREC_ENCODER_DIR")
    if env:
        return Path(env)
    return models_dir() / "build" / DEFAULT_NAME
