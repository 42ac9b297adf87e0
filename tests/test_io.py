"""ctxrec._io: manifest structure, digest, meta schema, atomic swap, leftovers, kill -9."""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ctxrec import _io
from ctxrec._io import MetaField, atomic_dir, check_meta, clean_leftovers, manifest_digest, read_manifest
from ctxrec.errors import CorruptArtifactError

FMT = "ctxrec.test"


def _save(target: Path, meta: dict | None = None, payload: bytes = b"hello") -> None:
    with atomic_dir(target, FMT, 1, meta if meta is not None else {"n_candidates": 64, "text_weight": 1.0}) as d:
        (d / "a.bin").write_bytes(payload)
        (d / "sub").mkdir()
        (d / "sub" / "b.bin").write_bytes(payload * 2)


def _edit(target: Path, fn, *, redigest: bool = True) -> None:
    """Apply ``fn`` to the parsed manifest and write it back (digest recomputed when asked)."""
    mp = target / "manifest.json"
    m = json.loads(mp.read_text())
    before = m["digest"]
    m = fn(m)
    if (redigest and isinstance(m, dict) and m.get("digest") == before
            and all(k in m for k in _io.MANIFEST_KEYS)):
        try:
            m["digest"] = manifest_digest(m)
        except (TypeError, KeyError):
            pass
    mp.write_text(json.dumps(m))


def _leftovers(target: Path) -> list[str]:
    return sorted(n for n in os.listdir(target.parent) if n.startswith(f".{target.name}."))


@pytest.fixture
def art(tmp_path: Path) -> Path:
    t = tmp_path / "art"
    _save(t)
    return t


# ------------------------------------------------------------------ round trip
def test_round_trip_has_digest_and_all_files(art: Path) -> None:
    m = read_manifest(art, FMT, 1, required=("a.bin", "sub/b.bin"))
    assert set(m) == {"format", "version", "meta", "files", "digest"}
    assert set(m["files"]) == {"a.bin", "sub/b.bin"}
    assert m["digest"] == manifest_digest(m)
    assert _leftovers(art) == []


def test_legacy_manifest_without_digest_accepted_unless_required(art: Path) -> None:
    _edit(art, lambda m: {k: v for k, v in m.items() if k != "digest"})
    read_manifest(art, FMT, 1)
    with pytest.raises(CorruptArtifactError, match="digest"):
        read_manifest(art, FMT, 1, require_digest=True)


def test_empty_block_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no file"):
        with atomic_dir(tmp_path / "x", FMT, 1):
            pass
    assert not (tmp_path / "x").exists() and _leftovers(tmp_path / "x") == []


# ------------------------------------------------------------------ structure
def _drop(key):
    return lambda m: {k: v for k, v in m.items() if k != key}


def _set(key, value):
    def f(m):
        m[key] = value
        return m
    return f


def _file(name, info):
    def f(m):
        m["files"][name] = info
        return m
    return f


GOOD_SHA = "0" * 64


@pytest.mark.parametrize("fn, match", [
    (lambda m: [m], "JSON list"),
    (lambda m: "x", "JSON str"),
    (_drop("meta"), "'meta'"),
    (_drop("files"), "'files'"),
    (_drop("format"), "'format'"),
    (_drop("version"), "'version'"),
    (_set("extra", 1), "unknown key.*extra"),
    (_set("meta", []), "'meta'"),
    (_set("files", []), "'files'"),
    (_set("files", {}), "'files' is empty"),
    (_set("version", "1"), "'version'"),
    (_set("version", True), "'version'"),
    (_set("format", 3), "'format'"),
    (_set("digest", "abc"), "'digest'"),
    (_file("a.bin", {"bytes": -1, "sha256": GOOD_SHA}), r"files\['a.bin'\]\['bytes'\]"),
    (_file("a.bin", {"bytes": 5.0, "sha256": GOOD_SHA}), r"files\['a.bin'\]\['bytes'\]"),
    (_file("a.bin", {"bytes": 5, "sha256": "XYZ"}), r"files\['a.bin'\]\['sha256'\]"),
    (_file("a.bin", {"bytes": 5}), r"files\['a.bin'\]"),
    (_file("a.bin", [5, GOOD_SHA]), r"files\['a.bin'\]"),
    (_file("../escape", {"bytes": 0, "sha256": GOOD_SHA}), "not a plain relative path"),
    (_file("sub/../../escape", {"bytes": 0, "sha256": GOOD_SHA}), "not a plain relative path"),
    (_file("/etc/passwd", {"bytes": 0, "sha256": GOOD_SHA}), "not a plain relative path"),
    (_file("./a.bin", {"bytes": 0, "sha256": GOOD_SHA}), "not a plain relative path"),
    (_file("", {"bytes": 0, "sha256": GOOD_SHA}), "not a plain relative path"),
    (_file("manifest.json", {"bytes": 0, "sha256": GOOD_SHA}), "not a plain relative path"),
])
def test_corrupt_manifest_structure(art: Path, fn, match: str) -> None:
    _edit(art, fn)
    with pytest.raises(CorruptArtifactError, match=match):
        read_manifest(art, FMT, 1)
    with pytest.raises(CorruptArtifactError, match=match):  # no KeyError/AttributeError with verify off either
        read_manifest(art, FMT, 1, verify=False)


