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

.PHONY: install data train test test-fast bench sweep agent reproduce lint clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,sweeps]'  # sweeps: the offline sweep engine (pins numpy<2)
	touch $@

install: $(VENV)/.installed  ## the project-local virtual environment

data: install  ## fetch MNIST and Fashion-MNIST, verified by md5
	$(CLI) data

train: data  ## train the default config; make train ARGS="--model.alpha=3"
	$(CLI) fit --config $(CONFIG) $(ARGS)

test: data  ## the whole suite, slow tests included (minutes on 2 CPU cores; README, Tests)
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)  # the slowest tests: where the suite's minutes go

test-fast: data  ## unit tests and fast_dev_runs only
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: data  ## seconds per epoch: Lightning fit vs a plain PyTorch loop
	$(CLI) bench $(ARGS)

# W&B sweeps (README, "Tracking and sweeps"). `wandb agent` runs the sweep file's command, whose
# ${interpreter} is a bare `python`: the venv is activated first, so that is the venv's Python.
SWEEP ?= sweeps/alpha_mnist.yaml
COUNT ?=
SWEEP_ID ?=
WANDB ?= wandb
AGENT_COUNT = $(if $(COUNT),--count $(COUNT))

sweep: data  ## create a W&B sweep, then run an agent here: make sweep SWEEP=sweeps/alpha_bayes.yaml COUNT=10
	@source $(VENV)/bin/activate && out=$$($(WANDB) sweep $(SWEEP) 2>&1); echo "$$out"; \
	id=$$(echo "$$out" | sed -n 's/.*Run sweep agent with: wandb agent //p' | tail -n 1); \
	if [ -z "$$id" ]; then echo "make sweep: no sweep ID from wandb sweep (logged in? wandb login)"; exit 1; fi; \
	echo "make sweep: more agents, on any machine with this repository: make agent SWEEP_ID=$$id"; \
	$(WANDB) agent $(AGENT_COUNT) $$id

agent: data  ## one more agent for a sweep: make agent SWEEP_ID=entity/project/id [COUNT=N]
	@test -n "$(SWEEP_ID)" || { echo "make agent: give SWEEP_ID=entity/project/id (make sweep prints it)"; exit 1; }
	@source $(VENV)/bin/activate && $(WANDB) agent $(AGENT_COUNT) $(SWEEP_ID)

# The reproduction is four sweep files (sweeps/reproduce_*.yaml: 220 runs of 25 epochs), run by
# the same runner as `consistency-vae sweep`, then every run evaluated into results/. Empty SEEDS
# and EPOCHS: the files' own (10 seeds of alpha 0 and 1, 5 of the rest; 25 epochs). Runs trained
# elsewhere (make agent, SLURM):
# $(CLI) reproduce --from-runs DIR (docs/scaling.md).
SEEDS ?=
EPOCHS ?=
reproduce: data  ## the paper's experiment and ours into results/; quicker: make reproduce SEEDS=1 EPOCHS=5
	$(CLI) reproduce $(if $(SEEDS),--seeds $(SEEDS)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)

lint: install
	$(VENV)/bin/ruff check consistency_vae tests

clean:  ## remove runs and caches (never data or the venv)
	rm -rf runs lightning_logs .pytest_cache
