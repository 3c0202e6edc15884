# Task runner. `make diagnose` and `make test` set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup diagnose compare test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

diagnose: $(STAMP)
	$(VENV)/bin/tourbillon diagnose

compare: $(STAMP)
	$(VENV)/bin/tourbillon compare reference authors

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/recorder_overhead.py

clean:
	rm -rf runs reports/*.html reports/*.json .pytest_cache
