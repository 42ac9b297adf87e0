"""The export recipe, the generated reference texts and the artifact manifest (no PyTorch needed)."""
from __future__ import annotations

import json

import pytest

from ctxrec._io import read_manifest
from ctxrec.encoder._paths import FORMAT, FORMAT_VERSION, default_model_dir, default_recipe
from ctxrec.encoder.export import is_current, load_recipe
from ctxrec.encoder.refset import reference_texts


def test_recipe_is_complete():
    r = load_recipe()
    assert r["variants"].keys() >= {"fp32", "int8", "fp16"}
    assert r["max_length"] <= 512 and r["opset"] >= 14


def test_recipe_missing_field_is_named(tmp_path):
    r = json.loads(default_recipe().read_text())
    del r["opset"]
    p = tmp_path / "recipe.json"
    p.write_text(json.dumps(r))
    with pytest.raises(ValueError, match="'opset'"):
        load_recipe(p)
    r = json.loads(default_recipe().read_text())
    r["variants"]["int4"] = {}
    p.write_text(json.dumps(r))
    with pytest.raises(ValueError, match="variants.int4"):
        load_recipe(p)


def test_reference_texts_deterministic_and_distinct():
    c1, q1 = reference_texts()
    c2, q2 = reference_texts()
    assert c1 == c2 and q1 == q2
    assert len(set(c1)) == 2000 and len(set(q1)) == 200 and not set(c1) & set(q1)
    words = sorted(len(t.split()) for t in c1)
    assert 25 <= words[len(words) // 2] <= 90, "corpus texts should be description-length"
    assert max(len(q.split()) for q in q1) <= 12, "queries should be short"
    assert reference_texts(seed=1)[0] != c1


@pytest.mark.skipif(not (default_model_dir() / "manifest.json").is_file(),
                    reason=f"no encoder export at {default_model_dir()}: run `make models`")
def test_built_export_matches_recipe():
    m = read_manifest(default_model_dir(), FORMAT, FORMAT_VERSION, verify=True)
    assert is_current()
    meta = m["meta"]
    assert set(meta["variants"]) == set(load_recipe()["variants"])
    for v in meta["variants"].values():
        assert m["files"][v["file"]]["sha256"] == v["sha256"]
    assert "reference.npz" in m["files"] and meta["dim"] == 384
