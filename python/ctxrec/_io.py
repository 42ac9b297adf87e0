"""Versioned directories written atomically and verified at load.

Every artifact ctxrec writes (engines, models, encoder exports, recommenders) is a
directory holding data files plus ``manifest.json``::

    {"format": "ctxrec.engine", "version": 2, "meta": {...},
     "files": {"item_vecs.npy": {"bytes": 4096, "sha256": "<64 hex>"}, ...},
     "digest": "<64 hex>"}

``files`` lists the size and SHA-256 of every data file; ``digest`` is the SHA-256 of the
canonical JSON of the other four keys (:func:`manifest_digest`), so an edited ``meta``
value (``text_weight``, ``n_candidates``, ...) or an edited file entry is detected even
though ``meta`` is not a file. The digest is tamper-*evidence* against accidental or
careless edits, **not a signature**: anyone who can write the manifest can recompute it.
Manifests written by earlier ctxrec versions have no ``digest``; they are still
accepted (unless ``require_digest=True``), and then the caller's ``meta_schema``
(:class:`MetaField`, :func:`check_meta`) is what keeps out-of-range metadata out.

Writing (:func:`atomic_dir`)
    The directory is built under ``.{name}.tmp-XXXXXXXX`` next to the target, every file
    and directory in it is fsynced, then it replaces the target in one atomic step:
    ``renameat2(RENAME_EXCHANGE)`` swaps the two trees (Linux >= 3.15 on ext4, xfs, btrfs,
    tmpfs, ...), and the old tree, now under the temporary name, is removed. Where the
    syscall or the filesystem lacks the exchange (``EINVAL``, ``ENOSYS``, ``EOPNOTSUPP``,
    ``EPERM`` from a seccomp filter), the fallback is two renames, target ->
    ``.{name}.old-XXXXXXXX`` then tmp -> target; a crash between them leaves no target but
    a complete ``.old-*`` tree, which the next :func:`atomic_dir` or :func:`read_manifest`
    on that target puts back (:func:`clean_leftovers`). The parent directory is fsynced
    after every rename.

Leftovers and live saves
    A save in progress holds an exclusive ``fcntl.flock`` on its temporary directory
    (and, in the fallback, on the ``.old-*`` tree it moved aside) for as long as it runs.
    The kernel drops the lock when the process exits, ``kill -9`` included, so
    :func:`clean_leftovers` removes exactly the ``.{name}.tmp-*`` / ``.{name}.old-*``
    siblings whose lock it can take without waiting: those of dead processes (and those
    left by ctxrec versions that took no lock). A save running in another process keeps
    its lock and is never touched. No age threshold is involved.

Reading (:func:`read_manifest`)
    Checks the manifest's structure (exactly the keys above, their types, relative file
    names that stay inside the directory), the format, the version, the digest, the
    files a caller requires, every listed file's size and SHA-256 (``verify=True``) and
    the metadata against a schema; every failure is a ``CorruptArtifactError`` naming
    the key or the file.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

MANIFEST = "manifest.json"
MANIFEST_KEYS = ("format", "version", "meta", "files")
DIGEST_KEY = "digest"

from ctxrec.errors import CorruptArtifactError  # noqa: E402  (re-exported: ctxrec._io.CorruptArtifactError)

__all__ = [
    "MANIFEST", "CorruptArtifactError", "MetaField", "atomic_dir", "check_meta", "clean_leftovers", "jsonable",
    "leftover_pattern", "load_array", "manifest_digest", "read_manifest", "sha256_file",
]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
#: errno values meaning "this kernel / filesystem cannot exchange": use the two-rename fallback.
_NO_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM})


# ---------------------------------------------------------------------------- JSON values
def jsonable(v: Any) -> Any:
    """``v`` as plain JSON types, for manifests, logs, reports and API answers.

    numpy scalars and arrays become Python values and lists, tuples lists, mapping keys
    strings, timestamps ISO 8601 text; NaN, infinities, NaT and other missing values None;
    anything else its ``str``.

    Parameters
    ----------
    v : object

    Returns
    -------
    object
        ``None``, bool, int, float, str, list or dict (of those).
    """
    if v is None or type(v) in (bool, int, str):
        return v
    if isinstance(v, np.ndarray):
        return [jsonable(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, np.datetime64) or hasattr(v, "isoformat"):
        import pandas as pd
        return None if pd.isna(v) else pd.Timestamp(v).isoformat()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (bool, int, str)):
        return v
    import pandas as pd
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


# ---------------------------------------------------------------------------- arrays
def load_array(path: str | os.PathLike, *, mmap: bool = False, finite: bool = False) -> np.ndarray:
    """A ``.npy`` file, checked before numpy allocates for it.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    mmap : bool
        Map it read-only instead of reading it.
    finite : bool
        Refuse NaN and infinities in a float array.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    CorruptArtifactError
        The file is missing or unreadable, its header is not a ``.npy`` header, it holds
        Python objects (a pickle), its size is not what its header's shape and dtype say
        (a crafted header could otherwise make numpy allocate terabytes), or (``finite``)
        it holds a non-finite value.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}.get(major)
            if read is None:
                raise ValueError(f"unsupported .npy version {major}")
            shape, _, dtype = read(f)
            offset = f.tell()
        if dtype.hasobject:
            raise ValueError("holds Python objects (a pickle); refused")
        want = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
        size = p.stat().st_size
        if size != want:
            raise ValueError(f"{size} bytes, its header ({dtype}, shape {tuple(shape)}) needs {want}")
        a = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CorruptArtifactError(f"{p}: unreadable array ({e})", field=f"files.{p.name}") from None
    if finite and a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        raise CorruptArtifactError(f"{p}: holds NaN or infinite values", field=f"files.{p.name}")
    return a


