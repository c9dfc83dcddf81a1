# The two commands of the README: `make demo` (main job, offline default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test packaging install clean

$(BIN)/activate: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,demo,app]"
	touch $(BIN)/activate

install: $(BIN)/activate

demo: $(BIN)/activate
	$(BIN)/python examples/demo.py --overwrite

test: $(BIN)/activate
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 -q

# The wheel in a fresh environment, used from outside the checkout (.ci/run runs it after the tests).
packaging: $(BIN)/activate
	PYTHON=$(BIN)/python .ci/packaging

clean:
	rm -rf $(VENV) .pytest_cache
