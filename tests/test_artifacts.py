"""Crafted saved models (issue 16 rows 8-10): each damage is resealed (every size, SHA-256 and
manifest digest rewritten to match) so that only the deeper checks can refuse it: the meta
schemas of the engine, the model and the recommender, and the shape / range checks between
the parts. Every case must be refused with CorruptArtifactError naming what is wrong, and a
load in a subprocess must exit with that error, never with a signal."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctxrec._io import manifest_digest, sha256_file
from ctxrec.errors import CorruptArtifactError
from ctxrec.recommender import Recommender

from _synthetic_data import save_planted_model


def reseal(root: Path) -> None:
    """Rewrite the size and SHA-256 of every listed file and the digest of every manifest
    under ``root``, innermost first (an outer manifest lists the inner ones)."""
    mans = sorted(root.rglob("manifest.json"), key=lambda p: -len(p.parts))
    for mp in mans:
        m = json.loads(mp.read_text())
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
            continue
        for rel, info in m["files"].items():
            p = mp.parent / rel
            if p.is_file() and isinstance(info, dict):
                info["bytes"], info["sha256"] = p.stat().st_size, sha256_file(p)
        if "digest" in m:
            m["digest"] = manifest_digest(m)
        mp.write_text(json.dumps(m))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return save_planted_model(tmp_path_factory.mktemp("art") / "m", n_users=20, n_items=40, per_user=8, epochs=1)


def _edit_meta(rel: str, fn):
    def go(d: Path) -> None:
        mp = d / rel / "manifest.json"
        m = json.loads(mp.read_text())
        fn(m["meta"])
        mp.write_text(json.dumps(m))
    return go


def _npy(rel: str, fn):
    def go(d: Path) -> None:
        a = np.load(d / rel, allow_pickle=False)
        np.save(d / rel, fn(a), allow_pickle=False)
    return go


def _set(key_path: str, value):
    def fn(meta: dict) -> None:
        *head, last = key_path.split(".")
        node = meta
        for k in head:
            node = node[k]
        node[last] = value
    return fn


CASES = {
    # engine meta (schema): an out-of-range parameter, an unknown one, a wrong type, a negative count
    "engine ef=0": (_edit_meta("engine", _set("params.ef", 0)), "params.ef"),
    "engine n_candidates=-1": (_edit_meta("engine", _set("params.n_candidates", -1)), "n_candidates"),
    "engine unknown param": (_edit_meta("engine", _set("params.turbo", True)), "turbo"),
    "engine text_weight='x'": (_edit_meta("engine", _set("text_weight", "x")), "text_weight"),
    "engine n_rows=-5": (_edit_meta("engine", _set("n_rows", -5)), "n_rows"),
    "engine no dim": (_edit_meta("engine", lambda m: m.pop("dim")), "dim"),
    "engine filters not lists": (_edit_meta("engine", lambda m: m.update(
        filters={k: "x" for k in m["filters"]} or {"f": "x"})), "filters"),
    # model meta
    "model unknown param": (_edit_meta("model", _set("params.warp_speed", 9)), "warp_speed"),
    "model loss='hinge'": (_edit_meta("model", _set("params.loss", "hinge")), "loss"),
    "model layout n_users as text": (_edit_meta("model", _set("layout.n_users", "20")), "layout.n_users"),
    "model layout n_users one more": (_edit_meta("model", lambda m: m["layout"].update(n_users=m["layout"]["n_users"] + 1)),
                                      "V.npy"),
    "model layout without text_dims": (_edit_meta("model", lambda m: m["layout"].pop("text_dims")), "text_dims"),
    "model layout user_history flipped": (_edit_meta("model", lambda m: m["layout"].update(
        user_history=not m["layout"]["user_history"])), "user_history"),
    "model layout cardinality 0": (_edit_meta("model", lambda m: m["layout"].update(context_cardinalities=[0])),
                                   "context_cardinalities"),
    "model scalars unknown key": (_edit_meta("model", _set("scalars.extra_", 1)), "extra_"),
    # recommender meta
    "recommender unknown param": (_edit_meta(".", _set("params.secret", 1)), "secret"),
    "recommender has_encoder=1": (_edit_meta(".", _set("has_encoder", 1)), "has_encoder"),
    "recommender fold_in_history=-1": (_edit_meta(".", _set("params.fold_in_history", -1)), "fold_in_history"),
    # arrays against each other
    "model w.npy 5 rows short": (_npy("model/w.npy", lambda a: a[:-5]), "w.npy"),
    "model V.npy float64": (_npy("model/V.npy", lambda a: a.astype(np.float64)), "V.npy"),
    "user_ids.npy short": (_npy("user_ids.npy", lambda a: a[:-1]), "user_ids"),
    "seen_indices out of range": (_npy("seen_indices.npy", lambda a: a + 10_000), "seen_indices"),
    "engine item_vecs short": (_npy("engine/item_vecs.npy", lambda a: a[:-1]), "item_vecs"),
    "engine row_slot out of range": (_npy("engine/row_slot.npy", lambda a: a + 10_000), "row_slot"),
    "engine M=1": (_edit_meta("engine", _set("params.M", 1)), "params.M"),
    # unreadable or hostile files
    "user_ids.npy a pickle": (lambda d: np.save(d / "user_ids.npy", np.array([{"a": 1}], dtype=object),
                                                allow_pickle=True), "pickle"),
    "engine item_ids.npy a pickle": (lambda d: np.save(d / "engine" / "item_ids.npy", np.array([None], object),
                                                       allow_pickle=True), "pickle"),
    "seen_indptr.npy float": (_npy("seen_indptr.npy", lambda a: a.astype(np.float64)), "seen_indptr"),
    "seen_indices.npy truncated": (lambda d: _truncate(d / "seen_indices.npy"), "seen_indices.npy"),
    "model w.npy header of 2^40 rows": (lambda d: _huge_header(d / "model" / "w.npy"), "header"),
    "model V.npy NaN": (_npy("model/V.npy", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a)
                             .astype(a.dtype)), "NaN"),
    "engine item_vecs NaN": (_npy("engine/item_vecs.npy", lambda a: np.full_like(a, np.nan)), "NaN"),
    "items.parquet garbage": (lambda d: (d / "items.parquet").write_bytes(b"not parquet"), "items.parquet"),
    "context.json garbage": (lambda d: (d / "context.json").write_text("{nope"), "context.json"),
    "context.json a list": (lambda d: (d / "context.json").write_text("[1, 2]"), "context.json"),
    "item_attr_values.json garbage": (lambda d: (d / "item_attr_values.json").write_text("{x"), "item_attr_values"),
}


def _truncate(p: Path) -> None:
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 16])


def _huge_header(p: Path) -> None:
    """A valid .npy header that claims 2^40 float32 rows over the file's few bytes."""
    a = np.load(p)
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": a.dtype.str, "fortran_order": False, "shape": (1 << 40,)})
        f.write(a.tobytes())


