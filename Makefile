# The two commands of the README: `make demo` and `make test`. `make install` is their shared first step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export BENTOML_DO_NOT_TRACK := True

PORT ?= 3000

.PHONY: install demo test serve

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

# The service on 127.0.0.1:$(PORT), serving the demo's student unless COMPRESSOR_MODEL names another ONNX file.
runs/demo/student.onnx:
	$(MAKE) demo

serve: install $(if $(COMPRESSOR_MODEL),,runs/demo/student.onnx)
	$(VENV)/bin/bentoml serve serving.service:Compressor --host 127.0.0.1 --port $(PORT)
