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
    # A line per request to a cluster's API server (two per joining node) says less
    # than the activity's own line, and at a thousand nodes cost the worker's event
    # loop a second; failures still come through as warnings.
    for chatty in ("httpx", "httpx2"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))
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
