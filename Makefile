# ctxrec — developer entry points. Each target installs what it needs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
PIP    := $(BIN)/pip --disable-pip-version-check -q

# Real datasets live outside the project (never committed); point loaders at them.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export CTXREC_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: all test demo bench bench-quick install clean

all: test

# Build tools first, then the package (editable, C++ core compiled by scikit-build-core).
$(VENV)/.installed: pyproject.toml CMakeLists.txt $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "scikit-build-core>=0.10" "pybind11>=2.12" ninja cmake numpy setuptools wheel
	$(PIP) install --no-build-isolation -e ".[dev,serve,distributed]"
	touch $@

# Benchmark peers (faiss, implicit, cornac, ...) only for the benchmark targets.
$(VENV)/.bench: $(VENV)/.installed
	$(PIP) install --no-build-isolation -e ".[dev,serve,distributed,bench]"
	$(PY) benchmarks/install_lightfm.py || echo "LightFM not installed: bench_quality skips that peer"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed models
	$(PY) -m pytest -q tests

# The text encoder's ONNX artifacts (git-ignored): exported when missing or when the recipe
# changed. Installs the `export` extra's packages (torch==2.13.0 CPU build from local disk).
# TextEncoder.load() finds this export when ctxrec runs from the checkout (ctxrec/encoder/_paths.py);
# an installed package uses the user cache (~/.cache/ctxrec/encoders/..., where `ctxrec export` writes).
ENCODER_DIR := models/build/all-MiniLM-L6-v2
.PHONY: models
models: $(ENCODER_DIR)/manifest.json

$(ENCODER_DIR)/manifest.json: $(VENV)/.installed models/recipe.json python/ctxrec/encoder/export.py python/ctxrec/encoder/refset.py
	$(PIP) install $$($(PY) -m ctxrec.encoder.export --requirements)
	$(PY) -m ctxrec.encoder.export --out $(ENCODER_DIR) --if-missing
	touch $@

demo: $(VENV)/.installed models
	$(PY) -m ctxrec.demo

bench: $(VENV)/.bench models
	$(PY) benchmarks/run.py

bench-quick: $(VENV)/.bench models
	$(PY) benchmarks/run.py --quick

# ContextFM vs peers (MovieLens 100K, cold start, leave-last-out, Frappe) -> benchmarks/results/quality.*
.PHONY: bench-quality
bench-quality: $(VENV)/.bench models
	$(PY) benchmarks/bench_quality.py $(ARGS)

clean:
	rm -rf build $(VENV) .pytest_cache
