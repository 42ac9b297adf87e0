"""Structure rules (issue 18): no module of ctxrec reads another module's private member.

A private member is a name starting with one underscore (not a dunder). In each module, an
attribute access ``x._name`` on anything but ``self`` / ``cls``, a ``getattr(x, "_name")``
and a ``from ctxrec.m import _name`` are allowed only when ``_name`` is defined in the same
module (a method, a class, an attribute it assigns, a module-level name): a module may use
its own private members on other instances of its own classes, never another module's.
Private *modules* (``ctxrec._core``, ``ctxrec._io``, ``ctxrec._log``, ...) are the package's
own layers and are imported by name; their public names are what the rule lets through.

The rule covers the benchmark scripts (``benchmarks/*.py``) too: they time the package through
its public API. The tests (``tests/``) are white-box unit tests and are not covered."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "python" / "ctxrec"
BENCHMARKS = REPO / "benchmarks"
#: (file relative to the root it is checked under, name) reads allowed with a reason: numba's
#: dispatcher tells its on-disk cache only through these (ctxrec.model._kernels.cache_dir,
#: logged by warmup).
ALLOWED = {("model/_kernels.py", "_cache"), ("model/_kernels.py", "_cache_path")}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_module(dotted: str) -> bool:
    """A private module is one of the package's layers (``ctxrec._core``, ``ctxrec.model._kernels``)."""
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError):
        return False


def _own_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
            names.add(n.attr)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
        elif isinstance(n, ast.arg):
            names.add(n.arg)
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "setattr" and \
                len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str):
            names.add(n.args[1].value)
    return {x for x in names if _private(x)}


def private_reaches(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: expression`` for every read of another module's private member in ``path``.

    ``file`` is relative to ``root``, and so are the files of ``ALLOWED``."""
    tree = ast.parse(path.read_text())
    mine = _own_names(tree)
    out = []
    for n in ast.walk(tree):
        hit = None
        if isinstance(n, ast.Attribute) and _private(n.attr) and n.attr not in mine and not (
                isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")):
            hit = ast.unparse(n)
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr") \
                and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) \
                and isinstance(n.args[1].value, str) and _private(n.args[1].value) \
                and n.args[1].value not in mine:
            hit = ast.unparse(n)
        elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("ctxrec"):
            bad = [a.name for a in n.names if _private(a.name) and not _is_module(f"{n.module}.{a.name}")]
            if bad:
                hit = f"from {n.module} import {', '.join(bad)}"
        name = n.attr if isinstance(n, ast.Attribute) else n.args[1].value if isinstance(n, ast.Call) and hit else None
        rel = str(path.relative_to(root))
        if hit and (rel, name) not in ALLOWED:
            out.append(f"{rel}:{n.lineno}: {hit[:80]}")
    return out


def test_no_module_reads_another_modules_private_members():
    found = [r for p in sorted(ROOT.rglob("*.py")) for r in private_reaches(p)]
    assert found == [], "\n".join(found)


def test_benchmarks_read_no_private_members():
    """The benchmark scripts use the package's public API only (their own privates aside)."""
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert scripts, BENCHMARKS
    found = [r for p in scripts for r in private_reaches(p, REPO)]
    assert found == [], "\n".join(found)


def test_the_checker_finds_a_private_reach(tmp_path):
    """The rule can fail: a module reading another object's private member is reported."""
    p = ROOT / "_probe_for_test.py"
    try:
        p.write_text("def f(rec):\n    return rec._history, getattr(rec, '_encoder')\n"
                     "from ctxrec.data import _scalar_str\n")
        got = private_reaches(p)
    finally:
        p.unlink()
    assert len(got) == 3, got


def test_the_checker_reports_relative_to_its_root(tmp_path):
    """A file outside the package (a benchmark) is reported relative to the root it is checked under."""
    p = tmp_path / "bench_probe.py"
    p.write_text("def f(eng):\n    return eng._snap\n")
    assert private_reaches(p, tmp_path) == ["bench_probe.py:2: eng._snap"]