# ---------------------------------------------------------------------------- checksums
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB chunks.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    chunk : int
        Bytes read per call.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a manifest's ``format``, ``version``, ``meta`` and ``files``.

    Canonical: keys sorted, no whitespace, ASCII only. Computed on the parsed manifest,
    so it does not depend on how the file is indented. Tamper-evidence, not a signature.

    Parameters
    ----------
    manifest : mapping
        A parsed manifest holding the four keys.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    body = {k: manifest[k] for k in MANIFEST_KEYS}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# ---------------------------------------------------------------------------- metadata schema
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", dict: "an object",
               list: "a list"}


@dataclass(frozen=True)
class MetaField:
    """What one ``meta`` key may hold; a schema is a ``dict[str, MetaField]``.

    Parameters
    ----------
    type : type or tuple of types
        ``int`` (bools refused), ``float`` (ints accepted; NaN and infinities refused
        unless ``finite=False``), ``str``, ``bool``, ``list`` or ``dict``.
    min, max : float, optional
        Inclusive bounds of a number, or of the length of a str / list / dict.
    choices : tuple, optional
        The only values allowed.
    allow_none : bool
        ``None`` (JSON ``null``) is allowed too.
    required : bool
        The key must be present (a missing optional key is not checked).
    finite : bool
        For ``float``: refuse NaN and infinities.
    fields : mapping str -> MetaField, optional
        For ``dict``: the schema of the nested object (checked recursively).
    items : MetaField, optional
        For ``list``: what each element may hold.
    allow_unknown : bool
        For ``dict`` with ``fields``: keys not in ``fields`` are allowed.

    Examples
    --------
    >>> schema = {"n_candidates": MetaField(int, min=1, max=1 << 20),
    ...           "text_weight": MetaField(float),
    ...           "text_dim": MetaField(int, min=1, allow_none=True)}
    >>> check_meta({"n_candidates": 64, "text_weight": 1.0, "text_dim": None}, schema, "engine")["n_candidates"]
    64
    """

    type: type | tuple[type, ...]
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    allow_none: bool = False
    required: bool = True
    finite: bool = True
    fields: Mapping[str, "MetaField"] | None = None
    items: "MetaField | None" = None
    allow_unknown: bool = True

    def describe(self) -> str:
        """The allowed values in words (used in error messages).

        Returns
        -------
        str
            E.g. ``"an integer in [1, 1048576]"``.
        """
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        s = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        if self.choices is not None:
            s += f" in {list(self.choices)!r}"
        if self.min is not None or self.max is not None:
            lo = "-inf" if self.min is None else repr(self.min)
            hi = "inf" if self.max is None else repr(self.max)
            s += (" of length" if set(types) & {str, list, dict} else "") + f" in [{lo}, {hi}]"
        if self.allow_none:
            s += ", or null"
        return s


