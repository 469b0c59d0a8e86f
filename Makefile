# The two commands a newcomer needs: `make run` and `make test`. Everything else is set up from here.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium
# Tesseract with its English data reads scanned PDF pages; another language: add tesseract-ocr-LANG here and set
# OCR_LANGUAGE (nothing downloads language data at run time).
TESSERACT := /usr/bin/tesseract
TESSERACT_PACKAGES := tesseract-ocr tesseract-ocr-eng

.PHONY: run test bench install clean-data lint vendor-static

# The app packages pass the linter, the formatter's check and the type checker (all configured in pyproject.toml).
LINTED := config tenants documents chat vectordb
lint: $(STAMP)
	$(BIN)/python -m ruff check $(LINTED)
	$(BIN)/python -m ruff format --check $(LINTED) tests bench
	$(BIN)/python -m mypy

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	# pip older than 24 backtracks forever on httpx/httpcore; a current pip resolves in seconds.
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the end-to-end tests (Playwright drives it; `playwright install` is never run).
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

$(TESSERACT):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TESSERACT_PACKAGES) >/dev/null

run: $(STAMP) $(TESSERACT)
	$(BIN)/python -m config.run_local

# Each test run gets its own data folder (and so its own embedded PostgreSQL), Redis key prefix and Celery queue, so
# it never touches `make run`'s data nor another run's tenant databases (tests/run_folders.py).
test: $(STAMP) $(CHROMIUM) $(TESSERACT) lint
	SILO_DATA_DIR=$(CURDIR)/.data/test-runs/$$$$ SILO_EMBEDDED_FAST=true \
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/15} CELERY_QUEUE=silo-test-$$$$ SILO_TEST_DATABASE=test_silo_$$$$ CACHE_KEY_PREFIX=silo-test-$$$$ \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks get their own data folder, main database, Redis database and Celery queue; BENCH_QUICK=1 for smaller inputs.
bench: $(STAMP) $(TESSERACT)
	SILO_DATA_DIR=$(CURDIR)/.data/bench SILO_EMBEDDED_FAST=true SILO_MAIN_DATABASE=silo_bench LOG_LEVEL=WARNING \
	REDIS_URL=$${BENCH_REDIS_URL:-redis://127.0.0.1:6379/14} CELERY_QUEUE=silo-bench-$$$$ \
	$(BIN)/python -m bench $(BENCH_ARGS)

clean-data:
	$(BIN)/python -m config.embedded_postgres stop || true
	rm -rf .data

# Re-vendor the browser libraries in static/vendor/ (PDF.js, markdown-it, DOMPurify) from the npm registry; versions
# are pinned in the script and recorded in static/vendor/VERSIONS. Needs node and npm; the app never fetches them.
vendor-static:
	scripts/vendor_static.sh
