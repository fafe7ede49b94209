# Two commands do everything: `make demo` (the whole story on MovieLens-100K) and `make test`.
# Both create or refresh .venv first. torch==2.13.0 goes in first and constraints.txt pins it for
# every later install, so pip never pulls a multi-GB CUDA build.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
PIP := $(BIN)/python -m pip --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: venv test test-slow demo bench codegen native native-aarch64 clean help

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create or refresh .venv (dev install: device, cloud, train, sim, test tools)

test: venv  ## run the test suite (what CI runs); builds the native runner first where the tools exist
	@$(MAKE) --no-print-directory native || echo "make native failed: tests/device/test_native.py says why (skip: a missing tool; fail: a broken build)"
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

NATIVE_BUILD := build/native
native: venv  ## build the native ExecuTorch runner (device/native) into build/native: cmake, g++, ninja-build, nlohmann-json3-dev, libssl-dev
	cmake -S device/native -B $(NATIVE_BUILD) $(if $(shell command -v ninja),-G Ninja,) -DLSC4REC_PYTHON=$(abspath $(BIN)/python) --log-level=WARNING
	cmake --build $(NATIVE_BUILD)

native-aarch64:  ## cross-build the native runner for aarch64 into build/native-aarch64 (device/native/cross); CHECK=1: qemu parity
	device/native/cross/build-aarch64.sh $(if $(CHECK),--check,)

test-slow: venv  ## real-data tests (ML-100K, longer training, a real local Ray: installs the [ray] extra)
	$(PIP) install -q -c constraints.txt -e '.[dev,ray]'
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

demo: venv  ## prepare ML-100K, train, export, serve, replay all users over gRPC, write the report
	$(BIN)/python -m simulator.demo --out runs/demo

bench: venv  ## benchmarks: one JSON line per figure
	$(BIN)/python -m benchmarks.run

codegen: venv  ## regenerate the gRPC stubs under shared/rpc from proto/
	$(BIN)/python -m shared.codegen

clean:  ## remove the venv and generated runs (keeps data/)
	rm -rf $(VENV) runs .pytest_cache
