# Stockyard: `make run` serves (building the pyz when needed), `make test` runs the tests.
PYTHON ?= python3
PYZ := dist/stockyard.pyz
SOURCES := $(shell find stockyard -type f ! -name '*.pyc' ! -path '*/__pycache__/*') build_zipapp.py

.PHONY: run test pyz bench clean

$(PYZ): $(SOURCES)
	$(PYTHON) build_zipapp.py --out $(PYZ)

pyz: $(PYZ)

run: $(PYZ)
	$(PYTHON) $(PYZ) serve

test:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	command -v node >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs)
	$(PYTHON) -m pip install -q -r requirements-test.txt
	$(PYTHON) -m pytest -q

bench: $(PYZ)
	$(PYTHON) -m pip install -q -r requirements-test.txt
	$(PYTHON) bench/run.py

clean:
	rm -rf dist build .pytest_cache
