"""Server-side apply bodies are YAML to the API server: whatever strings a spec carries (the fuzz tier found
an emoji in an image name), the body must read back as exactly the object."""

from __future__ import annotations

import json

import pytest
import yaml

from rayvllm.k8s.api import AS_APPLY, apply_body

STRINGS = [
    "plain",
    "emoji \U0001f600 and \U0010fffd",
    "nel\x85 ls\u2028 ps\u2029 bom\ufeff",
    "del\x7f c1\x80\x9f nonchars\ufffe\uffff",
    "controls \x00\x01\t\n\r\x1b",
    'quotes " \\ / and \\u0041 spelled out',
    "yes",
    "0755",
    "<<",
    "",
    "a: b, [c] {d} #e &f *g !h",
]


@pytest.mark.parametrize("value", STRINGS, ids=range(len(STRINGS)))
def test_reads_back_as_the_object(value: str) -> None:
    manifest = {
        "metadata": {"name": "x", "labels": {value: value}},
        "spec": {"image": value, "n": [1, 2.5, True, None]},
    }
    body = apply_body(manifest)
    # PyYAML, like the API server's go-yaml, is a YAML 1.1 reader that refuses surrogate escapes and raw
    # non-printable characters, and folds raw line separators inside quoted scalars.
    assert yaml.safe_load(body.decode()) == manifest
    assert json.loads(body) == manifest


def test_no_surrogate_escapes() -> None:
    assert b"\\ud83d" not in apply_body({"image": "\U0001f600"}).lower()


def test_the_client_passes_bytes_through_unchanged() -> None:
    """kubernetes_asyncio json.dumps every apply-patch+yaml body itself; only under another content type
    does it send bytes as they are."""
    assert AS_APPLY["_content_type"] != "application/apply-patch+yaml"
    assert AS_APPLY["_content_type"].split(";")[0] == "application/apply-patch+yaml"
    assert "json" not in AS_APPLY["_content_type"]
