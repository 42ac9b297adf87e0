"""Logging, progress bars, the numba kernel cache, GIL release and the warm-up (issue 14)."""
from __future__ import annotations

import ast
import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctxrec import _log
from ctxrec._log import get_logger, progress, progress_enabled
from ctxrec.model import ContextFM, Interactions, SideInfo, warmup
from ctxrec.model import _kernels as K

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "ctxrec"
WARMUP_MODULE = sys.modules["ctxrec.model.warmup"]  # (the package attribute is the function)


def _problem(seed: int = 0, n: int = 300, nU: int = 20, nI: int = 15):
    rng = np.random.default_rng(seed)
    side = SideInfo(nU, nI, (3,), item_text=rng.normal(size=(nI, 4)).astype(np.float32))
    X = Interactions(rng.integers(0, nU, n), rng.integers(0, nI, n), rng.integers(0, 3, (n, 1)))
    return X, side


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# ------------------------------------------------------------------------------ logging
def test_library_logger_is_silent_by_default():
    root = logging.getLogger("ctxrec")
    assert root is _log.logger
    assert any(isinstance(h, logging.NullHandler) for h in root.handlers)
    assert get_logger("model").name == "ctxrec.model"
    assert get_logger("ctxrec.evaluate").name == "ctxrec.evaluate"
    assert get_logger("ctxrec").name == "ctxrec"
    assert get_logger("model").parent is root


def test_verbose_fit_prints_nothing_logs_epochs_and_draws_a_bar(capsys, caplog):
    X, side = _problem()
    val = X.subset(np.arange(40))
    caplog.set_level(logging.INFO, logger="ctxrec.model")
    m = ContextFM(n_factors=4, epochs=3, batch_size=64, verbose=True).fit(X, side, validation=val)
    out = capsys.readouterr()
    assert out.out == ""  # no print
    recs = [r for r in caplog.records if r.name == "ctxrec.model" and "epoch" in r.getMessage()]
    assert [r.levelno for r in recs] == [logging.INFO] * 3
    assert "epoch 1/3" in recs[0].getMessage() and "epoch 3/3" in recs[2].getMessage()
    assert f"loss={m.history_[2]['loss']:.5f}" in recs[2].getMessage()
    assert "ndcg@10=" in recs[2].getMessage()
    # the bar: on stderr, with the count, an ETA / rate and the loss + metric as postfix
    assert "ContextFM" in out.err and "3/3" in out.err
    assert "loss=" in out.err and "ndcg@10=" in out.err
    assert "epoch/s" in out.err or "s/epoch" in out.err


def test_quiet_fit_logs_at_debug_and_draws_nothing(capsys, caplog):
    X, side = _problem()
    caplog.set_level(logging.DEBUG, logger="ctxrec.model")
    ContextFM(n_factors=4, epochs=2, batch_size=64).fit(X, side)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    recs = [r for r in caplog.records if r.name == "ctxrec.model" and "epoch" in r.getMessage()]
    assert [r.levelno for r in recs] == [logging.DEBUG] * 2


LIBRARY_FILES = ["_log.py", "model/fm.py", "model/_kernels.py", "model/warmup.py", "model/__init__.py",
                 "evaluate.py", "distributed.py"]


@pytest.mark.parametrize("rel", LIBRARY_FILES)
def test_no_bare_print_in_the_library(rel):
    tree = ast.parse((PKG / rel).read_text())
    calls = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id == "print"]
    assert calls == [], f"{rel}: print() at lines {calls}"


# ------------------------------------------------------------------------------ progress
def test_progress_enabled_rules(capsys):
    assert progress_enabled(True) is True
    assert progress_enabled(False, _Tty()) is False
    assert progress_enabled(None, io.StringIO()) is False  # not a terminal: CI logs, pipes
    assert progress_enabled(None, _Tty()) is True
    assert progress_enabled(None) is False  # pytest's captured stderr is no terminal
    closed = io.StringIO()
    closed.close()
    assert progress_enabled(None, closed) is False


