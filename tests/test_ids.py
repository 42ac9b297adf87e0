"""ctxrec.ids.int_id: the one id rule, and Dataset / Engine / Recommender agreeing on it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctxrec.data import Dataset
from ctxrec.ids import int_id


@pytest.mark.parametrize("raw,want", [
    (174, 174), (np.int32(5), 5), ("174", 174), ("-3", -3), (174.0, 174), (np.float32(7.0), 7),
    (True, None), ("--5", None), ("²", None), ("1e3", None), (" 42", None), ("42.0", None), (174.5, None),
    (float("nan"), None), (float("inf"), None), (2 ** 63, None), (str(2 ** 63), None), (-(2 ** 63), -(2 ** 63)),
    (None, None), ([1], None),
])
def test_int_id(raw, want):
    assert int_id(raw) == want


def test_dataset_engine_and_recommender_agree_on_integer_ids():
    from ctxrec.engine import Engine
    ds = Dataset.from_frames(pd.DataFrame({"user_id": [1, 2, 2], "item_id": [10, 20, 30]}))
    rng = np.random.default_rng(0)
    eng = Engine().fit(rng.normal(size=(3, 4)).astype(np.float32), item_ids=ds.item_ids)
    q = rng.normal(size=4).astype(np.float32)
    for raw in (20, "20", 20.0, np.int64(20)):
        assert ds.item_index(raw) == 1, raw
        assert 20 not in eng.recommend(q, 3, exclude=[raw])[0].tolist(), raw
    for raw in ("20.0", " 20", "2e1", 20.5):
        assert ds.item_index(raw) == -1, raw
        assert 20 in eng.recommend(q, 3, exclude=[raw])[0].tolist(), raw
