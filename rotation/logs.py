"""Log formatting: a stable event name as the message, fields from ``extra``, one line per record.

In Azure the Functions host ships records to Application Insights and the ``extra`` fields become custom
dimensions; locally the CLI prints them readable (``text``) or as JSON lines (``json``) on stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
# Loggers of libraries that are chatty at INFO (the azure-core HTTP logging policy prints every request).
_QUIET = ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity", "aiohttp")


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of a record, with None values left out."""
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _STANDARD and not k.startswith("_") and v is not None
    }


def _scalar(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    # repr-escape anything that could forge a second log line or hide in a terminal
    if any(c in text for c in " \"'=\\") or not text.isprintable():
        return json.dumps(text, ensure_ascii=True)
    return text


class TextFormatter(logging.Formatter):
    """``2026-11-20T09:14:03Z INFO rotation.cluster_rotated cluster_id=... outcome=rotated``."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record as a text line."""
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        fields = " ".join(f"{k}={_scalar(v)}" for k, v in record_fields(record).items() if k != "body")
        line = f"{when} {record.levelname} {_scalar(record.getMessage())}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += " exc=" + _scalar(self.formatException(record.exc_info).splitlines()[-1])
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event (the message) and every field."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record as a JSON object."""
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            **record_fields(record),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(doc, default=str, ensure_ascii=True)


def configure_cli_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send log records to stderr in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
