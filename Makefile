# Two commands to start: `make run` and `make test`. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := src tests bench deployment

# Every tool's telemetry off (README: "Offline and private"), and Ray's token auth off: the Ray that
# `kedro run` starts is local and bounded (`ray:` in conf/base/parameters.yml).
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := True
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export GX_ANALYTICS_ENABLED := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# pytest-xdist workers for `make test` (each test module runs on one worker, see tests/conftest.py).
TEST_WORKERS ?= 2
# pytest exits 5 when it collected nothing: fine while tests/ has no test file yet, a failure once
# it has some (a broken import or a wrong path would otherwise pass as "no tests").
NO_TESTS_YET = if [ $$rc -eq 5 ] && ! compgen -G "tests/test_*.py" >/dev/null; then \
	echo "pytest: no test files in tests/ yet"; rc=0; fi; exit $$rc

.DEFAULT_GOAL := help
.PHONY: help install run test serve monitor dashboards lint test-tools bench mutation lock template clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP) ## create .venv with the pinned dependency set (requirements.lock) and mlsd
	@true

run: $(STAMP) ## run the whole pipeline on the embedded defaults (kedro run)
	$(BIN)/kedro run

test: $(STAMP) test-tools ## run lint, types, layer contracts and the whole test suite
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15; rc=$$?; $(NO_TESTS_YET)

# The Debian packages the suite runs for real (tests/tools.py): prometheus (promtool and the
# server: rule tests, the healthy-system test) and chromium (the offline docs page). Installed
# with apt-get when missing and run as root; otherwise the command to run is printed.
TEST_PACKAGES := prometheus chromium
test-tools:
	@missing=$$(for p in $(TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done | xargs); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "make test needs Debian's $$missing: sudo apt-get install $$missing"; exit 2; fi; \
	echo "make test: installing Debian's $$missing"; \
	apt-get install -y --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends $$missing >/dev/null; }

# `make serve PORT=3100`; by default conf serving.port (what `mlsd simulate` sends to), 3000.
serve: PORT ?= $(shell $(BIN)/python -c 'from mlsd.serving import load_config; print(load_config().params.port)')
serve: $(STAMP) ## serve the registered models (deployment/) on 127.0.0.1:$PORT (default: conf serving.port)
	@test -n "$(PORT)" || { echo "make serve: conf serving.port could not be read (see above); or give PORT=3000"; exit 2; }
	$(BIN)/bentoml serve deployment --working-dir . --host 127.0.0.1 --port $(PORT)

monitor: $(STAMP) ## drift, online quality, canary verdict and retrain flag over the serving logs
	$(BIN)/kedro run --pipelines monitoring

dashboards: PORT ?= 8000
dashboards: $(STAMP) ## Evidently UI over monitoring/workspace on 127.0.0.1:$PORT (default 8000)
	$(BIN)/evidently ui --workspace monitoring/workspace --host 127.0.0.1 --port $(PORT)

lint: $(STAMP) ## format and fix lint in place
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

bench: $(STAMP) ## run every benchmark in bench/ (results in docs/benchmarks.md, bench/results/)
	for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

# Every mutant of the gates, guards and routing against their fast tests ([tool.mutmut] in
# pyproject.toml); results and survivors in docs/testing.md. Not part of `make test`.
mutation: $(STAMP) ## mutation testing of the gates, guards and routing (docs/testing.md)
	rm -rf mutants
	$(BIN)/mutmut run
	$(BIN)/mutmut results

lock: ## re-resolve pyproject's ranges into requirements.lock (a deliberate upgrade)
	rm -rf /tmp/mlsd-lock && $(PYTHON) -m venv /tmp/mlsd-lock
	/tmp/mlsd-lock/bin/python -m pip install --quiet --upgrade "pip>=24"
	/tmp/mlsd-lock/bin/python -m pip install --quiet -e ".[dev]" "setuptools>=68"
	{ echo "# Pinned by 'make lock' from pyproject.toml on Python 3.11; install with pip -r."; \
	  /tmp/mlsd-lock/bin/python -m pip freeze --all --exclude-editable | grep -v '^-e \|^pip=='; } \
	  > "cookiecutter/{{cookiecutter.project_slug}}/requirements.lock"
	$(MAKE) template

template: $(STAMP) ## re-render the repository root from cookiecutter/ (the root is its ad_click instance)
	$(BIN)/python cookiecutter/render_root.py --designs

clean: ## remove everything runs produce (data/, .venv stays)
	find data -type f ! -name .gitkeep -delete
