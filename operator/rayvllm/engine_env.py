"""Environment variables an engine gets only from the operator: set elsewhere (a VLLMCluster's spec.engine.env,
the operator-wide engineJobEnv setting) they would replace a Secret or turn Ray's token auth off. One list, read
by the spec's admission rules and the settings' validation."""

from __future__ import annotations

# Set from spec.model.hfTokenSecretRef and spec.engine.apiKeySecretRef on the worker pods.
OWNED_ENV_NAMES: tuple[str, ...] = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY")

# Ray's own token auth, which KubeRay sets on every Ray container (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN from its
# Secret): RAY_AUTH_MODE=disabled on a worker turns auth off there (its dashboard agent then answers anyone),
# RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH replace the token, and RAY_ENABLE_K8S_TOKEN_AUTH switches to Kubernetes
# tokens (Ray 2.60: src/ray/rpc/authentication/authentication_mode.cc reads AUTH_MODE and
# ENABLE_K8S_TOKEN_AUTH from RayConfig, i.e. RAY_<NAME>; the token loader reads RAY_AUTH_TOKEN(_PATH)). The
# whole RAY_AUTH_ prefix is refused, so a variable a later Ray adds there is too.
RAY_AUTH_ENV_PREFIX = "RAY_AUTH_"
RAY_AUTH_ENV_NAMES: tuple[str, ...] = ("RAY_ENABLE_K8S_TOKEN_AUTH",)


def sets_ray_auth(name: str) -> bool:
    return name.startswith(RAY_AUTH_ENV_PREFIX) or name in RAY_AUTH_ENV_NAMES
