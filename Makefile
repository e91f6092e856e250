# Two commands on a fresh machine: `make run` (the sidecar) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install system-deps run test bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py agent/statsd/_fast.c
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

# Tools and servers the tests use that a fresh machine lacks (beanstalkd, prometheus/promtool, ...).
system-deps:
	bash scripts/system-deps.sh

run: install
	$(VENV)/bin/tasklens run

test: install system-deps
	CHECKOV=$(wildcard $(CURDIR)/.tools/checkov/bin/checkov) $(PY) -m pytest

bench: install
	$(PY) bench/idle_footprint.py
