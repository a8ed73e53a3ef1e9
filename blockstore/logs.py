"""Structured logs: one logger per package, every record one line of ``key=value`` or JSON.

Library code logs through ``logging.getLogger(__name__)``, so every module's logger is a child
of its package's (``blockstore``, ``stages``, ``scheduler``, ``blockpoint``,
``blockpoint_langgraph``), and never prints. Facts worth filtering on travel as fields
(``log.warning(..., extra={"stage": ..., "generation": ...})``); the formatters here put them
beside the timestamp, level, logger and message:

    ts=2026-12-02T15:04:05.123Z level=warning logger=stages.checkpoint.state stage=agg
    generation=7 event="restore of lease 'agg' (...): skipping generation 7: ..."

or one JSON object per line with the same keys. Nothing is configured on import: a program
calls :func:`configure`, or sets ``BLOCKPOINT_LOG_FORMAT=kv|json`` (and optionally
``BLOCKPOINT_LOG_LEVEL``) for the processes blockpoint starts itself - stage actors, decorated
actors and the scheduler call :func:`configure_from_env` when they start, so the variable in
a job's ``runtime_env`` reaches every worker's log file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from typing import Any, TextIO

from .redact import redact_text

__all__ = ["JsonFormatter", "KeyValueFormatter", "PACKAGES", "configure", "configure_from_env"]

PACKAGES = ("blockstore", "stages", "scheduler", "blockpoint", "blockpoint_langgraph")
FORMAT_ENV = "BLOCKPOINT_LOG_FORMAT"
LEVEL_ENV = "BLOCKPOINT_LOG_LEVEL"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                         "taskName"}
_HANDLER_MARK = "_blockpoint_structured"


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The record as ordered fields: ts, level, logger, the ``extra`` fields, event, and for
    ``log.exception`` the error (``exc``, ``Type: message``) and its ``traceback``."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    out: dict[str, Any] = {"ts": f"{ts}.{int(record.msecs):03d}Z",
                           "level": record.levelname.lower(), "logger": record.name}
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            out[key] = value
    out["event"] = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        out["exc"] = redact_text(f"{type(exc).__name__}: {exc}")
        # Where it failed: what ``log.exception`` is for. Escaped into the one line (a JSON
        # string, or a quoted value), never printed as the plain text's extra lines. The
        # chain includes the backend errors ours were raised from (a client's raw message,
        # which may echo a request URL): redacted like every other place that shows one.
        out["traceback"] = redact_text(
            "".join(traceback.format_exception(*record.exc_info)).rstrip())
    if record.stack_info:
        out["stack"] = record.stack_info
    return out


def _kv_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and all(c.isalnum() or c in "-_.:/@+" for c in text):
        return text
    return json.dumps(text)  # quoted, with newlines and quotes escaped: one line per record


class KeyValueFormatter(logging.Formatter):
    """``key=value`` pairs on one line; values with spaces or quotes are JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in fields_of(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line (values that JSON cannot hold are given as strings)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(fields_of(record), default=str)


def configure(fmt: str = "kv", level: int | str = logging.INFO,
              stream: TextIO | None = None) -> logging.Handler:
    """Send every blockpoint package's records to ``stream`` (stderr) as ``fmt`` lines.

    ``fmt`` is ``"kv"`` or ``"json"``. Replaces a handler an earlier call installed (so calling
    it twice does not print twice); the package loggers stop propagating to the root logger,
    so a program's own root handler does not print each record a second time.
    """
    if fmt not in ("kv", "json"):
        raise ValueError(f"log format must be 'kv' or 'json', got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    setattr(handler, _HANDLER_MARK, True)
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(f"unknown log level {level!r}")
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return handler


def configure_from_env() -> logging.Handler | None:
    """:func:`configure` from ``BLOCKPOINT_LOG_FORMAT`` / ``BLOCKPOINT_LOG_LEVEL``, if set.

    A bad value is reported once on stderr's logger and ignored: a typo in a variable must
    not stop a stage from starting.
    """
    fmt = os.environ.get(FORMAT_ENV)
    if not fmt:
        return None
    try:
        return configure(fmt.strip().lower(), os.environ.get(LEVEL_ENV, "INFO"))
    except ValueError as exc:
        logging.getLogger(__name__).warning("ignoring $%s / $%s: %s", FORMAT_ENV, LEVEL_ENV, exc)
        return None
