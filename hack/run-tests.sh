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
# The machine's peak memory use during the tests (MemTotal - MemAvailable, sampled every 2 s), for the record.
peak_file=$(mktemp)
( peak=0; while sleep 2; do
    used=$(awk '/^MemTotal/{t=$2} /^MemAvailable/{a=$2} END{print int((t-a)/1024)}' /proc/meminfo)
    if [ "$used" -gt "$peak" ]; then peak=$used; echo "$peak" >"$peak_file"; fi
  done ) &
sampler=$!
# Arguments choose the tests (make day2 and make chaos pass their own); by default every tier but the day2
# runs and the chaos scenarios too heavy for the CI budget.
if [ $# -eq 0 ]; then
  echo "[run-tests] every tier except the day2 runs and the heavy chaos scenarios (make day2, make chaos run those)"
  set -- tests -m "not day2 and not heavy" --durations=25
fi
.venv/bin/pytest -q "$@" || status=$?
kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
echo "[run-tests] peak memory in use on the machine during the tests: $(cat "$peak_file") MiB"
rm -f "$peak_file"
$py -c 'import sys; sys.path.insert(0, "."); from hack.localcluster import network; print("[run-tests] network guard:", network.guard_counters())' || status=1
$py hack/cluster.py down || { echo "cluster-down left things behind" >&2; status=1; }
exit $status