def _type_ok(value: Any, spec: MetaField) -> bool:
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    for t in types:
        if t is bool:
            if isinstance(value, bool):
                return True
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif isinstance(value, t):
            return True
    return False


def _check_value(value: Any, spec: MetaField, key: str, where: str) -> None:
    def bad(why: str) -> CorruptArtifactError:
        return CorruptArtifactError(f"{where}: meta[{key!r}] = {value!r} {why}; expected {spec.describe()}",
                                    field=f"meta.{key}", value=value)

    if value is None:
        if spec.allow_none:
            return
        raise bad("is null")
    if not _type_ok(value, spec):
        raise bad(f"has type {type(value).__name__}")
    if isinstance(value, float) and spec.finite and not math.isfinite(value):
        raise bad("is not finite")
    if spec.choices is not None and value not in spec.choices:
        raise bad("is not an allowed value")
    size = len(value) if isinstance(value, (str, list, dict)) else value
    if spec.min is not None and size < spec.min:
        raise bad(f"is below the minimum {spec.min!r}")
    if spec.max is not None and size > spec.max:
        raise bad(f"is above the maximum {spec.max!r}")
    if isinstance(value, dict) and spec.fields is not None:
        check_meta(value, spec.fields, where, allow_unknown=spec.allow_unknown, _prefix=f"{key}.")
    if isinstance(value, list) and spec.items is not None:
        for i, v in enumerate(value):
            _check_value(v, spec.items, f"{key}.{i}", where)


def check_meta(meta: Any, schema: Mapping[str, MetaField], where: str, *, allow_unknown: bool = True,
               _prefix: str = "") -> dict[str, Any]:
    """Check a manifest's ``meta`` object against a schema; return it unchanged.

    Parameters
    ----------
    meta : Any
        The parsed ``meta`` value (must be a dict).
    schema : mapping str -> MetaField
        What each key may hold; nested objects via ``MetaField(dict, fields=...)``.
    where : str
        Names the artifact in error messages (usually its path).
    allow_unknown : bool
        Keys not in ``schema`` are allowed (``False``: refused).

    Returns
    -------
    dict
        ``meta`` itself.

    Raises
    ------
    CorruptArtifactError
        ``meta`` is not an object, a required key is missing, a key is unknown (with
        ``allow_unknown=False``), or a value has the wrong type or is out of range; the
        message names the key, the value and what is allowed, and ``err.field`` is
        ``"meta.<key>"``.
    """
    if not isinstance(meta, dict):
        name = f"meta[{_prefix[:-1]!r}]" if _prefix else "meta"
        raise CorruptArtifactError(f"{where}: {name} is {type(meta).__name__}, expected an object",
                                   field=f"meta.{_prefix[:-1]}" if _prefix else "meta")
    for key, spec in schema.items():
        if key not in meta:
            if spec.required:
                raise CorruptArtifactError(f"{where}: meta[{_prefix + key!r}] is missing; expected {spec.describe()}",
                                           field=f"meta.{_prefix}{key}")
            continue
        _check_value(meta[key], spec, _prefix + key, where)
    if not allow_unknown:
        unknown = sorted(str(k) for k in meta if k not in schema)
        if unknown:
            raise CorruptArtifactError(f"{where}: meta has unknown key(s) {[_prefix + k for k in unknown]!r}",
                                       field=f"meta.{_prefix}{unknown[0]}")
    return meta


