#!/usr/bin/env bash
# `make test`: the whole pipeline, cheapest and quickest to fail first, with a timed `[phase]` line for each
# and a table of them at the end:
#   static             ruff, ruff format, import contracts, hadolint, the API docs, mypy
#                      (`make lint-static typecheck`: the venv only)
#   unit               pytest tests/unit: nothing built or running
#   builds             the pinned Debian packages (root), the Go-built tools, the Ray + vLLM env, the real
#                      node's images (`make images` beside `make -j2 tools`: cached by version,
#                      seconds when warm)
#   lint (built tools) the checks needing a built tool (`make lint-rendered`: helm renders the chart)
#   cluster up         hack/cluster.py up: control plane, kwok nodes, the real node, images
#   integration+e2e    one pytest session over tests/integration, then tests/e2e (tests/conftest.py keeps
#                      that order; one session, so the secret scan and the chaos table cover the whole run)
#   cluster down       which fails if anything of the cluster is left on the machine (process, mount,
#                      network namespace, bridge, route, nftables rule); just before it, the network
#                      guard's counters (a packet of the cluster's ranges on the external interface already
#                      failed the session's teardown)
# A failure before the cluster stops the run there. With arguments (`make chaos`, `make day2`: their make
# target built what they need) only the cluster phases run, pytest getting those arguments.
#
# Reports: test-results/*.xml (JUnit), the 40 slowest test phases in the log, test-results/phases.txt.
# Deadline: `make test` must end, reports written and cluster down, before CI kills it at 90 minutes. From
# 75 minutes after this script started, pytest is stopped: SIGINT, so its fixtures tear down and its reports
# are written (SIGKILL 5 minutes later if it is still there), and the test it was running is named; cluster
# down still runs. Ten minutes before that, pytest-timeout's session timeout lets no new test start (it is
# checked after each test and cannot stop one: hence the deadline).
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
results=test-results
mkdir -p "$results"
# tests/support/session.py writes the test running now here: it outlives a pytest that had to be killed.
export RAYVLLM_RUNNING_TEST_FILE="$PWD/$results/running-test"
started=$(date +%s)
if [ $# -eq 0 ]; then
  budget_minutes=75
else
  # `make chaos` and `make day2` are not bound by CI's limit; the bound is for a fixture that hangs (a test's
  # own body has its pytest-timeout).
  budget_minutes=360
fi
deadline=$((started + budget_minutes * 60))
teardown_grace=300
soft_margin=600
status=0
phases=()

clock() { date -u +%H:%M:%SZ; }

# phase NAME COMMAND...: COMMAND as one phase of the run, its start and end each on a [phase] line.
phase() {
  local name=$1 from rc took verdict
  shift
  from=$(date +%s)
  echo "[phase] $(clock) +$((from - started))s $name: started"
  "$@"
  rc=$?
  took=$(($(date +%s) - from))
  if [ $rc -eq 0 ]; then verdict=ok; else verdict="FAILED (exit $rc)"; fi
  echo "[phase] $(clock) +$(($(date +%s) - started))s $name: $verdict in ${took}s"
  phases+=("$(printf '%-20s %-18s %6ss' "$name" "$verdict" "$took")")
  return $rc
}

summary() {
  {
    echo "[phase] summary, $(clock): wall time of each phase (JUnit reports under $results/)"
    printf '  %-20s %-18s %7s\n' phase result wall
    local row
    for row in "${phases[@]}"; do echo "  $row"; done
    printf '  %-20s %-18s %6ss\n' total "" "$(($(date +%s) - started))"
  } | tee "$results/phases.txt"
}
trap summary EXIT

# run_pytest REPORT ARGS...: pytest writing a JUnit REPORT, under the run's deadline (see the top). The
# watchdog is this shell, polling: pytest runs as a job of its own (set -m: its own process group, and SIGINT
# not ignored as it would be for a plain background command), so SIGINT reaches pytest alone, once.
run_pytest() {
  local report=$1 left pid rc stopping=""
  shift
  left=$((deadline - $(date +%s)))
  if [ $left -le 0 ]; then
    echo "[deadline] the run's deadline ($budget_minutes min) passed before pytest $*" >&2
    return 1
  fi
  rm -f "$RAYVLLM_RUNNING_TEST_FILE"
  set -m
  .venv/bin/pytest --junitxml="$results/$report" --durations=40 \
    --session-timeout="$((left > soft_margin + 60 ? left - soft_margin : 60))" "$@" &
  pid=$!
  set +m
  # A Ctrl-C or CI's cancel reaches this shell, not pytest's process group: pass it on, so pytest tears
  # down and reports as it would have.
  trap 'kill -INT "$pid" 2>/dev/null' INT TERM
  while kill -0 "$pid" 2>/dev/null; do
    if [ -z "$stopping" ] && [ "$(date +%s)" -ge "$deadline" ]; then
      echo "[deadline] $budget_minutes min after the run started, pytest is stopped (SIGINT: it tears down and" \
        "writes its reports) while running: $(cat "$RAYVLLM_RUNNING_TEST_FILE" 2>/dev/null || echo "none yet")" >&2
      kill -INT "$pid"
      stopping=$(date +%s)
    elif [ -n "$stopping" ] && [ $(($(date +%s) - stopping)) -ge $teardown_grace ]; then
      echo "[deadline] pytest still there ${teardown_grace}s after SIGINT: SIGKILL to its process group" >&2
      kill -KILL -- "-$pid" 2>/dev/null
    fi
    sleep 2
  done
  wait "$pid"
  rc=$?
  trap - INT TERM
  if [ -n "$stopping" ]; then
    return 1
  fi
  return $rc
}

# builds: the Debian packages and the venv first; then the Ray env and the images (mostly disk I/O) as one
# make, beside another building the Go tools two at a time (one target a tool: one's module downloads and
# links overlap the other's compiles). Two makes, not one `make -j3`: one make starts whichever tool comes
# next when the Ray env is done, and the images, the longest chain but for the Go builds, would wait. On a
# warm machine every target finds its cache in seconds.
builds() {
  local images rc=0
  make --no-print-directory node-packages venv || return 1
  make --no-print-directory images &
  images=$!
  make --no-print-directory -j2 tools || rc=1
  wait "$images" || rc=1
  return $rc
}

if [ $# -eq 0 ]; then
  selection="not day2 and not chaos"
  rm -f "$results"/*.xml
  echo "[run-tests] make test: every tier with -m '$selection' (\`make day2\` runs the day2 tests, \`make chaos\` the chaos ones)"
  phase static make --no-print-directory lint-static typecheck || status=1
  phase unit run_pytest unit.xml tests/unit -q -m "$selection" || status=1
  if [ $status -ne 0 ]; then
    echo "[run-tests] static checks or unit tests failed: stopping before the builds and the cluster" >&2
    exit 1
  fi
  phase builds builds || exit 1
  phase "lint (built tools)" make --no-print-directory lint-rendered || exit 1
  session="integration+e2e"
  report=integration-e2e.xml
  set -- tests/integration tests/e2e -m "$selection"
else
  echo "[run-tests] pytest $*"
  session="selected tests"
  report=selected.xml
  rm -f "$results/$report"
fi

cluster_up() { up=$($py hack/cluster.py up); }
if ! phase "cluster up" cluster_up; then
  phase "cluster down" $py hack/cluster.py down
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
# -v: a line per test as it starts, so a slow or stuck one shows in the log while it runs.
phase "$session" run_pytest "$report" -v "$@" || status=1
kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
echo "[run-tests] peak memory in use on the machine during the tests: $(cat "$peak_file") MiB"
rm -f "$peak_file"
$py -c 'import sys; sys.path.insert(0, "."); from hack.localcluster import network; print("[run-tests] network guard:", network.guard_counters())' || status=1
phase "cluster down" $py hack/cluster.py down || { echo "cluster-down left things behind" >&2; status=1; }
exit $status
