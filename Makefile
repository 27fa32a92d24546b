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
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

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
chart-check: venv ## helm lint, helm template, and install.yaml drift check (helm is built from Go modules, cached)
	hack/build-control-plane.sh helm
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
test: lint crds-check chart-check test-unit test-contract test-integration test-e2e ## everything CI runs

.PHONY: demo
demo: venv engines ## the demo: local cluster, operator, gateway, engines, a live mode switch (Ctrl-C stops it)
	$(PY) hack/demo.py $(DEMO_ARGS)

.PHONY: golden
golden: venv ## regenerate the operator's golden manifests (tests/unit/golden) after reviewing a render change
	UPDATE_GOLDEN=1 $(PY) -m pytest tests/unit/test_render.py -q

# --- real nodes: kubelet + containerd on this machine, images built without Docker ----------------
E2E_CLUSTER_DIR ?= $(CURDIR)/.local-cluster-e2e

.PHONY: node-deps
node-deps: ## Debian's containerd, runc, CNI plugins, iptables and conntrack for real nodes (apt-get, once)
	@missing=$$(for p in containerd runc containernetworking-plugins iptables conntrack; do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); [ -z "$$missing" ] || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get install -y -q $$missing || { $$sudo apt-get update -q && $$sudo apt-get install -y -q $$missing; }; }

.PHONY: promtool
promtool: ## Debian's prometheus package, for promtool: the chart's alert rules are checked with it (apt-get, once)
	@command -v promtool >/dev/null || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get install -y -q --no-install-recommends prometheus || { $$sudo apt-get update -q && \
	  $$sudo apt-get install -y -q --no-install-recommends prometheus; }; }

.PHONY: images
images: engines ## build (cached by content) the OCI images: pause, llama-server, ollama, roundhouse, vLLM stand-in
	hack/build-images.py

.PHONY: cluster-up-real
cluster-up-real: control-plane images node-deps ## the local cluster plus one real node (root; kubelet, containerd, CNI bridge, kube-proxy)
	hack/local-cluster up --real-nodes 1
