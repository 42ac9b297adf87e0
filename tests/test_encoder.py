"""TextEncoder: quality against the PyTorch reference, batching, caches, bad input, providers.

The export (``make models``) writes ``reference.npz``: texts embedded by the original
PyTorch model. These tests compare the ONNX variants with it and need no PyTorch.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ctxrec._io import CorruptArtifactError
from ctxrec.encoder import TextEncoder, available_providers
from ctxrec.encoder._paths import default_model_dir

MODEL_DIR = default_model_dir()
pytestmark = pytest.mark.skipif(not (MODEL_DIR / "manifest.json").is_file(),
                                reason=f"no encoder export at {MODEL_DIR}: run `make models`")


@pytest.fixture(scope="module")
def ref():
    return np.load(MODEL_DIR / "reference.npz")


@pytest.fixture(scope="module")
def int8():
    return TextEncoder.load(MODEL_DIR, provider="cpu", variant="int8", lru_size=0)


@pytest.fixture(scope="module")
def fp32():
    return TextEncoder.load(MODEL_DIR, provider="cpu", variant="fp32", lru_size=0)


@pytest.fixture(scope="module")
def int8_emb(int8, ref):
    return int8.encode(list(ref["corpus"])), int8.encode(list(ref["queries"]))


def _topk(q: np.ndarray, c: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-(q @ c.T), axis=1, kind="stable")[:, :k]


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


# ---------------------------------------------------------------- quality
def test_reference_set_shape(ref):
    assert ref["corpus"].shape == (2000,) and ref["queries"].shape == (200,)
    assert ref["corpus_emb"].shape == (2000, 384) and ref["query_emb"].shape == (200, 384)
    np.testing.assert_allclose(np.linalg.norm(ref["corpus_emb"], axis=1), 1.0, atol=1e-5)


def test_fp32_matches_pytorch(fp32, ref):
    texts = list(ref["corpus"][:300]) + list(ref["queries"])
    emb = fp32.encode(texts)
    want = np.concatenate([ref["corpus_emb"][:300], ref["query_emb"]])
    cos = (emb * want).sum(1)
    assert cos.min() >= 0.9999, f"fp32 ONNX vs PyTorch: min cosine {cos.min():.6f}"


def test_int8_cosine_to_pytorch(int8_emb, ref):
    c, q = int8_emb
    cos = np.concatenate([(c * ref["corpus_emb"]).sum(1), (q * ref["query_emb"]).sum(1)])
    assert cos.mean() >= 0.99, f"int8 mean cosine {cos.mean():.5f} < 0.99"
    assert cos.min() >= 0.97, f"int8 min cosine {cos.min():.5f} < 0.97"


@pytest.fixture(scope="module")
def int8_overlap(int8_emb, ref):
    c, q = int8_emb
    return _overlap(_topk(q, c), _topk(ref["query_emb"], ref["corpus_emb"]))


def test_int8_retrieval_overlap(int8_overlap):
    """Issue #3 target: each query's top-10 in the 2,000-text corpus agrees with PyTorch's on >= 90 %."""
    assert int8_overlap >= 0.9, f"int8 top-10 overlap with PyTorch {int8_overlap:.3f} < 0.9"


