# The rayvllm operator image: `kopf run -m rayvllm.handlers`, non-root, nothing but the runtime venv.
# Build: docker build -t rayvllm/operator:0.1.0 .   Lint: hack/lint-dockerfile.sh
#
# BASE_IMAGE (both stages) defaults to the official Python image, whose python 3.11 is built from source
# into /usr/local (with pip on PATH). The local cluster builds this file with buildah on a Debian 12
# minbase of its own (hack/localcluster/images.py, hack/images/python-base.packages): Debian's python3.11
# in /usr/bin, `python` from python-is-python3, no pip outside a venv. So the steps below only assume
# `python -m venv` and use the venv's pip. PIP_CERT (builder only, optional) names a CA bundle for pip
# behind a TLS-intercepting proxy, mounted in by the build for RUN steps only (the local build: `buildah
# bud -v HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt`);
# neither the bundle nor the variable reaches the final image.
ARG BASE_IMAGE=python:3.11.13-slim-bookworm

# ---- builder: a wheel of this repository, installed with its pinned dependencies into /opt/venv ----
FROM ${BASE_IMAGE} AS builder

ARG PIP_CERT=""
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
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-cache-dir --constraint requirements.lock /wheels/rayvllm-*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

# ---- final: the venv on a clean base, run as an unprivileged numeric user ----
FROM ${BASE_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

# glibc malloc with a fixed mmap threshold: a freed large block (each TLS connection to the API server has a
# 256 KiB read buffer) is then unmapped, back to the OS. With the default dynamic threshold, the first such
# free raises the threshold, later buffers come from the heap, and a burst of connections stays in RSS for
# good (measured: 120 MiB kept against 54 MiB after 3 x 260 buffers). bench/operator.py runs the operator with
# the same value.
ENV MALLOC_MMAP_THRESHOLD_=131072

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
