"""Versioned directories written atomically and verified at load.

Every artifact ctxrec writes (engines, models, encoder exports, recommenders) is a
directory holding data files plus ``manifest.json``: a format name, a format version,
free-form metadata, and the size and SHA-256 of every file. ``atomic_dir`` builds the
directory under a temporary name next to the target and renames it into place only
when everything (manifest included) has been written and flushed, so a crash never
leaves a half-written artifact behind and never destroys the previous one.
``read_manifest`` checks the format, the version and every checksum, and raises
``CorruptArtifactError`` naming the file that is missing, truncated or altered.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"


from ctxrec.errors import CorruptArtifactError  # noqa: E402  (re-exported: ctxrec._io.CorruptArtifactError)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, fmt: str, version: int, meta: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success write the manifest and rename it to ``target``.

    The caller writes its files into the yielded directory. ``meta`` may be updated
    in place by the caller until the block ends. An existing ``target`` is replaced
    only after the new directory is complete; on any exception the temporary
    directory is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    meta = {} if meta is None else meta
    try:
        yield tmp
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                rel = p.relative_to(tmp).as_posix()
                files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        manifest = {"format": fmt, "version": version, "meta": meta, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _fsync_tree(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path: str | os.PathLike, fmt: str, version: int | tuple[int, ...],
                  verify: bool = True) -> dict[str, Any]:
    """Read and check ``path/manifest.json``; return it.

    Raises ``CorruptArtifactError`` when the directory or manifest is missing, the
    format or version differs, or (``verify=True``) a listed file is missing, has the
    wrong size, or the wrong SHA-256.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CorruptArtifactError(f"{path}: no {MANIFEST}; not a saved {fmt} directory (or an interrupted save)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptArtifactError(f"{mpath}: manifest is not valid JSON ({e})") from None
    if manifest.get("format") != fmt:
        raise CorruptArtifactError(f"{path}: format is {manifest.get('format')!r}, expected {fmt!r}")
    versions = version if isinstance(version, tuple) else (version,)
    if manifest.get("version") not in versions:
        raise CorruptArtifactError(
            f"{path}: {fmt} format version {manifest.get('version')!r}; this ctxrec reads version "
            f"{' or '.join(map(str, versions))}")
    if verify:
        for rel, info in manifest.get("files", {}).items():
            p = path / rel
            if not p.is_file():
                raise CorruptArtifactError(f"{p}: file listed in the manifest is missing")
            size = p.stat().st_size
            if size != info["bytes"]:
                raise CorruptArtifactError(f"{p}: {size} bytes, manifest says {info['bytes']} (truncated or altered)")
            if sha256_file(p) != info["sha256"]:
                raise CorruptArtifactError(f"{p}: SHA-256 does not match the manifest (altered or corrupt)")
    return manifest
