"""Log set-up for the runner and node processes: text lines, or one JSON object per line.

``avatar run --log-format json`` (or ``AVATAR_LOG_FORMAT=json`` in the environment) makes every
line a process writes to stderr a JSON object::

    {"ts": "2025-01-31T12:00:00.123456Z", "level": "ERROR", "logger": "avatar.worker.mid",
     "node": "mid", "pid": 4242, "msg": "node 'mid' failed: ...", "session": "a", "trace": "t1",
     "exc": "Traceback ...", ...extra fields}

``session`` and ``trace`` are always present (null when the record has none); other ``extra=``
fields are added as they are. The runner sets ``AVATAR_LOG_FORMAT`` in its own environment, which
every node process inherits, and each process calls :func:`configure` once at start. Node code
logs through ``self.log`` (a ``logging.Logger``) and tags a record with the ids of the message it
is about with ``self.log.warning("...", extra=message_ids(msg))``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any

FORMATS = ("text", "json")
FORMAT_ENV = "AVATAR_LOG_FORMAT"
LEVEL_ENV = "AVATAR_LOG"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring for the keys)."""

    def __init__(self, node: str | None = None):
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="microseconds")
                  .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "node": getattr(record, "node", None) or self.node,
            "pid": record.process,
            "msg": record.getMessage(),
            "session": getattr(record, "session", None),
            "trace": getattr(record, "trace", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def text_formatter(node: str | None = None) -> logging.Formatter:
    """The plain format: ``time node[pid] LEVEL message`` (``avatar[pid]`` for the runner)."""
    return logging.Formatter(f"%(asctime)s {node or 'avatar'}[%(process)d] %(levelname)s %(message)s")


def log_format(fmt: str | None = None) -> str:
    """The format to use: ``fmt`` if given, else ``$AVATAR_LOG_FORMAT``, else ``text``."""
    fmt = (fmt or os.environ.get(FORMAT_ENV) or "text").strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    return fmt


def configure(node: str | None = None, fmt: str | None = None, level: str | int | None = None,
              stream: IO[str] | None = None) -> str:
    """Send this process's logs to stderr in ``fmt``; the format chosen. Called once per process.

    ``node`` names the node a worker process hosts (None for the runner). ``level`` defaults to
    ``$AVATAR_LOG``, else WARNING. The handler goes on the root logger (replacing one an earlier
    call installed), so third-party loggers (uvicorn, aiortc) come out in the same format.
    """
    fmt = log_format(fmt)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(node) if fmt == "json" else text_formatter(node))
    handler._avatar_logs = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_avatar_logs", False):
            root.removeHandler(old)
    root.addHandler(handler)
    level = level if level is not None else os.environ.get(LEVEL_ENV) or "WARNING"
    if isinstance(level, str):
        level = int(level) if level.strip().isdigit() else level.strip().upper()
    try:
        root.setLevel(level)
    except ValueError:  # an unknown level name in $AVATAR_LOG
        root.setLevel(logging.WARNING)
    return fmt


def pass_to_nodes(fmt: str) -> None:
    """Make node processes started from now on log in ``fmt`` (they inherit the environment)."""
    os.environ[FORMAT_ENV] = log_format(fmt)


def message_ids(msg: Any) -> dict[str, Any]:
    """``extra=`` fields naming a message's session (a list for a batch) and trace id."""
    return {"session": getattr(msg, "session", None), "trace": getattr(msg, "trace", None)}
