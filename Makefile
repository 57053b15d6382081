# Local stack and checks. On a fresh Debian/Ubuntu machine (as root): `make up`, `make test`.
# Everything the stack needs is installed by `make install` (idempotent).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
UV      := .devstack/uv/bin/uv
DEVSTACK := $(PY) -m devstack
SYS_PY  ?= python3

.PHONY: help unit install apt purge-rabbitmq venv lock jars up down status redeploy test lint \
	docs proto screenshot generate cluster-build cluster-test node-chaos cluster-down fuzz

help:  ## List every target with what it does
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-z-]+:[^#=]*## / {printf "  %-16s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

# --- install -------------------------------------------------------------------------
install: apt venv jars  ## Install what the stack needs: Debian packages, the locked Python env, Kafka's jars

# apt-get only what is missing; the packages' own services (and the epmd daemon the
# rabbitmq-server package leaves behind) are stopped: devstack runs its own servers.
apt:  ## Install the missing Debian packages (servers, browser, container runtime)
	@SYS_PY=$(SYS_PY) devstack/install-packages.sh

# CI's fresh-machine path: remove RabbitMQ and Erlang so the next `make up` installs them
# the way a new machine does (see .ci/run).
purge-rabbitmq:  ## Remove RabbitMQ and Erlang (CI's fresh-machine path)
	DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq rabbitmq-server 'erlang-*' >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get autoremove -y -qq >/dev/null

# uv.lock is the one lock (hashes for every package): install never resolves. uv itself is
# the version the lock pins, installed by pip with the lock's hashes (uvlock.py). uv finds
# this machine's CA store (a TLS-inspecting proxy's CA included) with UV_SYSTEM_CERTS.
export UV_SYSTEM_CERTS := 1
export UV_PYTHON := $(SYS_PY)

$(UV): uv.lock uvlock.py
	$(SYS_PY) uvlock.py bootstrap .devstack/uv

# Reinstall only when the lock changed (editable install: Ray workers import it).
# --locked: fail, rather than re-resolve, when pyproject.toml and uv.lock disagree.
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --quiet --extra test --extra load
	touch $@

venv: $(STAMP)  ## The Python env in .venv, exactly as uv.lock pins it

# Re-resolve every dependency on purpose (the only target that changes uv.lock); then
# `make proto` if grpcio-tools moved, and commit both.
lock: $(UV)  ## Re-resolve every Python dependency into uv.lock (on purpose only)
	$(UV) lock --upgrade

jars: $(STAMP)  ## Fetch Kafka's jars (checked against their published hashes)
	$(DEVSTACK) fetch

# --- stack ---------------------------------------------------------------------------
# NODES=3: a head and two worker Ray nodes on this machine (after `make down`).
# TOPOLOGY=replicated: 3 Kafka brokers, 3 RabbitMQ nodes, Redis and Valkey each a primary,
# a replica and 3 Sentinels (after `make down`; docs/local-stack.md). Default: single.
up: install  ## Start the local stack: Kafka, RabbitMQ, Redis, Valkey, Ray Serve (NODES=3, TOPOLOGY=replicated)
	$(if $(NODES),DEVSTACK_RAY_NODES=$(NODES)) DEVSTACK_TOPOLOGY=$(or $(TOPOLOGY),single) \
		$(DEVSTACK) up
	@$(DEVSTACK) endpoints

down:  ## Stop the local stack, by pid
	@if [ -x $(PY) ]; then $(DEVSTACK) down; fi

status:  ## Show what the local stack runs and where
	@$(DEVSTACK) status

# Serve does not notice code changes on `serve deploy` of an unchanged config: after
# editing serve_app/, shut the applications down and deploy them again.
redeploy: install  ## Deploy the Serve applications again after editing serve_app/
	$(DEVSTACK) redeploy

# --- checks --------------------------------------------------------------------------
# The fast tests: pure logic, no server and no Ray (tests/unit, well under a minute).
unit: venv  ## The fast tests: pure logic, no server and no Ray
	$(VENV)/bin/pytest -q tests/unit

test: up cluster-build  ## Every test against the real stack and a real Kubernetes control plane and node
	$(VENV)/bin/pytest -q

# Kubernetes fidelity (tests/cluster/, also part of `make test`): a loopback control plane
# (etcd, kube-apiserver, controller-manager, scheduler) with KWOK and the KubeRay operator runs
# the manifests of kuberay/ and k8s/infra (test_cluster.py); a real node (containerd + runc,
# CNI bridge, kubelet, kube-proxy, CoreDNS) runs the RayService in real pods from the image
# built from ./Dockerfile (test_pods.py). Go binaries and images are built once into
# .devstack/cluster (cold: ~15-25 min on 2 cores, most of it Go; then seconds).
cluster-build: venv  ## Build the cluster's Go binaries and container images (cached)
	$(PY) -m devstack.cluster build

cluster-test: apt cluster-build  ## Only the Kubernetes tests (tests/cluster)
	$(VENV)/bin/pytest -q tests/cluster

# Every real-node round (tests/cluster, marker multi_node): a worker's node drained and a node
# lost with its containers, under load (these two also in `make test`), and those marked
# node_faults: a zero-downtime upgrade, the Ray head pod deleted, the spread over nodes.
node-chaos: apt cluster-build  ## Real nodes drained and lost, an upgrade, the Ray head deleted, under load
	NODE_FAULTS=1 $(VENV)/bin/pytest -q -m multi_node tests/cluster

# Stops, by pid, a cluster (and its node) left by `python -m devstack.cluster up|node-up` or a
# killed test run, and removes the node's bridge and iptables chains by name.
cluster-down:  ## Stop a cluster left by the cluster tests, by pid
	@if [ -x $(PY) ]; then $(PY) -m devstack.cluster down; fi

# --- generated files (committed; tests fail when they drift) --------------------------
generate: proto  ## Write every generated file again (stubs, manifests, dashboards)
	$(PY) -m kuberay.render
	$(PY) -m grafana.dashboard
	$(PY) -m grafana.ray_dashboards

# The gRPC stubs in serve_app/pb, from proto/ by the locked grpcio-tools.
proto: venv  ## The gRPC stubs from proto/ by the locked grpcio-tools
	$(PY) -m serve_app.protogen

# Property-based fuzzing of every interface (tests/test_fuzz_*.py): REST (our strategies and
# schemathesis over /openapi.json) and gRPC against the running stack, plus the consumers'
# decoding offline. FUZZ_EXAMPLES examples per test (>= 10,000 live requests in all);
# prints the requests sent, by status. `make test` runs the same tests with a few hundred.
FUZZ_EXAMPLES ?= 2000
fuzz: venv  ## Property-based fuzzing of every interface (FUZZ_EXAMPLES per test)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest -q -p tests.support.fuzzing -m fuzz \
		tests/fuzz

# Refresh docs/screenshot-dashboard.png from the running stack (the browser test, told where
# to save its screenshot; by default it keeps it in a temporary folder).
screenshot: up  ## Refresh docs/screenshot-dashboard.png from the running stack
	DASHBOARD_SCREENSHOT=$(CURDIR)/docs/screenshot-dashboard.png $(VENV)/bin/pytest -q \
		tests/stack/test_browser.py

# The documentation site (docs/, mkdocs.yml): strict, so a broken link or anchor fails.
docs: venv  ## Build the documentation site into site/ (strict: broken links fail)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# ruff, and the import contracts of pyproject.toml (which stage may import what).
lint: venv  ## ruff and the import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-logo

include loadtest/loadtest.mk
