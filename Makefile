# Two entry points (README): `make demo` and `make test`. Both create .venv and install the
# pinned stack first; re-running is cheap (the install is skipped while the stamp is newer than
# the requirement files).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.keras-secure-installed
REQS   := requirements/base.txt requirements/legacy.txt requirements/overrides.txt \
          requirements/tools.txt setup.cfg pyproject.toml

.PHONY: setup browser demo test test-fast screenshot bench bench-setup clean

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

# A real headless browser for the HTML report's tests (tests/test_report_html.py): Debian's
# chromium-headless-shell, installed once with apt-get (as root, else with `sudo -n`; the package
# lists are refreshed only if the first try fails). Quiet, and nothing to do once it is there.
# If it cannot be installed, the tests that need it skip and say why; make goes on.
BROWSER_PACKAGE := chromium-headless-shell
APT_INSTALL := env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300 \
               install -y --no-install-recommends $(BROWSER_PACKAGE)
browser:
	@command -v $(BROWSER_PACKAGE) >/dev/null 2>&1 || { \
	    log=$$(mktemp); sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
	    if command -v apt-get >/dev/null 2>&1 && { $$sudo $(APT_INSTALL) >$$log 2>&1 || \
	        { $$sudo apt-get -qq update >>$$log 2>&1 && $$sudo $(APT_INSTALL) >>$$log 2>&1; }; }; \
	    then echo "make browser: installed $(BROWSER_PACKAGE)"; \
	    else echo "make browser: could not install $(BROWSER_PACKAGE) with apt-get (log:" \
	              "$$log); the browser tests will skip" >&2; tail -3 $$log >&2; fi; }

demo: setup
	$(BIN)/keras-secure demo $(DEMO_ARGS)

test: setup browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup browser
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# docs/images/report.png (the quick demo's page) and report-evaluate.png, taken by the tests
screenshot: setup browser
	KERAS_SECURE_SCREENSHOT_DIR=docs/images $(BIN)/python -m pytest -q \
	    tests/test_cli.py::test_quick_demo_writes_a_report \
	    tests/test_report_html.py::test_evaluation_page_renders_in_a_browser

bench-setup: setup
	$(BIN)/uv pip install --python $(BIN)/python -e ".[bench]" \
	    -r requirements/base.txt --override requirements/overrides.txt

bench: bench-setup
	$(BIN)/python benchmarks/attacks.py

clean:
	rm -rf $(VENV) build *.egg-info
