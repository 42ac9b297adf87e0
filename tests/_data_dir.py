"""Where the real datasets are, and the skip marker for tests that need them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_DIR = os.environ.get("CTXREC_DATA_DIR")
needs_data = pytest.mark.skipif(
    not DATA_DIR or not Path(DATA_DIR).is_dir(),
    reason="CTXREC_DATA_DIR is unset or missing: the real datasets (../shared/data) are not available")
