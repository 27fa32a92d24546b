# Roundhouse — every command a developer or CI runs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=
# What each README command builds or installs before its real work (each a target below).
DEMO_SETUP := venv control-plane engines images node-deps
TEST_SETUP := $(DEMO_SETUP) browser promtool stores
TIERS := lint crds-check chart-check test-unit test-contract test-integration test-e2e
SETUP_JOBS ?= 3
# A phase's command, timed: hack/setup.py prints how long it took (or that it was already in place).
timed = hack/setup.py run $(1) --

.DEFAULT_GOAL := help

# `make demo` and `make test` from nothing: the set-up phases run side by side (the compiles leave the
# cores idle while modules, wheels and Debian packages download), then the tiers one after another.
ifneq ($(filter demo test setup,$(MAKECMDGOALS)),)
MAKEFLAGS += --jobs=$(SETUP_JOBS)
$(TEST_SETUP): | setup-plan
lint: | $(TEST_SETUP)
crds-check: | lint
chart-check: | crds-check
test-unit: | chart-check
test-contract: | test-unit
test-integration: | test-contract
test-e2e: | test-integration
endif

.PHONY: setup-plan
setup-plan:
	@hack/setup.py plan $(firstword $(filter demo test setup,$(MAKECMDGOALS)) setup) \
	  $(if $(filter test setup,$(MAKECMDGOALS)),$(TEST_SETUP),$(DEMO_SETUP))

.PHONY: setup
setup: $(TEST_SETUP) ## build and install everything both README commands use (what `make demo` and `make test` do first)

.PHONY: help
help: ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(call timed,venv) bash -c 'set -e; test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install --quiet --upgrade pip==25.3; $(PY) -m pip install --quiet -e ".[test]"'
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
control-plane: ## build (once, cached in ~/.cache/roundhouse) kube-apiserver, kubelet, kubectl, etcd, kwok, helm from Go modules
	@$(call timed,control-plane) hack/build-control-plane.sh k8s etcd kwok helm

.PHONY: engines
engines: ## build (once, cached in ~/.cache/roundhouse) llama-server, ollama, and vLLM's and SGLang's argument parsers
	@$(call timed,engines) hack/build-engines.sh

.PHONY: vllm-parser
vllm-parser: ## only vLLM's own argument parser, in a cached venv (vLLM without its GPU dependencies)
	hack/build-vllm-parser.sh

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
	@$(call timed,browser) hack/apt-install chromium

.PHONY: test-contract
test-contract: venv engines ## each family's rendered command lines run by the real engines of the pinned versions
	$(PY) -m pytest tests/contract -q $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: venv control-plane engines browser promtool stores ## integration tests against the real local control plane (and the admin page in Chromium)
	$(PY) -m pytest tests/integration -q $(PYTEST_ARGS)

.PHONY: manifests
manifests: ## render manifests/install.yaml from the Helm chart
	hack/render-install.sh

.PHONY: chart-check
chart-check: venv control-plane ## helm lint, helm template, and install.yaml drift check (helm is built from Go modules, cached)
	$$(hack/build-control-plane.sh paths | grep helm)/helm lint --strict charts/roundhouse
	$$(hack/build-control-plane.sh paths | grep helm)/helm template t charts/roundhouse >/dev/null
	$$(hack/build-control-plane.sh paths | grep helm)/helm lint --strict charts/roundhouse \
	  --set dashboards.enabled=true,prometheusRule.enabled=true
	$(PY) hack/gen-dashboard.py --check
	hack/render-install.sh --check

.PHONY: test-e2e
test-e2e: venv control-plane engines images node-deps ## end to end on a real node (kubelet + containerd here; root): the chart, real engine pods
	ROUNDHOUSE_CLUSTER_DIR=$(E2E_CLUSTER_DIR) ROUNDHOUSE_REAL_NODES=1 ROUNDHOUSE_GPU_NODES=0 ROUNDHOUSE_CPU_NODES=0 \
	  $(PY) -m pytest tests/e2e -q -rs --ignore=tests/e2e/test_kind.py $(PYTEST_ARGS)

.PHONY: test-e2e-kind
test-e2e-kind: venv ## end to end on kind (needs Docker and kind; skipped with the reason otherwise)
	$(PY) -m pytest tests/e2e/test_kind.py -q -rs $(PYTEST_ARGS)

.PHONY: test
test: $(TIERS) ## everything CI runs (installs what the tiers use first)

.PHONY: demo
demo: $(DEMO_SETUP) ## the demo: local cluster, operator, gateway, engines, a live mode switch (Ctrl-C stops it)
	$(PY) hack/demo.py $(DEMO_ARGS)

.PHONY: golden
golden: venv ## regenerate the operator's golden manifests (tests/unit/golden) after reviewing a render change
	UPDATE_GOLDEN=1 $(PY) -m pytest tests/unit/test_render.py -q

# --- real nodes: kubelet + containerd on this machine, images built without Docker ----------------
E2E_CLUSTER_DIR ?= $(CURDIR)/.local-cluster-e2e

.PHONY: node-deps
node-deps: ## Debian's containerd, runc, CNI plugins, iptables and conntrack for real nodes (apt-get, once)
	@$(call timed,node-deps) hack/apt-install containerd runc containernetworking-plugins iptables conntrack

.PHONY: promtool
promtool: ## Debian's prometheus package, for promtool: the chart's alert rules are checked with it (apt-get, once)
	@$(call timed,promtool) hack/apt-install --no-install-recommends prometheus

.PHONY: stores
stores: ## Debian's redis-server: the gateway's shared state store tests start their own (apt-get, once)
	@$(call timed,stores) hack/apt-install --no-install-recommends redis-server

.PHONY: images
images: engines stores ## build (cached by content) the OCI images: pause, llama-server, ollama, roundhouse, vLLM and SGLang stand-ins, the chart's Redis
	@$(call timed,images) hack/build-images.py

.PHONY: cluster-up-real
cluster-up-real: control-plane images node-deps ## the local cluster plus one real node (root; kubelet, containerd, CNI bridge, kube-proxy)
	hack/local-cluster up --real-nodes 1
