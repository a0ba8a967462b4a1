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
.PHONY: help setup java test lint fmt bench constraints

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { echo "Cannot create $(VENV): install Python $(PYTHON_VERSION) with venv (Debian/Ubuntu: apt-get install python$(PYTHON_VERSION)-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(BIN)/python constraints.txt requirements.txt requirements-dev.txt versions.env
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install --quiet --compile-bytecode \
		"apache-airflow[postgres]==$(AIRFLOW_VERSION)" -r requirements-dev.txt -c constraints.txt
	touch $@

setup: $(VENV)/.installed ## Create .venv with Airflow and every pinned dependency

java: setup ## Java 17 for PySpark (apt-get when root on Debian/Ubuntu, else how to install it)
	@$(BIN)/python -c 'from local.stack.prerequisites import ensure_java; ensure_java(print)'

test: setup java ## Run the whole test suite
	$(BIN)/pytest

lint: setup ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: setup ## Format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup java ## Print performance figures (ingest, Databricks job, local stack); see benchmarks/
	$(BIN)/python -m benchmarks.ingest
	$(BIN)/python -m benchmarks.databricks_job
	$(BIN)/python -m benchmarks.local_stack

constraints: $(BIN)/python ## Regenerate constraints.txt (Airflow's release-time set + our pins)
	{ sed -n '1,4p' constraints.txt; \
	  $(BIN)/uv pip compile --quiet --python-version $(PYTHON_VERSION) --exclude-newer $(CONSTRAINTS_CUTOFF) \
		$(foreach p,$(CONSTRAINTS_CUTOFF_EXCEPTIONS),--exclude-newer-package $(p)) \
		--no-header --no-annotate <(echo "apache-airflow[postgres]==$(AIRFLOW_VERSION)") requirements-dev.txt; \
	} > constraints.txt.new && mv constraints.txt.new constraints.txt

# The local stack (local/stack/): everything on 127.0.0.1, pid files and logs in .run/demo.
.PHONY: demo demo-down
demo: setup ## Run the whole pipeline on this machine; Airflow UI on :8080 (DEMO_API_PORT)
	$(BIN)/python -m local.stack up

demo-down: ## Stop everything make demo started (safe when nothing runs)
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m local.stack down; else echo "Nothing was running."; fi

# Kubernetes (Kind + Helm); configuration in .env (see .env.example). ARGS passes options,
# e.g. make k8s-install ARGS=--dry-run
.PHONY: k8s-install k8s-install-ecr k8s-upgrade-dags k8s-status k8s-cleanup image-push
k8s-install: ## Kind cluster + Airflow with a locally built image (scripts/install-airflow.sh)
	scripts/install-airflow.sh $(ARGS)

k8s-install-ecr: ## Kind cluster + Airflow with the newest image from ECR
	scripts/install-airflow-2-ecr.sh $(ARGS)

k8s-upgrade-dags: ## Rebuild the image with your DAG changes and roll it out
	scripts/upgrade-dags.sh $(ARGS)

k8s-status: ## Pods, Helm release, API health, DAG import errors, failed task pods
	scripts/check-airflow-status.sh $(ARGS)

k8s-cleanup: ## Delete the release, namespace, logs volume and Kind cluster (asks first)
	scripts/complete-cleanup.sh $(ARGS)

image-push: ## Build the image and push it to ECR (cicd/build-and-push.sh)
	cicd/build-and-push.sh $(ARGS)
