"""Schemathesis over the real server's /openapi.json (issue 16): shared by
tests/test_fuzz_service.py and benchmarks/bench_hardening.py (a helper, not a test module).

``fuzz_run(base, max_examples, hang_s)`` generates ``max_examples`` cases per operation and
generation mode (positive and negative) and sends each to the server at ``base``; it
returns counts, a status histogram and the 5xx / non-JSON-error / hang cases."""
from __future__ import annotations

import json
import os
import time
from collections import Counter

TOKEN = "fuzz-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
HANG_S = 30.0
FUZZ_EXAMPLES = int(os.environ.get("CTXREC_FUZZ_EXAMPLES", "30"))


def fuzz_run(base: str, max_examples: int = FUZZ_EXAMPLES, hang_s: float = HANG_S,
             headers: dict | None = None) -> dict:
    """Every operation of the served schema, ``max_examples`` generated cases each (positive and
    negative modes); returns counts, a status histogram, the 5xx/non-JSON-error/hang cases.

    ``headers`` (default :data:`AUTH`, the admin token the fuzzed server is started with) go
    with every case. ``out["per_operation"]`` counts the requests sent per operation."""
    import httpx
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode
    headers = AUTH if headers is None else headers
    schema = schemathesis.openapi.from_dict(httpx.get(f"{base}/openapi.json", timeout=hang_s).json())
    out = {"requests": 0, "status": Counter(), "5xx": [], "non_json_errors": [], "hangs": [], "operations": [],
           "unsatisfiable": [], "per_operation": Counter()}
    for res in schema.get_all_operations():
        op = res.ok()
        out["operations"].append(op.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def one(case):
                t0 = time.perf_counter()
                try:
                    r = case.call(base_url=base, headers=headers, timeout=hang_s)
                except Exception as e:  # a timeout or a dropped connection: a hang or a crash
                    out["hangs"].append(f"{op.label} {type(e).__name__}: {e}"[:300])
                    return
                out["requests"] += 1
                out["per_operation"][op.label] += 1
                out["status"][r.status_code] += 1
                what = f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"[:400]
                if r.status_code >= 500:
                    out["5xx"].append(f"{what} -> {r.status_code} {r.content[:200]!r}")
                elif r.status_code >= 400:
                    try:
                        json.loads(r.content)
                    except ValueError:
                        out["non_json_errors"].append(f"{what} -> {r.status_code} {r.content[:200]!r}")
                if time.perf_counter() - t0 > hang_s:
                    out["hangs"].append(what)
            try:
                one()
            except Unsatisfiable:  # negative mode of an operation with nothing to violate (GET /healthz)
                out["unsatisfiable"].append(f"{op.label} {mode.value}")
    out["status"] = {str(k): v for k, v in sorted(out["status"].items())}
    out["per_operation"] = dict(out["per_operation"])
    return out
