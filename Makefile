# Local stack and checks. On a fresh Debian/Ubuntu machine (as root): `make up`, `make test`.
# Everything the stack needs is installed by `make install` (idempotent).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.installed
DEVSTACK := $(PY) -m devstack
APT_PKGS := rabbitmq-server redis-server wrk
SYS_PY  ?= python3

.PHONY: help install apt venv jars up down status redeploy test lint generate check-generated

help:
	@echo "make install | up | down | status | redeploy | test | lint | generate | load | bench"

# --- install -------------------------------------------------------------------------
install: apt venv jars

# apt-get only when something is missing. policy-rc.d (exit 101) stops Debian's postinst
# scripts from starting system rabbitmq/redis services: devstack runs its own.
apt:
	@missing=""; \
	[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing="$$missing rabbitmq-server"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	$(SYS_PY) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  made_policy=""; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; \
	  fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  ( apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing ); rc=$$?; \
	  [ -n "$$made_policy" ] && rm -f /usr/sbin/policy-rc.d; \
	  for svc in rabbitmq-server redis-server; do service $$svc stop >/dev/null 2>&1 || true; done; \
	  exit $$rc; \
	fi

$(PY):
	$(SYS_PY) -m venv $(VENV)

# Reinstall only when pyproject.toml changed (editable install: Ray workers import it).
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(STAMP)

jars: $(STAMP)
	$(DEVSTACK) fetch

# --- stack ---------------------------------------------------------------------------
up: install
	$(DEVSTACK) up
	@$(DEVSTACK) endpoints

down:
	@if [ -x $(PY) ]; then $(DEVSTACK) down; fi

status:
	@$(DEVSTACK) status

# Serve does not notice code changes on `serve deploy` of an unchanged config: after
# editing serve_app/, shut the applications down and deploy them again.
redeploy: install
	$(VENV)/bin/serve shutdown -y -a http://127.0.0.1:8265
	$(DEVSTACK) deploy

# --- checks --------------------------------------------------------------------------
test: up
	$(VENV)/bin/pytest -q

# --- generated files (committed; tests fail when they drift) --------------------------
generate: venv
	$(PY) -m serve_app.protogen
	$(PY) -m kuberay.render
	$(PY) -m grafana.dashboard
	$(PY) -m grafana.ray_dashboards

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

include loadtest/loadtest.mk
