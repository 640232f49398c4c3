"""Operator start-up handlers."""

import logging
from typing import Any

import kopf

from rayvllm.settings import load_settings


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    memo.settings = load_settings()
    settings.persistence.finalizer = "rayvllm.io/finalizer"
    settings.posting.level = logging.INFO
    logger.info("rayvllm operator configured: %s", memo.settings.model_dump())