def test_not_json_and_missing_manifest(art: Path, tmp_path: Path) -> None:
    (art / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptArtifactError, match="not valid JSON"):
        read_manifest(art, FMT, 1)
    with pytest.raises(CorruptArtifactError, match="no manifest.json"):
        read_manifest(tmp_path / "nothing", FMT, 1)


def test_format_and_version_mismatch(art: Path) -> None:
    with pytest.raises(CorruptArtifactError, match="format is"):
        read_manifest(art, "other", 1)
    with pytest.raises(CorruptArtifactError, match="version 1"):
        read_manifest(art, FMT, (2, 3))
    assert read_manifest(art, FMT, (1, 2))["version"] == 1


def test_symlink_escape_refused(art: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"hello")
    (art / "a.bin").unlink()
    (art / "a.bin").symlink_to(outside)
    with pytest.raises(CorruptArtifactError, match="outside"):
        read_manifest(art, FMT, 1)


# ------------------------------------------------------------------ digest and checksums
@pytest.mark.parametrize("key, value", [("text_weight", 0), ("n_candidates", 1), ("ef", 1)])
def test_digest_catches_edited_meta(art: Path, key: str, value) -> None:
    def f(m):
        m["meta"][key] = value
        return m
    _edit(art, f, redigest=False)
    with pytest.raises(CorruptArtifactError, match="digest does not match") as e:
        read_manifest(art, FMT, 1)
    assert e.value.field == "digest"


def test_digest_catches_edited_file_entry_and_dropped_file(art: Path) -> None:
    def drop(m):
        del m["files"]["sub/b.bin"]
        return m
    _edit(art, drop, redigest=False)
    with pytest.raises(CorruptArtifactError, match="digest"):
        read_manifest(art, FMT, 1)


def test_required_file_listed_and_present(art: Path) -> None:
    with pytest.raises(CorruptArtifactError, match="c.bin: required file is not listed") as e:
        read_manifest(art, FMT, 1, required=("a.bin", "c.bin"))
    assert e.value.field == "files.c.bin"
    (art / "sub" / "b.bin").unlink()
    for verify in (True, False):
        with pytest.raises(CorruptArtifactError, match="b.bin: file listed in the manifest is missing"):
            read_manifest(art, FMT, 1, verify=verify, required=("sub/b.bin",))
    read_manifest(art, FMT, 1, verify=False, required=("a.bin",))  # partial copy: allowed unverified


def test_every_listed_file_verified(art: Path) -> None:
    (art / "sub" / "b.bin").write_bytes(b"hellohellX")
    with pytest.raises(CorruptArtifactError, match="b.bin: SHA-256"):
        read_manifest(art, FMT, 1)
    read_manifest(art, FMT, 1, verify=False)
    (art / "a.bin").write_bytes(b"hell")
    with pytest.raises(CorruptArtifactError, match="a.bin: 4 bytes, manifest says 5"):
        read_manifest(art, FMT, 1)


# ------------------------------------------------------------------ meta schema
SCHEMA = {
    "n_candidates": MetaField(int, min=1, max=1 << 20),
    "text_weight": MetaField(float),
    "text_dim": MetaField(int, min=1, allow_none=True, required=False),
    "graph": MetaField(str, choices=("ip", "sphere"), required=False),
    "params": MetaField(dict, required=False, fields={"ef": MetaField(int, min=1)}, allow_unknown=False),
    "seen_keys": MetaField(list, required=False, items=MetaField((int, str))),
}


