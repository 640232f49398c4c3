"""The token-auth decision (rayvllm.ray_auth) as a table: what was seen of a Ray head -> enforced or not, and
what the message tells the user to upgrade. Pure: no dashboard here (test_ray_auth_pass.py asks a real
HTTP server)."""

from __future__ import annotations

from typing import Any

import pytest

from rayvllm.models.rayapi import VersionAnswer
from rayvllm.ray_auth import (
    KUBERAY_AUTH_VERSION,
    KUBERAY_MIN_VERSION,
    UPGRADE_HINT,
    AuthObservation,
    AuthState,
    auth_mode_of,
    decide_ray_auth,
    release,
)

OK = VersionAnswer(200, ray_version="2.60.0", session_name="session_2030-01-01_12-00-00_000000_1")
NO_TOKEN = VersionAnswer(401)
WRONG_TOKEN = VersionAnswer(403)


def seen(
    anonymous: VersionAnswer,
    authenticated: VersionAnswer | None = None,
    *,
    auth_mode: str | None = "token",
    has_token: bool = True,
) -> AuthObservation:
    return AuthObservation(
        ray_cluster="llama",
        token_secret="team/llama",
        auth_mode=auth_mode,
        has_token=has_token,
        anonymous=anonymous,
        authenticated=authenticated,
    )


ENFORCED, OPEN, STALE = AuthState.ENFORCED, AuthState.NOT_ENFORCED, AuthState.TOKEN_REFUSED

# (what was seen, the verdict, words its message must hold)
TABLE: list[tuple[str, AuthObservation, AuthState, tuple[str, ...]]] = [
    (
        "refused without, answered with the token",
        seen(NO_TOKEN, OK),
        ENFORCED,
        ("refuses a request without the token (HTTP 401)", "Ray 2.60.0", "Secret team/llama"),
    ),
    ("a token-less request answered 403 counts as refused", seen(WRONG_TOKEN, OK), ENFORCED, ("HTTP 403",)),
    (
        "answered without a token by an old Ray",
        seen(VersionAnswer(200, ray_version="2.51.1")),
        OPEN,
        ("answers without a token", "Ray 2.51.1, which ignores RAY_AUTH_MODE", "Ray 2.52.0 or later"),
    ),
    (
        "answered without a token, authOptions pruned by an old KubeRay",
        seen(OK, auth_mode=None, has_token=False),
        OPEN,
        ("no spec.authOptions.mode token", f"upgrade KubeRay to {KUBERAY_MIN_VERSION} or later"),
    ),
    (
        "both: authOptions pruned and an old Ray",
        seen(VersionAnswer(200, ray_version="2.49.0"), auth_mode=None, has_token=False),
        OPEN,
        ("no spec.authOptions.mode token", "Ray 2.49.0, which ignores RAY_AUTH_MODE"),
    ),
    (
        "answered without a token although asked for and Ray is new enough",
        seen(OK),
        OPEN,
        ("Ray 2.60.0 runs with token auth off although the RayCluster asks for it", "RAY_AUTH_MODE=token"),
    ),
    (
        "answered without a token, not even JSON",
        seen(VersionAnswer(200)),
        OPEN,
        ("the head's Ray runs with token auth off",),
    ),
    (
        "a development build is not older",
        seen(VersionAnswer(200, ray_version="3.0.0.dev0")),
        OPEN,
        ("Ray 3.0.0.dev0 runs with token auth off",),
    ),
    (
        "refused, but KubeRay's token Secret is missing or empty",
        seen(NO_TOKEN, has_token=False),
        OPEN,
        (
            "token Secret team/llama (key auth_token) of RayCluster llama is missing or empty",
            KUBERAY_AUTH_VERSION,
        ),
    ),
    (
        "refused and answered, but not because KubeRay was asked (authOptions pruned)",
        seen(NO_TOKEN, OK, auth_mode=None),
        OPEN,
        ("runs without KubeRay's token auth", "no spec.authOptions.mode token"),
    ),
    (
        "refused with the token as well: the token is stale",
        seen(NO_TOKEN, WRONG_TOKEN),
        STALE,
        ("refused the token of Secret team/llama (HTTP 403): it is read again",),
    ),
    (
        "refused, never asked with the token",
        seen(NO_TOKEN, None),
        OPEN,
        ("was not asked with the token",),
    ),
]


@pytest.mark.parametrize(
    ("observed", "state", "words"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_the_decision_table(observed: AuthObservation, state: AuthState, words: tuple[str, ...]) -> None:
    verdict = decide_ray_auth(observed)
    assert verdict.state is state
    assert verdict.enforced is (state is ENFORCED)
    for word in words:
        assert word in verdict.message


@pytest.mark.parametrize(
    "observed", [row[1] for row in TABLE if row[2] is OPEN], ids=[r[0] for r in TABLE if r[2] is OPEN]
)
def test_every_refusal_says_nothing_is_submitted_and_names_both_upgrades(observed: AuthObservation) -> None:
    message = decide_ray_auth(observed).message
    assert "nothing is submitted" in message
    assert message.endswith(UPGRADE_HINT)
    assert f"KubeRay {KUBERAY_MIN_VERSION} or later" in message and "Ray 2.52.0 or later" in message


def test_the_versions_named_are_the_sources_own() -> None:
    # KubeRay: spec.authOptions first in ray-operator/apis/ray/v1/raycluster_types.go at v1.5.1, and
    # spec.upgradeStrategy at v1.6.0; Ray: token auth since 2.52.0 (KubeRay's validation.go refuses older).
    assert (KUBERAY_AUTH_VERSION, KUBERAY_MIN_VERSION) == ("1.5.1", "1.6.0")
    assert "KubeRay 1.6.0 or later" in UPGRADE_HINT and "from 1.5.1" in UPGRADE_HINT


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2.52.0", (2, 52, 0)),
        ("2.51.1", (2, 51, 1)),
        ("2.52.0rc1", (2, 52, 0)),
        ("3.0.0.dev0", (3, 0, 0)),
        ("2.60", (2, 60, 0)),
        ("", None),
        (None, None),
        ("nightly", None),
    ],
)
def test_release(version: str | None, expected: tuple[int, int, int] | None) -> None:
    assert release(version) == expected


@pytest.mark.parametrize(
    ("ray_cluster", "expected"),
    [
        ({"spec": {"authOptions": {"mode": "token"}}}, "token"),
        ({"spec": {"authOptions": {"mode": "disabled"}}}, "disabled"),
        ({"spec": {}}, None),
        ({"spec": {"authOptions": None}}, None),
        ({"spec": {"authOptions": "token"}}, None),
        ({}, None),
        (None, None),
    ],
)
def test_auth_mode_of_the_stored_ray_cluster(
    ray_cluster: dict[str, Any] | None, expected: str | None
) -> None:
    assert auth_mode_of(ray_cluster) == expected