# ---------------------------------------------------------------------------- fsync, locks, renames
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every directory (deepest first), of ``root``."""
    dirs = [root]
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            continue
        if p.is_dir():
            dirs.append(p)
        elif p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in reversed(dirs):
        _fsync_dir(d)


def _lock_dir(path: Path, block: bool) -> int | None:
    """Open ``path`` and take an exclusive flock on it; the fd, or None when another process holds it.

    Also None when ``path`` vanished (or was removed between the open and the lock).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    if os.fstat(fd).st_nlink == 0:  # removed by a cleaner before we locked it
        os.close(fd)
        return None
    return fd


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


_libc: Any = None


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    """``renameat2(AT_FDCWD, src, AT_FDCWD, dst, flags)`` through libc.

    Raises
    ------
    OSError
        With the call's errno; ``ENOSYS`` when libc has no ``renameat2`` (glibc < 2.28,
        musl, not Linux).
    """
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(None, use_errno=True)
            fn = lib.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _libc = fn
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(src))
    if _libc(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(src), None, str(dst))


def leftover_pattern(name: str) -> re.Pattern[str]:
    """The names a save of the artifact ``name`` gives its sibling temporaries.

    ``atomic_dir`` writes into ``.{name}.tmp-XXXXXXXX`` and, without ``RENAME_EXCHANGE``,
    moves the old artifact to ``.{name}.old-XXXXXXXX`` (``XXXXXXXX``: mkdtemp's 8 random
    characters of ``[a-z0-9_]``, never ``.`` or ``-``, so the leftovers of a target called
    ``m.tmp-x`` are not mistaken for those of ``m``); a killed save can leave either behind
    (:func:`clean_leftovers` removes them).

    Parameters
    ----------
    name : str
        The artifact directory's file name (not its path).

    Returns
    -------
    re.Pattern
        Matches (with ``fullmatch``) exactly those sibling names.
    """
    return re.compile(rf"\.{re.escape(name)}\.(tmp|old)-[a-z0-9_]{{8}}")


def clean_leftovers(target: str | os.PathLike) -> list[Path]:
    """Restore an interrupted save's target, remove dead saves' ``.{name}.tmp-*`` / ``.{name}.old-*``.

    A leftover is removed only when its ``flock`` can be taken without waiting, i.e. no
    live process is saving with it. When ``target`` does not exist but a complete
    (``manifest.json`` present) unlocked ``.{name}.old-*`` does (a fallback save killed
    between its two renames), the most recently moved one is renamed back to ``target``
    first. Errors (a read-only parent, a race with another cleaner) are ignored: cleaning
    never makes a save or a load fail.

    Parameters
    ----------
    target : str or os.PathLike
        The artifact directory whose siblings are examined.

    Returns
    -------
    list of Path
        The leftovers removed (a restored ``.old-*`` is not listed).
    """
    target = Path(target)
    parent = target.parent
    pat = leftover_pattern(target.name)
    try:
        names = [n for n in os.listdir(parent) if pat.fullmatch(n)]
    except OSError:
        return []
    locked: list[tuple[Path, int]] = []
    removed: list[Path] = []
    try:
        for n in names:
            p = parent / n
            fd = _lock_dir(p, block=False)
            if fd is not None:
                locked.append((p, fd))
        if not os.path.lexists(target):
            olds = []
            for p, _ in locked:
                if ".old-" in p.name and (p / MANIFEST).is_file():
                    with contextlib.suppress(OSError):
                        olds.append((os.stat(p).st_ctime_ns, p))
            if olds:
                best = max(olds)[1]
                try:
                    _rename_noreplace(best, target)
                    _fsync_dir(parent)
                    locked = [(p, fd) for p, fd in locked if p != best]
                except OSError:
                    pass
        for p, _ in locked:
            shutil.rmtree(p, ignore_errors=True)
            if not os.path.lexists(p):
                removed.append(p)
    finally:
        for _, fd in locked:
            _close(fd)
    return removed


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing (``EEXIST``) rather than replacing an existing ``dst``."""
    try:
        _renameat2(src, dst, _RENAME_NOREPLACE)
        return
    except OSError as e:
        if e.errno not in _NO_EXCHANGE:
            raise
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    os.rename(src, dst)


def _remove(p: Path) -> None:
    """Remove a tree, or a file / symlink, ignoring errors."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(p)


