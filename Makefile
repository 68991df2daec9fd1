# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed before the project so pip never pulls a multi-GB CUDA build by itself. This pair
# lies on the disk of the project's machines (Python 3.11, x86_64); elsewhere, point TORCH_SPEC at the
# build for your platform (e.g. TORCH_SPEC="torch torchvision --index-url ...") or preinstall torch.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/synthaug demo --out $(DEMO_OUT) $(DEMO_ARGS)

test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The rules in pyproject.toml (pyflakes, pycodestyle, bugbear, import order); CI runs it before the tests.
lint: install
	$(VENV)/bin/ruff check synthaug classifiers tests benchmarks

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
