# Two entry points for a new machine: `make demo` and `make test`.
# Both create .venv and install on first use; later runs reuse it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BENCH_VENV := .venv-bench
DOMINO_VENV := .venv-domino

.PHONY: demo test install clean bench bench-slices bench-generate bench-discover

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/python -m pip install --quiet "torch>=2.4" torchvision
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vbugs audit --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_discovery.py

# on a GPU machine: make bench-generate GENERATE_ARGS="--model sd-turbo --images 256 --dtype float16"
GENERATE_ARGS ?= --images 64 --batch-size 16
bench-generate: $(STAMP)
	$(BIN)/python benchmarks/bench_generate.py $(GENERATE_ARGS)

# the slice-search baselines pin numpy<2, so they live in a venv of their own
$(BENCH_VENV)/.installed:
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet pysubgroup sliceline pandas "pyarrow<20"
	touch $@

bench-slices: $(STAMP) $(BENCH_VENV)/.installed
	$(BIN)/python benchmarks/bench_slices.py --baseline-python $(BENCH_VENV)/bin/python

# Domino's slicer, the baseline of bench_discover.py: its pins (scikit-learn 0.24) have no Python
# 3.11 wheels, so it is installed without its dependencies beside scikit-learn 1.1 (see
# benchmarks/domino_baseline.py for the two imports it is given instead)
$(DOMINO_VENV)/.installed:
	test -x $(DOMINO_VENV)/bin/python || $(PY) -m venv $(DOMINO_VENV)
	$(DOMINO_VENV)/bin/python -m pip install --quiet "setuptools<70" wheel "numpy<1.27" "scipy<1.12" "scikit-learn==1.1.3" tqdm
	$(DOMINO_VENV)/bin/python -m pip install --quiet --no-build-isolation --no-deps domino==0.1.5
	touch $@

bench-discover: $(STAMP) $(DOMINO_VENV)/.installed
	$(BIN)/python benchmarks/bench_discover.py --baseline-python $(DOMINO_VENV)/bin/python

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(DOMINO_VENV) runs
