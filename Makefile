# Stockyard: `make run` serves (building the pyz when needed), `make test` runs the tests.
PYTHON ?= python3
PYZ := dist/stockyard.pyz
# The tests run in phases (markers in pytest.ini): the parallel phase with the PostgreSQL job beside it
# (PG_SUITES on PostgreSQL, then PG_FILES), then the serial phase, then the perf phase; every phase
# runs, and `make test` fails when any of them failed. TEST_WORKERS: pytest-xdist workers for the parallel phases: one more than
# the cores, as the suite waits on sockets, servers and timeouts about a third of its time (on two
# cores, 3 workers: 339 s against 438 s with 2, in one hour).
# --dist loadfile keeps a file on one worker: its tests share one server and some follow each other;
# --no-loadscope-reorder hands the files out in the order collected: the slowest first (SLOW_FIRST in
# tests/conftest.py), so no long file starts last.
PYTEST := $(PYTHON) -m pytest -q
DIST := --dist loadfile --no-loadscope-reorder
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(len(os.sched_getaffinity(0)) + 1)')
# The PostgreSQL run goes beside the parallel phase, which leaves a core idle a third of its time.
PG_WORKERS ?= 2
SOURCES := $(shell find stockyard -type f ! -name '*.pyc' ! -path '*/__pycache__/*') build_zipapp.py

# Server suites that run a second time against PostgreSQL (tests/pgcluster.py starts a throwaway server).
PG_SUITES := tests/test_openai_proxy.py tests/test_keys.py tests/test_budgets.py tests/test_modules.py \
	tests/test_module_cache.py tests/test_responses.py tests/test_audit_cli.py tests/test_deployments.py \
	tests/test_costs.py tests/test_files_batches.py tests/test_anthropic_batches.py tests/test_conversations_api.py \
	tests/test_unstorable.py tests/test_containers.py tests/test_vector_stores.py tests/test_gemini_cache.py \
	tests/test_attack_gemini_cache.py tests/test_gemini_files.py tests/test_anthropic_files.py \
	tests/test_attack_anthropic_files.py tests/test_anthropic_containers.py tests/test_erase_bodies.py \
	tests/test_erase_stored.py tests/test_webhooks.py tests/test_webhooks_stop.py tests/test_reliability.py \
	tests/test_pg_nul.py tests/test_background_responses.py tests/test_leaks.py tests/test_vault_integration.py \
	tests/test_module_redact.py tests/test_config_file.py tests/test_budget_unknown_cost.py tests/test_review32.py \
	tests/test_videos.py \
	tests/test_budget_durable.py tests/test_uploads.py tests/test_realtime.py

# The PostgreSQL store's own test files (they start a throwaway server, tests/pgcluster.py, and spend
# most of their time on it) run in the PostgreSQL job, after PG_SUITES, as a pytest run of their own
# with the usual settings (not STOCKYARD_TEST_STORE), and not in the parallel phase: that phase ran
# ~3 minutes past the PostgreSQL job, which now ends about when it does.
PG_FILES := $(wildcard tests/test_pg_*.py) tests/test_pgcluster.py tests/test_store_dialects.py \
	tests/test_migrate_store.py tests/test_batch_holds.py tests/test_audit.py tests/test_writer.py \
	tests/test_trace_batches.py tests/test_attack_review13.py tests/test_pgbouncer39.py

# The files that hold the one-at-a-time tests: those phases collect only them (collecting every
# test module costs each pytest process seconds; the parallel phase deselects these by marker).
SERIAL_FILES := $(shell grep -l 'mark\.serial' tests/test_*.py)
PERF_FILES := $(shell grep -l 'mark\.perf' tests/test_*.py)

.PHONY: run test lint pyz bench clean

$(PYZ): $(SOURCES)
	$(PYTHON) build_zipapp.py --out $(PYZ)

pyz: $(PYZ)

run: $(PYZ)
	$(PYTHON) $(PYZ) serve

# ruff (lint and format check) and mypy, as configured in pyproject.toml.
LINT_PATHS := stockyard bench build_zipapp.py tests
lint:
	$(PYTHON) -m ruff check $(LINT_PATHS)
	$(PYTHON) -m ruff format --check $(LINT_PATHS)
	$(PYTHON) -m mypy

test:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	command -v node >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs)
	command -v haproxy >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy)
	# tests/test_attack_data33.py kills a command at a chosen system call with strace's fault injection
	command -v strace >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace)
	# the PostgreSQL store's tests start a throwaway server (tests/pgcluster.py) with initdb + pg_ctl
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)
	# tests/test_pgbouncer39.py runs replicas through a real PgBouncer in front of that server (tests/pgbouncer.py)
	command -v pgbouncer >/dev/null || ls /usr/sbin/pgbouncer >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer)
	$(PYTHON) -m pip install -q -r requirements-test.txt
	# lint and the pyz side by side (two cores); the pyz's wheels fetched once, before two test runs build at once
	$(MAKE) --no-print-directory -j2 lint pyz
	@status=0; pg_log=$$(mktemp); pg_files_log=$$(mktemp); \
	echo "== tests, in parallel on $(TEST_WORKERS) workers; beside them, on $(PG_WORKERS), the core server suites on PostgreSQL, then the PostgreSQL store's own tests"; \
	(failed=0; \
	 STOCKYARD_TEST_STORE=postgresql $(PYTEST) -n $(PG_WORKERS) $(DIST) -m "not serial and not perf" $(PG_SUITES) >$$pg_log 2>&1 || failed=1; \
	 $(PYTEST) -n $(PG_WORKERS) $(DIST) -m "not serial and not perf" $(PG_FILES) >$$pg_files_log 2>&1 || failed=1; \
	 exit $$failed) & pg=$$!; \
	$(PYTEST) -n $(TEST_WORKERS) $(DIST) -m "not serial and not perf" $(addprefix --ignore=,$(PG_FILES)) || status=1; \
	wait $$pg || status=1; \
	echo "== the core server suites again, on PostgreSQL (STOCKYARD_TEST_STORE=postgresql), run beside the above"; \
	cat $$pg_log; \
	echo "== the PostgreSQL store's own test files (PG_FILES, left out of the parallel phase), run beside it after the core suites"; \
	cat $$pg_files_log; rm -f $$pg_log $$pg_files_log; \
	echo "== tests that need the machine to themselves (marker serial), one at a time"; \
	$(PYTEST) -m "serial and not perf" $(SERIAL_FILES) || status=1; \
	echo "== time bounds (marker perf), one at a time"; \
	$(PYTEST) -m perf $(PERF_FILES) || status=1; \
	exit $$status

bench: $(PYZ)
	$(PYTHON) -m pip install -q -r requirements-test.txt
	$(PYTHON) bench/run.py

clean:
	rm -rf dist build .pytest_cache
