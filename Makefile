# Two entry points (README): `make demo` and `make test`. Both create .venv and install the
# pinned stack first; re-running is cheap (the install is skipped while the stamp is newer than
# the requirement files).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.keras-secure-installed
REQS   := requirements/base.txt requirements/legacy.txt requirements/overrides.txt \
          requirements/tools.txt setup.cfg pyproject.toml

.PHONY: setup demo test test-fast bench bench-setup clean

$(STAMP): $(REQS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/tools.txt
	# --compile-bytecode: with PYTHONDONTWRITEBYTECODE=1 (set on this kind of machine) every
	# process would recompile TensorFlow's sources on import (14 s instead of 6 s).
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode \
	    -r requirements/base.txt -r requirements/legacy.txt \
	    --override requirements/overrides.txt -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/keras-secure demo $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench-setup: setup
	$(BIN)/uv pip install --python $(BIN)/python -e ".[bench]" \
	    -r requirements/base.txt --override requirements/overrides.txt

bench: bench-setup
	$(BIN)/python benchmarks/attacks.py

clean:
	rm -rf $(VENV) build *.egg-info
