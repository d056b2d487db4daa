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
# the web map, Swagger UI (swagger-ui-dist, Apache-2.0, LICENSE and NOTICE) for /docs
# in app/static/vendor/swagger-ui, and the PMTiles reader (npm `pmtiles`, BSD-3, which
# bundles fflate, MIT) for the field app's offline map in app/static/vendor/pmtiles.  The
# pmtiles npm package ships no licence file: its BSD-3 text (Protomaps' LICENSE) is kept
# as app/static/vendor/pmtiles/LICENSE.txt, and fflate's LICENSE is taken from its package.  `make vendor` refreshes both from the npm registry at
# the versions pinned here, records them in the VERSION files and drops source-map links;
# commit the result.
MAPLIBRE_VERSION := 5.24.1
SWAGGER_UI_VERSION := 5.35.0
PMTILES_VERSION := 4.5.0
FFLATE_VERSION := 0.8.2
VENDOR := app/static/vendor
SWAGGER_UI := $(VENDOR)/swagger-ui
PMTILES := $(VENDOR)/pmtiles
# what /docs loads (app/routers/web.py serves exactly these), and the licence texts
SWAGGER_UI_FILES := swagger-ui-bundle.js swagger-ui.css favicon-32x32.png \
	LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt
NO_SOURCE_MAP := sed -e '/^\/\/\# sourceMappingURL=/d' -e '/^\/\*\# sourceMappingURL=.*\*\/$$/d'

vendor:
	@scripts/system-deps.sh web
	@rm -rf build/npm && mkdir -p build/npm/maplibre build/npm/swagger-ui build/npm/pmtiles \
		build/npm/fflate $(VENDOR) $(SWAGGER_UI) $(PMTILES)
	cd build/npm && npm pack --silent --loglevel=error maplibre-gl@$(MAPLIBRE_VERSION) \
		swagger-ui-dist@$(SWAGGER_UI_VERSION) pmtiles@$(PMTILES_VERSION) \
		fflate@$(FFLATE_VERSION) >/dev/null
	tar -xzf build/npm/pmtiles-$(PMTILES_VERSION).tgz -C build/npm/pmtiles package/dist/pmtiles.js
	tar -xzf build/npm/fflate-$(FFLATE_VERSION).tgz -C build/npm/fflate package/LICENSE
	$(NO_SOURCE_MAP) build/npm/pmtiles/package/dist/pmtiles.js > $(PMTILES)/pmtiles.js
	cp build/npm/fflate/package/LICENSE $(PMTILES)/fflate-LICENSE
	echo "pmtiles $(PMTILES_VERSION) (bundles fflate $(FFLATE_VERSION))" > $(PMTILES)/VERSION
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
