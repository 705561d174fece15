# Two commands on a fresh machine: `make train` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/consistency-vae
# The torch pair this project is tested with; elsewhere, e.g. TORCH="torch torchvision".
TORCH ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/mnist.yaml
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install data train test test-fast bench lint clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## the project-local virtual environment

data: install  ## fetch MNIST and Fashion-MNIST, verified by md5
	$(CLI) data

train: data  ## train the default config; make train ARGS="--model.alpha=3"
	$(CLI) fit --config $(CONFIG) $(ARGS)

test: data  ## the whole suite, slow tests included (about 15 minutes on 2 CPU cores)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: data  ## unit tests and fast_dev_runs only
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: data  ## seconds per epoch: Lightning fit vs a plain PyTorch loop
	$(CLI) bench $(ARGS)

lint: install
	$(VENV)/bin/ruff check consistency_vae tests

clean:  ## remove runs and caches (never data or the venv)
	rm -rf runs lightning_logs .pytest_cache
