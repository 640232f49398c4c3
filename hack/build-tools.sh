#!/usr/bin/env bash
# Builds (or reuses) the pinned control-plane binaries from Go modules: the tools named as arguments, or all. Idempotent: a component
# whose versioned cache directory is complete is skipped. Prints one line per step with timings.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${RAYVLLM_CACHE:-$HOME/.cache/rayvllm}/tools
mkdir -p "$cache"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
# Two cores: two package builds at a time per go command.
export GOMAXPROCS=${GOMAXPROCS:-2}
# The compiler is a Go program: a lazier garbage collector makes it faster for more memory (a few hundred MiB
# a compile, well within the machine), the largest single saving on a cold build.
export GOGC=${GOGC:-400}

log() { printf '[build-tools %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# build NAME VERSION FN: runs FN into a temp dir, then moves it into place atomically.
build() {
  local name=$1 version=$2 fn=$3 dest="$cache/$1-v$2"
  if [ -f "$dest/.complete" ]; then log "$name v$version: cached at $dest"; return; fi
  local tmp; tmp=$(mktemp -d "$cache/.$name-XXXXXX")
  log "$name v$version: building (this is the slow part on a cold machine)"
  local start=$SECONDS
  "$fn" "$version" "$tmp"
  touch "$tmp/.complete"
  rm -rf "$dest"; mv "$tmp" "$dest"
  log "$name v$version: done in $((SECONDS - start))s"
}

moddir() { go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'; }

# k8s_build VERSION OUT PKG...: Kubernetes binaries from the wrapper module, with the version stamped in
# (tools read --version).
k8s_build() {
  local v=$1 out=$2 minor ld="-s -w" p
  shift 2
  minor=$(echo "$v" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$here/tools/kubernetes" && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ld" -o "$out/" "$@")
}

build_kubernetes() {
  k8s_build "$1" "$2" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

# The real node's binaries, from the same wrapper module (its go.sum holds their dependencies too); a
# separate cache entry so adding them did not rebuild the control plane's.
build_kubernetes_node() {
  k8s_build "$1" "$2" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
}

build_coredns() {
  local v=$1 out=$2
  GOBIN="$out" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@v$v"
}

build_etcd() {
  local v=$1 out=$2
  (cd "$here/tools/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3)
}

build_kuberay() {
  local v=$1 out=$2 dir
  GOBIN="$out" go install -trimpath -ldflags "-s -w" "github.com/ray-project/kuberay/ray-operator@v$v"
  dir=$(moddir "github.com/ray-project/kuberay/ray-operator@v$v")
  mkdir -p "$out/crds" && cp "$dir"/config/crd/bases/ray.io_*.yaml "$out/crds/" && chmod u+w "$out"/crds/*
}

build_kwok() {
  local v=$1 out=$2 dir
  GOBIN="$out" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$v"
  dir=$(moddir "sigs.k8s.io/kwok@v$v")
  mkdir -p "$out/stages" && cp -r "$dir/kustomize/stage/." "$out/stages/" && chmod -R u+w "$out/stages"
}

build_helm() {
  local v=$1 out=$2
  GOBIN="$out" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@v$v"
}

# Prometheus for the e2e metrics test. Only Kubernetes service discovery is compiled in (the other
# discovery plugins pull in every cloud SDK); without the builtinassets tag the web UI is not embedded,
# so no npm-built assets are needed (the HTTP API, which the test uses, is unaffected).
build_prometheus() {
  local v=$1 out=$2 minor patch ld="-s -w"
  minor=$(echo "$v" | cut -d. -f2) patch=$(echo "$v" | cut -d. -f3)
  ld="$ld -X github.com/prometheus/common/version.Version=3.$((10#${minor#3})).$patch"
  GOBIN="$out" go install -trimpath -tags remove_all_sd,enable_kubernetes_sd -ldflags "$ld" \
    "github.com/prometheus/prometheus/cmd/prometheus@v$v"
}

# Toxiproxy's server for the chaos suite's dashboard faults (the test drives its HTTP API, so no CLI). Its
# version variable says "git" unless stamped; the module's `server` command is installed under its own name.
build_toxiproxy() {
  local v=$1 out=$2
  GOBIN="$out" go install -trimpath -ldflags "-s -w -X github.com/Shopify/toxiproxy/v2.Version=$v" \
    "github.com/Shopify/toxiproxy/v2/cmd/server@v$v"
  mv "$out/server" "$out/toxiproxy-server"
}

# name -> "VERSION FUNCTION"; the Makefile's tool-NAME targets build one each, so `make -jN` runs several
# builds at once (a Go build is CPU in its compiles, but network in its module downloads and one core in
# its links: two side by side finish well before one after the other on two cores).
declare -A tools=(
  [kubernetes]="$K8S_VERSION build_kubernetes"
  [kubernetes-node]="$K8S_VERSION build_kubernetes_node"
  [etcd]="$ETCD_VERSION build_etcd"
  [kuberay]="$KUBERAY_VERSION build_kuberay"
  [kwok]="$KWOK_VERSION build_kwok"
  [helm]="$HELM_VERSION build_helm"
  [coredns]="$COREDNS_VERSION build_coredns"
  [prometheus]="$PROMETHEUS_VERSION build_prometheus"
  [toxiproxy]="$TOXIPROXY_VERSION build_toxiproxy"
)
order=(kubernetes kubernetes-node etcd kuberay kwok helm coredns prometheus toxiproxy)

total=$SECONDS
for name in "${@:-${order[@]}}"; do
  if [ -z "${tools[$name]:-}" ]; then
    echo "build-tools.sh: unknown tool '$name' (known: ${order[*]})" >&2
    exit 2
  fi
  # shellcheck disable=SC2086 # "VERSION FUNCTION", split on purpose
  build "$name" ${tools[$name]}
done
log "${*:-all tools} ready in $((SECONDS - total))s under $cache"
