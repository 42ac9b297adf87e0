"""Every ``python`` and ``sh`` block of README.md runs, in order, as a user would run it.

The blocks run one after another in one fresh directory (later blocks use what earlier
ones wrote, e.g. ``model/``), each in its own process: python blocks as scripts (so a
``__main__`` guard works as it does for a user), sh blocks with bash (``set -e``), the
venv's ``ctxrec`` first on PATH, the home and cache directories pointed into the test's
directory, and one on-disk embedding cache shared by the blocks (``CTXREC_EMBEDDING_CACHE``). Two things are changed, and only these: ``epochs=N`` / ``"epochs": N`` become 2
(the README's figures come from the benchmarks, not from these runs) and the service port
8000 becomes a free port. The ``make`` block is what CI itself runs and is not run here.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _data_dir import DATA_DIR, needs_data
from _server import free_port

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(python|sh)\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer((ROOT / "README.md").read_text())]


BLOCKS = readme_blocks()


def test_readme_has_runnable_blocks():
    kinds = [k for k, _ in BLOCKS]
    assert kinds.count("python") >= 8 and kinds.count("sh") >= 3


def _shrink(code: str, port: int) -> str:
    code = re.sub(r"\bepochs=\d+", "epochs=2", code)
    code = re.sub(r'"epochs":\s*\d+', '"epochs": 2', code)
    return code.replace("8000", str(port))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    encoder = ROOT / "models" / "build" / "all-MiniLM-L6-v2"
    env = {**os.environ, "HOME": str(d / "home"), "XDG_CACHE_HOME": str(d / "home" / ".cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1",
           # one embedding cache for all blocks: each item text is encoded once, not once per block
           "CTXREC_EMBEDDING_CACHE": str(d / "embedding-cache")}
    if (encoder / "manifest.json").is_file() and "CTXREC_ENCODER_DIR" not in os.environ:
        env["CTXREC_ENCODER_DIR"] = str(encoder)  # the export `make models` built (ctxrec export's output)
    return d, env


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("n", range(len(BLOCKS)), ids=[f"block{n}-{k}" for n, (k, _) in enumerate(BLOCKS)])
def test_readme_block_runs(n, workdir):
    d, env = workdir
    kind, code = BLOCKS[n]
    if kind == "sh" and re.search(r"^make ", code, re.M):
        pytest.skip("the `make demo` / `make test` block is what CI runs itself")
    if kind == "sh" and "curl " in code and shutil.which("curl") is None:
        pytest.skip("curl is not installed on this machine")
    script = d / f"block{n}.{'py' if kind == 'python' else 'sh'}"
    script.write_text(_shrink(code, free_port()) if kind == "sh" else _shrink(code, 0))
    cmd = [sys.executable, str(script)] if kind == "python" else ["bash", "-e", str(script)]
    # its own process group: a server a failed block left running in the background is stopped too
    proc = subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"README block {n} ({kind}) failed:\n{code}\n--- stdout\n{out[-3000:]}" \
                                 f"\n--- stderr\n{err[-5000:]}"
