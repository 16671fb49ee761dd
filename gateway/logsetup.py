"""Where the gateway's log goes and in which shape: text lines on a terminal, JSON lines else.

The event loggers (``gateway.events``, ``gateway.security``, ``gateway.admin.access``) already
write one JSON object per message; in JSON mode those go out as they are, so a log shipper sees
one flat object per line, and every other message is wrapped in a small JSON object of its own.
"""

from __future__ import annotations

import json
import logging
import sys

__all__ = ["JSON_LOGGERS", "JsonLineFormatter", "configure_logging"]

#: Loggers whose messages already are one JSON object each: written as they are.
JSON_LOGGERS = frozenset({"gateway.events", "gateway.security", "gateway.admin.access"})


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Human-readable lines on a terminal, JSON lines otherwise (``fmt`` "auto")."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record; the event loggers' objects pass through untouched."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name in JSON_LOGGERS and message.startswith("{"):
            return message
        line: dict[str, object] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if record.exc_info:
            # A logged exception keeps its traceback: one JSON string, newlines escaped.
            line["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line)
