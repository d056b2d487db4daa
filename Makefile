# Makazi: `make serve` runs the service with demo data; `make test` runs every check.
# Both do all set-up themselves on a fresh Debian/Ubuntu machine (as root, or say the
# exact apt command to run): a virtualenv in .venv, the package, PostgreSQL + PostGIS.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint format pytest bench loadtest postgis testdeps vendor clean help

help:
	@echo "make serve   run Makazi with demo data on http://$(HOST):$(PORT)/"
	@echo "make test    lint, type-check and run the whole test suite"
	@echo "make lint    ruff + mypy only"
	@echo "make bench   benchmarks against peers (slow; writes bench/RESULTS.md)"

$(STAMP): pyproject.toml
	@scripts/system-deps.sh base
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

postgis: $(STAMP)
	@$(BIN)/makazi db ensure

# MapLibre GL JS (BSD-3) for the web map is vendored in app/static/vendor (with its
# LICENSE.txt) and ships in the package, so serve and test need no npm. `make vendor`
# refreshes that copy from the npm registry at MAPLIBRE_VERSION; commit the result.
MAPLIBRE_VERSION := 5.24.1
VENDOR := app/static/vendor

vendor:
	@scripts/system-deps.sh web
	@rm -rf build/npm && mkdir -p build/npm $(VENDOR)
	cd build/npm && npm pack --silent --loglevel=error maplibre-gl@$(MAPLIBRE_VERSION) >/dev/null
	tar -xzf build/npm/maplibre-gl-$(MAPLIBRE_VERSION).tgz -C build/npm \
		package/dist/maplibre-gl.js package/dist/maplibre-gl.css package/LICENSE.txt
	sed '/^\/\/# sourceMappingURL=/d' build/npm/package/dist/maplibre-gl.js > $(VENDOR)/maplibre-gl.js
	cp build/npm/package/dist/maplibre-gl.css build/npm/package/LICENSE.txt $(VENDOR)/
	echo $(MAPLIBRE_VERSION) > $(VENDOR)/VERSION
	@rm -rf build/npm $(VENDOR)/.maplibre-gl-*

testdeps:
	@scripts/system-deps.sh test

serve: postgis
	$(BIN)/makazi serve --demo --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

pytest: postgis testdeps
	$(BIN)/pytest

test: lint pytest

bench: postgis
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
