# The two commands of the README: `make demo` and `make test`. `make install` is their shared first step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export BENTOML_DO_NOT_TRACK := True

PORT ?= 3000

.PHONY: install demo test serve browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m compressor demo --out runs/demo

# The browser tests drive Debian's chromium with Playwright (Playwright's own browser download is unreachable here).
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser)

browser:
ifeq ($(CHROMIUM),)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
endif

# The linter first (seconds), then the suite on two pytest-xdist processes, a test file to each, one thread each
# (the shared demo run is made before they start, on both cores), in the order conftest.py collects them: the
# heaviest files first (xdist would otherwise hand out the files with the most tests first). TEST_WORKERS=0 runs
# it in this process alone.
# The 25 slowest tests are listed at the end, so that a test that grows slow is seen.
TEST_WORKERS ?= 2

test: install browser
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

# The service on 127.0.0.1:$(PORT), serving the demo's student unless COMPRESSOR_MODEL names another ONNX file.
runs/demo/student.onnx:
	$(MAKE) demo

serve: install $(if $(COMPRESSOR_MODEL),,runs/demo/student.onnx)
	$(VENV)/bin/bentoml serve serving.service:Compressor --host 127.0.0.1 --port $(PORT)
