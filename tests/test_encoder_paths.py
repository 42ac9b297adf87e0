"""Where the encoder export is looked for and written: explicit path, $CTXREC_ENCODER_DIR,
the source checkout's models/build, the user cache ($XDG_CACHE_HOME); `~` everywhere; the
error that says how to build one; when encode shows a progress bar."""
from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from ctxrec.encoder import _paths as P
from ctxrec.encoder.cache import DiskCache

NAME = P.DEFAULT_NAME
REPO_EXPORT = Path(__file__).resolve().parents[1] / "models" / "build" / NAME
needs_export = pytest.mark.skipif(not (REPO_EXPORT / "manifest.json").is_file(),
                                  reason=f"no encoder export at {REPO_EXPORT}: run `make models`")


def _fake_export(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text("{}")
    return d


def _fake_checkout(root: Path) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "models" / "recipe.json").write_text("{}")
    (root / "pyproject.toml").write_text("")
    (root / "python" / "ctxrec" / "encoder").mkdir(parents=True)
    (root / "python" / "ctxrec" / "encoder" / "_paths.py").write_text("")
    return root


@pytest.fixture
def env(tmp_path, monkeypatch):
    """HOME and XDG_CACHE_HOME in tmp, no $CTXREC_ENCODER_DIR, cwd in tmp; returns tmp_path."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


@pytest.fixture
def installed(env, monkeypatch):
    """As in a pip-installed package: no source checkout above the module."""
    monkeypatch.setattr(P, "_CHECKOUT_ROOT", env / "site-packages")
    return env


def test_source_checkout_detected_exactly_when_imported_from_one():
    repo = Path(__file__).resolve().parents[1]
    if Path(P.__file__).resolve().is_relative_to(repo):  # the Makefile's editable install
        assert P.source_checkout() == repo
        assert P.default_recipe() == repo / "models" / "recipe.json"
    else:  # the tests run against an installed package
        assert P.source_checkout() is None


def test_installed_default_is_the_user_cache_under_xdg(installed):
    assert P.source_checkout() is None
    want = installed / "xdg" / "ctxrec" / "encoders" / NAME
    assert P.default_locations() == [want]
    assert P.default_model_dir() == want
    _fake_export(want)
    assert P.find_model_dir() == want


def test_env_var_wins_over_defaults_and_expands_user(installed, monkeypatch):
    _fake_export(installed / "xdg" / "ctxrec" / "encoders" / NAME)
    enc = _fake_export(installed / "home" / "enc")
    monkeypatch.setenv(P.ENV_VAR, "~/enc")
    assert P.default_model_dir() == enc
    assert P.find_model_dir() == enc


def test_explicit_path_wins_over_env_and_expands_user(installed, monkeypatch):
    _fake_export(installed / "home" / "enc")
    mine = _fake_export(installed / "home" / "mine")
    monkeypatch.setenv(P.ENV_VAR, "~/enc")
    assert P.find_model_dir("~/mine") == mine
    assert P.find_model_dir(mine) == mine


def test_checkout_export_first_then_user_cache(env, monkeypatch):
    root = _fake_checkout(env / "repo")
    monkeypatch.setattr(P, "_CHECKOUT_ROOT", root)
    repo = root / "models" / "build" / NAME
    user = env / "xdg" / "ctxrec" / "encoders" / NAME
    assert P.source_checkout() == root
    assert P.default_locations() == [repo, user]
    assert P.default_model_dir() == repo  # `make models` / `ctxrec export` in a checkout write here
    _fake_export(user)
    assert P.find_model_dir() == user  # checkout has none: the user cache's
    _fake_export(repo)
    assert P.find_model_dir() == repo  # the checkout's own export is never shadowed


def test_not_found_says_how_to_build_one(installed, monkeypatch):
    user = installed / "xdg" / "ctxrec" / "encoders" / NAME
    with pytest.raises(P.EncoderNotFoundError) as e:
        P.find_model_dir()
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert "pip install 'ctxrec[export]'" in msg and "\n    ctxrec export\n" in msg
    assert str(user) in msg and P.ENV_VAR in msg
    with pytest.raises(P.EncoderNotFoundError, match=r"ctxrec export --out .*home/nowhere"):
        P.find_model_dir("~/nowhere")
    monkeypatch.setenv(P.ENV_VAR, "~/envdir")
    with pytest.raises(P.EncoderNotFoundError, match=r"at \$CTXREC_ENCODER_DIR \(.*home/envdir\)"):
        P.find_model_dir()


def test_text_encoder_load_raises_the_clear_error(installed):
    from ctxrec.encoder import EncoderNotFoundError, TextEncoder

    with pytest.raises(EncoderNotFoundError, match=r"pip install 'ctxrec\[export\]'"):
        TextEncoder.load()


def test_disk_cache_expands_user(env):
    c = DiskCache("~/emb", 4)
    assert c.root == env / "home" / "emb" and c.root.is_dir()
    assert c.put_many([b"k" * 32], np.ones((1, 4), np.float32)) == 1
    assert not (env / "cwd" / "~").exists()


@needs_export
def test_load_and_cache_dir_expand_user(env):
    from ctxrec.encoder import TextEncoder

    (env / "home").mkdir()
    (env / "home" / "enc").symlink_to(REPO_EXPORT, target_is_directory=True)
    enc = TextEncoder.load("~/enc", provider="cpu", cache_dir="~/.cache/emb", lru_size=0, verify=False)
    assert enc.path == env / "home" / "enc"
    enc.encode(["a quiet cabin by a lake"])
    assert list((env / "home" / ".cache" / "emb").glob("*/shard-*.npy"))
    assert not (env / "cwd" / "~").exists(), "a literal ./~ directory was created"


def test_progress_bar_rule(monkeypatch):
    from ctxrec.encoder import PROGRESS_MIN_TEXTS, _show_progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    n = PROGRESS_MIN_TEXTS + 1
    lg = logging.getLogger("ctxrec")
    old = lg.level
    try:
        lg.setLevel(logging.WARNING)
        assert _show_progress(1, True) and not _show_progress(n, False)
        assert not _show_progress(n, None), "off by default (WARNING level, stderr captured)"
        monkeypatch.setattr(sys, "stderr", Tty())
        assert not _show_progress(n, None), "a TTY alone is not enough: the ctxrec logger must be at INFO"
        lg.setLevel(logging.INFO)
        assert _show_progress(n, None)
        assert not _show_progress(PROGRESS_MIN_TEXTS, None), "few texts: no bar"
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        assert not _show_progress(n, None), "not a TTY: no bar"
    finally:
        lg.setLevel(old)
