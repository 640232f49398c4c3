#!/usr/bin/env bash
# `make test`'s test run: start the local cluster (control plane, kwok nodes, the real node, images) with its
# progress in view, run every tier against it, then stop it and fail if anything of it is left on the
# machine (process, mount, network namespace, bridge, route, nftables rule) or if any packet of the
# cluster's ranges reached the external interface (checked by the session's teardown).
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
status=0
if ! up=$($py hack/cluster.py up); then
  echo "cluster-up failed" >&2
  $py hack/cluster.py down || true
  exit 1
fi
export "${up#export }"
.venv/bin/pytest tests -q "$@" || status=$?
$py hack/cluster.py down || { echo "cluster-down left things behind" >&2; status=1; }
exit $status