def _swap_in(tmp: Path, target: Path) -> None:
    """Put the complete tree ``tmp`` at ``target``; remove the tree it replaces."""
    parent = target.parent
    if not os.path.lexists(target):
        try:
            _rename_noreplace(tmp, target)
            _fsync_dir(parent)
            return
        except FileExistsError:
            pass  # another process saved the target meanwhile: replace it below
    try:
        _renameat2(tmp, target, _RENAME_EXCHANGE)
    except OSError as e:
        if e.errno not in _NO_EXCHANGE:
            raise
        _swap_fallback(tmp, target)
        return
    _fsync_dir(parent)
    _remove(tmp)  # the old tree, now under the temporary name


def _swap_fallback(tmp: Path, target: Path) -> None:
    """Two renames, target -> ``.old-*`` (locked until the end) and tmp -> target."""
    parent = target.parent
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
    old.rmdir()
    fd = _lock_dir(target, block=True)  # cleaners skip a locked .old-*; the kernel drops it if we die
    try:
        os.rename(target, old)
        _fsync_dir(parent)
        os.rename(tmp, target)
        _fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if not os.path.lexists(target) and os.path.lexists(old):
            with contextlib.suppress(OSError):
                os.rename(old, target)
                _fsync_dir(parent)
        raise
    finally:
        _close(fd)


# ---------------------------------------------------------------------------- write
@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, fmt: str, version: int, meta: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success write the manifest and swap it in at ``target``.

    Parameters
    ----------
    target : str or os.PathLike
        The artifact directory (created or replaced).
    fmt : str
        Format name recorded in the manifest.
    version : int
        Format version recorded in the manifest.
    meta : dict, optional
        JSON-serializable metadata; the caller may update it in place until the block ends.

    Yields
    ------
    Path
        The temporary directory (``.{name}.tmp-XXXXXXXX`` next to ``target``) to write into.

    Raises
    ------
    TypeError, ValueError
        ``meta`` is not JSON-serializable (or holds NaN), or the block wrote no file.

    Notes
    -----
    Dead saves' leftovers next to ``target`` are cleaned (:func:`clean_leftovers`) first.
    The manifest records every file's size and SHA-256 and the digest. An existing
    ``target`` is replaced in one atomic ``renameat2(RENAME_EXCHANGE)`` only after the new
    tree is complete and fsynced (two-rename fallback, recovered at the next save or
    load); on any exception the temporary directory is removed and ``target`` is left
    untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    while True:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        fd = _lock_dir(tmp, block=False)
        if fd is not None:
            break  # else a cleaner took it between mkdtemp and the lock: take another name
    meta = {} if meta is None else meta
    try:
        yield tmp
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file() and p.relative_to(tmp).as_posix() != MANIFEST:
                rel = p.relative_to(tmp).as_posix()
                files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        if not files:
            raise ValueError(f"{target}: atomic_dir block wrote no file")
        body = {"format": fmt, "version": version, "meta": meta, "files": files}
        manifest = json.loads(json.dumps(body, allow_nan=False))  # as read_manifest will see it
        manifest[DIGEST_KEY] = manifest_digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False))
        _fsync_tree(tmp)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _close(fd)