def test_int8_against_shared_sentence_transformers_ref(int8):
    """Independent check against sentence-transformers' own embeddings (shared data).

    That reference was made with max_seq_length 128, so only texts that fit in 128
    tokens are compared (truncation would differ otherwise)."""
    d = os.environ.get("CTXREC_DATA_DIR")
    p = Path(d) / "encoder-ref" / "encoder_ref.npz" if d else None
    if p is None or not p.is_file():
        pytest.skip("CTXREC_DATA_DIR/encoder-ref/encoder_ref.npz not available (set CTXREC_DATA_DIR)")
    z = np.load(p)
    texts = [str(t) for t in z["texts"]]
    keep = np.array([n <= 128 for n in int8.tokens(texts)])
    assert keep.sum() >= 400
    emb = int8.encode([t for t, k in zip(texts, keep) if k])
    cos = (emb * z["emb"][keep]).sum(1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, (cos.mean(), cos.min())


# ---------------------------------------------------------------- behaviour
def test_shape_dtype_norm_determinism(int8, ref):
    texts = list(ref["corpus"][:40]) + list(ref["queries"][:40])
    a = int8.encode(texts, batch_size=8)
    b = int8.encode(texts, batch_size=8)
    assert a.shape == (80, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a, b), "encode is not deterministic"


def _bucketing_check(enc, ref, min_cos: float) -> None:
    rng = np.random.default_rng(0)
    texts = list(ref["corpus"][:30]) + list(ref["queries"][:30])
    perm = rng.permutation(len(texts))
    shuffled = [texts[i] for i in perm]
    batched = enc.encode(shuffled, batch_size=16)
    single = np.stack([enc.encode([t], batch_size=1)[0] for t in shuffled])
    cos = (batched * single).sum(1)
    assert cos.min() >= min_cos, f"row {int(cos.argmin())}: cosine {cos.min():.5f} to its own single encoding"
    # and the rows really are in input order: each matches its own PyTorch reference
    want = np.concatenate([ref["corpus_emb"][:30], ref["query_emb"][:30]])[perm]
    assert ((batched * want).sum(1) > 0.97).all()


def test_length_bucketing_keeps_input_order(fp32, ref):
    _bucketing_check(fp32, ref, 0.9999)


def test_int8_batched_vs_single(ref):
    """The QKV projection's int8 activation scale is one per batch tensor, so a text's int8
    vector depends slightly on its batch neighbours (measured: cosine >= 0.996; the other
    MatMuls scale per token). Whole batches (no token budget) are the worst case."""
    whole = TextEncoder.load(MODEL_DIR, provider="cpu", variant="int8", lru_size=0, verify=False,
                             max_batch_tokens=None)
    assert whole.max_batch_tokens is None
    _bucketing_check(whole, ref, 0.99)


def test_token_budget_batches():
    """Runs cover the sorted texts in order, hold <= batch_size texts and <= max_tokens padded
    tokens; a text longer than the budget runs alone."""
    from ctxrec.encoder import _batches

    rng = np.random.default_rng(1)
    lens = np.sort(rng.integers(2, 300, size=500))
    for bs, budget in ((32, 256), (8, None), (1, 64), (500, 1000)):
        runs = _batches(lens, bs, budget)
        assert runs[0][0] == 0 and runs[-1][1] == len(lens)
        assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
        for s, e in runs:
            assert 1 <= e - s <= bs
            if budget is not None and e - s > 1:
                assert (e - s) * lens[e - 1] <= budget
            if budget is not None and e < len(lens) and e - s < bs:  # cut by the budget, not earlier
                assert (e - s + 1) * lens[e] > budget
    assert _batches(np.array([], dtype=np.int64), 4, 10) == []
    assert _batches(np.array([5, 400]), 4, 256) == [(0, 1), (1, 2)]


def test_token_budget_same_vectors(int8, ref):
    """The CPU default cuts batch_size=32 into runs of <= 256 tokens: same rows, same order,
    same vectors up to int8 batch dependence."""
    assert int8.max_batch_tokens == 256
    texts = list(ref["corpus"][:64]) + list(ref["queries"][:64])
    whole = TextEncoder.load(MODEL_DIR, provider="cpu", variant="int8", lru_size=0, verify=False,
                             max_batch_tokens=None)
    a, b = int8.encode(texts, batch_size=32), whole.encode(texts, batch_size=32)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.99, cos.min()
    with pytest.raises(ValueError, match="max_batch_tokens = 0"):
        TextEncoder.load(MODEL_DIR, provider="cpu", max_batch_tokens=0, verify=False)
    with pytest.raises(ValueError, match="max_batch_tokens = 'big'"):
        TextEncoder.load(MODEL_DIR, provider="cpu", max_batch_tokens="big", verify=False)


def test_batches_side_by_side_match_one_thread(ref):
    """With 2 threads, batches run side by side on one-thread sessions: same rows, same order."""
    one = TextEncoder.load(MODEL_DIR, provider="cpu", variant="int8", threads=1, lru_size=0, verify=False)
    two = TextEncoder.load(MODEL_DIR, provider="cpu", variant="int8", threads=2, lru_size=0, verify=False)
    texts = list(ref["corpus"][:40]) + list(ref["queries"][:40])
    a = one.encode(texts, batch_size=8)
    b = two.encode(texts, batch_size=8)
    assert two.threads == 2 and one.threads == 1
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_empty_inputs(int8):
    assert int8.encode([]).shape == (0, 384)
    e = int8.encode(["", "a tent"])
    assert np.isfinite(e).all() and abs(float(np.linalg.norm(e[0])) - 1) < 1e-5


def test_bad_inputs(int8):
    with pytest.raises(ValueError, match=r"texts\[1\] is None"):
        int8.encode(["ok", None])
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        int8.encode([3])
    with pytest.raises(TypeError, match="single str"):
        int8.encode("a lone string")
    with pytest.raises(ValueError, match="batch_size"):
        int8.encode(["x"], batch_size=0)
    with pytest.raises(TypeError):
        int8.encode_query(None)


def test_long_text_truncated_to_max_length(int8):
    long = " ".join(["wonderful"] * 2000)
    assert int8.tokens([long]) == [int8.max_length]
    v = int8.encode([long, "short"])
    assert int8.last_truncated == 1
    assert np.isfinite(v).all()


# ---------------------------------------------------------------- caches
def test_disk_cache_hit_miss_and_reuse_across_instances(tmp_path, ref, monkeypatch):
    texts = list(ref["queries"][:20])
    a = TextEncoder.load(MODEL_DIR, provider="cpu", variant="int8", cache_dir=tmp_path, lru_size=0)
    first = a.encode(texts)
    assert a.cache_info()["disk_rows"] == 20
    b = TextEncoder.load(MODEL_DIR, provider="cpu", variant="int8", cache_dir=tmp_path, lru_size=0)
    calls = []
    orig = b._run
    monkeypatch.setattr(b, "_run", lambda t, *a, **k: (calls.append(list(t)), orig(t, *a, **k))[1])
    again = b.encode(texts + ["a brand new text"])
    assert calls == [["a brand new text"]], "cached texts were re-encoded"
    assert np.array_equal(again[:20], first)
    assert b.cache_info()["disk_rows"] == 21


def test_disk_cache_invalidated_when_model_changes(tmp_path, ref, monkeypatch):
    texts = list(ref["queries"][:5])
    TextEncoder.load(MODEL_DIR, provider="cpu", variant="int8", cache_dir=tmp_path, lru_size=0).encode(texts)
    other = TextEncoder.load(MODEL_DIR, provider="cpu", variant="fp32", cache_dir=tmp_path, lru_size=0)
    assert other.model_sha256 != TextEncoder.load(MODEL_DIR, provider="cpu", variant="int8").model_sha256
    calls = []
    orig = other._run
    monkeypatch.setattr(other, "_run", lambda t, *a, **k: (calls.append(len(t)), orig(t, *a, **k))[1])
    other.encode(texts)
    assert calls == [5], "a different model was served vectors cached for another model"


def test_lru_for_repeated_queries(ref):
    enc = TextEncoder.load(MODEL_DIR, provider="cpu", variant="int8", lru_size=4)
    q = str(ref["queries"][0])
    v1 = enc.encode_query(q)
    v2 = enc.encode_query(q)
    assert enc.cache_info()["lru_hits"] == 1
    assert np.array_equal(v1, v2) and v2.shape == (384,)
    np.testing.assert_allclose(enc.encode([q])[0], v1)
    for t in ref["queries"][1:10]:
        enc.encode_query(str(t))
    assert enc.cache_info()["lru_size"] == 4


# ---------------------------------------------------------------- artifacts & providers
def _partial_copy(dst: Path) -> Path:
    man = json.loads((MODEL_DIR / "manifest.json").read_text())
    dst.mkdir()
    for rel in ("manifest.json", "tokenizer.json", "config.json", man["meta"]["variants"]["int8"]["file"]):
        shutil.copy(MODEL_DIR / rel, dst / rel)
    return dst


def test_load_verifies_checksums(tmp_path):
    d = _partial_copy(tmp_path / "enc")
    TextEncoder.load(d, provider="cpu")  # intact copy loads
    p = d / "tokenizer.json"
    data = bytearray(p.read_bytes())
    data[100] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="tokenizer.json"):
        TextEncoder.load(d, provider="cpu")


