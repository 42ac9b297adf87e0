"""ctxrec's LLM text encoder: an exported, quantized transformer run by onnxruntime.

``TextEncoder.load()`` opens an export made by :mod:`ctxrec.encoder.export` (``ctxrec
export``, or ``make models`` in a source checkout), verifies its checksums, and picks the
execution provider: CUDA with the fp16 graph when onnxruntime-gpu and a GPU are present,
else the CPU with the int8 graph. ``encode(texts)`` returns L2-normalized float32 ``[n, d]``
rows in input order. Neither PyTorch nor transformers is needed at run time.

Where the export is found (:mod:`ctxrec.encoder._paths`): an explicit path, else
``$CTXREC_ENCODER_DIR``, else the checkout's ``models/build/all-MiniLM-L6-v2`` (source
checkout only), else the user cache ``platformdirs.user_cache_dir("ctxrec")/encoders/
all-MiniLM-L6-v2`` (``~/.cache/ctxrec/...`` on Linux), where ``ctxrec export`` writes in an
installed package. Paths accept ``~``.

Example::

    enc = TextEncoder.load()                 # the default export (see above), int8 on CPU
    X = enc.encode(["a cozy mountain cabin", "spicy ramen recipe"])   # (2, 384) float32
    q = enc.encode_query("something light after a long day")         # (384,) float32, LRU-cached
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ctxrec._io import CorruptArtifactError, MetaField, read_manifest, sha256_file
from ctxrec.encoder._paths import FORMAT, FORMAT_VERSION, EncoderNotFoundError, expand, find_model_dir
from ctxrec.encoder.cache import DiskCache, LRUCache, text_key

__all__ = ["TextEncoder", "available_providers", "DiskCache", "LRUCache", "EncoderNotFoundError"]

log = logging.getLogger(__name__)

_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# padded tokens per onnxruntime run on the CPU (TextEncoder.load(max_batch_tokens="auto")); chosen by
# the max_batch_tokens sweep in benchmarks/bench_encoder.py (results/encoder.md)
CPU_BATCH_TOKENS = 256

#: What an export's ``meta`` must hold before onnxruntime and the tokenizer see its files.
META_SCHEMA = {
    "dim": MetaField(int, min=1, max=1 << 16),
    "max_length": MetaField(int, min=1, max=1 << 16),
    "variants": MetaField(dict, min=1, max=16),
}
# encode(progress=None) shows a bar for more texts than this, when logging is at INFO on a TTY
PROGRESS_MIN_TEXTS = 1000


def available_providers() -> list[str]:
    """onnxruntime's available execution providers, e.g. ``['CPUExecutionProvider']``."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