# ---------------------------------------------------------------------------- read
def _check_structure(manifest: Any, mpath: Path) -> None:
    if not isinstance(manifest, dict):
        raise CorruptArtifactError(f"{mpath}: manifest is a JSON {type(manifest).__name__}, expected an object")
    for key in MANIFEST_KEYS:
        if key not in manifest:
            raise CorruptArtifactError(f"{mpath}: manifest has no {key!r} key", field=key)
    extra = sorted(set(manifest) - set(MANIFEST_KEYS) - {DIGEST_KEY})
    if extra:
        raise CorruptArtifactError(f"{mpath}: manifest has unknown key(s) {extra!r}", field=extra[0])
    for key, want, name in (("format", str, "a string"), ("meta", dict, "an object"), ("files", dict, "an object")):
        if not isinstance(manifest[key], want):
            raise CorruptArtifactError(f"{mpath}: manifest {key!r} is {manifest[key]!r}, expected {name}", field=key)
    v = manifest["version"]
    if not isinstance(v, int) or isinstance(v, bool):
        raise CorruptArtifactError(f"{mpath}: manifest 'version' is {v!r}, expected an integer", field="version")
    files = manifest["files"]
    if not files:
        raise CorruptArtifactError(f"{mpath}: manifest 'files' is empty; every file must be listed", field="files")
    for rel, info in files.items():
        _check_name(rel, mpath)
        if not isinstance(info, dict) or set(info) != {"bytes", "sha256"}:
            raise CorruptArtifactError(f"{mpath}: files[{rel!r}] = {info!r}, expected {{'bytes', 'sha256'}}",
                                       field=f"files.{rel}")
        b, h = info["bytes"], info["sha256"]
        if not isinstance(b, int) or isinstance(b, bool) or b < 0:
            raise CorruptArtifactError(f"{mpath}: files[{rel!r}]['bytes'] = {b!r}, expected an integer >= 0",
                                       field=f"files.{rel}.bytes")
        if not isinstance(h, str) or not _HEX64.fullmatch(h):
            raise CorruptArtifactError(f"{mpath}: files[{rel!r}]['sha256'] = {h!r}, expected 64 lowercase hex digits",
                                       field=f"files.{rel}.sha256")
    if DIGEST_KEY in manifest:
        d = manifest[DIGEST_KEY]
        if not isinstance(d, str) or not _HEX64.fullmatch(d):
            raise CorruptArtifactError(f"{mpath}: manifest 'digest' is {d!r}, expected 64 lowercase hex digits",
                                       field=DIGEST_KEY)


def _check_name(rel: Any, mpath: Path) -> None:
    """A listed file name: relative, POSIX, no '.', '..' or empty part, not the manifest."""
    ok = isinstance(rel, str) and rel and "\\" not in rel and "\0" not in rel and not rel.startswith("/")
    if ok:
        parts = rel.split("/")
        ok = all(p not in ("", ".", "..") for p in parts) and rel != MANIFEST
    if not ok:
        raise CorruptArtifactError(f"{mpath}: file name {rel!r} in the manifest is not a plain relative path "
                                   "inside the directory (absolute, '..', empty or the manifest)", field="files")


def _inside(path: Path, rel: str) -> Path:
    """``path / rel``, refused when it (through a symlink) resolves outside ``path``."""
    p = path / PurePosixPath(rel)
    root = path.resolve()
    real = p.resolve()
    if real != root and root not in real.parents:
        raise CorruptArtifactError(f"{p}: resolves to {real}, outside {root} (symlink escape)", field="files")
    return p