def test_progress_bar_draws_with_eta_only_when_enabled():
    buf = io.StringIO()
    with progress(5, "work", unit="step", enabled=True, file=buf) as bar:
        for _ in range(5):
            bar.update(1)
        bar.set_postfix({"loss": 0.123456})
    text = buf.getvalue()
    assert "work" in text and "5/5" in text and "step" in text and "loss=0.1235" in text
    assert re.search(r"<\d\d:\d\d", text), text  # elapsed<remaining: the ETA
    quiet = io.StringIO()
    with progress(5, "work", enabled=False, file=quiet) as bar:
        bar.update(5)
        bar.set_postfix({"loss": 1.0})
    assert quiet.getvalue() == ""
    auto = io.StringIO()
    assert list(progress(range(4), "it", file=auto)) == [0, 1, 2, 3]  # auto + no terminal: silent
    assert auto.getvalue() == ""
    tty = _Tty()
    assert list(progress(range(4), "it", file=tty)) == [0, 1, 2, 3]  # auto + terminal: a bar
    assert "4/4" in tty.getvalue()


def test_progress_rejects_bad_totals():
    with pytest.raises(ValueError, match="total"):
        progress(-1, "x")
    with pytest.raises(TypeError):
        progress(True, "x")
    with pytest.raises(TypeError, match="update"):
        list(progress(3, "x", enabled=False))


def test_progress_routes_console_logging_through_the_bar():
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    try:
        with progress(2, "x", enabled=True, file=io.StringIO()):
            assert handler not in root.handlers  # replaced by tqdm's writer while the bar is open
        assert handler in root.handlers
        with progress(2, "x", enabled=False):
            assert handler in root.handlers  # no bar: logging untouched
    finally:
        root.removeHandler(handler)


def test_evaluate_ranking_progress_is_off_by_default(capsys):
    from ctxrec.data import Dataset
    from ctxrec.evaluate import Factors, evaluate_ranking, random_split

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user": rng.integers(60, size=900), "item": rng.integers(40, size=900)}).drop_duplicates()
    ds = Dataset.from_frames(df, user_col="user", item_col="item", items=pd.DataFrame({"item": np.arange(40)}))
    sp = random_split(ds, test_frac=0.3, seed=1)
    model = Factors(rng.normal(size=(ds.n_items, 4)), rng.normal(size=(ds.n_users, 4)))
    a = evaluate_ranking(model, sp.train, sp.test, ks=(5,), batch_size=8, backend="numpy")
    assert capsys.readouterr().err == ""
    b = evaluate_ranking(model, sp.train, sp.test, ks=(5,), batch_size=8, backend="numpy", progress=True,
                         name="m1")
    err = capsys.readouterr().err
    n = a.info["n_queries"]
    assert "evaluate m1" in err and f"{n}/{n}" in err and "query" in err
    assert a.metrics == b.metrics


# ------------------------------------------------------------------------- kernels / GIL
def test_serving_kernels_release_the_gil():
    for name in WARMUP_MODULE.KERNELS:
        assert getattr(K, name).targetoptions.get("nogil") is True, name
    assert K.query_table_serial.targetoptions.get("parallel") in (None, False)  # live requests: no pool


def _python_rate(seconds: float = 0.2) -> float:
    """Iterations per second of the probe loop with no kernel running."""
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        sum(range(200))
        n += 1
    return n / seconds


def test_python_threads_run_while_the_serial_query_kernel_runs():
    # a long call of the serial kernel (the one live requests use) in a thread: holding the GIL
    # it would stop the main thread's Python loop for its whole run
    rng = np.random.default_rng(0)
    nU, nI, k = 200, 300, 32
    users = np.repeat(np.arange(nU), 60)
    items = np.concatenate([rng.choice(nI, 60, replace=False) for _ in range(nU)])
    m = ContextFM(n_factors=k, epochs=1, user_history=True).fit(Interactions(users, items), SideInfo(nU, nI))
    b = 200_000
    u = (np.arange(b) % nU).astype(np.int64)
    q, c, tri = np.zeros((b, k), np.float32), np.zeros(b), np.zeros((b, 0), np.float32)

    def run() -> None:
        K.query_table_serial(u, np.zeros((b, 0), np.int64), np.zeros((b, 0), np.float32), m.layout_.ctx_off, m.V_, m.w_,
                             m.P_, m.a_, m.layout_.user_off, m.ua_ptr_, m.ua_idx_, m.ua_val_, m.user_text_,
                             int(m.layout_.text_off[1]), int(m.layout_.text_off[2]), m.w0_, m.T_, q, c, tri)

    run()  # compiled / loaded
    rate = _python_rate()
    done = threading.Event()
    th = threading.Thread(target=lambda: (run(), done.set()))
    t0 = time.perf_counter()
    th.start()
    n = 0
    while not done.is_set():
        sum(range(200))
        n += 1
    dur = time.perf_counter() - t0
    th.join()
    if dur < 0.1:
        pytest.skip(f"kernel too fast ({dur:.3f} s) to tell")
    # with the GIL released the loop keeps a good share of its idle rate (2 cores, noisy
    # machines: 10% is a loose bar); holding it, the loop would make ~0 iterations
    assert n > 0.1 * rate * dur, (n, rate, dur)
    ref = m.build_queries(u[:100])
    np.testing.assert_array_equal(q[:100], ref.queries)


