# gur_lightning developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU dev/CI pins (these wheels lie on the dev machines' disk); GPU users install with their own torch.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE
export WANDB_MODE ?= disabled

.PHONY: help install demo test test-full bench lint format clean results results-recipes gpu-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package (editable, dev extras)

demo: $(STAMP) ## run the main job on the built-in SynVI benchmark and print its table
	$(PY) -m gur_lightning.train +experiment=synvi

test: $(STAMP) ## fast test suite (a few minutes)
	$(PY) -m pytest -m "not slow" -q

test-full: $(STAMP) ## every test, slow ones included (DDP, sweeps, long runs)
	$(PY) -m pytest -q

bench: $(STAMP) ## benchmarks; figures go to bench_results/
	$(PY) -m gur_lightning.bench all --out bench_results

lint: $(STAMP) ## ruff check, format check, mypy and the import contracts (lint-imports)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy
	PYTHONPATH=src $(VENV)/bin/lint-imports --no-cache

format: $(STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

clean: ## remove the venv, caches and generated outputs
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist src/*.egg-info outputs logs bench_results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

gpu-check: $(STAMP) ## the README's GPU checks (needs a CUDA GPU); logs and figures in gpu_checks/
	PY=$(PY) bash tools/gpu_checks.sh

results: $(STAMP) ## every row of the README's SynVI table, 3 seeds each (about 2 h on 2 cores); results/synvi/table.md
	$(PY) -m gur_lightning.results --out results/synvi --jobs 2 eval.within_modality=true

results-recipes: $(STAMP) ## GUR under recipe=fixed, R = 4 BatchNorm and recipe=official, 3 seeds each (about 30 min from scratch); results/synvi_recipes/table.md
	$(PY) -m gur_lightning.results --out results/synvi_recipes --jobs 2 --rows gur,gur_bn4,gur_official eval.within_modality=true
