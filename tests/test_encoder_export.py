"""The export recipe, the generated reference texts and the artifact manifest (no PyTorch needed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def _matmul_model(w: np.ndarray):
    onnx = pytest.importorskip("onnx", reason="onnx is installed with the export extra (`make models`)")
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="/layer.0/output/dense/MatMul")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, w.shape[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, w.shape[1]])],
                          [numpy_helper.from_array(w, "w")])
    return onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model_or_path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    src = model_or_path if isinstance(model_or_path, (str, Path)) else model_or_path.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src,
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_row_scale_is_exact_in_fp32_and_safe_on_zero_rows():
    import re

    from ctxrec.encoder.export import _row_scale

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 48)).astype(np.float32)
    x = rng.normal(size=(3, 7, 64)).astype(np.float32)
    x[1, 2] = 0.0  # an all-zero token must not turn into NaN
    plain = _run(_matmul_model(w), x)
    scaled = _run(_row_scale(_matmul_model(w), [re.compile(r"dense/MatMul$")]), x)
    assert np.isfinite(scaled).all()
    np.testing.assert_allclose(scaled, plain, rtol=1e-5, atol=1e-5)


def test_row_scale_int8_tames_an_outlier_token(tmp_path):
    """One token 30x larger than the rest (as [CLS] is in MiniLM's FFN) ruins a per-tensor
    int8 scale for every other token; the per-token scale keeps their error small."""
    onnx = pytest.importorskip("onnx", reason="onnx is installed with the export extra (`make models`)")
    from ctxrec.encoder.export import _int8

    rng = np.random.default_rng(1)
    w = rng.normal(size=(96, 80)).astype(np.float32)
    x = rng.normal(size=(4, 16, 96)).astype(np.float32)
    x[:, 0] *= 30.0
    src = tmp_path / "mm.onnx"
    onnx.save(_matmul_model(w), str(src))
    want = x @ w
    errs = {}
    for name, spec in (("tensor", {}), ("row", {"row_scale_regex": ["dense/MatMul$"]})):
        out = tmp_path / f"{name}.onnx"
        _int8(src, out, {"scheme": "dynamic", "per_channel": True, "op_types": ["MatMul"], **spec})
        got = _run(out, x)
        rest = np.linalg.norm(got[:, 1:] - want[:, 1:], axis=-1) / np.linalg.norm(want[:, 1:], axis=-1)
        errs[name] = float(np.median(rest))
    assert errs["row"] < 0.06 and errs["row"] * 4 < errs["tensor"], errs  # measured 0.038 vs 0.21


# ------------------------------------------------ the export extra, the command line
def _pyproject_export_extra() -> list[str]:
    import sys

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["optional-dependencies"]["export"])


def _normalized(reqs: list[str]) -> set[tuple[str, str, str]]:
    from packaging.requirements import Requirement

    out = set()
    for r in reqs:
        q = Requirement(r)
        out.add((q.name.lower().replace("_", "-"), str(q.specifier), str(q.marker or "")))
    return out


def test_export_requirements_come_from_the_installed_metadata():
    from ctxrec.encoder.export import export_requirements

    got = export_requirements()
    assert _normalized(got) == _normalized(_pyproject_export_extra())
    assert not any(r.split(";")[0].strip() == "torch" for r in got), "a bare torch pulls the CUDA build"


def test_export_requirements_strip_only_the_export_marker(monkeypatch):
    import importlib.metadata

    from ctxrec.encoder.export import export_requirements

    fake = ['numpy>=1.24', 'a>=1; extra == "export"', "b; python_version < '3.99' and extra == 'export'",
            'c; extra == "exporter"', 'd; extra == "dev"', 'e==2; extra == "export" and sys_platform == "linux"']
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: fake if name == "ctxrec" else None)
    assert export_requirements() == ["a>=1", "b; python_version < '3.99'", 'e==2; sys_platform == "linux"']


def test_cli_requirements_on_stdout(capsys):
    from ctxrec.encoder.export import export_requirements, main

    assert main(["--requirements"]) == 0
    assert capsys.readouterr().out.split("\n")[:-1] == export_requirements()


@pytest.fixture
def encoder_logger():
    """The ``ctxrec.encoder`` logger, its level and handlers restored afterwards (main() sets them)."""
    import logging

    lg = logging.getLogger("ctxrec.encoder")
    level, handlers = lg.level, list(lg.handlers)
    yield lg
    lg.handlers[:] = handlers
    lg.setLevel(level)


@pytest.mark.skipif(not (default_model_dir() / "manifest.json").is_file(),
                    reason=f"no encoder export at {default_model_dir()}: run `make models`")
def test_cli_if_missing_expands_out_and_logs_instead_of_printing(tmp_path, monkeypatch, capsys, caplog,
                                                                 encoder_logger):
    from ctxrec.encoder.export import main

    (tmp_path / "enc").symlink_to(default_model_dir(), target_is_directory=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert is_current("~/enc")
    with caplog.at_level("INFO", logger="ctxrec.encoder"):
        assert main(["--out", "~/enc", "--if-missing"]) == 0
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records if r.name == "ctxrec.encoder"] == \
        [f"{tmp_path / 'enc'} is up to date"]


def test_cli_bad_recipe_is_one_line_error(tmp_path, capsys, encoder_logger):
    from ctxrec.encoder.export import main

    p = tmp_path / "recipe.json"
    p.write_text("{}")
    assert main(["--recipe", str(p), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctxrec export: error: ") and err.count("\n") == 1 and "'name'" in err
    assert not (tmp_path / "out").exists()
