"""structlog set-up: key=value lines for people, JSON for log shippers."""

from __future__ import annotations

import logging
import os
import sys

import structlog

from pke_vsphere.runtime import tracebacks


def configure(level: str | None = None, json: bool | None = None) -> None:
    tracebacks.install()  # before any thread formats one
    level = (level or os.environ.get("PKE_VSPHERE_LOG_LEVEL", "INFO")).upper()
    if json is None:
        json = os.environ.get("PKE_VSPHERE_LOG_FORMAT", "console") == "json"
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
