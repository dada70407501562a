# The two commands of the README: `make demo` and `make test`. `make install` is their shared first step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export BENTOML_DO_NOT_TRACK := True

.PHONY: install demo test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m compressor demo --out runs/demo

test: install
	$(PY) -m pytest -q
