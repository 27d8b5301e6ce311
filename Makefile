# emtools: `make install` then `make test` is the whole set-up (see README.md).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch 2.13.0 lies on this workplace's disk; elsewhere pick your CUDA build,
# e.g. `make install TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'`.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
BIN := $(VENV)/bin

.PHONY: help install test bench man demo clean clean-demo clean-bench clean-venv

help:
	@echo "make install   create $(VENV); install emtools with its test, plot, peers and view extras"
	@echo "make test      run the test suite (real data in ../shared/data is used when present)"
	@echo "make bench     run the benchmarks in benchmarks/ (speed and memory against peers)"
	@echo "make man       regenerate man/ from the tools' --help"
	@echo "make demo      the whole job on synthetic data, in demo/synthetic: fine-tune the shipped model,"
	@echo "               predict, segment and score chunk by chunk; ends with report.txt (examples/Makefile;"
	@echo "               DATA=fib25, gala, isbi2012 or vnc: the same on ../shared/data; -j N: chunks in parallel)"
	@echo "make clean     remove demo/, bench-out/ and build leftovers (clean-venv: the venv)"

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so the range in setup.cfg does not pull a multi-GB CUDA build.
	$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,plot,peers,view]'
	# compile the segmentation kernels ahead of time: no numba start-up in em-watershed/-agglomerate/-eval
	$(BIN)/python -m emtools.native build
	# byte-compile emtools now: with PYTHONDONTWRITEBYTECODE set, every tool start would compile
	# its modules again (~50 ms per process, twice that in a two-tool pipeline)
	$(BIN)/python -m compileall -q emtools
	@echo "installed: source $(VENV)/bin/activate (or put $(abspath $(BIN)) on PATH)"

test:
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench:
	mkdir -p bench-out
	# each benchmark measures us and the peers in one run; what it prints also lands in bench-out/NAME.log
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b --out bench-out | tee bench-out/$$(basename $$b .py).log; done

man:
	$(BIN)/python -m emtools.manpages man

DATA ?= synthetic
demo:
	mkdir -p demo/$(DATA)
	PATH="$(abspath $(BIN)):$$PATH" $(MAKE) -f $(CURDIR)/examples/Makefile -C demo/$(DATA) DATA=$(DATA)

clean: clean-demo clean-bench
	rm -rf build dist *.egg-info .pytest_cache

clean-demo:
	rm -rf demo

clean-bench:
	rm -rf bench-out

clean-venv:
	rm -rf $(VENV)
