# The rayvllm operator image: `kopf run -m rayvllm.handlers`, non-root, nothing but the runtime venv.
# Build: docker build -t rayvllm/operator:0.1.0 .   Lint: hack/lint-dockerfile.sh

# ---- builder: a wheel of this repository, installed with its pinned dependencies into /opt/venv ----
FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# The lock first: the dependency layer is rebuilt only when the pins change.
COPY requirements.lock ./
COPY pyproject.toml README.md ./
COPY operator ./operator

# requirements.lock pins every package (it was compiled with the dev extra): used as constraints, it pins
# the operator's runtime dependencies to exactly the tested versions while keeping the dev tools (pytest,
# mypy, ruff, ...) out of the image.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --constraint requirements.lock /wheels/rayvllm-*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

# ---- final: the venv on a clean base, run as an unprivileged numeric user ----
FROM python:3.11.13-slim-bookworm

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

# A numeric UID/GID, so Kubernetes can enforce runAsNonRoot without resolving names.
RUN groupadd --system --gid 10001 rayvllm \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rayvllm

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /tmp
# kopf's liveness endpoint (the Helm chart probes /healthz here).
EXPOSE 8080

ENTRYPOINT ["kopf", "run", "-m", "rayvllm.handlers", "--standalone", "--log-format=json", "--liveness=http://0.0.0.0:8080/healthz"]
CMD ["--all-namespaces"]
