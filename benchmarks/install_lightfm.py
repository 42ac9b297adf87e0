"""Install LightFM 1.17 (a quality-benchmark peer) into the running interpreter's environment.

LightFM's sdist does not build under PEP 517 with current setuptools: its setup.py sets an
attribute on ``__builtins__``, which is a dict when the build backend runs it. This script
fetches the sdist from PyPI (checked against its published sha256), patches that one line and
installs it without build isolation (the sdist ships generated C sources: numpy and setuptools
are enough).
Called by ``make`` for the benchmark environment; a failure only means the benchmark skips
the LightFM rows (it says so in its report).
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

URL = ("https://files.pythonhosted.org/packages/1f/96/5ec230f5c27811534af0faaa8525f11c1000ee1c24c8a82c0546d0724aea/"
       "lightfm-1.17.tar.gz")
SHA256 = "2b77ada182ccd768a8d7643ab3cfcd8b6e855db09087f7cc7329bd63316697a8"
BAD = "__builtins__.__LIGHTFM_SETUP__ = True"
GOOD = "import builtins; builtins.__LIGHTFM_SETUP__ = True"


def main() -> int:
    try:
        import lightfm  # noqa: F401
        print("lightfm already installed")
        return 0
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        data = urllib.request.urlopen(URL, timeout=120).read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHA256:
            raise SystemExit(f"lightfm sdist: sha256 {digest}, expected {SHA256}")
        archive = Path(tmp) / "lightfm-1.17.tar.gz"
        archive.write_bytes(data)
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
        setup = Path(tmp) / "lightfm-1.17" / "setup.py"
        text = setup.read_text()
        if BAD not in text:
            raise SystemExit(f"{setup}: the line to patch ({BAD!r}) is not there")
        setup.write_text(text.replace(BAD, GOOD))
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                               "--no-build-isolation", str(setup.parent)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
