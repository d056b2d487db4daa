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

.PHONY: serve test lint format pytest bench loadtest soak postgis testdeps vendor clean help

help:
	@echo "make serve   run Makazi with demo data on http://$(HOST):$(PORT)/"
	@echo "make test    lint, type-check and run the whole test suite"
	@echo "make lint    ruff + mypy only"
	@echo "make bench   benchmarks against peers (slow; writes bench/RESULTS.md)"
	@echo "make loadtest  50 concurrent clients for 60 s (Locust); make soak: 30 minutes"

$(STAMP): pyproject.toml
	@scripts/system-deps.sh base
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

postgis: $(STAMP)
	@$(BIN)/makazi db ensure

# Vendored in app/static/vendor and shipped in the package, so serve and test need no npm
# and no page loads anything from another host: MapLibre GL JS (BSD-3, LICENSE.txt) for
# the web map, and Swagger UI (swagger-ui-dist, Apache-2.0, LICENSE and NOTICE) for /docs
# in app/static/vendor/swagger-ui.  `make vendor` refreshes both from the npm registry at
# the versions pinned here, records them in the VERSION files and drops source-map links;
# commit the result.
MAPLIBRE_VERSION := 5.24.1
SWAGGER_UI_VERSION := 5.35.0
VENDOR := app/static/vendor
SWAGGER_UI := $(VENDOR)/swagger-ui
# what /docs loads (app/routers/web.py serves exactly these), and the licence texts
SWAGGER_UI_FILES := swagger-ui-bundle.js swagger-ui.css favicon-32x32.png \
	LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt
NO_SOURCE_MAP := sed -e '/^\/\/\# sourceMappingURL=/d' -e '/^\/\*\# sourceMappingURL=.*\*\/$$/d'

vendor:
	@scripts/system-deps.sh web
	@rm -rf build/npm && mkdir -p build/npm/maplibre build/npm/swagger-ui $(VENDOR) $(SWAGGER_UI)
	cd build/npm && npm pack --silent --loglevel=error maplibre-gl@$(MAPLIBRE_VERSION) \
		swagger-ui-dist@$(SWAGGER_UI_VERSION) >/dev/null
	tar -xzf build/npm/maplibre-gl-$(MAPLIBRE_VERSION).tgz -C build/npm/maplibre \
		package/dist/maplibre-gl.js package/dist/maplibre-gl.css package/LICENSE.txt
	$(NO_SOURCE_MAP) build/npm/maplibre/package/dist/maplibre-gl.js > $(VENDOR)/maplibre-gl.js
	cp build/npm/maplibre/package/dist/maplibre-gl.css build/npm/maplibre/package/LICENSE.txt $(VENDOR)/
	echo $(MAPLIBRE_VERSION) > $(VENDOR)/VERSION
	tar -xzf build/npm/swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz -C build/npm/swagger-ui \
		$(addprefix package/,$(SWAGGER_UI_FILES))
	rm -f $(SWAGGER_UI)/*
	cp $(addprefix build/npm/swagger-ui/package/,$(SWAGGER_UI_FILES)) $(SWAGGER_UI)/
	for f in swagger-ui-bundle.js swagger-ui.css; do \
		$(NO_SOURCE_MAP) build/npm/swagger-ui/package/$$f > $(SWAGGER_UI)/$$f; done
	echo $(SWAGGER_UI_VERSION) > $(SWAGGER_UI)/VERSION
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

# Load runs (Locust, loopback only, stop by themselves); MAKAZI_LOAD_USERS / _SECONDS override;
# `make soak SOAK_MINUTES=3` for a short soak.
loadtest: postgis
	$(BIN)/python -m pip install --quiet -e '.[dev,load]'
	$(BIN)/python -m bench.loadtest

soak: postgis
	$(BIN)/python -m pip install --quiet -e '.[dev,load]'
	$(BIN)/python -m bench.loadtest --soak $(if $(SOAK_MINUTES),--minutes $(SOAK_MINUTES))

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
