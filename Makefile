# plm — every target sets itself up: a .venv on first use, the pinned CPU torch wheel first on
# machines without CUDA (so no multi-GB CUDA build is ever pulled by accident), then the package.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Elsewhere, point this at a CPU wheel index if plain PyPI would give you a CUDA build.
TORCH_INDEX ?=
SIZE ?=
OBJECTIVE ?= mlm
TOKENS ?=
FORCE ?=
DRY_RUN ?=
GPUS ?=
NODES ?=
ARGS ?=

.PHONY: help setup train test test-slow bench gpu-check plan eval generate sweep clean-runs lint

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'
	@echo "  variables: SIZE=tiny|8m|35m|…|10b  OBJECTIVE=mlm|clm|transfer  TOKENS=2e9 (with SIZE)  FORCE=1  ARGS='--trainer.max_steps 10 --run_name quick'"
	@echo "             GPUS=8 NODES=4 (train: devices per node, nodes)  DRY_RUN=1 (train: plan + per-GPU memory, no run)"
	@echo "             FLOPS=1e21 (plan)  CKPT=DIR (eval, generate)  TASKS=ss3,gb1,dms_blat,contacts (eval)"

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "no CUDA here: installing the CPU build torch==$(TORCH_VERSION) first"; \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); fi
	@$(BIN)/pip install -q -e ".[dev,eval]"
	@touch $@

setup: $(VENV)/.installed ## create .venv and install plm (idempotent)

train: setup ## train: CPU demo by default; SIZE=… OBJECTIVE=mlm|clm|transfer TOKENS=… (with SIZE) GPUS=… NODES=… DRY_RUN=1 FORCE=1
	$(BIN)/plm train $(if $(SIZE),--size $(SIZE)) --objective $(OBJECTIVE) $(if $(TOKENS),--tokens $(TOKENS)) \
	  $(if $(GPUS),--devices $(GPUS)) $(if $(NODES),--num-nodes $(NODES)) $(if $(DRY_RUN),--dry-run) $(if $(FORCE),--force) $(ARGS)

lint: setup ## ruff check and ruff format --check over the tree (a CI gate; `ruff format .` fixes the layout)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup ## fast test suite (< 10 min on 2 cores)
	@if command -v mmseqs >/dev/null 2>&1 || [ -n "$$PLM_REQUIRE_MMSEQS" ]; then \
	  $(BIN)/python -m pytest -q; \
	else \
	  echo "warning: no mmseqs here (apt-get install mmseqs2): the 'mmseqs' tests are left out; CI runs them"; \
	  $(BIN)/python -m pytest -q -m "not slow and not mmseqs"; fi

test-slow: setup ## slow checks only (CI runs them when time allows)
	$(BIN)/python -m pytest -q -m slow; rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

bench: setup ## performance benchmarks → benchmarks/results.json (≈ 25 min on 2 cores)
	nice -n -10 $(BIN)/python benchmarks/run_all.py  # raised priority where allowed; a warning elsewhere

gpu-check: setup ## CUDA machines: varlen vs dense attention parity, FSDP2 on 2 GPUs, MFU → benchmarks/results_gpu.json (< 10 min)
	$(BIN)/python -m benchmarks.gpu_check $(ARGS)

FLOPS ?= 1e21
CKPT ?=
TASKS ?= ss3,gb1,dms_blat,contacts

plan: setup ## compute-optimal size and tokens for FLOPS=… OBJECTIVE=… (plm plan; ARGS='--write run.yaml')
	$(BIN)/plm plan --flops $(FLOPS) --objective $(OBJECTIVE) $(ARGS)

eval: setup ## downstream tasks on CKPT=… (default: the make train MLM) → checkpoints/eval/; full data from PLM_DATA_ROOT=DIR, else the bundled subsets
	$(BIN)/plm evaluate --checkpoint $(or $(CKPT),checkpoints/mlm/final) --tasks $(TASKS) --out checkpoints/eval $(ARGS)

generate: setup ## sample 100 proteins from CKPT=… (default: the make train OBJECTIVE=clm model) → checkpoints/samples.fasta
	$(BIN)/plm generate --checkpoint $(or $(CKPT),checkpoints/clm/final) --num 100 --out checkpoints/samples.fasta $(ARGS)

sweep: setup ## the small real IsoFLOP sweep + law fits of evaluation/results/scaling (1–2 h on 2 CPU cores)
	PLM=$(BIN)/plm bash evaluation/results/scaling/run.sh

clean-runs: ## delete everything under checkpoints/ except .gitkeep
	find checkpoints -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
