"""Fixtures shared by the test modules.

``planted``: the generated dataset with a planted context effect (``_synthetic_data``), and
``planted_rec``: the Recommender fitted on it with time / device / free-text context and the
hashing test encoder. Both are session-wide and read-only: a test that writes (feedback, catalog
changes, an event log) fits its own, or puts back what it changed before it ends.
"""
from __future__ import annotations

import pytest

from ctxrec.context import ContextSpec
from ctxrec.model import ContextFM
from ctxrec.recommender import Recommender
from _synthetic_data import HashingEncoder, planted_dataset


@pytest.fixture(scope="session")
def planted():
    return planted_dataset()


@pytest.fixture(scope="session")
def planted_rec(planted):
    spec = ContextSpec(time=["timestamp"], categorical=["device"], text=["query"])
    return Recommender(spec, model=ContextFM(n_factors=16, epochs=8, random_state=1),
                       encoder=HashingEncoder()).fit(planted)
