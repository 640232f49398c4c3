# rayvllm developer entry points. Every target works on a fresh machine: it builds or reuses what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/operator

.PHONY: venv tools cluster-up cluster-down lint typecheck unit test check crds demo clean

$(PY): pyproject.toml requirements.lock
	$(PYTHON) -m pip install -q uv==0.13.8
	$(PYTHON) -m uv venv -q --allow-existing --python $(PYTHON) $(VENV)
	$(PYTHON) -m uv pip install -q --python $(PY) -r requirements.lock
	$(PYTHON) -m uv pip install -q --python $(PY) --no-deps -e .
	@touch $(PY)

venv: $(PY)

## tools: build (or reuse from ~/.cache/rayvllm) etcd, Kubernetes, kwok, KubeRay and helm from Go modules
tools:
	bash hack/build-tools.sh

## cluster-up: start the local control plane on 127.0.0.1; the last line printed is `export KUBECONFIG=...`
cluster-up: venv tools
	@$(PY) hack/cluster.py up

cluster-down: venv
	@$(PY) hack/cluster.py down

lint: venv tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash hack/lint-dockerfile.sh
	$(PY) hack/render-manifests.py --check

typecheck: venv
	$(VENV)/bin/mypy

unit: venv tools
	$(VENV)/bin/pytest tests/unit -q

## test: the README's test command: lint, types, then every test tier against the real components
test: venv tools lint typecheck
	$(VENV)/bin/pytest tests -q

clean: cluster-down
	rm -rf .cluster
