# jira-mail-sync: the two commands users need are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.synced
LINT_PATHS := dags plugins include devkit tests tests_distributed bench scripts

.PHONY: venv system-deps test test-fast test-distributed test-ui fuzz lint bench demo demo-stop lock clean

# .venv/ is created from the hash-pinned lock; it is re-synced whenever the lock changes.
$(STAMP): requirements.txt requirements-bootstrap.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@test -x $(UV) || $(VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements-bootstrap.txt
	$(UV) pip sync -q --python $(PY) --require-hashes requirements.txt
	@touch $(STAMP)

venv: $(STAMP)

system-deps:
	@bash scripts/install_system_deps.sh

# Every service the tests need (Dovecot, PostgreSQL, the Jira stand-in, an Airflow metadata
# database) is started by pytest session fixtures on free loopback ports and stopped after.
test: venv system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# Only the tests that need no service, no metadata database and no DAG run (the `unit` marker,
# which tests/conftest.py sets on every test that uses none of the service fixtures).
test-fast: venv
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

# The compose topology (CeleryExecutor: PostgreSQL, Redis, api-server, scheduler, dag-processor,
# triggerer, two Celery workers) run natively on loopback; see docs/distributed.md.
test-distributed: venv system-deps
	@bash scripts/test_distributed.sh $(PYTEST_ARGS)

# Drives the demo's UI in Debian's headless Chromium; starts and stops the demo itself.
test-ui: venv system-deps
	bash scripts/install_browser.sh
	$(PY) -m pytest -m ui tests/test_ui_browser.py $(PYTEST_ARGS)

# The whole-path fuzz test of hostile mail, longer: FUZZ_CASES per store backend (SQLite and
# PostgreSQL), FUZZ_SEED to reproduce a run. `make test` runs it with 5000 cases and a fixed seed.
FUZZ_CASES ?= 50000
FUZZ_SEED ?= 20261207
fuzz: venv system-deps
	JMS_FUZZ_CASES=$(FUZZ_CASES) JMS_FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest -s tests/test_mail_path_fuzz.py $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

bench: venv system-deps
	$(PY) -m bench.run_all

demo: venv system-deps
	@bash scripts/demo.sh start

demo-stop:
	@bash scripts/demo.sh stop

# Re-resolve the pins (needs PyPI). Commit both files.
lock: venv
	$(UV) pip compile -q --python-version 3.11 --generate-hashes requirements.in -o requirements.txt

clean:
	rm -rf $(VENV) .pytest_cache
