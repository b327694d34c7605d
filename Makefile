# Two commands on a fresh machine with nothing but Python 3.10+:
#   make demo   set up .venv and run the main job (`zsampling demo`)
#   make test   set up .venv, lint (ruff, pinned) and run the whole test suite (what CI runs)
# torch is pinned to the CPU build first, so no dependency can pull a CUDA build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
DEMO_OUT ?= demo-output

.PHONY: venv demo test

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/zsampling demo --out $(DEMO_OUT)

test: venv
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q
