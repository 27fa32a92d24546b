# Roundhouse — every command a developer or CI runs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv and install the project with its test extra

.PHONY: crds
crds: venv ## regenerate the CRD YAML (crds/ and the chart) from crds/roundhouse_api
	$(PY) -m roundhouse_api.crdgen

.PHONY: crds-check
crds-check: venv ## fail if the generated CRDs differ from the models
	$(PY) -m roundhouse_api.crdgen --check

.PHONY: lint
lint: venv ## ruff, ruff format --check, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: control-plane
control-plane: ## build (once, cached in ~/.cache/roundhouse) kube-apiserver, etcd, kwok, helm from Go modules
	hack/build-control-plane.sh k8s etcd kwok helm

.PHONY: engines
engines: ## build (once, cached in ~/.cache/roundhouse) llama-server, ollama and vLLM's argument parser
	hack/build-engines.sh

.PHONY: cluster-up
cluster-up: control-plane ## start the local control plane with simulated GPU nodes
	hack/local-cluster up

.PHONY: cluster-down
cluster-down: ## stop the local control plane
	hack/local-cluster down

.PHONY: test-unit
test-unit: venv ## unit tests (pure functions, models, renderers)
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

.PHONY: browser
browser: ## Debian's chromium for the admin page's browser tests (apt-get, once; Playwright drives it)
	@command -v chromium >/dev/null || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get install -y -q chromium || { $$sudo apt-get update -q && $$sudo apt-get install -y -q chromium; }; }

.PHONY: test-contract
test-contract: venv engines ## each family's rendered command lines run by the real engines of the pinned versions
	$(PY) -m pytest tests/contract -q $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: venv control-plane engines browser ## integration tests against the real local control plane (and the admin page in Chromium)
	$(PY) -m pytest tests/integration -q $(PYTEST_ARGS)

.PHONY: manifests
manifests: ## render manifests/install.yaml from the Helm chart
	hack/render-install.sh

.PHONY: chart-check
chart-check: ## helm lint, helm template, and install.yaml drift check (helm is built from Go modules, cached)
	hack/build-control-plane.sh helm
	$$(hack/build-control-plane.sh paths | grep helm)/helm lint --strict charts/roundhouse
	$$(hack/build-control-plane.sh paths | grep helm)/helm template t charts/roundhouse >/dev/null
	hack/render-install.sh --check

.PHONY: test-e2e
test-e2e: venv ## end-to-end on kind (needs Docker and kind; skipped with the reason otherwise)
	$(PY) -m pytest tests/e2e -q -rs $(PYTEST_ARGS)

.PHONY: test
test: lint crds-check chart-check test-unit test-contract test-integration ## everything CI runs

.PHONY: demo
demo: venv engines ## the demo: local cluster, operator, gateway, engines, a live mode switch (Ctrl-C stops it)
	$(PY) hack/demo.py $(DEMO_ARGS)

.PHONY: golden
golden: venv ## regenerate the operator's golden manifests (tests/unit/golden) after reviewing a render change
	UPDATE_GOLDEN=1 $(PY) -m pytest tests/unit/test_render.py -q
