# Two entry points that work on a fresh clone: `make demo` and `make test`.
# Each creates .venv and installs the project with what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format test-exhaustive bench clean test-aws test-aws-clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/iotpipe demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n 2 -q

test-exhaustive: $(STAMP)
	IOTPIPE_EXHAUSTIVE=1 $(BIN)/pytest -n 2 -q -m exhaustive

# The end-to-end journey on a real AWS account: refuses (exit 2) unless IOTPIPE_TEST_AWS=1, a
# profile or keys, and a region are set; prints the stack and the run's cost, then asks
# (IOTPIPE_TEST_AWS_YES=1 does not). README, "Testing against a real account".
test-aws: $(STAMP)
	$(BIN)/python -m tests.e2e.aws run

# Removes what an interrupted `make test-aws` left: every iotpipe-e2e-* stack, by tag and name.
test-aws-clean: $(STAMP)
	$(BIN)/python -m tests.e2e.aws clean

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