def test_kernel_cache_falls_back_when_no_location_is_writable(tmp_path, monkeypatch, caplog):
    caching = pytest.importorskip("numba.core.caching")
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    provided = getattr(caching, "UserProvidedCacheLocator", None) or getattr(caching, "_UserProvidedCacheLocator",
                                                                              None)
    if impl is None or provided is None or not hasattr(impl, "_locator_classes"):
        pytest.skip("numba's cache internals differ")
    import numba

    monkeypatch.setattr(impl, "_locator_classes", [provided])  # only NUMBA_CACHE_DIR: unset -> nothing works
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    monkeypatch.setattr(K, "_FALLBACK_CACHE", [])
    monkeypatch.setattr(K, "_fallback_cache_dir", lambda: str(tmp_path))
    caplog.set_level(logging.WARNING, logger="ctxrec.model")

    f = K._jit()(_double)
    assert f(21) == 42
    assert any(tmp_path.rglob("*_double*.nbi")), list(tmp_path.rglob("*"))  # cached in the fallback
    assert numba.config.CACHE_DIR == str(tmp_path)  # for the package's other cache=True kernels too
    assert any("NUMBA_CACHE_DIR" in r.getMessage() for r in caplog.records)


def _double(x):
    return 2 * x


# -------------------------------------------------------------------------------- warm-up
def test_warmup_compiles_every_serving_kernel():
    seconds = warmup()
    assert isinstance(seconds, float) and seconds > 0
    for name in WARMUP_MODULE.KERNELS:
        assert len(getattr(K, name).signatures) >= 1, name
    with pytest.raises(ValueError, match="unknown loss"):
        warmup(losses=("hinge",))


@pytest.mark.parametrize("params", [dict(loss="bpr", n_tri_factors=2),
                                    dict(loss="mse", user_history=True)])
def test_warmup_with_a_model_leaves_it_unchanged(params):
    X, side = _problem()
    if params["loss"] == "mse":
        X.label = np.random.default_rng(1).integers(1, 6, len(X)).astype(float)
    m = ContextFM(n_factors=4, epochs=1, batch_size=64, **params).fit(X, side)
    before = {k: v.copy() for k, v in vars(m).items() if isinstance(v, np.ndarray)}
    tuples = {k: [a.copy() for a in v] for k, v in vars(m).items()
              if isinstance(v, tuple) and v and all(isinstance(a, np.ndarray) for a in v)}
    assert "ua_base_" in tuples and "_neg" in tuples
    opt = {k: v.copy() for k, v in m._opt.items()}
    scalars = (m.n_users_, m.layout_.n_rows, m.step_)
    p0 = m.predict(X)
    assert warmup(m) > 0
    assert (m.n_users_, m.layout_.n_rows, m.step_) == scalars
    assert set(before) == {k for k, v in vars(m).items() if isinstance(v, np.ndarray)}
    for k, v in before.items():
        assert np.array_equal(getattr(m, k), v), k
    for k, v in opt.items():
        assert np.array_equal(m._opt[k], v), k
    for k, v in tuples.items():
        assert all(np.array_equal(a, b) for a, b in zip(getattr(m, k), v, strict=True)), k
    np.testing.assert_array_equal(m.predict(X), p0)


def test_fresh_process_loads_the_kernels_from_the_cache():
    warmup(losses=("bpr",))  # this process compiled (and cached) or loaded them
    env = dict(os.environ, NUMBA_DEBUG_CACHE="1")
    code = "from ctxrec.model import warmup; warmup(losses=('bpr',))"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    log = res.stdout + res.stderr
    for name in WARMUP_MODULE.KERNELS:
        assert re.search(rf"data loaded from .*_kernels\.{name}-\d+\.", log), (name, log[-3000:])
        assert not re.search(rf"data saved to .*_kernels\.{name}-\d+\.", log), (name, log[-3000:])
