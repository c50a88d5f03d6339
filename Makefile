# distill-study: `make test` and `make study` work from a fresh clone (they create .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test tensors are tiny: one torch thread is faster than two fighting over a busy machine.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

.PHONY: install test test-all test-slow lint study reproduce bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)  ## the default suite (what CI runs first)
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)  ## the slow tests only
	$(PYTEST) -m slow || [ $$? -eq 5 ]  # 5: no slow tests selected

test-all: $(STAMP)  ## everything
	$(PYTEST)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

study: $(STAMP)  ## the quickstart study: KD alpha x temperature on MNIST-5k
	$(BIN)/distill-study run quickstart

reproduce: $(STAMP)  ## every seed paper's claims at laptop scale: reproduction.md per paper (~1 h on 2 cores)
	$(BIN)/distill-study reproduce all

bench: $(STAMP)  ## every benchmark, ~15-20 min on 2 cores (BENCH_QUICK=1: a sanity run of a few minutes)
	$(BIN)/python -m benchmarks $(if $(filter 1,$(BENCH_QUICK)),--quick)

clean:
	rm -rf $(VENV) runs .pytest_cache
