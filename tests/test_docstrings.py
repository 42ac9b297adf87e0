"""Docstring rules: the public API of ctxrec is documented in one style, numpydoc.

Every ``.py`` file under ``python/ctxrec`` is parsed with :mod:`ast` (nothing is imported).
The *API* of a file is its public (no leading underscore) module-level functions and
classes, and the public methods of its public classes (nested public classes included);
module-level ``if``/``try`` blocks are looked into, function bodies are not (a nested
function is not API). Dunder methods (``__init__``, ...) are documented by their class,
``@overload`` stubs and ``@<name>.setter``/``.deleter`` methods by the function or
property they belong to; none of those is checked.

For each API name:

1. It has a docstring.
2. The docstring has no Google-style section header: no line that is only ``Args:``,
   ``Arguments:``, ``Returns:``, ``Raises:`` or ``Yields:``.
3. If the function returns a value (it is not annotated ``-> None`` and its own body,
   nested functions and lambdas aside, has a ``return <expr>`` other than ``return None``)
   *and* it either takes a parameter besides ``self``/``cls`` or has a docstring of more
   than one paragraph, the docstring has a numpydoc ``Returns`` section: a line ``Returns`` followed by a line of dashes.
   So a one-line docstring of a trivial property (``self`` only) may stay one line.

Exempt from rule 3 (a one-line summary is enough; they are not Python API): FastAPI route
handlers (functions decorated with ``@<router or app>.get/post/put/patch/delete/...``) and
the CLI's ``cmd_*`` functions in ``cli.py``.

``ALLOWED`` lists the (file, qualified name) pairs that break a rule today and are owned by
another change; anything else that breaks a rule fails the test, so nothing new slips in.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "python" / "ctxrec"

#: (file, qualified name) pairs allowed to break a rule, each with its reason (none today).
#: Remove an entry once its docstring is converted (test_allowed_entries_still_needed says so).
ALLOWED: set[tuple[str, str]] = set()

_GOOGLE = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Yields):\s*$", re.M)
_RETURNS = re.compile(r"^\s*Returns\s*\n\s*-{3,}\s*$", re.M)
_ROUTE_METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "trace", "api_route",
                  "websocket"}


def _decorator_names(node: ast.AST) -> list[str]:
    out = []
    for d in getattr(node, "decorator_list", []):
        f = d.func if isinstance(d, ast.Call) else d
        out.append(ast.unparse(f))
    return out


def _is_route(node: ast.AST) -> bool:
    return any("." in d and d.rsplit(".", 1)[1] in _ROUTE_METHODS for d in _decorator_names(node))


def _skipped(node: ast.AST) -> bool:
    return any(d in ("overload", "typing.overload") or d.endswith((".setter", ".deleter"))
               for d in _decorator_names(node))


def _returns_value(fn: ast.AST) -> bool:
    if isinstance(fn.returns, ast.Constant) and fn.returns.value is None:
        return False
    todo = list(fn.body)
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(n, ast.Return) and n.value is not None and not (
                isinstance(n.value, ast.Constant) and n.value.value is None):
            return True
        todo.extend(ast.iter_child_nodes(n))
    return False


def _has_params(fn: ast.AST) -> bool:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return any(n not in ("self", "cls") for n in names)


def _api(body: list[ast.stmt], prefix: str = ""):
    """(qualified name, node) of every API function, method and class in ``body``."""
    for n in body:
        if isinstance(n, (ast.If, ast.Try)) and not prefix:
            blocks = [n.body, n.orelse] + ([n.finalbody] + [h.body for h in n.handlers]
                                           if isinstance(n, ast.Try) else [])
            for b in blocks:
                yield from _api(b, prefix)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if n.name.startswith("_") or _skipped(n):
                continue
            yield prefix + n.name, n
            if isinstance(n, ast.ClassDef):
                yield from _api(n.body, prefix + n.name + ".")


def violations(path: Path, rel: str | None = None) -> list[tuple[str, str, str]]:
    """(file, qualified name, what is wrong) for every rule the API of ``path`` breaks."""
    rel = rel if rel is not None else str(path.relative_to(ROOT))
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for qual, node in _api(tree.body):
        doc = ast.get_docstring(node)
        if not doc:
            out.append((rel, qual, "no docstring"))
            continue
        if _GOOGLE.search(doc):
            out.append((rel, qual, "Google-style section header (use numpydoc sections)"))
        if isinstance(node, ast.ClassDef) or _is_route(node) or (
                rel.endswith("cli.py") and "." not in qual and qual.startswith("cmd_")):
            continue
        long_doc = len([p for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]) > 1
        if _returns_value(node) and (_has_params(node) or long_doc) and not _RETURNS.search(doc):
            out.append((rel, qual, "returns a value but has no numpydoc 'Returns\\n-------' section"))
    return out


def all_violations() -> list[tuple[str, str, str]]:
    return [v for p in sorted(ROOT.rglob("*.py")) for v in violations(p)]


def test_public_api_docstrings_are_numpydoc():
    found = [v for v in all_violations() if (v[0], v[1]) not in ALLOWED]
    assert found == [], "\n".join(f"{f}: {q}: {why}" for f, q, why in found)


def test_allowed_entries_still_needed():
    """An ALLOWED entry that no longer breaks a rule is removed, so the list only shrinks."""
    live = {(f, q) for f, q, _ in all_violations()}
    assert ALLOWED - live == set(), sorted(ALLOWED - live)


def test_checker_reports_bad_docstrings(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('''
def no_doc(x):
    return x


def google(x):
    """Scale x.

    Args:
        x: a number.

    Returns:
        x times two.
    """
    return 2 * x


def prose_only(x):
    """Twice x, as a float."""
    return 2.0 * x


def good(x):
    """Twice x.

    Parameters
    ----------
    x : float
        A number.

    Returns
    -------
    float
        ``2 * x``.
    """
    return 2 * x


def no_value(x):
    """Print x."""
    print(x)


def _private(x):
    return x


class Public:
    def method(self, k):
        """The k-th thing."""
        return k

    @property
    def size(self):
        """int: the size."""
        return 3

    def __len__(self):
        return 3


@router.get("/ping")
async def ping(request):
    """Liveness."""
    return {"ok": True}
''')
    got = {(q, why.split(" ")[0]) for _, q, why in violations(bad, rel="bad.py")}
    assert got == {("no_doc", "no"), ("google", "Google-style"), ("google", "returns"),
                   ("prose_only", "returns"), ("Public", "no"), ("Public.method", "returns")}, got
