# The README's two commands: `make demo` and `make test`. Both create .venv if
# missing and install the package with the pinned versions in constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
WORKDIR ?= runs/demo
# CPU wheels only: jax from PyPI is CPU-only unless a cuda extra is asked for.
PIP_INSTALL := $(PIP) install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test test-slow install install-test install-bench lint clean

$(VENV)/.installed: setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.py constraints.txt
	$(PIP_INSTALL) -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Main job: the loss-comparison experiment on the offline digits preset.
demo: install
	$(PY) -m experiments.loss_comparison --config=configs/loss_comparison.py:digits --workdir=$(WORKDIR)

# Default test suite (slow checks excluded; `make test-slow` runs them).
# worksteal: a worker that runs out of tests takes some of the other's queue,
# so a long test near the end does not leave a core idle.
test: install-test
	$(PY) -m pytest -n 2 --dist worksteal -m "not slow" -q tests

test-slow: install-test
	$(PY) -m pytest -m slow -q tests

# PyTorch (CPU wheel) and torchattacks, only for the side-by-side benchmarks in
# benchmarks/. torchattacks is installed without its dependencies: its
# torchvision requirement does not import beside the CPU torch wheel and is not
# needed by the attacks used.
install-bench: install-test
	$(PIP) install --disable-pip-version-check -q torch==2.13.0
	$(PIP) install --disable-pip-version-check -q --no-deps torchattacks==3.5.1

lint: install-test
	$(PY) -m ruff check compsum_jax experiments configs tests benchmarks tools colab

clean:
	rm -rf $(VENV) runs .pytest_cache