class TextEncoder:
    """Sentence encoder over an ONNX export. Build it with :meth:`load`.

    Attributes
    ----------
    threads : int
        CPU cores used (intra-op threads for one batch, side-by-side batches for many).
    provider : str
        The execution provider onnxruntime actually uses (e.g. ``"CPUExecutionProvider"``).
    variant : str
        ``"int8"``, ``"fp32"`` or ``"fp16"``.
    dim : int
        Embedding width (384 for all-MiniLM-L6-v2).
    max_length : int
        Tokens per text after truncation (longer texts are truncated to this many tokens,
        [CLS] and [SEP] included, as sentence-transformers does).
    model_sha256 : str
        The checksum of the ONNX file, part of every cache key.
    max_batch_tokens : int or None
        Most padded tokens per onnxruntime run (``None``: whole batches).

    All read-only.
    """

    def __init__(self, session, tokenizer, *, path: Path, variant: str, model_sha256: str, dim: int,
                 max_length: int, cache_dir: Path | None, lru_size: int, model_file: Path | None = None,
                 threads: int = 1, spin: bool = False, max_batch_tokens: int | None = None) -> None:
        self._sess = session
        self._tok = tokenizer
        self.path = path
        self.variant = variant
        self.model_sha256 = model_sha256
        self.dim = dim
        self.max_length = max_length
        self._inputs = [i.name for i in session.get_inputs()]
        for need in ("input_ids", "attention_mask"):
            if need not in self._inputs:
                raise CorruptArtifactError(f"{path}: ONNX graph has no input {need!r} (inputs: {self._inputs})")
        self._lru = LRUCache(lru_size)
        self._disk = DiskCache(expand(cache_dir) / model_sha256[:16], dim) if cache_dir is not None else None
        self.last_truncated = 0
        self.threads = int(threads)
        self.max_batch_tokens = max_batch_tokens
        self._spin = spin
        self._model_file = model_file
        self._serial_sess = None  # one-thread session for running batches side by side (CPU)
        self._serial_lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, provider: str = "auto", variant: str = "auto",
             threads: int | None = None, cache_dir: str | os.PathLike | None = None, lru_size: int = 10_000,
             verify: bool = True, spin: bool = False,
             max_batch_tokens: int | None | str = "auto") -> "TextEncoder":
        """Open an encoder export.

        Parameters
        ----------
        path : str or path-like, optional
            Export directory (``~`` expanded). Default: ``$CTXREC_ENCODER_DIR``, else the
            checkout's ``models/build/all-MiniLM-L6-v2`` in a source checkout, else the user
            cache (``ctxrec export`` writes there).
        provider : {"auto", "cpu", "cuda", "tensorrt"}
            ``"auto"``: CUDA when onnxruntime-gpu and a GPU are present, else CPU. An explicit
            provider that is not available raises ``RuntimeError``; it is never silently
            replaced by another.
        variant : {"auto", "int8", "fp32", "fp16"}
            ``"auto"``: fp16 on CUDA/TensorRT, int8 on CPU.
        threads : int, optional
            onnxruntime intra-op threads (default: all cores).
        cache_dir : str or path-like, optional
            Directory for the persistent embedding cache (``~`` expanded). ``None``:
            ``$CTXREC_EMBEDDING_CACHE`` when set (so every process of a deployment or a job
            encodes each text once), else no disk cache.
        lru_size : int
            Entries of the per-process cache for repeated texts (0 disables it).
        verify : bool
            Check the SHA-256 of the ONNX file and tokenizer against the manifest.
        spin : bool
            Let idle onnxruntime worker threads busy-wait between ops (lower latency on an
            idle machine; off by default because spinning threads starve other processes and
            collapse throughput when the cores are shared).
        max_batch_tokens : int, "auto" or None
            Most padded tokens (rows x longest text) per onnxruntime run; a batch of
            ``batch_size`` texts is cut into runs that fit. ``"auto"``: 256 on the CPU (runs of
            128-256 tokens keep the activations in the core's L2 cache and encode descriptions
            faster than whole batches of 32; see benchmarks/results/encoder.md), no limit on a
            GPU; ``None``: no limit.

        Returns
        -------
        TextEncoder
            The loaded encoder, its session started on the chosen provider.

        Raises
        ------
        EncoderNotFoundError
            (a ``FileNotFoundError``) No export found; the message says how to build one.
        RuntimeError
            An explicit provider that is not available.
        """
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = find_model_dir(path)
        manifest = read_manifest(path, FORMAT, FORMAT_VERSION, verify=False, meta_schema=META_SCHEMA)
        meta = manifest["meta"]
        avail = ort.get_available_providers()
        if provider not in ("auto", *_PROVIDERS):
            raise ValueError(f"provider = {provider!r}: expected 'auto', 'cpu', 'cuda' or 'tensorrt'")
        if provider == "auto":
            provider = "cuda" if "CUDAExecutionProvider" in avail and _gpu_present() else "cpu"
        ep = _PROVIDERS[provider]
        if ep not in avail:
            raise RuntimeError(
                f"provider = {provider!r} requested but onnxruntime has no {ep} (available: {avail}); "
                "install ctxrec[gpu] (onnxruntime-gpu) on a machine with a GPU, or use provider='cpu'")
        if variant == "auto":
            variant = "int8" if provider == "cpu" else "fp16"
        if variant not in meta.get("variants", {}):
            raise ValueError(f"variant = {variant!r}: this export has {sorted(meta.get('variants', {}))}")
        vinfo = meta["variants"][variant]
        vfile = vinfo.get("file") if isinstance(vinfo, dict) else None
        if not isinstance(vfile, str) or vfile not in manifest["files"]:
            raise CorruptArtifactError(f"{path}: meta['variants'][{variant!r}] names no file of the manifest "
                                       f"(got {vfile!r})", field=f"meta.variants.{variant}.file", value=vfile)
        files = [vfile, "tokenizer.json"]
        if verify:
            for rel in files:
                info = manifest["files"].get(rel)
                if info is None:
                    raise CorruptArtifactError(f"{path / rel}: not listed in the manifest")
                p = path / rel
                if not p.is_file():
                    raise CorruptArtifactError(f"{p}: file listed in the manifest is missing")
                if p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
                    raise CorruptArtifactError(f"{p}: SHA-256 does not match the manifest (altered or corrupt)")
        if max_batch_tokens == "auto":
            max_batch_tokens = CPU_BATCH_TOKENS if provider == "cpu" else None
        if max_batch_tokens is not None and (isinstance(max_batch_tokens, bool) or not isinstance(
                max_batch_tokens, (int, np.integer)) or max_batch_tokens < 1):
            raise ValueError(f"max_batch_tokens = {max_batch_tokens!r}: expected a positive int, None or 'auto'")
        intra = int(threads) if threads else (os.cpu_count() or 1)
        providers: list = [ep] if ep == "CPUExecutionProvider" else [ep, "CPUExecutionProvider"]
        sess = _session(path / vfile, providers, intra, spin)
        used = sess.get_providers()[0]
        if used != ep:
            raise RuntimeError(f"provider = {provider!r} requested but onnxruntime started {used} "
                               f"(the {ep} failed to initialize; see onnxruntime's log)")
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        if cache_dir is None and os.environ.get("CTXREC_EMBEDDING_CACHE"):
            cache_dir = os.environ["CTXREC_EMBEDDING_CACHE"]
        max_length = int(meta["max_length"])
        tok.no_padding()
        tok.enable_truncation(max_length)
        return cls(sess, tok, path=path, variant=variant, model_sha256=manifest["files"][vfile]["sha256"],
                   dim=int(meta["dim"]), max_length=max_length,
                   cache_dir=expand(cache_dir) if cache_dir is not None else None, lru_size=lru_size,
                   model_file=path / vfile, threads=intra, spin=spin,
                   max_batch_tokens=None if max_batch_tokens is None else int(max_batch_tokens))

    @property
    def provider(self) -> str:
        """The execution provider in use, e.g. ``"CPUExecutionProvider"``."""
        return self._sess.get_providers()[0]

    def __repr__(self) -> str:
        return (f"TextEncoder(path={str(self.path)!r}, variant={self.variant!r}, provider={self.provider!r}, "
                f"dim={self.dim}, max_length={self.max_length})")

    # ----------------------------------------------------------------- encoding
    def _check(self, texts) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, not a single str (use encode_query for one text)")
        out = list(texts)
        for i, t in enumerate(out):
            if t is None:
                raise ValueError(f"texts[{i}] is None; pass '' for an empty text")
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        return out

    def _run(self, texts: list[str], batch_size: int, progress) -> np.ndarray:
        """Encode without caches: length-sorted batches, rows returned in input order.

        On the CPU with ``threads`` > 1 and more than one batch, batches run side by side
        on one-thread sessions (one per core): small transformer ops scale poorly across
        cores inside one run, whole batches scale almost linearly. A single batch (a query)
        uses the multi-threaded session for the lowest latency.
        """
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        encs = [self._tok.encode(texts[0])] if n == 1 else self._tok.encode_batch(texts)
        lens = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=n)
        self.last_truncated = int(sum(1 for e in encs if e.overflowing))
        if self.last_truncated:
            log.info("%d of %d texts were longer than %d tokens and were truncated",
                     self.last_truncated, n, self.max_length)
        order = np.argsort(lens, kind="stable")
        batches = _batches(lens[order], batch_size, self.max_batch_tokens)
        batches = [order[s:e] for s, e in batches]
        bar = None
        if _show_progress(n, progress):
            try:
                from tqdm.auto import tqdm
                bar = tqdm(total=n, desc="encoding", unit="text")
            except ImportError:  # pragma: no cover
                bar = None

        def run(sess, idx: np.ndarray) -> None:
            L = int(lens[idx].max())
            ids = np.zeros((len(idx), L), dtype=np.int64)
            mask = np.zeros((len(idx), L), dtype=np.int64)
            for j, i in enumerate(idx):
                e = encs[i].ids
                ids[j, :len(e)] = e
                mask[j, :len(e)] = 1
            out[idx] = self._embed(sess, ids, mask)
            if bar is not None:
                bar.update(len(idx))

        workers = min(self.threads, len(batches))
        if workers > 1 and self._model_file is not None and self.provider == "CPUExecutionProvider":
            from concurrent.futures import ThreadPoolExecutor

            sess = self._serial_session()
            with ThreadPoolExecutor(workers, thread_name_prefix="ctxrec-encode") as pool:
                for f in [pool.submit(run, sess, idx) for idx in batches]:
                    f.result()
        else:
            for idx in batches:
                run(self._sess, idx)
        if bar is not None:
            bar.close()
        return out

    def _embed(self, sess, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One padded batch -> mean-pooled, L2-normalized float32 rows."""
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        h = sess.run(None, feed)[0]
        if h.dtype != np.float32:
            h = h.astype(np.float32)
        m = mask[:, :, None].astype(np.float32)
        v = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return v

    def _serial_session(self):
        with self._serial_lock:
            if self._serial_sess is None:
                self._serial_sess = _session(self._model_file, ["CPUExecutionProvider"], 1, self._spin)
            return self._serial_sess

    def encode(self, texts: Sequence[str] | Iterable[str], batch_size: int = 32, *, use_cache: bool = True,
               progress: bool | None = None) -> np.ndarray:
        """Embed ``texts``, L2-normalized, rows in input order.

        Texts are tokenized (WordPiece, lower-cased), truncated to ``max_length`` tokens,
        sorted by length and run in batches of ``batch_size`` padded to the longest text
        of each batch (cut further to ``max_batch_tokens`` padded tokens per run). ``''``
        is encoded as the model encodes an empty input ([CLS][SEP]).

        Deterministic: the same list gives the same bytes. With the int8 variant a text's
        vector depends slightly on the other texts in its batch (the QKV projection's
        activations share one int8 scale per batch; cosine to the same text encoded alone
        >= 0.996 on the reference set), and the caches return whichever vector was
        computed first.

        Parameters
        ----------
        texts : sequence or iterable of str [n]
            The texts.
        batch_size : int
            Texts per batch.
        use_cache : bool
            Look texts up in the process LRU and the disk cache (when the encoder has a
            ``cache_dir``) and store newly encoded ones there.
        progress : bool or None
            ``True`` shows a tqdm bar on stderr, ``False`` never; ``None`` (default) shows one
            for more than 1,000 texts to encode when the ``ctxrec`` logger is at INFO and
            stderr is a terminal (so never in tests or logs by default).

        Returns
        -------
        float32 array [n, dim]
            Unit rows in input order.

        Raises
        ------
        TypeError
            A single str instead of a sequence, or a non-string text (its position named).
        ValueError
            A ``None`` text (its position named).
        """
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size = {batch_size!r}: must be a positive int")
        texts = self._check(texts)
        if not use_cache or (self._disk is None and self._lru.maxsize == 0):
            return self._run(texts, int(batch_size), progress)
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            v = self._lru.get(t)
            if v is not None:
                out[i] = v
            else:
                todo.setdefault(t, []).append(i)
        if todo and self._disk is not None:
            uniq = list(todo)
            keys = [text_key(self.model_sha256, t) for t in uniq]
            found, rows = self._disk.get_many(keys)
            for t, f, r in zip(uniq, found, rows):
                if f:
                    for i in todo.pop(t):
                        out[i] = r
        if todo:
            uniq = list(todo)
            emb = self._run(uniq, int(batch_size), progress)
            for t, r in zip(uniq, emb):
                for i in todo[t]:
                    out[i] = r
            if self._disk is not None:
                self._disk.put_many([text_key(self.model_sha256, t) for t in uniq], emb)
            if len(uniq) <= self._lru.maxsize:
                for t, r in zip(uniq, emb):
                    self._lru.put(t, r)
        return out

    def encode_query(self, text: str) -> np.ndarray:
        """Embed one text (a read-only array).

        Repeated texts (common queries) are answered from the per-process LRU without
        running the model.

        Parameters
        ----------
        text : str

        Returns
        -------
        float32 array [dim]
            The unit embedding (read-only).
        """
        if not isinstance(text, str):
            raise TypeError(f"text is {type(text).__name__}, expected str")
        v = self._lru.get(text)
        if v is not None:
            return v
        return self._lru.put(text, self._run([text], 1, False)[0])

    def cache_info(self) -> dict[str, int]:
        """LRU hits/misses/size and the number of disk-cached rows.

        Returns
        -------
        dict[str, int]
            ``lru_hits``, ``lru_misses``, ``lru_size``, ``disk_rows``.
        """
        return {"lru_hits": self._lru.hits, "lru_misses": self._lru.misses, "lru_size": len(self._lru),
                "disk_rows": len(self._disk) if self._disk is not None else 0}

    def tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts after truncation ([CLS] and [SEP] included).

        Parameters
        ----------
        texts : sequence of str [n]

        Returns
        -------
        list of int [n]
        """
        return [len(e.ids) for e in self._tok.encode_batch(self._check(texts))]


def _show_progress(n: int, progress: bool | None) -> bool:
    """Whether ``encode`` shows a progress bar for ``n`` texts (see :meth:`TextEncoder.encode`)."""
    if progress is not None:
        return bool(progress)
    return n > PROGRESS_MIN_TEXTS and log.isEnabledFor(logging.INFO) and sys.stderr is not None \
        and sys.stderr.isatty()


def _batches(sorted_lens: np.ndarray, batch_size: int, max_tokens: int | None) -> list[tuple[int, int]]:
    """[start, end) runs over texts sorted by length (ascending): at most ``batch_size``
    texts each and, when ``max_tokens`` is set, at most ``max_tokens`` padded tokens
    (rows x the run's longest text); a text longer than ``max_tokens`` runs alone."""
    n = len(sorted_lens)
    out = []
    s = 0
    while s < n:
        e = min(s + batch_size, n)
        if max_tokens is not None:
            # sorted ascending: the run [s, e) pads to sorted_lens[e - 1]
            while e - s > 1 and (e - s) * int(sorted_lens[e - 1]) > max_tokens:
                e -= 1
        out.append((s, e))
        s = e
    return out


def _session(model: Path, providers: list, threads: int, spin: bool):
    """An onnxruntime session with the options ctxrec measured on its CPUs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = False  # shapes vary per batch
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    # On the CPU keep Add + LayerNormalization apart: onnxruntime's fused SkipLayerNormalization
    # ran ~5x slower there (see ctxrec.encoder.export); GPUs keep the fusion.
    cpu = providers[0] == "CPUExecutionProvider"
    return ort.InferenceSession(str(model), so, providers=providers,
                                disabled_optimizers=["SkipLayerNormFusion"] if cpu else None)


def _gpu_present() -> bool:
    """Best effort: a CUDA device node or nvidia-smi-visible GPU exists."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvidiactl", "/proc/driver/nvidia/version"))
