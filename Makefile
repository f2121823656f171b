# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv when missing and installs the pinned versions into it: the package for
# the demo, the package with its test tools (pytest, ruff, ONNX) for the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench clean

# setup.py compiles the C kernels (rcnn/ops/*.c: NMS, RoIAlign) into the source tree.
# torch first and pinned, so that nothing later can pull a CUDA build.
# --no-compile: pip would byte-compile every module of every package (torch and sympy
# alone are 3,800 files, most never imported), 75 s of install against 43 here
# (three fresh clones each); the modules the command line uses are compiled instead by
# importing them once with bytecode writing allowed (torch._dynamo: AdamW's constructor
# imports it), so no later run compiles them again.
$(STAMP): pyproject.toml setup.py $(wildcard rcnn/ops/*.c)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -e .
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -c "import rcnn.cli, rcnn.runs, torch._dynamo"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[test]"
	touch $(TEST_STAMP)

# The demo's 10 minutes start here, before the install: it trains for what is left of them
# once its evaluation's time is set aside.
demo:
	@started=$$(date +%s) && $(MAKE) --no-print-directory $(STAMP) && \
	$(BIN)/rcnn demo --started $$started

lint: $(TEST_STAMP)
	$(BIN)/ruff check rcnn tests
	$(BIN)/ruff format --check rcnn tests

test: lint
	$(BIN)/python -m pytest -n 2

bench: $(STAMP)
	$(BIN)/rcnn bench all

clean:
	rm -rf $(VENV) build *.egg-info rcnn/ops/*.so