def test_check_meta_accepts_valid() -> None:
    meta = {"n_candidates": 64, "text_weight": 0, "text_dim": None, "graph": "ip", "params": {"ef": 8},
            "seen_keys": [1, "u"], "other": "ok"}
    assert check_meta(meta, SCHEMA, "x") is meta
    check_meta({"n_candidates": 1, "text_weight": -2.5}, SCHEMA, "x")


@pytest.mark.parametrize("meta, key, match", [
    ({"text_weight": 1.0}, "n_candidates", "missing"),
    ({"n_candidates": 0, "text_weight": 1.0}, "n_candidates", r"= 0 is below the minimum 1.*\[1, 1048576\]"),
    ({"n_candidates": 1 << 21, "text_weight": 1.0}, "n_candidates", "above the maximum"),
    ({"n_candidates": 2.0, "text_weight": 1.0}, "n_candidates", "has type float"),
    ({"n_candidates": True, "text_weight": 1.0}, "n_candidates", "has type bool"),
    ({"n_candidates": None, "text_weight": 1.0}, "n_candidates", "is null"),
    ({"n_candidates": 4, "text_weight": float("nan")}, "text_weight", "not finite"),
    ({"n_candidates": 4, "text_weight": "1"}, "text_weight", "has type str"),
    ({"n_candidates": 4, "text_weight": 1.0, "text_dim": 0}, "text_dim", "below the minimum"),
    ({"n_candidates": 4, "text_weight": 1.0, "graph": "l2"}, "graph", "not an allowed value"),
    ({"n_candidates": 4, "text_weight": 1.0, "params": {"ef": 0}}, "params.ef", "below the minimum"),
    ({"n_candidates": 4, "text_weight": 1.0, "params": {"ef": 2, "zz": 1}}, "params.zz", "unknown key"),
    ({"n_candidates": 4, "text_weight": 1.0, "params": []}, "params", "has type list"),
    ({"n_candidates": 4, "text_weight": 1.0, "seen_keys": [1, 2.5]}, "seen_keys.1", "has type float"),
])
def test_check_meta_refuses(meta: dict, key: str, match: str) -> None:
    with pytest.raises(CorruptArtifactError, match=match) as e:
        check_meta(meta, SCHEMA, "where")
    assert e.value.field == f"meta.{key}"
    assert "where" in str(e.value)


def test_check_meta_unknown_keys_flag_and_not_an_object() -> None:
    with pytest.raises(CorruptArtifactError, match="unknown key"):
        check_meta({"n_candidates": 4, "text_weight": 1.0, "x": 1}, SCHEMA, "w", allow_unknown=False)
    with pytest.raises(CorruptArtifactError, match="expected an object"):
        check_meta([1], SCHEMA, "w")


def test_read_manifest_meta_schema(tmp_path: Path) -> None:
    t = tmp_path / "m"
    _save(t, {"n_candidates": 0, "text_weight": 1.0})  # digest consistent: only the schema catches it
    with pytest.raises(CorruptArtifactError, match="n_candidates"):
        read_manifest(t, FMT, 1, meta_schema=SCHEMA)
    _save(t, {"n_candidates": 3, "text_weight": 1.0, "x": 1})
    read_manifest(t, FMT, 1, meta_schema=SCHEMA)
    with pytest.raises(CorruptArtifactError, match="unknown key"):
        read_manifest(t, FMT, 1, meta_schema=SCHEMA, allow_unknown_meta=False)


