# Needs only python3 with venv. Every target installs into .venv first (once per pyproject.toml change).
# Servers: SAGA_DATABASE_URL / SAGA_BROKER_URL if set, else local ones on 5432/6379 if they answer,
# else embedded ones from pip wheels with data under .saga/ (see devstack/servers.py).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: venv test test-faults test-rabbitmq run bench soak lint audit audit-if-reachable docs clean

venv: $(VENV)/.installed

# The library (editable, with every extra) and the service's and the tests' dependency groups, which need
# pip 25.1 or newer. The stamp is touched only after a successful install, so a failed one is retried.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'pip>=25.3' 'setuptools>=78.1.1'  # releases without known vulnerabilities
	$(BIN)/python -m pip install -e '.[redis,metrics,tracing,client,testing]' --group dev
	touch $@

# The whole suite on Redis, then on RabbitMQ (a vhost of their own) the job-posting integration tests and the
# crash tests that kill a pool process after a body acted or a whole worker.
RABBITMQ_TESTS := tests/test_job_posting.py tests/test_crash.py -k "test_job_posting or whole_worker or (step_boundary and after)"

# The main suite runs in two pytest-xdist processes, each on a stack of its own (database, Redis DB, workers,
# stand-ins); a test file stays in one process, so its module fixtures (an API server, a browser) start once.
TEST_PROCESSES ?= 2

test: venv docs audit-if-reachable
	$(BIN)/pytest -q -n $(TEST_PROCESSES) --dist loadfile --ignore=tests/faults --durations=15 $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-faults
	$(MAKE) --no-print-directory test-rabbitmq

# The fault tests: a session of their own, on a PostgreSQL and a Redis they start (and stop) themselves.
test-faults: venv
	$(BIN)/pytest -q -s -m fault tests/faults

test-rabbitmq: venv
	SAGA_TEST_BROKER=rabbitmq $(BIN)/pytest -q $(RABBITMQ_TESTS)

# RUN_ARGS="--api-port 8001 --flower-port 5556 --data-dir DIR" to run beside another stack.
RUN_ARGS ?=
run: venv
	$(BIN)/python -m service dev $(RUN_ARGS)

bench: venv
	$(BIN)/python -m bench.run

# Not in CI: ten minutes of job postings under random faults (SOAK_ARGS="--minutes 3 --rate 2" to shorten).
SOAK_ARGS ?=
soak: venv
	$(BIN)/python -m tests.faults.soak $(SOAK_ARGS)

lint: venv
	$(BIN)/ruff check .

# The resolved environment (.venv: the library and every dependency group, pip and setuptools too) against the
# advisories of PyPI's vulnerability service. --strict: a package it could not check fails the audit as a finding
# does, so an unreachable service fails loudly instead of passing unchecked. An advisory with no fixed release yet
# is ignored here by ID, each with its reason: AUDIT_IGNORE += --ignore-vuln ID  # why
AUDIT_IGNORE :=
audit: venv
	$(BIN)/python -m pip freeze --all --exclude-editable > $(VENV)/audited-requirements.txt
	$(BIN)/pip-audit --strict --no-deps --disable-pip --progress-spinner off -r $(VENV)/audited-requirements.txt \
		$(AUDIT_IGNORE) || { echo "make audit: FAILED: a known vulnerability above, or a package that could not be \
	checked (is PyPI's vulnerability service reachable?)" >&2; exit 1; }

# What `make test` runs: the audit where PyPI's vulnerability service answers; where it does not, one loud line says
# that nothing was checked (pip-audit has no other source it could reach there), and the tests go on.
AUDIT_PROBE := https://pypi.org/pypi/pip/25.3/json
audit-if-reachable: venv
	@if $(BIN)/python -c "import urllib.request; urllib.request.urlopen('$(AUDIT_PROBE)', timeout=15)" 2>/dev/null; \
	then $(MAKE) --no-print-directory audit; \
	else echo "make audit: NOT RUN: PyPI's vulnerability service ($(AUDIT_PROBE)) does not answer from here; \
	no dependency was checked for known vulnerabilities" >&2; fi

# The documentation site (docs/, mkdocs.yml) into site/; strict: a broken link or a page left out of the nav fails.
docs: venv
	$(BIN)/mkdocs build --strict --site-dir site

# Stop `make run` first: this deletes the embedded servers' data.
clean:
	rm -rf .saga .pytest_cache .ruff_cache .mypy_cache site
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
