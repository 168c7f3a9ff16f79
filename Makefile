# cdcflow: `make demo` runs the local end-to-end demo, `make test` runs every check.
# Both install what they need on a fresh machine: uv (in .tools/), then the locked
# environment (.venv/) from uv.lock. Nothing is downloaded at run time.

SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
BIN := $(VENV)/bin
EVENTS ?= 20000
RATE ?= 350
BAD ?= 0.02
PYTEST_ARGS ?=

export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy

.PHONY: install demo test lint unit integration chaos bench clean help prometheus shellcheck rabbitmq generate cluster-build cluster cluster-down flink \
	engine engine-down images containers crds kind-up kind-down chart

help:
	@echo "make demo   - local end-to-end demo (EVENTS=$(EVENTS) RATE=$(RATE) BAD=$(BAD))"
	@echo "make test   - lint (ruff, format, mypy, lint-imports) and the whole test suite"
	@echo "make lint   - ruff check, ruff format --check, mypy and lint-imports only"
	@echo "make chaos  - the chaos suite alone"
	@echo "make bench  - benchmarks (QUICK=1 for a short run)"
	@echo "make generate - rewrite the generated files (dashboards, alert rules, tables, docs/cleaning.md)"
	@echo "make crds     - regenerate crds/pipeline.yaml and docs/operator.md's spec table"
	@echo "make cluster       - start a local Kubernetes control plane (kwok nodes); prints export KUBECONFIG=..."
	@echo "make cluster-down  - stop it"
	@echo "make cluster-build - build its pinned binaries once (~20 min the first time; make test does it)"
	@echo "make flink  - fetch and check the Flink job server (Java 17 + Maven; cached)"
	@echo "make engine / engine-down - a private Docker daemon (prints export DOCKER_HOST=...)"
	@echo "make images - build the container images (IMAGES=\"workers flink operator nx27017 rabbitmq\" TAG=...)"
	@echo "make kind-up   - kind cluster + images + chart + examples/pipeline.yaml until Ready (PROMETHEUS=1 adds Prometheus/Grafana)"
	@echo "make kind-down - delete that kind cluster"
	@echo "make chart     - the Helm chart's tests (lint, schema, server dry runs, helm install)"

$(UV):
	@command -v $(PYTHON) >/dev/null || { echo "cdcflow needs Python 3.11 ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --all-extras --python $(PYTHON)
	@touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/cdcflow demo --events $(EVENTS) --rate $(RATE) --bad-ratio $(BAD)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: lint prometheus shellcheck rabbitmq flink cluster-build
	scripts/pytest.sh tests $(PYTEST_ARGS)

# Real Prometheus/promtool for the alert-rule and scrape tests (Debian package;
# prints "skipping: ..." where it cannot install, and those tests then skip).
prometheus:
	@bash scripts/install-prometheus.sh

# shellcheck for the test that checks every shell script (Debian package; as root).
shellcheck:
	@bash scripts/install-shellcheck.sh

# Regenerate the committed generated files (dashboards, alert rules, metrics table,
# README settings table, docs/cleaning.md); tests fail when they are stale.
generate: install
	$(BIN)/python -m cdcflow_build.dashboards --write
	$(BIN)/python -m cdcflow.alerts --write
	$(BIN)/python -c 'from tests.unit.test_docs import write; write()'
	$(BIN)/cdcflow rules --markdown > docs/cleaning.md
	$(BIN)/cdcflow-operator crd --write

# RabbitMQ from Debian's package when missing (as root; otherwise it says what to run).
# Only installs: tests, the demo and the benchmarks start private nodes of their own.
rabbitmq: install
	@$(BIN)/python -m cdcflow.localbroker install

# Beam's Flink job server (Beam 2.62.0, Flink 1.19) through Maven into
# $${XDG_CACHE_HOME:-~/.cache}/cdcflow/flink/, checked against images/flink/jars.sha256.
# Only re-checks once fetched. `--runner flink` needs it; nothing is fetched at run time.
flink:
	@bash scripts/flink-setup.sh

unit: install
	scripts/pytest.sh tests/unit $(PYTEST_ARGS)

integration: install rabbitmq flink
	scripts/pytest.sh tests/integration $(PYTEST_ARGS)

chaos: install rabbitmq flink
	scripts/pytest.sh tests/chaos -s $(PYTEST_ARGS)

# The local Kubernetes control plane (docs/testing.md): binaries built once per machine
# and version into ~/.cache/cdcflow/k8s/<version>/ (seconds when already there).
cluster-build:
	@nice -n 10 scripts/cluster/build.sh

cluster: cluster-build
	@scripts/cluster/start.sh

cluster-down:
	@scripts/cluster/stop.sh

bench: install rabbitmq flink
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

# The Pipeline CRD, generated from the operator's model (a test checks it is current).
crds: install
	$(BIN)/cdcflow-operator crd --write

clean:
	rm -rf .cdcflow .pytest_cache .mypy_cache .ruff_cache

# A private Docker daemon in the cache (root; installs docker.io from Debian when
# missing), never touching the host's network. `eval "$$(make -s engine)"` sets DOCKER_HOST.
engine:
	@bash scripts/engine/up.sh

engine-down:
	@bash scripts/engine/down.sh

# Every image (your docker/podman when there is one, else the private engine).
images:
	@bash scripts/engine/images.sh

containers: install
	scripts/pytest.sh tests/containers $(PYTEST_ARGS)

# kind (docs/kubernetes.md): needs docker and a kind node image (pulled, or docker-loaded).
kind-up:
	@bash scripts/kind/up.sh

kind-down:
	@bash scripts/kind/down.sh

chart: install cluster-build
	scripts/pytest.sh tests/chart $(PYTEST_ARGS)