@pytest.mark.parametrize("name", list(CASES))
def test_crafted_artifact_refused(saved: Path, tmp_path: Path, name: str) -> None:
    damage, needle = CASES[name]
    d = tmp_path / "m"
    shutil.copytree(saved, d)
    damage(d)
    reseal(d)
    with pytest.raises(CorruptArtifactError, match=needle.replace(".", r"\.")):
        Recommender.load(d, event_log=None)


def test_resealed_copy_still_loads(saved: Path, tmp_path: Path) -> None:
    """The reseal itself breaks nothing: an undamaged resealed copy loads and answers."""
    d = tmp_path / "m"
    shutil.copytree(saved, d)
    reseal(d)
    rec = Recommender.load(d, event_log=None)
    assert len(rec.recommend(rec.user_ids_[0], {"timestamp": "2024-01-01T10:00"}, k=3).item_ids) == 3


def test_crafted_hnsw_header_refused_in_a_subprocess(saved: Path, tmp_path: Path) -> None:
    """Row 8: element count, size per element, max level and entry point of hnsw.bin rewritten,
    checksums resealed: each load exits 1 with CorruptArtifactError, none by a signal."""
    # hnswlib's header: offsetLevel0 (8), max_elements (8), cur_element_count (8),
    # size_data_per_element (8), label_offset (8), offsetData (8), maxlevel (4), enterpoint (4)
    edits = {"max_elements": (8, 8, 1 << 40), "cur_element_count": (16, 8, 1 << 40), "size_data_per_element": (24, 8, 1 << 33),
             "maxlevel": (48, 4, 1 << 30), "enterpoint": (52, 4, 1 << 30), "truncated": None}
    code = ("import sys\nfrom ctxrec.recommender import Recommender\nfrom ctxrec.errors import CorruptArtifactError\n"
            "try:\n    Recommender.load(sys.argv[1], event_log=None)\nexcept CorruptArtifactError as e:\n"
            "    print('REFUSED', e); sys.exit(1)\nprint('LOADED')\n")
    for name, edit in edits.items():
        d = tmp_path / name
        shutil.copytree(saved, d)
        hn = d / "engine" / "hnsw.bin"
        raw = bytearray(hn.read_bytes())
        if edit is None:
            raw = raw[: len(raw) // 2]
        else:
            off, size, value = edit
            raw[off:off + size] = value.to_bytes(size, "little")
        hn.write_bytes(bytes(raw))
        reseal(d)
        p = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and "REFUSED" in p.stdout and "hnsw.bin" in p.stdout, (name, p.returncode, p.stdout[-500:], p.stderr[-1500:])
