# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv when missing and installs the pinned versions into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so that nothing later can pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rcnn demo

lint: $(STAMP)
	$(BIN)/ruff check rcnn tests
	$(BIN)/ruff format --check rcnn tests

test: lint
	$(BIN)/python -m pytest -n 2

bench: $(STAMP)
	$(BIN)/rcnn bench all

clean:
	rm -rf $(VENV) build *.egg-info
