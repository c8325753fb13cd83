# Two entry points for a new machine: `make demo` and `make test`.
# Both create .venv and install on first use; later runs reuse it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BENCH_VENV := .venv-bench

.PHONY: demo test install clean bench bench-slices bench-generate

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

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs
