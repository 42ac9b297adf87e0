"""Benchmark harness: runs benchmark modules and writes JSON + Markdown to benchmarks/results/.

    python benchmarks/run.py [--quick] [--only engine ...] [-- extra args for the module]

``make bench`` runs BENCHES; EXTRA (``hardening``) only when named with ``--only``.
``--report-only`` rebuilds the Markdown (and a benchmark's plots) from its last JSON.

Each module ``benchmarks/bench_<name>.py`` exposes ``main(argv) -> dict`` (prints as it
goes) and ``markdown(result) -> str``. Results are written to
``benchmarks/results/<name>[_quick].{json,md}`` together with the machine they ran on.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHES = ["engine", "feedback", "requests"]  # what `make bench` runs (requests trains a model: ~1 min)
#: run only when named (``--only hardening``, ``--only training``): several minutes each
EXTRA = ["hardening", "training", "beyond", "explore"]


def machine() -> dict:
    """Date, CPU model and the SIMD extensions that decide int8/fp32 kernel speed, cores, versions."""
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    import numpy
    import ctxrec
    return {"date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu, "simd": simd,
            "cores": os.cpu_count(), "python": platform.python_version(), "numpy": numpy.__version__,
            "ctxrec": ctxrec.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description="ctxrec benchmark harness")
    ap.add_argument("--quick", action="store_true", help="small sizes, finishes in about a minute per benchmark")
    ap.add_argument("--only", nargs="*", default=BENCHES, choices=BENCHES + EXTRA)
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild the Markdown (and plots) from the JSON of the last run, running nothing")
    args, extra = ap.parse_known_args()
    sys.path.insert(0, str(HERE))
    RESULTS.mkdir(exist_ok=True)
    for name in args.only:
        mod = importlib.import_module(f"bench_{name}")
        stem = RESULTS / f"{name}{'_quick' if args.quick else ''}"
        if args.report_only:
            result = json.loads(stem.with_suffix(".json").read_text())
            command = " ".join(["--only", name, *result["argv"]])
        else:
            argv = (["--quick"] if args.quick else []) + [a for a in extra if a != "--"]
            result = {"machine": machine(), "argv": argv, **mod.main(argv)}
            stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
            command = " ".join(sys.argv[1:])
        md = f"# {name} benchmark\n\n{result['machine']['cpu']}, {result['machine']['cores']} cores, " \
             f"{result['machine']['date_utc']}, `python benchmarks/run.py {command}`\n\n"
        stem.with_suffix(".md").write_text(md + mod.markdown(result) + "\n")
        print(f"wrote {stem}.md" if args.report_only else f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