def read_manifest(path: str | os.PathLike, fmt: str, version: int | tuple[int, ...], verify: bool = True, *,
                  required: Sequence[str] = (), meta_schema: Mapping[str, MetaField] | None = None,
                  allow_unknown_meta: bool = True, require_digest: bool = False) -> dict[str, Any]:
    """Read and check ``path/manifest.json``; return it.

    Parameters
    ----------
    path : str or os.PathLike
        The artifact directory. An interrupted fallback save is recovered and dead
        saves' leftovers are removed first (:func:`clean_leftovers`).
    fmt : str
        The expected format name.
    version : int or tuple of int
        The format version(s) this reader accepts.
    verify : bool
        Check that every listed file exists with its size and SHA-256. ``False``: only
        the ``required`` files must exist (unchecked); other listed files may be absent
        (the encoder loads with ``verify=False`` from partial copies holding one variant).
    required : sequence of str
        File names (relative to ``path``, POSIX ``/``) that must be listed and present.
    meta_schema : mapping str -> MetaField, optional
        Checked with :func:`check_meta` against ``manifest["meta"]``.
    allow_unknown_meta : bool
        With ``meta_schema``: ``meta`` keys not in the schema are allowed.
    require_digest : bool
        Refuse a manifest without ``digest`` (older ctxrec versions wrote none; a
        missing digest is accepted by default, and the schema is then the protection).

    Returns
    -------
    dict
        The manifest: ``format``, ``version``, ``meta``, ``files`` (and ``digest``).

    Raises
    ------
    CorruptArtifactError
        The directory or manifest is missing or not valid JSON; the manifest is not an
        object with exactly ``format``/``version``/``meta``/``files`` (+ ``digest``) of
        the right types; ``files`` is empty, has a malformed entry or a name that is
        absolute, has ``..`` or escapes the directory; the format or version differs;
        the digest does not match (an edited manifest); a required file is not listed or
        absent; a listed file is missing, has the wrong size or the wrong SHA-256
        (``verify``); or ``meta`` fails ``meta_schema``. ``err.field`` names the
        manifest key (``"files.<name>"``, ``"meta.<key>"``) where there is one.
    """
    path = Path(path)
    clean_leftovers(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CorruptArtifactError(f"{path}: no {MANIFEST}; not a saved {fmt} directory (or an interrupted save)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptArtifactError(f"{mpath}: manifest is not valid JSON ({e})") from None
    _check_structure(manifest, mpath)
    if manifest["format"] != fmt:
        raise CorruptArtifactError(f"{path}: format is {manifest['format']!r}, expected {fmt!r}", field="format")
    versions = version if isinstance(version, tuple) else (version,)
    if manifest["version"] not in versions:
        raise CorruptArtifactError(
            f"{path}: {fmt} format version {manifest['version']!r}; this ctxrec reads version "
            f"{' or '.join(map(str, versions))}", field="version")
    if DIGEST_KEY in manifest:
        try:
            want = manifest_digest(manifest)
        except (TypeError, ValueError) as e:  # pragma: no cover - parsed JSON always serializes
            raise CorruptArtifactError(f"{mpath}: cannot canonicalize the manifest ({e})", field=DIGEST_KEY) from None
        if want != manifest[DIGEST_KEY]:
            raise CorruptArtifactError(
                f"{mpath}: digest does not match the manifest's format/version/meta/files "
                "(the manifest was edited after it was written)", field=DIGEST_KEY)
    elif require_digest:
        raise CorruptArtifactError(f"{mpath}: manifest has no 'digest' key", field=DIGEST_KEY)
    files = manifest["files"]
    for rel in required:
        if rel not in files:
            raise CorruptArtifactError(f"{path / rel}: required file is not listed in the manifest",
                                       field=f"files.{rel}")
    for rel, info in files.items():
        if not verify and rel not in required:
            continue  # verify=False: a partial copy (e.g. one encoder variant) is allowed
        p = _inside(path, rel)
        if not p.is_file():
            raise CorruptArtifactError(f"{p}: file listed in the manifest is missing", field=f"files.{rel}")
        if not verify:
            continue
        size = p.stat().st_size
        if size != info["bytes"]:
            raise CorruptArtifactError(f"{p}: {size} bytes, manifest says {info['bytes']} (truncated or altered)",
                                       field=f"files.{rel}")
        if sha256_file(p) != info["sha256"]:
            raise CorruptArtifactError(f"{p}: SHA-256 does not match the manifest (altered or corrupt)",
                                       field=f"files.{rel}")
    if meta_schema is not None:
        check_meta(manifest["meta"], meta_schema, str(path), allow_unknown=allow_unknown_meta)
    return manifest
