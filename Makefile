# Two commands do all the set-up on a fresh machine:
#   make demo   - virtual environment, install, then profile -> tune -> apply on the embedded reference workload (CPU)
#   make test   - same set-up, then lint, format check and the test suite
# A GPU user overrides the torch build, e.g.  make demo TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
DEMO ?= runs/demo
BIN := $(VENV)/bin
STAMP := $(VENV)/.hetcache-installed

.PHONY: install demo test lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,postgres]"
	touch $@

install: $(STAMP)

DEMO_CLIPS ?= box,moving
DEMO_CONTRACT ?= paste
DEMO_BUDGET ?= psnr_mask=32
DEMO_TRIALS ?= 20
DEMO_REPS ?= 3

demo: $(STAMP)
	$(BIN)/hetcache-profile --clips $(DEMO_CLIPS) --contract $(DEMO_CONTRACT) --out $(DEMO)/profile --overwrite
	$(BIN)/hetcache-tune --budget $(DEMO_BUDGET) --trials $(DEMO_TRIALS) --clips $(DEMO_CLIPS) --contract $(DEMO_CONTRACT) --profile $(DEMO)/profile \
		--out $(DEMO)/tune --join --export-pareto $(DEMO)/tune/pareto
	$(BIN)/hetcache run --policy $(DEMO)/tune/policy.json --compare --reps $(DEMO_REPS) --clips $(DEMO_CLIPS) --contract $(DEMO_CONTRACT) \
		--out $(DEMO)/apply --overwrite
	@echo "explore it: $(BIN)/hetcache-dashboard --runs $(DEMO)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
