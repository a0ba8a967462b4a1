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
.PHONY: help setup java chromium parse test-fast test lint fmt bench constraints

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
	@$(BIN)/python -m local.stack.prerequisites java

chromium: setup ## Chromium for the browser tests (apt-get when root on Debian, else how to install it)
	@$(BIN)/python -m local.stack.prerequisites chromium

parse: setup ## Import every DAG file as the DAG processor does: import errors, parse times (s)
	$(BIN)/python -m local.parse_dags

test-fast: setup ## The tests without Spark, the local stack, a browser or the Kubernetes tooling
	$(BIN)/pytest -m "not spark and not e2e and not browser and not k8s"

test: setup java ## Run the whole test suite (installs Chromium for the browser tests when it can)
	@$(BIN)/python -m local.stack.prerequisites chromium || echo "Without chromium the browser tests are skipped (in CI they fail)."
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
	$(BIN)/python -m benchmarks.sites

constraints: $(BIN)/python ## Regenerate constraints.txt (Airflow's release-time set + our pins)
	{ sed -n '1,4p' constraints.txt; \
	  $(BIN)/uv pip compile --quiet --python-version $(PYTHON_VERSION) --exclude-newer $(CONSTRAINTS_CUTOFF) \
		$(foreach p,$(CONSTRAINTS_CUTOFF_EXCEPTIONS),--exclude-newer-package $(p)) \
		--no-header --no-annotate <(echo "apache-airflow[postgres]==$(AIRFLOW_VERSION)") requirements-dev.txt; \
	} > constraints.txt.new && mv constraints.txt.new constraints.txt

# The local stack (local/stack/): everything on 127.0.0.1, pid files and logs in .run/demo.
.PHONY: demo demo-up demo-run demo-status demo-logs demo-down
demo: setup ## Start the stack and run the whole pipeline once; Airflow UI on :8080 (DEMO_API_PORT)
	$(BIN)/python -m local.stack up --run

demo-up: setup ## Start the stack only (DAGs parsed and unpaused, nothing triggered)
	$(BIN)/python -m local.stack up

demo-run: setup ## Run the pipeline on the running stack; wait for the gold tables and print them
	$(BIN)/python -m local.stack run

demo-status: setup ## What the stack runs: services, pids, ports, URLs, login, recent DAG runs
	@$(BIN)/python -m local.stack status

demo-logs: setup ## Follow the stack's logs (SERVICE=scheduler for one; LINES=100 of history)
	@$(BIN)/python -m local.stack logs --lines $(or $(LINES),40) $(SERVICE)

demo-down: ## Stop everything make demo started (safe when nothing runs)
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m local.stack down; else echo "Nothing was running."; fi

# Kubernetes (Kind + Helm); configuration in .env (see .env.example). ARGS passes options,
# e.g. make k8s-install ARGS=--dry-run
.PHONY: k8s-install k8s-install-ecr k8s-upgrade-dags k8s-status k8s-cleanup k8s-refresh-digests image-push
k8s-install: ## Kind cluster + Airflow with a locally built image (scripts/install-airflow.sh)
	scripts/install-airflow.sh $(ARGS)

k8s-install-ecr: ## Kind cluster + Airflow with the newest image built from main (ECR)
	scripts/install-airflow-2-ecr.sh $(ARGS)

k8s-upgrade-dags: ## Roll out DAG changes (rebuilds the image only when dependencies changed)
	scripts/upgrade-dags.sh $(ARGS)

k8s-status: ## Pods, Helm release, API health, DAG import errors, failed task pods
	scripts/check-airflow-status.sh $(ARGS)

k8s-refresh-digests: ## Re-pin the base/Postgres image digests and the CI actions' commits
	scripts/refresh-digests.sh $(ARGS)

k8s-cleanup: ## Delete the release, namespace, logs volume and Kind cluster (asks first)
	scripts/complete-cleanup.sh $(ARGS)

image-push: ## Build the image and push it to ECR (cicd/build-and-push.sh)
	cicd/build-and-push.sh $(ARGS)
