"""Whether a RayCluster's dashboard enforces token auth, decided from what was observed. Pure: reconcile asks the
dashboard (rayvllm.ray) and reads KubeRay's token Secret, this module only judges the answers.

The operator asks KubeRay for token auth (builders.raycluster: authOptions.mode token) and nothing else makes
it so: a KubeRay older than KUBERAY_AUTH_VERSION prunes authOptions silently (its CRD does not know the
field), a Ray older than MIN_RAY_VERSION ignores RAY_AUTH_MODE, and either way the dashboard runs jobs (code)
for anyone who can reach it. So before the first submission to a Ray head, the operator sees the dashboard
refuse a request without the token and accept it with the token; anything else submits nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from rayvllm.models.rayapi import VersionAnswer
from rayvllm.models.spec import MIN_RAY_VERSION

# The first KubeRay with RayCluster spec.authOptions (ray-operator/apis/ray/v1/raycluster_types.go at tag
# v1.5.1, "Add support for Ray token auth" #4179): it generates the token Secret and sets RAY_AUTH_MODE=token
# and RAY_AUTH_TOKEN on every Ray container (ray-operator/controllers/ray/common/pod.go).
KUBERAY_AUTH_VERSION = "1.5.1"
# The first KubeRay with everything the operator's RayClusters use: spec.upgradeStrategy (Recreate on a pod
# template change) came in v1.6.0. The chart states this one; the project tests 1.6.1 (hack/versions.env).
KUBERAY_MIN_VERSION = "1.6.0"
TOKEN_MODE = "token"

UPGRADE_HINT = (
    f"token auth needs KubeRay {KUBERAY_MIN_VERSION} or later (spec.authOptions exists from "
    f"{KUBERAY_AUTH_VERSION}) and Ray {MIN_RAY_VERSION} or later in spec.ray.image"
)


class AuthState(Enum):
    ENFORCED = "enforced"
    NOT_ENFORCED = "not enforced"
    TOKEN_REFUSED = "token refused"
    """Auth is on, but the token the operator holds is not the cluster's (KubeRay made a new one): read it
    again; nothing is wrong with the cluster."""


@dataclass(frozen=True)
class AuthObservation:
    """What was seen of one Ray head: the stored RayCluster's spec.authOptions.mode (None: absent, i.e.
    pruned by an older KubeRay CRD), whether KubeRay's token Secret holds a token, and GET /api/version
    without the token and, when that was refused and a token is held, with it."""

    ray_cluster: str
    token_secret: str
    auth_mode: str | None
    has_token: bool
    anonymous: VersionAnswer
    authenticated: VersionAnswer | None = None


@dataclass(frozen=True)
class AuthVerdict:
    state: AuthState
    message: str

    @property
    def enforced(self) -> bool:
        return self.state is AuthState.ENFORCED


def auth_mode_of(ray_cluster: Mapping[str, Any] | None) -> str | None:
    """spec.authOptions.mode of the RayCluster as the API server stored it."""
    options = ((ray_cluster or {}).get("spec") or {}).get("authOptions")
    mode = options.get("mode") if isinstance(options, Mapping) else None
    return mode if isinstance(mode, str) else None


def release(version: str | None) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a Ray version string ("2.51.1", "3.0.0.dev0", "2.52.0rc1"); None when it
    does not start like one."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _older_than_min(version: str | None) -> bool:
    known = release(version)
    minimum = release(MIN_RAY_VERSION)
    return known is not None and minimum is not None and known < minimum


def _why_open(seen: AuthObservation) -> list[str]:
    """The causes that fit what was seen, most certain first."""
    version = seen.anonymous.ray_version
    why = []
    if seen.auth_mode != TOKEN_MODE:
        why.append(
            f"the stored RayCluster has no spec.authOptions.mode {TOKEN_MODE}: the installed KubeRay predates "
            f"it and dropped the field; upgrade KubeRay to {KUBERAY_MIN_VERSION} or later"
        )
    if _older_than_min(version):
        why.append(
            f"the head runs Ray {version}, which ignores RAY_AUTH_MODE: use a spec.ray.image with Ray "
            f"{MIN_RAY_VERSION} or later"
        )
    elif seen.auth_mode == TOKEN_MODE:
        shown = f"Ray {version}" if version else "the head's Ray"
        why.append(
            f"{shown} runs with token auth off although the RayCluster asks for it: its pods did not get "
            "RAY_AUTH_MODE=token (a KubeRay that does not honour authOptions), or the image overrides it"
        )
    return why


def decide_ray_auth(seen: AuthObservation) -> AuthVerdict:
    """ENFORCED only when KubeRay was asked for token auth (the stored authOptions), holds a token, and the
    dashboard refused the request without it and answered it with it. Every other answer is NOT_ENFORCED,
    with a message naming what to upgrade; except a token the dashboard refuses, which is only stale."""

    def not_enforced(what: str, why: list[str]) -> AuthVerdict:
        return AuthVerdict(
            AuthState.NOT_ENFORCED, f"{what}; nothing is submitted: " + "; ".join([*why, UPGRADE_HINT])
        )

    name, secret = seen.ray_cluster, seen.token_secret
    if seen.anonymous.answered:
        return not_enforced(
            f"the Ray dashboard of RayCluster {name} answers without a token (GET /api/version): whoever "
            "reaches it can run code",
            _why_open(seen),
        )
    if seen.auth_mode != TOKEN_MODE:
        # It refuses, but not because KubeRay was asked to: whose token it wants, the operator cannot know.
        return not_enforced(f"RayCluster {name} runs without KubeRay's token auth", _why_open(seen))
    if not seen.has_token:
        return not_enforced(
            f"KubeRay's token Secret {secret} (key auth_token) of RayCluster {name} is missing or empty",
            [f"KubeRay {KUBERAY_AUTH_VERSION} or later creates it for authOptions.mode {TOKEN_MODE}"],
        )
    if seen.authenticated is not None and seen.authenticated.refused:
        return AuthVerdict(
            AuthState.TOKEN_REFUSED,
            f"the Ray dashboard of RayCluster {name} refused the token of Secret {secret} "
            f"(HTTP {seen.authenticated.status}): it is read again",
        )
    if seen.authenticated is None or not seen.authenticated.answered:
        return not_enforced(f"the Ray dashboard of RayCluster {name} was not asked with the token", [])
    version = seen.authenticated.ray_version or "unknown"
    return AuthVerdict(
        AuthState.ENFORCED,
        f"the Ray dashboard of RayCluster {name} (Ray {version}) refuses a request without the token "
        f"(HTTP {seen.anonymous.status}) and answers it with the token of Secret {secret}",
    )
