"""Pure pieces of the engine supervisor: the engine fingerprint and what leaves the engine's logs."""

from __future__ import annotations

from typing import Any

from rayvllm.engine.failure import LAST_FAILURE_LIMIT, failure_text, log_tail, redact
from rayvllm.engine.fingerprint import engine_config_hash
from rayvllm.models import parse_spec


def spec(**changes: Any) -> Any:
    body: dict[str, Any] = {"model": {"source": "hf://org/model"}, "ray": {"image": "img"}}
    for key, value in changes.items():
        body[key] = value
    return parse_spec(body)


def test_fingerprint_ignores_what_does_not_change_an_engine() -> None:
    base = engine_config_hash(spec())
    assert engine_config_hash(spec(replicas=3)) == base
    assert engine_config_hash(spec(suspend=True)) == base
    assert engine_config_hash(spec(restartPolicy={"maxRestarts": 1})) == base


def test_fingerprint_changes_with_model_engine_and_image() -> None:
    base = engine_config_hash(spec())
    assert engine_config_hash(spec(engine={"maxModelLen": 128})) != base
    assert engine_config_hash(spec(model={"source": "hf://org/other"})) != base
    assert engine_config_hash(spec(ray={"image": "img:2"})) != base


def test_redact_hides_tokens_and_keys_but_keeps_the_rest() -> None:
    line = "auth: Bearer abc.def-123 token=hf_abcdefghijkl api_key: sk-123 password='p4ss' model loaded"
    out = redact(line)
    for secret in ("abc.def-123", "hf_abcdefghijkl", "sk-123", "p4ss"):
        assert secret not in out, out
    assert "Bearer <redacted>" in out and "model loaded" in out


def test_log_tail_keeps_the_last_non_empty_lines() -> None:
    logs = "\n".join(f"line {i}" for i in range(100)) + "\n\n"
    tail = log_tail(logs, lines=3)
    assert tail == "line 97\nline 98\nline 99"
    assert log_tail(None) == "" and log_tail("") == ""


def test_failure_text_is_bounded_and_keeps_the_end() -> None:
    text = failure_text("attempt 0: Ray job FAILED", "x" * 10_000 + "\nthe real error")
    assert len(text) <= LAST_FAILURE_LIMIT
    assert text.endswith("the real error")
    assert failure_text("why", None) == "why"