def test_missing_export_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make models"):
        TextEncoder.load(tmp_path / "nothing")


def test_provider_auto_is_visible(int8):
    enc = TextEncoder.load(MODEL_DIR)
    if "CUDAExecutionProvider" in available_providers() and enc.provider == "CUDAExecutionProvider":
        assert enc.variant == "fp16"
    else:
        assert enc.provider == "CPUExecutionProvider" and enc.variant == "int8"
    assert int8.provider == "CPUExecutionProvider"
    assert "CPUExecutionProvider" in repr(int8)


def test_cuda_requested_without_cuda_raises():
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("onnxruntime-gpu is installed here; nothing to refuse")
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        TextEncoder.load(MODEL_DIR, provider="cuda")
    with pytest.raises(ValueError, match="provider"):
        TextEncoder.load(MODEL_DIR, provider="gpu0")
    with pytest.raises(ValueError, match="variant"):
        TextEncoder.load(MODEL_DIR, provider="cpu", variant="int4")


@pytest.mark.skipif("CUDAExecutionProvider" not in available_providers(),
                    reason="needs onnxruntime-gpu and a CUDA GPU (none in this environment)")
def test_cuda_fp16_quality(ref):
    enc = TextEncoder.load(MODEL_DIR, provider="cuda")
    assert enc.provider == "CUDAExecutionProvider" and enc.variant == "fp16"
    c = enc.encode(list(ref["corpus"][:500]))
    cos = (c * ref["corpus_emb"][:500]).sum(1)
    assert cos.mean() >= 0.999 and cos.min() >= 0.99
