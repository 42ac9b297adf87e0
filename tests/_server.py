"""Start `ctxrec serve` as a user would (a subprocess on a loopback port) and wait for it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: Sequence[str], *, env: dict | None = None, timeout: float = 120.0,
                 port: int | None = None) -> tuple[str, subprocess.Popen]:
    """Run ``python -m ctxrec.cli serve ARGS --port P``; return (base URL, process) once /healthz answers."""
    import httpx
    port = port or free_port()
    # the server's output goes to a file: a pipe nobody reads fills up (uvicorn logs every
    # request) and then blocks the server
    log = tempfile.NamedTemporaryFile(prefix="ctxrec-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "ctxrec.cli", "serve", *args, "--port", str(port)],
                            env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {Path(log.name).read_text()[-5000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return base, proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout:.0f} s: {Path(log.name).read_text()[-5000:]}")


def stop_server(proc: subprocess.Popen, *, kill: bool = False) -> None:
    """SIGKILL (a crash: nothing gets to flush) or SIGTERM, then wait."""
    (proc.kill if kill else proc.terminate)()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(20)
    Path(getattr(proc, "log_path", "/nonexistent")).unlink(missing_ok=True)
