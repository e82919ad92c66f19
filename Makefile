# One command sets up a fresh machine and runs the tests: `make test`; the main job: `make train`.
# The virtual environment lives in .venv; TORCH says which torch to install
# (CI pins the local CPU build; on your own machine `make test TORCH=torch` takes the newest).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test train sine bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,train,onnx]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ARGS are passed on: `make train ARGS="--cell gru --data-dir ../shared/data"`.
train: setup
	$(PY) -m train mnist $(ARGS)

sine: setup
	$(PY) -m train sine $(ARGS)

bench: setup
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
