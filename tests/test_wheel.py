"""An installed package that works: build the wheel, install it with its dependencies into a
fresh venv outside the source tree, and use it as a pip user would (no Makefile, no checkout):
the export extra from the metadata, the packaged recipe, the encoder found in the user cache,
`ctxrec train` with text and `ctxrec recommend`.

Slow (a C++ build and a dependency install: see the timings printed with ``-s``), but part
of ``make test``: it is the only test of what ``pip install ctxrec`` gives.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _data_dir import DATA_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "models" / "build" / "all-MiniLM-L6-v2"
ML100K = Path(DATA_DIR) / "ml-100k" if DATA_DIR else None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ML100K is None or not (ML100K / "u.data").is_file(),
                       reason="CTXREC_DATA_DIR is unset or has no ml-100k/ (the shared datasets, ../shared/data)"),
    pytest.mark.skipif(not (EXPORT / "manifest.json").is_file(),
                       reason=f"no encoder export at {EXPORT} to install into the user cache: run `make models`"),
]


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float, check: bool = True,
         timings: dict[str, float] | None = None, label: str = "") -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if timings is not None:
        timings[label or Path(str(cmd[0])).name] = round(time.perf_counter() - t0, 1)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n"
                             f"--- stderr\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv (outside the source tree) with the wheel and its dependencies installed.

    Returns ``(venv_bin, user_env, work_dir, timings)``: ``user_env`` is the environment of a
    pip user (no ``$CTXREC_ENCODER_DIR``, no ``PYTHONPATH``, ``XDG_CACHE_HOME`` in tmp).
    """
    tmp = tmp_path_factory.mktemp("wheel")
    assert not tmp.resolve().is_relative_to(REPO), f"{tmp} is inside the source tree"
    timings: dict[str, float] = {}
    base = {k: v for k, v in os.environ.items()
            if k not in ("CTXREC_ENCODER_DIR", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "XDG_CACHE_HOME")}
    # the wheel, built by the .venv's scikit-build-core + pybind11, in its own build directory
    # (the editable install's build/ is left alone)
    _run([sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "--no-build-isolation", "-q",
          "-w", tmp / "dist", f"--config-settings=build-dir={tmp / 'build'}"],
         cwd=tmp, env=base, timeout=900, timings=timings, label="pip wheel")
    wheels = list((tmp / "dist").glob("ctxrec-*.whl"))
    assert len(wheels) == 1, wheels
    _run([sys.executable, "-m", "venv", tmp / "venv"], cwd=tmp, env=base, timeout=300, timings=timings,
         label="venv")
    vbin = tmp / "venv" / "bin"
    # dependencies from the package index (pip's own cache reused: XDG_CACHE_HOME is left as it was)
    _run([vbin / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheels[0]],
         cwd=tmp, env=base, timeout=1200, timings=timings, label="pip install")
    shutil.rmtree(tmp / "build")  # the C++ build tree is not needed any more
    env = {**base, "XDG_CACHE_HOME": str(tmp / "xdg"), "MPLCONFIGDIR": str(tmp / "mpl")}
    (tmp / "work").mkdir()
    yield vbin, env, tmp / "work", timings
    print(f"\n[test_wheel] seconds: {timings}")
    shutil.rmtree(tmp / "venv", ignore_errors=True)  # ~1 GB; pytest keeps the rest of tmp for a look


def _py(installed, code: str, **kw) -> subprocess.CompletedProcess:
    vbin, env, work, timings = installed
    return _run([vbin / "python", "-c", code], cwd=work, env=env, timeout=300, **kw)


def _requirements(reqs: list[str]) -> set[tuple[str, str]]:
    from packaging.requirements import Requirement

    return {(Requirement(r).name.lower().replace("_", "-"), str(Requirement(r).specifier)) for r in reqs}


