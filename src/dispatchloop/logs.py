"""Logging set-up: JSON lines for services and log shippers, readable text on a terminal.

Called once from the CLI (never at import). `log_format=auto` picks text when
stderr is a terminal and JSON otherwise, so journald/docker get one parseable
object per line with the `extra={...}` fields of each call at top level.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from dispatchloop.settings import Settings

# Attributes every LogRecord has; anything else came from `extra=` and is emitted as a field.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def use_json(settings: Settings, stream: TextIO) -> bool:
    if settings.log_format == "auto":
        return not stream.isatty()
    return settings.log_format == "json"


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Route the root logger to stderr in the configured format and level."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if use_json(settings, stream):
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # kafka-python logs every reconnect attempt at WARNING/ERROR; our loop reports those itself.
    logging.getLogger("kafka").setLevel(
        max(logging.getLevelName(settings.log_level), logging.ERROR)
    )
    # Alembic narrates every migration check at INFO each time a command opens the store;
    # an operator needs to hear only when something is wrong.
    logging.getLogger("alembic").setLevel(
        max(logging.getLevelName(settings.log_level), logging.WARNING)
    )
