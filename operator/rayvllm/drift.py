"""Does an observed object already hold what the operator would apply? Pure.

Children are written with server-side apply, which is idempotent but still a write: at steady state the
operator must send none. An object matches when every field of the desired manifest is present with the
same value; what the API server or KubeRay add (defaults, status, other managers' fields) is ignored. A
field someone else changed, or one that went missing, is a difference, and the next apply restores it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def holds(observed: Any, desired: Any) -> bool:
    """True when `observed` contains `desired`: maps key by key (a desired None means "absent"), lists
    element by element with equal lengths (the operator owns whole lists it sets), scalars by equality."""
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return False
        return all(
            (observed.get(key) is None)
            if value is None
            else (key in observed and holds(observed[key], value))
            for key, value in desired.items()
        )
    if isinstance(desired, Sequence) and not isinstance(desired, str):
        if not isinstance(observed, Sequence) or isinstance(observed, str) or len(observed) != len(desired):
            return False
        return all(holds(o, d) for o, d in zip(observed, desired, strict=True))
    return bool(observed == desired)


def needs_apply(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Apply only when the object is missing or differs in a field the operator sets (metadata labels and
    owner references included)."""
    if observed is None:
        return True
    return not holds(
        {"metadata": observed.get("metadata") or {}, "spec": observed.get("spec") or {}},
        {"metadata": desired.get("metadata") or {}, "spec": desired.get("spec") or {}},
    )
