# rayvllm developer entry points. Every target works on a fresh machine: it builds or reuses what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/operator
# The Go-built tools, in build order (hack/build-tools.sh knows how to build each).
TOOLS := kubernetes kubernetes-node etcd kuberay kwok helm coredns prometheus toxiproxy

.PHONY: venv node-packages tools $(addprefix tool-,$(TOOLS)) ray-env images cluster-up cluster-down lint lint-static lint-rendered typecheck unit test day2 chaos \
	demo demo-down bench clean

$(PY): pyproject.toml requirements.lock
	$(PYTHON) -m pip install -q uv==0.13.8
	$(PYTHON) -m uv venv -q --allow-existing --python $(PYTHON) $(VENV)
	$(PYTHON) -m uv pip install -q --python $(PY) -r requirements.lock
	$(PYTHON) -m uv pip install -q --python $(PY) --no-deps -e .
	@touch $(PY)

venv: $(PY)

## node-packages: Debian's containerd, runc, CNI plugins, iptables/nftables, buildah, mmdebstrap (pinned; root)
node-packages:
	bash hack/install-node-packages.sh

## tools: build (or reuse from ~/.cache/rayvllm) etcd, Kubernetes (with kubelet, kube-proxy), kwok, KubeRay,
## CoreDNS and helm from Go modules, and the tests' Prometheus and Toxiproxy
tools: $(addprefix tool-,$(TOOLS))

# One target a tool, so `make -j` builds them side by side. kubernetes-node reuses the compiled packages of
# kubernetes (the same module graph): building both at once would compile them twice.
$(addprefix tool-,$(TOOLS)): tool-%: node-packages
	bash hack/build-tools.sh $*
tool-kubernetes-node: tool-kubernetes

## ray-env: build (or reuse) the Python venv with real Ray and vLLM (CPU build) for the e2e tier and demo
ray-env:
	bash hack/ray-env.sh

## images: build (or reuse) the real node's images (Ray + vLLM, the operator, pause) into buildah's storage, no
## cluster needed; cluster-up imports them (and builds whatever is still missing)
images: venv node-packages ray-env
	$(PY) -m hack.localcluster.images --build-only

## cluster-up: the local cluster (control plane, kwok's GPU nodes, a real node, images); last line `export KUBECONFIG=...`
cluster-up: venv tools ray-env
	@$(PY) hack/cluster.py up

cluster-down: venv
	@$(PY) hack/cluster.py down

## lint: every linter. lint-static needs the venv only (hadolint comes from it), so `make test` runs it before
## any build; lint-rendered needs the pinned helm (`make tools`) to render the chart
lint: lint-static lint-rendered

lint-static: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	bash hack/lint-dockerfile.sh
	$(PY) hack/gen-api-docs.py --check

lint-rendered: venv tools
	$(PY) hack/render-manifests.py --check

typecheck: venv
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy hack/gen-api-docs.py

## unit: the unit tier; needs nothing built or running
unit: venv
	$(VENV)/bin/pytest tests/unit -q

## test: the README's test command, cheapest first (hack/run-tests.sh prints a [phase] line for each): static
## checks, the unit tier, then the builds, the checks needing built tools, the local cluster, integration
## and e2e against it in one session, cluster down. Leaves out the day2 and chaos tests (their own targets).
test: venv
	bash hack/run-tests.sh

## day2: the heavy day-2 runs on real pods (autoscaling under a load ramp), left out of `make test`
day2: venv tools ray-env
	bash hack/run-tests.sh tests -m day2

## chaos: every test marked chaos, at full size (100 operator kills, the control plane's own faults, the full
## fuzz draw, ...); prints its table. Left out of `make test`
chaos: venv tools ray-env
	RAYVLLM_CHAOS=full bash hack/run-tests.sh tests -m chaos

## demo: the operator end to end on this machine; prints a completion served through it. DOWN=1 stops all after.
demo: venv tools ray-env
	$(PY) hack/demo.py $(if $(DOWN),--down,)

demo-down: venv
	$(PY) hack/demo.py --stop

## bench: the control-loop benchmark (kwok nodes, Ray unreachable, beside KubeRay) on its own loopback cluster;
## prints a markdown table. BENCH_ARGS="--quick", or e.g. "--n 100 1000 --operator-root PATH --out FILE"
bench: venv tools
	$(PY) -m bench $(BENCH_ARGS)

clean: cluster-down
	rm -rf .cluster
