# vision-suite: `make demo` and `make test` set themselves up first (a no-op when nothing changed).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The venv is rebuilt only when the dependency files change: the stamp name carries their hash.
DEPS_HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
DEMO_OUT ?= demo_out
DEMO_MINUTES ?= 3

.PHONY: setup browser servers demo test lint format clean bench-help bench-ants bench-elpv

setup: $(STAMP) browser servers

# Browser tests drive Debian's Chromium through Playwright; no tool may download a browser of its own.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "== setup: installing Debian chromium"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi

# The plant-connection tests start Debian's mosquitto on a free loopback port themselves; the package's own
# service is stopped and disabled (nothing listens on 1883 behind the tests' back).
servers:
	@if [ ! -x /usr/sbin/mosquitto ]; then \
	  echo "== setup: installing Debian mosquitto"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto >/dev/null; \
	  $$SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || $$SUDO service mosquitto stop >/dev/null 2>&1 || true; \
	fi

$(STAMP):
	@echo "== setup: installing $(VENV) (dependency files changed or no venv yet)"
	rm -f $(VENV)/.installed-*
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -c "import torch, torchvision, ultralytics, monai, SimpleITK, onnxruntime, streamlit"
	touch $(STAMP)
	@echo "== setup: done"

demo: setup
	$(BIN)/vsuite demo --out $(DEMO_OUT) --minutes $(DEMO_MINUTES)

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest -q

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache

bench-help:
	@echo "Benchmarks (not part of make test): $(BIN)/python benchmarks/<name>.py --help"

# The ANTsPy peer of benchmarks/med_preprocess.py, in a venv of its own (its numpy/scipy pins clash with ours).
bench-ants: .venv-ants/.installed
.venv-ants/.installed:
	test -x .venv-ants/bin/python || $(PYTHON) -m venv .venv-ants
	.venv-ants/bin/python -m pip install --quiet antspyx numpy
	touch $@
	@echo "run: VSUITE_ANTS_PYTHON=.venv-ants/bin/python $(BIN)/python benchmarks/med_preprocess.py"

# The ELPV solar-cell images of benchmarks/qc_elpv.py: benchmark-only (CC BY-NC-SA), not in pyproject.toml.
bench-elpv: $(STAMP)
	$(BIN)/python -m pip install --quiet elpv-dataset
	@echo "run: $(BIN)/python benchmarks/qc_elpv.py --minutes 30 --seeds 0,1 --four-class --json bench_out/qc_elpv.json"