# ------------------------------------------------------------------ swap: exchange and fallback
def test_exchange_path_replaces_target(art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = _io._renameat2

    def spy(src, dst, flags):
        calls.append(flags)
        return real(src, dst, flags)
    monkeypatch.setattr(_io, "_renameat2", spy)
    _save(art, payload=b"second")
    assert _io._RENAME_EXCHANGE in calls
    assert (art / "a.bin").read_bytes() == b"second"
    read_manifest(art, FMT, 1)
    assert _leftovers(art) == []


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS])
def test_fallback_path_replaces_target(art: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def no_exchange(src, dst, flags):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(_io, "_renameat2", no_exchange)
    _save(art, payload=b"second")
    assert (art / "a.bin").read_bytes() == b"second"
    read_manifest(art, FMT, 1)
    assert _leftovers(art) == []
    _save(art.parent / "fresh", payload=b"new")  # no target yet: plain rename
    read_manifest(art.parent / "fresh", FMT, 1)


def test_other_renameat2_errors_propagate(art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(src, dst, flags):
        raise OSError(errno.EIO, "I/O error")
    monkeypatch.setattr(_io, "_renameat2", fail)
    with pytest.raises(OSError, match="I/O"):
        _save(art, payload=b"second")
    assert (art / "a.bin").read_bytes() == b"hello"
    assert _leftovers(art) == []


def test_failed_block_leaves_target(art: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_dir(art, FMT, 1, {}) as d:
            (d / "a.bin").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert (art / "a.bin").read_bytes() == b"hello"
    assert _leftovers(art) == []


# ------------------------------------------------------------------ leftovers
def test_interrupted_fallback_is_restored(art: Path) -> None:
    """A kill between the fallback's two renames: no target, a complete .old-* (and a tmp)."""
    old = art.parent / f".{art.name}.old-abcd1234"
    os.rename(art, old)
    tmp = art.parent / f".{art.name}.tmp-efgh5678"
    tmp.mkdir()
    (tmp / "a.bin").write_bytes(b"half")
    m = read_manifest(art, FMT, 1)
    assert (art / "a.bin").read_bytes() == b"hello" and m["format"] == FMT
    assert _leftovers(art) == []


def test_stale_leftovers_removed_at_save_live_ones_kept(art: Path) -> None:
    stale = [art.parent / f".{art.name}.tmp-stale001", art.parent / f".{art.name}.old-stale002"]
    for p in stale:
        p.mkdir()
        (p / "x").write_bytes(b"x")
    other = art.parent / f".{art.name}.tmp-x.tmp-abcdefgh"  # another target's leftover: not ours
    other.mkdir()
    live = art.parent / f".{art.name}.tmp-live0003"
    live.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(live)!r}, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        _save(art, payload=b"again")
        assert not any(p.exists() for p in stale)
        assert live.exists() and other.exists()
    finally:
        holder.kill()
        holder.wait()
    assert live in clean_leftovers(art)  # its owner is dead now
    assert other.exists()


# ------------------------------------------------------------------ kill -9
_SAVER = textwrap.dedent("""
    import errno, os, sys
    from ctxrec import _io
    target, mode = sys.argv[1], sys.argv[2]
    if mode == "fallback":
        def no_exchange(src, dst, flags):
            raise OSError(errno.EINVAL, "no exchange")
        _io._renameat2 = no_exchange
    blob = os.urandom(1 << 20)
    i = 0
    while True:
        with _io.atomic_dir(target, "ctxrec.test", 1, {"i": i}) as d:
            for j in range(3):
                (d / f"part{j}.bin").write_bytes(blob[j:] + bytes([i % 256]))
        i += 1
        if i == 1:
            print("first", flush=True)
""")


def test_kill9_during_saves_keeps_a_complete_artifact(tmp_path: Path) -> None:
    target = tmp_path / "killed"
    rng = random.Random(16)
    n_kills, saw_missing_target, t0 = 0, 0, time.perf_counter()
    env = dict(os.environ)
    for k in range(20):
        mode = "exchange" if k % 2 == 0 else "fallback"
        p = subprocess.Popen([sys.executable, "-c", _SAVER, str(target), mode], stdout=subprocess.PIPE, text=True,
                             env=env)
        try:
            assert p.stdout.readline().strip() == "first"
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            p.stdout.close()
        n_kills += 1
        saw_missing_target += not target.exists()
        m = read_manifest(target, FMT, 1, verify=True)  # restores an interrupted fallback swap
        assert set(m["files"]) == {"part0.bin", "part1.bin", "part2.bin"}
        with atomic_dir(target, FMT, 1, {"i": -1}) as d:
            (d / "part0.bin").write_bytes(b"x")
        assert _leftovers(target) == [], _leftovers(target)
        read_manifest(target, FMT, 1)
    assert n_kills == 20
    assert time.perf_counter() - t0 < 60
    print(f"kill -9: {n_kills} kills, target missing after {saw_missing_target} (restored), "
          f"{time.perf_counter() - t0:.1f} s")
