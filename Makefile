# Two commands on a fresh machine: `make run` (the sidecar) and `make test` (the whole suite).
#   make run     installs the sidecar and its integrations (`.[all]`) into .venv, then runs it
#   make test    adds the test tools (`.[dev]`) to .venv, installs the system packages the tests use
#                (scripts/system-deps.sh, as root), runs the linters (ruff, mypy --strict), then the suite
#   make unit    the fast tests only (no brokers, no processes, no engines)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install dev system-deps run lint test unit bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py agent/statsd/_fast.c
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	rm -f $(VENV)/.dev
	touch $@

dev: $(VENV)/.dev

$(VENV)/.dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

# Tools and servers the tests use that a fresh machine lacks (beanstalkd, prometheus/promtool, ...).
system-deps:
	bash scripts/system-deps.sh

run: install
	$(VENV)/bin/tasklens run

lint: dev
	$(PY) -m ruff check .
	$(PY) -m mypy agent integrations

test: dev system-deps lint
	CHECKOV=$(wildcard $(CURDIR)/.tools/checkov/bin/checkov) $(PY) -m pytest

unit: dev
	$(PY) -m pytest tests/statsd tests/sources/test_ecs_stats.py tests/test_config.py tests/sinks/test_prometheus.py -q

bench: install
	$(PY) bench/idle_footprint.py
