# Entry point for everything a developer runs. `make help` lists the targets.
include versions.env
export

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python$(PYTHON_VERSION)
UV_VERSION := 0.9.30
VENV := .venv
BIN := $(VENV)/bin
export PYTHONPATH := $(CURDIR)/dags:$(CURDIR)/notebooks:$(CURDIR)

.DEFAULT_GOAL := help
.PHONY: help setup test lint fmt bench constraints

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { echo "Cannot create $(VENV): install Python $(PYTHON_VERSION) with venv (Debian/Ubuntu: apt-get install python$(PYTHON_VERSION)-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(BIN)/python constraints.txt requirements.txt requirements-dev.txt versions.env
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install --quiet --compile-bytecode \
		"apache-airflow[postgres]==$(AIRFLOW_VERSION)" -r requirements-dev.txt -c constraints.txt
	touch $@

setup: $(VENV)/.installed ## Create .venv with Airflow and every pinned dependency

test: setup ## Run the whole test suite
	$(BIN)/pytest

lint: setup ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: setup ## Format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

constraints: $(BIN)/python ## Regenerate constraints.txt (Airflow's release-time set + our pins)
	{ sed -n '1,4p' constraints.txt; \
	  $(BIN)/uv pip compile --quiet --python-version $(PYTHON_VERSION) --exclude-newer $(CONSTRAINTS_CUTOFF) \
		--no-header --no-annotate <(echo "apache-airflow[postgres]==$(AIRFLOW_VERSION)") requirements-dev.txt; \
	} > constraints.txt.new && mv constraints.txt.new constraints.txt