def test_import_resolves_outside_the_source_tree(installed):
    vbin = installed[0]
    out = _py(installed, "import ctxrec, ctxrec._core, ctxrec.encoder._paths as p; "
                         "print(ctxrec.__file__); print(ctxrec._core.__file__); print(p.source_checkout())")
    mod, core, checkout = out.stdout.split("\n")[:3]
    for f in (mod, core):
        assert Path(f).resolve().is_relative_to(vbin.parent.resolve()), f
        assert not Path(f).resolve().is_relative_to(REPO), f
    assert checkout == "None"


def test_export_requirements_from_the_metadata(installed):
    vbin, env, work, timings = installed
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    out = _run([vbin / "ctxrec", "export", "--requirements"], cwd=work, env=env, timeout=120)
    with open(REPO / "pyproject.toml", "rb") as f:
        want = tomllib.load(f)["project"]["optional-dependencies"]["export"]
    assert _requirements(out.stdout.split()) == _requirements(want)


def test_packaged_recipe(installed):
    vbin, env, work, timings = installed
    out = _py(installed, "import importlib.resources as r, ctxrec.encoder._paths as p; "
                         "print((r.files('ctxrec.encoder') / 'recipe.json').read_text()); "
                         "print('DEFAULTS', p.default_recipe(), p.default_model_dir())")
    text, defaults = out.stdout.rsplit("DEFAULTS ", 1)
    assert json.loads(text) == json.loads((REPO / "models" / "recipe.json").read_text())
    recipe, model_dir = defaults.split()
    assert Path(recipe).resolve().is_relative_to(vbin.parent.resolve())
    assert Path(model_dir) == Path(env["XDG_CACHE_HOME"]) / "ctxrec" / "encoders" / "all-MiniLM-L6-v2"


def test_no_encoder_says_how_to_build_one(installed):
    p = _py(installed, "from ctxrec.encoder import TextEncoder; TextEncoder.load()", check=False)
    assert p.returncode != 0
    assert "EncoderNotFoundError" in p.stderr
    assert "pip install 'ctxrec[export]'" in p.stderr and "ctxrec export" in p.stderr


def test_export_without_the_extra_says_what_to_install(installed):
    vbin, env, work, timings = installed
    p = _py(installed, "import torch", check=False)
    assert p.returncode != 0 and "No module named 'torch'" in p.stderr, "the base install must not pull PyTorch"
    p = _run([vbin / "ctxrec", "export"], cwd=work, env=env, timeout=120, check=False)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.startswith("ctxrec export: error: exporting the encoder needs PyTorch")
    assert "pip install 'ctxrec[export]'" in p.stderr and "Traceback" not in p.stderr
    assert not (Path(env["XDG_CACHE_HOME"]) / "ctxrec").exists()


def test_train_with_text_and_recommend(installed):
    vbin, env, work, timings = installed
    # where `ctxrec export` writes in an installed package (the export itself is not rerun here)
    dest = Path(env["XDG_CACHE_HOME"]) / "ctxrec" / "encoders" / "all-MiniLM-L6-v2"
    shutil.copytree(EXPORT, dest)
    (work / "cfg.json").write_text(json.dumps({"model": {"epochs": 2, "n_factors": 16, "random_state": 0}}))
    _run([vbin / "ctxrec", "train", "--dataset", "movielens-100k", "--data", ML100K, "--out", "m/",
          "--config", "cfg.json"], cwd=work, env=env, timeout=900, timings=timings, label="ctxrec train")
    assert (work / "m" / "item_text.npy").is_file(), "trained without item text"
    assert json.loads((work / "m" / "encoder" / "manifest.json").read_text()) == \
        json.loads((dest / "manifest.json").read_text()), "the model's encoder is not the user cache's"
    assert (work / "m-report" / "training_curve.png").is_file()  # matplotlib, a base dependency
    out = _run([vbin / "ctxrec", "recommend", "--model", "m/", "--user", "196", "--json"], cwd=work, env=env,
               timeout=300, timings=timings, label="ctxrec recommend")
    res = json.loads(out.stdout)
    assert len(res["items"]) == 10 and len({r["item_id"] for r in res["items"]}) == 10
    assert all(isinstance(r["score"], float) for r in res["items"])
